# cython: language_level=3
"""What fastgw.compile builds from a Config, read-only on the request path (a reload builds a new Runtime
and swaps one reference; requests in flight keep theirs).

  Problem   a problem+json (RFC 9457) response prebuilt at config load (fastgw/errors.py has the catalogue)
  RouteRT   one route: its upstream group, body limit, header rules as bytes, policy chain, metrics slot
  Runtime   the whole compiled config: router, problems, wire table, limits and timeouts
  H2Limits  the compiled [server.http2] settings
"""
from fastgw._core.wire cimport name_lengths


cdef class Problem:
    """A problem+json (RFC 9457) response whose constant parts were serialised at config load."""

    cpdef bytes render(self, bytes instance, bytes rid, bytes date, bytes detail=None, bytes extra=b"",
                       bint close=False, bytes members=b""):
        cdef bytes body = self.body(instance, rid, detail, members)
        return b"".join((self.head, b"Content-Length: %d\r\n" % len(body), b"X-Request-ID: ", rid,
                         b"\r\n", self.extra, extra, date,
                         b"Connection: close\r\n\r\n" if close else b"\r\n", body))

    cdef bytes body(self, bytes instance, bytes rid, bytes detail, bytes members):
        """The JSON body; `detail` JSON-escaped (None: the default), `members` RFC 9457 extension members,
        each after a comma (an upstream failure's: Exchange.failure_members), or b""."""
        return b"".join((self.body_a, self.detail if detail is None else detail, self.body_b,
                         json_bytes(instance), self.body_c, rid, self.body_d, members, b"}"))


cpdef bytes json_bytes(bytes raw):
    """Escape request-derived bytes for a JSON string (paths may hold '"' or non-ASCII bytes)."""
    if raw.isascii() and raw.find(b'"') < 0 and raw.find(b"\\") < 0:
        return raw
    import json
    return json.dumps(raw.decode("latin-1"))[1:-1].encode()


cdef class RouteRT:
    @property
    def req_remove(self):
        return self._req_remove

    @req_remove.setter
    def req_remove(self, value):
        self._req_remove = value
        self.req_remove_lengths = name_lengths(value)
        self.req_remove_names = tuple(value) if value is not None else None


cdef class Runtime:
    """Everything the request path reads, compiled once per config (fastgw.compile.compile_config)."""


cdef class H2Limits:
    """The compiled [server.http2] settings (fastgw.compile puts one on Runtime.h2)."""

    def __init__(self, int max_streams=100, int stream_window=65535, int conn_window=1048576,
                 double stall_timeout=30.0):
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.conn_window = conn_window
        self.stall_timeout = stall_timeout
