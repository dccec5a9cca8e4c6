# cython: language_level=3
"""The HTTP/1.1 reverse proxy: the I/O shells around the sans-IO reader.

  ClientConn   downstream asyncio protocol (one per client connection); a RequestReader subclass
  Exchange     one request/response, from its head to the last byte of the response
  UpstreamConn upstream asyncio protocol, pooled per Target, parsing responses with httptools
  Target       one upstream address with its LIFO pool of idle keep-alive connections
  Worker       the per-process state: current Runtime, coarse clock, live connections, the timeout sweep

Rules kept here (and why):
* Output produced while handling one read is written once, after the read (one syscall, not one per event).
* Backpressure both ways: a side whose peer's write buffer is over its high-water mark stops reading.
* Pipelined requests are served one at a time, in order; at most `max_pipelined` wait, beyond that the
  connection answers the queued ones and closes (a client may always retry an unanswered request).
* Timeouts are swept by the Worker every quarter second from a coarse clock: no timer per request.
* A pooled connection that fails before any response byte is retried once on a fresh connection, and only
  for a request without a body (nothing of it can have been processed twice); everything else is 502.
* If the upstream fails after the response started, the client connection is closed: a truncated
  response is never presented as a complete one.
"""
import asyncio
import socket
import ssl
import struct

from fastgw import failures as _failures
from fastgw import proxyproto
from fastgw._core cimport phases as _ph
from fastgw._core.phases cimport Respond

from httptools import HttpParserError, HttpResponseParser

from libc.stdio cimport snprintf
from libc.stdint cimport uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from libc.string cimport memchr, memcpy



cdef inline Py_ssize_t _head_end(const char* b, Py_ssize_t n) noexcept nogil:
    """Offset of the first CRLFCRLF in b[:n], or -1: memchr from LF to LF (a response head has a handful
    of lines; ~6x cheaper than bytes.find, ~4x cheaper than glibc's memmem on ~200-byte heads)."""
    cdef const char* p = b
    cdef const char* end = b + n
    cdef const char* q
    while p < end:
        q = <const char*>memchr(p, 10, end - p)
        if q == NULL or q + 2 >= end:
            return -1
        if q[1] == 13 and q[2] == 10 and q > b and q[-1] == 13:
            return (q - 1) - b
        p = q + 1
    return -1
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef const char* HEXDIGITS = b"0123456789abcdef"


DEF GATHER_MIN = 16384


cdef void write_parts(object transport, list parts):
    """One write of the parts: small ones are copied together (one buffer, one syscall), large ones go to
    writelines, which uvloop hands to writev without copying (a 64 KiB body is not copied twice)."""
    cdef Py_ssize_t total = 0, k, n = len(parts)
    if n == 1:
        transport.write(parts[0])
        return
    for k in range(n):
        total += len(parts[k])
    if total >= GATHER_MIN:
        transport.writelines(parts)
    else:
        transport.write(concat(parts))


cdef bytes concat(list parts):
    """b"".join(parts) for a list of bytes, in C: one size pass, one allocation, one memcpy per part
    (bytes.join costs ~150 instructions per part through the sequence and buffer protocols)."""
    cdef Py_ssize_t total = 0, k, n = len(parts), size
    cdef bytes out
    cdef char* dst
    cdef object part
    for k in range(n):
        part = parts[k]
        if type(part) is not bytes:
            return b"".join(parts)              # bytearray/memoryview parts: the general path
        total += PyBytes_GET_SIZE(<bytes>part)
    out = PyBytes_FromStringAndSize(NULL, total)
    dst = PyBytes_AS_STRING(out)
    for k in range(n):
        part = parts[k]
        size = PyBytes_GET_SIZE(<bytes>part)
        memcpy(dst, PyBytes_AS_STRING(<bytes>part), size)
        dst += size
    return out

from fastgw._core.http1 cimport RequestHead, RequestReader
from fastgw._core.router cimport Router
from fastgw._core.wire cimport (
    A_ALIAS, A_CONN_SPECIFIC, A_CONNECTION, A_CONTENT_LENGTH, A_CREDENTIALS, A_FORWARD, A_FORWARDED_FOR,
    A_HOST, A_REQUEST_ID, A_TE, A_TRACEPARENT, A_TRACESTATE, A_TRANSFER_ENCODING, A_UNDERSCORE, CHARS,
    C_HOST, C_NAME, C_PATH, C_REQUEST_ID, HeaderTable, R_CONNECTION, R_CONTENT_LENGTH, R_HOP, R_KEEP,
    R_TRANSFER_ENCODING, bad_path, ieq, only, response_kind, traceparent_ok,
)
from fastgw._core.wire import CONNECTION_SPECIFIC
from fastgw.observe.metrics import HEADER_DROPS, H_HDROP


# Reasons to stop reading from the client (a bit each; reading resumes when none is left).
DEF P_UPSTREAM = 1     # the upstream's write buffer is full
DEF P_PENDING = 2      # request body is waiting for an upstream connection
DEF P_PIPELINE = 4     # pipelined requests are queued
DEF P_TERM = 8         # the connection is finishing (no more input wanted)

DEF PENDING_LIMIT = 262144
# SO_LINGER on, 0 s: close() resets the connection and discards what the kernel still holds for it.
LINGER_RESET = struct.pack("ii", 1, 0)
DEF CLIENT_WRITE_HIGH = 262144


# Metrics region of one worker, in 64-bit words (mirrored by fastgw/metrics.py, which reads it):
# M_HEADER words of per-worker values (most written by fastgw/worker.py; the counters M_OVERRUNS and
# M_CONN_FULL by the Worker here), then M_ROUTE words per route slot:
# requests by method (8) x status class (5), the duration histogram (M_NBOUNDS bounds + overflow, not
# cumulative), the duration sum in microseconds, and upstream errors (502, 503, 504).
DEF M_HEADER = 16
DEF M_OVERRUNS = 5      # upstream connections closed for bytes beyond the end of a response
DEF M_CONN_FULL = 9     # times this worker reached max_connections and paused accepting
DEF M_ROUTE = 64
DEF M_HIST = 40
DEF M_NBOUNDS = 13
DEF M_SUM_US = 54
DEF M_UPERR = 55

# fastgw_headers_dropped_total: the words of each reason in the region's header (fastgw.metrics).
cdef Py_ssize_t HDROP_UNDERSCORE = H_HDROP + HEADER_DROPS.index("underscore")
cdef Py_ssize_t HDROP_ALIAS = H_HDROP + HEADER_DROPS.index("managed_alias")

cdef long long HIST_NS[13]
HIST_NS[:] = [1000000, 2500000, 5000000, 10000000, 25000000, 50000000, 100000000, 250000000,
              500000000, 1000000000, 2500000000, 5000000000, 10000000000]


cdef inline long long mono_ns() noexcept:
    """CLOCK_MONOTONIC in ns (a vDSO call on Linux: no system call)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int method_index(bytes method):
    """GET HEAD POST PUT DELETE PATCH OPTIONS, else 7 ("other"): a bounded metrics label."""
    cdef Py_ssize_t n
    cdef const char* s
    if method is None:
        return 7
    n = len(method)
    s = method
    if n == 3:
        return 0 if s[0] == b'G' and s[1] == b'E' and s[2] == b'T' else (
            3 if s[0] == b'P' and s[1] == b'U' and s[2] == b'T' else 7)
    if n == 4:
        return 1 if method == b"HEAD" else (2 if method == b"POST" else 7)
    if n == 6:
        return 4 if method == b"DELETE" else 7
    if n == 5:
        return 5 if method == b"PATCH" else 7
    if n == 7:
        return 6 if method == b"OPTIONS" else 7
    return 7

cdef class Target
cdef class UpstreamConn
cdef class Exchange
cdef class ClientConn
cdef class Worker
cdef class H2Conn
cdef class H2Stream
cdef class GrpcCall


# ---------------------------------------------------------------------------------------------------
# Compiled configuration (built by fastgw.compile, read-only on the request path)

cdef class Problem:
    """A problem+json (RFC 9457) response whose constant parts were serialised at config load."""
    cdef public int status
    cdef public bytes head        # status line + Content-Type
    cdef public bytes body_a      # '{"type":..,"title":..,"status":N,"detail":"'
    cdef public bytes detail      # default detail, JSON-escaped
    cdef public bytes body_b      # '","instance":"'
    cdef public bytes body_c      # '","request_id":"'
    cdef public bytes body_d      # '"' (then the extension members, if any, and '}')
    cdef public bytes extra       # extra constant headers (e.g. Allow is per request; this is for Retry-After)

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
    cdef public str name
    cdef public UpstreamGroup group
    cdef public long long max_body
    cdef public Py_ssize_t strip          # leading path bytes removed before forwarding (strip_prefix)
    cdef public bytes req_add             # b"Name: value\r\n..." added to the upstream request
    cdef object _req_remove               # frozenset of lowercase names, or None (set as req_remove)
    cdef uint64_t req_remove_lengths      # name_lengths(_req_remove)
    cdef public bytes resp_add
    cdef public object resp_remove
    cdef public int mslot                 # metrics slot (fastgw.metrics); 0 = no route
    cdef public object gate               # None, or the route's on_request phase (its policies' chain): see
                                          #   Exchange "policy interface"
    # The other phases: tuples of the route's policies' methods, None when no policy implements one
    # (fastgw/policies/chain.py install_phases). With on_response, the route's response_headers.add lines
    # are in phase_resp_add (the policies see them) and resp_add is empty.
    cdef public tuple on_upstream_request
    cdef public tuple on_response
    cdef public tuple on_log
    cdef public bytes phase_resp_add
    cdef public bint grpc                 # protocol = "grpc": HTTP/2 upstream streams (grpc.pxi)

    @property
    def req_remove(self):
        return self._req_remove

    @req_remove.setter
    def req_remove(self, value):
        self._req_remove = value
        self.req_remove_lengths = name_lengths(value)


cdef class Runtime:
    """Everything the request path reads, compiled once per config (fastgw.compile.compile_config)."""
    cdef public object router
    cdef public dict problems
    cdef public HeaderTable headers       # the request readers' wire table (fastgw/_core/wire.pyx)
    cdef public long long max_body
    cdef public double header_timeout
    cdef public double idle_timeout
    cdef public double body_timeout
    cdef public double min_body_rate      # bytes/s a request body must keep up (0: off); see body_slow
    cdef public double send_timeout       # see ClientConn.check
    cdef public int max_requests
    cdef public int max_pipelined
    cdef public Py_ssize_t max_line
    cdef public Py_ssize_t max_hbytes
    cdef public Py_ssize_t max_headers
    cdef public str version
    cdef public object h2                 # H2Limits ([server.http2]), or None for the defaults
    # The phases of answers made before a route is chosen (400, 404, 405, 408, 431...): None, or tuples
    # of policy methods, as RouteRT's.
    cdef public tuple unrouted_response
    cdef public tuple unrouted_log


# ---------------------------------------------------------------------------------------------------
# Upstreams

cdef class UpstreamGroup:
    cdef public str name
    cdef public list targets
    cdef public object ssl                 # ssl.SSLContext for TLS upstreams, else None
    cdef public str server_name            # SNI / verified name override (None: the target's host)
    cdef public Py_ssize_t rr
    cdef public double connect_timeout
    cdef public double timeout
    cdef public double idle_timeout

    cdef Target pick(self):
        cdef Py_ssize_t n = len(self.targets)
        cdef Target t
        if n == 1:
            return <Target>self.targets[0]
        self.rr += 1
        t = <Target>self.targets[self.rr % n]
        return t


cdef class Target:
    cdef public str host
    cdef public int port
    cdef public int keepalive
    cdef public list idle
    cdef public UpstreamGroup group
    cdef public bytes hostport
    cdef public object h2pool              # fastgw.grpc_upstream.Pool when a grpc route uses this target

    def __init__(self, str host, int port, int keepalive, UpstreamGroup group):
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.idle = []
        self.group = group
        self.hostport = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()

    cdef UpstreamConn take(self, double now):
        cdef UpstreamConn c
        while self.idle:
            c = <UpstreamConn>self.idle.pop()
            if c.closed or now - c.idle_since > self.group.idle_timeout:
                c.close()
                continue
            return c
        return None

    cdef void give(self, UpstreamConn c, double now):
        if c.closed:
            return
        if len(self.idle) >= self.keepalive:
            c.close()
            return
        c.ex = None
        c.idle_since = now
        c.reused = True
        if c.rpaused:
            c.rpaused = False
            c.transport.resume_reading()
        self.idle.append(c)

    def close_idle(self):
        cdef UpstreamConn c
        for c in self.idle:
            c.close()
        self.idle.clear()


# Upstream response heads. llhttp validates the head (CRLF line ends, no obs-fold, no bare CR, header
# tokens, a single Content-Length, not both CL and TE); fastgw registers no per-header callback and
# instead walks the validated head once in C, when it is complete: one Python call per response instead
# of two per header. The walk classifies each line by name (case-insensitively) and keeps the rest as
# slices of the received bytes.
DEF MAX_RESP_HEAD = 65536     # bytes of one upstream response head; more is a 502
DEF MAX_RESP_LINES = 256      # header lines of one upstream response head; more is a 502

cdef class UpstreamConn:
    cdef object transport
    cdef object parser
    cdef object feed                      # parser.feed_data, bound once (no method lookup per read)
    cdef object status_code               # parser.get_status_code, bound once
    cdef object keep_alive                # parser.should_keep_alive, bound once
    cdef Target target
    cdef Exchange ex
    cdef public bint closed
    cdef bint reused
    cdef bint got_bytes
    cdef bint rpaused
    cdef double idle_since
    # the response being parsed
    cdef list rpieces          # kept header lines of the response, as slices of the received bytes
    cdef bytes hbuf            # the response head received so far (until it is complete)
    cdef bint r_head_done
    cdef bint r_chunked
    cdef bint r_has_cl
    cdef bytes r_cl
    cdef bint r_bylen          # the body is delimited by Content-Length
    cdef long long r_extra     # bytes received after the head, less the body bytes llhttp delivered
    cdef bint r_done           # the response ended inside the current read; ended after the read
    cdef bint r_keep           # ... and llhttp says the connection may be kept
    cdef Worker w              # set when connected (metrics)

    def __init__(self, Target target):
        self.target = target
        self.parser = HttpResponseParser(self)
        self.feed = self.parser.feed_data
        self.status_code = self.parser.get_status_code
        self.keep_alive = self.parser.should_keep_alive

    cdef void close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    cdef void abort(self):
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # asyncio protocol
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        cdef Exchange ex = self.ex
        cdef ClientConn cl
        cdef bint overrun = False
        if ex is None:
            # Bytes on an idle connection: beyond the end of the last response; never reuse it.
            if self.w is not None:
                self.w.count(M_OVERRUNS)
            self.abort()
            return
        self.got_bytes = True
        cl = ex.client
        ex.up_last = cl.w.clock.now
        cl.batching = True
        if self.r_head_done:
            self.r_extra += len(data)
        else:
            self.hbuf = data if self.hbuf is None else self.hbuf + data
        try:
            self.feed(data)
            if not self.r_head_done and self.hbuf is not None and len(self.hbuf) > MAX_RESP_HEAD:
                raise HttpParserError("response head too large")
        except HttpParserError as exc:
            if self.r_done:
                overrun = True                # llhttp refused what followed the end of the response
            elif self.ex is ex:
                self.abort()
                ex.upstream_failed(502, "bad-gateway", str(exc).encode(), _failures.INVALID_RESPONSE)
        finally:
            if self.r_done:
                self.end_response(data, overrun)
            cl.batching = False
            cl.flush()

    cdef void end_response(self, bytes data, bint overrun):
        """The response ended inside `data`. Bytes after its end belong to no response: the connection
        is closed instead of pooled (the next request on it would read them as its answer) and counted
        [nginx: "upstream sent more data than specified in Content-Length header", connection not kept].
        A body delimited by Content-Length is every byte after the head up to its end, so what llhttp did
        not deliver as body was more (r_extra); any other body (chunked, or none) ends with CRLF CRLF, so a
        read that completed one and does not end with those bytes carried more. (What llhttp refuses
        raises, and a second head raises in on_headers_complete.)"""
        cdef Py_ssize_t n
        cdef const char* d
        cdef Exchange ex = self.ex
        self.r_done = False
        if overrun:
            pass
        elif self.r_bylen:
            overrun = self.r_extra > 0
        else:
            n = PyBytes_GET_SIZE(data)
            d = PyBytes_AS_STRING(data)
            if n >= 4:
                overrun = not (d[n - 4] == 13 and d[n - 3] == 10 and d[n - 2] == 13 and d[n - 1] == 10)
            else:
                overrun = not b"\r\n\r\n".endswith(data)
        if overrun:
            self.w.count(M_OVERRUNS)
        if ex is not None:
            ex.resp_end(self.r_keep and not overrun)

    def eof_received(self):
        cdef Exchange ex = self.ex
        self.closed = True
        if ex is not None:
            if self.r_head_done and not self.r_chunked and not self.r_has_cl:
                ex.client.batching = True
                ex.resp_end(False)          # close-delimited response: EOF is its end
                ex.client.batching = False
                ex.client.flush()
            else:
                ex.upstream_failed(502, "bad-gateway", None, _failures.CLOSED)
        return False

    def connection_lost(self, exc):
        cdef Exchange ex = self.ex
        self.closed = True
        self.transport = None
        if ex is not None:
            ex.upstream_failed(502, "bad-gateway", None, _failures.lost_error(exc))

    def pause_writing(self):
        if self.ex is not None:
            # The upstream is not taking the request: the upstream timeout runs from here (check).
            self.ex.up_last = self.ex.client.w.clock.now
            self.ex.client.pause_reading(P_UPSTREAM)

    def resume_writing(self):
        if self.ex is not None:
            self.ex.client.resume_reading(P_UPSTREAM)

    cdef void reset(self):
        """Per-response state (there is no on_message_begin callback: one Python call less)."""
        self.rpieces = None
        self.hbuf = None
        self.r_head_done = False
        self.r_chunked = False
        self.r_has_cl = False
        self.r_cl = None
        self.r_done = False

    cdef int scan_head(self, bytes buf, Py_ssize_t end, object remove) except -1:
        """Walk the validated head buf[:end] (status line and header lines, each ending in CRLF):
        note the framing headers, drop hop-by-hop ones and those in `remove` (lowercase names), and
        keep the rest in self.rpieces as slices of buf. Returns 0, or 1 for too many lines."""
        cdef const char* s = buf
        cdef Py_ssize_t ls[MAX_RESP_LINES]
        cdef Py_ssize_t le[MAX_RESP_LINES]
        cdef unsigned char kind[MAX_RESP_LINES]     # wire.pxd RespKind
        cdef Py_ssize_t pos, eol, colon, vs, ve, n = 0, k, run
        cdef const char* q
        cdef object drop = None
        cdef list pieces = []
        pos = <const char*>memchr(s, b'\n', end) - s + 1        # skip the status line
        while pos < end:
            if n == MAX_RESP_LINES:
                return 1
            q = <const char*>memchr(s + pos, b'\n', end - pos)
            eol = q - s + 1
            colon = <const char*>memchr(s + pos, b':', eol - pos) - s
            ls[n] = pos
            le[n] = eol
            kind[n] = response_kind(s + pos, colon - pos)
            if kind[n] != R_KEEP:
                vs = colon + 1
                ve = eol - 2
                while vs < ve and (s[vs] == b' ' or s[vs] == b'\t'):
                    vs += 1
                while ve > vs and (s[ve - 1] == b' ' or s[ve - 1] == b'\t'):
                    ve -= 1
                if kind[n] == R_CONTENT_LENGTH:
                    self.r_has_cl = True
                    self.r_cl = buf[vs:ve]
                elif kind[n] == R_TRANSFER_ENCODING:
                    self.r_chunked = buf[vs:ve].rstrip(b" \t,").lower().endswith(b"chunked")
                elif kind[n] == R_CONNECTION and not (ieq(s + vs, ve - vs, b"keep-alive", 10)
                                                or ieq(s + vs, ve - vs, b"close", 5)):
                    for tok in buf[vs:ve].lower().split(b","):
                        tok = tok.strip()
                        if tok and tok != b"close" and tok != b"keep-alive":
                            if drop is None:
                                drop = set()
                            drop.add(tok)
            n += 1
            pos = eol
        if remove is not None or drop is not None:
            for k in range(n):
                if kind[k] == R_KEEP:
                    colon = <const char*>memchr(s + ls[k], b':', le[k] - ls[k]) - s
                    name = buf[ls[k]:colon].lower()
                    if (drop is not None and name in drop) or (remove is not None and name in remove):
                        kind[k] = R_HOP
        # Consecutive kept lines become one slice.
        k = 0
        while k < n:
            if kind[k] != R_KEEP:
                k += 1
                continue
            run = k
            while k < n and kind[k] == R_KEEP:
                k += 1
            pieces.append(buf[ls[run]:le[k - 1]])
        self.rpieces = pieces
        return 0

    # httptools callbacks (no on_header: see scan_head)
    def on_headers_complete(self):
        cdef int status = self.status_code()
        cdef Exchange ex = self.ex
        cdef bytes buf = self.hbuf
        cdef Py_ssize_t end = _head_end(buf, len(buf)) + 2   # llhttp accepted the head: it is there
        if ex is None:
            raise HttpParserError("response on an idle connection")
        if status < 200:
            if status == 101:
                raise HttpParserError("unexpected 101 Switching Protocols")
            self.hbuf = buf[end + 2:]             # interim responses are not relayed
            return
        if self.r_done:
            raise HttpParserError("a second response to one request")
        if self.scan_head(buf, end, ex.route.resp_remove):
            raise HttpParserError("too many response header lines")
        self.hbuf = None
        self.r_head_done = True
        self.r_bylen = self.r_has_cl and not self.r_chunked and status != 204 and status != 304
        self.r_extra = len(buf) - (end + 2)           # received with the head, after it
        ex.resp_head(self, status)

    def on_body(self, bytes body):
        self.r_extra -= len(body)
        if self.ex is not None:
            self.ex.resp_body(body)

    def on_message_complete(self):
        if self.ex is not None and self.r_head_done:
            self.r_done = True                        # ended after the read: see end_response
            self.r_keep = self.keep_alive()


def _report_policy_error(where, exc):
    import sys
    import traceback
    sys.stderr.write(f"fastgw: policy error in {where}: {exc!r}\n")
    traceback.print_exception(exc, file=sys.stderr)


async def _await_gate(Exchange ex, aw):
    try:
        res = await aw
    except asyncio.CancelledError:
        return
    except Exception as exc:
        _report_policy_error(ex.route.name, exc)
        res = (500, "internal-error", None, None)
    ex.gate_task = None
    if ex.done or ex.client.closed:
        return
    ex.client.gate_done(ex, res)


async def _connect(Exchange ex, Target target):
    loop = asyncio.get_running_loop()
    try:
        g = target.group
        if g.ssl is None:
            _, conn = await loop.create_connection(lambda: UpstreamConn(target), target.host, target.port)
        else:
            _, conn = await loop.create_connection(lambda: UpstreamConn(target), target.host, target.port,
                                                   ssl=g.ssl, server_hostname=g.server_name or target.host)
    except asyncio.CancelledError:
        ex.connect_failed(504, "upstream-timeout", None, _failures.CONNECT_TIMEOUT)
        return
    except OSError as exc:                           # (ssl.SSLError is an OSError)
        kind, reason = _failures.connect_error(exc)
        ex.connect_failed(502, "bad-gateway", reason.encode(), kind)
        return
    ex.connected(<UpstreamConn>conn)


# ---------------------------------------------------------------------------------------------------
# One request


cdef bytes IDEMPOTENT = b" GET HEAD OPTIONS TRACE PUT DELETE "


cdef class Exchange:
    cdef ClientConn client
    cdef Runtime rt
    cdef RequestHead head
    cdef RouteRT route
    cdef bytes rid
    cdef bytes up_head
    cdef list pending
    cdef Py_ssize_t pending_bytes
    cdef list out
    cdef UpstreamConn up
    cdef Target target
    cdef object connect_task
    cdef double connect_deadline
    cdef double up_last
    cdef long long body_bytes
    cdef long long body_seen              # body_bytes at the last minimum-rate check (ClientConn.body_slow)
    cdef double body_allow                # seconds the body may still take at the minimum rate
    cdef double body_tick                 # when body_allow was last updated (0: not yet)
    cdef bint body_done
    cdef bint has_body
    cdef bint sent
    cdef bint resp_started
    cdef bint resp_chunked
    cdef bint resp_nobody
    cdef bint done
    cdef bint retried
    cdef bint close_after
    cdef int err_status
    cdef str err_slug
    cdef bytes err_detail
    cdef bytes err_extra
    cdef object params                    # the route's {param} captures (dict) or None
    cdef bytes up_extra                   # header lines added by policies to the upstream request
    cdef bytes resp_extra                 # header lines added by policies to the response (any status)
    cdef list after                       # callables run once when the exchange completes
    cdef object gate_task
    cdef public object identity           # set by an auth policy (the verified consumer), read by later ones
    cdef public object ctx                # per-request policy state: None unless a policy sets it
    cdef list resp_view                   # while on_response runs: the response's header blocks (bytes), or
                                          #   once a policy read or edited them (`viewed`), its (name, value) pairs
    cdef bint viewed
    cdef bint phased                      # on_response ran: an answer made from here on skips it
    cdef long long t0                    # monotonic ns at the request head (metrics)
    cdef int status                      # response status sent to the client (metrics)
    cdef int grpc_code                   # grpc-status + 1 of a call on a grpc route (0: none); access log
    cdef str up_error                    # why the upstream failed (fastgw/failures.py), or None

    # -- upstream request ------------------------------------------------------------------------------
    cdef void to_upstream(self, bytes data):
        if self.up is None or not self.sent:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > PENDING_LIMIT:
                self.client.pause_reading(P_PENDING)
        elif self.client.batching:
            self.out.append(data)
        else:
            self.up.transport.write(data)

    cdef void flush_upstream(self):
        """Write the request bytes batched during one client read (see to_upstream) in one go."""
        if self.out and self.up is not None and self.up.transport is not None:
            write_parts(self.up.transport, self.out)
            self.out = []

    cdef void acquire(self, bint fresh):
        cdef ClientConn cl = self.client
        cdef UpstreamConn c = None
        cdef Target t = self.route.group.pick()
        self.target = t
        if not fresh:
            c = t.take(cl.w.clock.now)
        if c is not None:
            self.attach(c)
            return
        self.connect_deadline = cl.w.clock.now + self.route.group.connect_timeout
        self.connect_task = cl.loop.create_task(_connect(self, t))

    cdef void connected(self, UpstreamConn c):
        self.connect_task = None
        c.w = self.client.w
        if self.done or self.client.closed:
            self.target.give(c, self.client.w.clock.now)
            return
        self.attach(c)
        self.client.flush()

    cdef void connect_failed(self, int status, str slug, bytes detail, str kind=None):
        """Refused or unreachable: 502; no connection within connect_timeout: 504. (503 is kept for
        "no usable target", e.g. every target's circuit open.)"""
        self.connect_task = None
        if not self.done:
            self.client.w.upstream_error(self, status)
            self.fail(status, slug, self.name_failure(status, kind, detail))

    cdef bytes name_failure(self, int status, str kind, bytes detail):
        """Record why the upstream failed (`kind`, fastgw/failures.py; `detail` is its reason, if any)
        for the access log and the problem body, and return the client's detail sentence naming the
        upstream. A reporter that names no kind keeps its own sentence; the kind follows the status."""
        cdef str name = self.route.group.name
        if kind is None:
            self.up_error = _failures.BY_STATUS.get(status, "failed")
            return (detail or b"upstream failed") + b' (upstream "%s")' % name.encode()
        self.up_error, sentence = _failures.describe(name, kind, detail.decode("latin-1") if detail else "")
        return sentence

    cdef bytes failure_members(self):
        """The problem body's members naming an upstream failure (never the target's address)."""
        if self.up_error is None:
            return b""
        return b',"upstream":"' + json_bytes(self.route.group.name.encode()) + b'","upstream_error":"' \
            + json_bytes(self.up_error.encode("ascii", "replace")) + b'"'

    cdef void attach(self, UpstreamConn c):
        self.up = c
        c.ex = self
        c.got_bytes = False
        c.reset()
        self.up_last = self.client.w.clock.now
        self.sent = True
        if self.client.wpaused and not c.rpaused:
            c.rpaused = True
            c.transport.pause_reading()
        cdef list parts = self.pending
        if parts:
            parts.insert(0, self.up_head)
            self.pending = []
            self.pending_bytes = 0
            write_parts(c.transport, parts)
            self.client.resume_reading(P_PENDING)
        else:
            c.transport.write(self.up_head)

    cdef void release_upstream(self, bint reusable):
        cdef UpstreamConn c = self.up
        if c is None:
            return
        self.up = None
        c.ex = None
        if reusable and self.body_done and not c.closed:
            self.target.give(c, self.client.w.clock.now)
        else:
            c.close()

    cdef void upstream_failed(self, int status, str slug, bytes detail, str kind=None):
        cdef UpstreamConn c = self.up
        if self.done:
            return
        if c is not None:
            c.ex = None
            c.abort()
            self.up = None
        if self.resp_started:
            self.done = True
            self.client.w.upstream_error(self, status)
            self.name_failure(status, kind, detail)
            self.client.w.observe(self)      # the access log records the cut response and why
            self.client.abort()              # never a silently truncated response
            return
        if (c is not None and c.reused and not c.got_bytes and not self.retried and not self.has_body
                and status == 502 and IDEMPOTENT.find(b" " + self.head.method + b" ") >= 0):
            # A kept-alive connection the upstream closed just as we reused it: retry once, fresh.
            self.retried = True
            self.sent = False
            self.acquire(True)
            return
        self.client.w.upstream_error(self, status)
        self.fail(status, slug, self.name_failure(status, kind, detail))

    # -- response --------------------------------------------------------------------------------------
    cdef void resp_head(self, UpstreamConn c, int status):
        cdef bint is_head = self.head.method == b"HEAD"
        if self.route.on_response is not None:          # phase: on_response
            if self.upstream_response(c, status):
                return
        self.resp_started = True
        self.status = status
        self.resp_nobody = is_head or status == 204 or status == 304
        self.client.write_head(self, c, status)
        if is_head and (c.r_chunked or (c.r_has_cl and c.r_cl != b"0")):
            # llhttp cannot be told that a HEAD response has no body: finish here and do not reuse
            # the connection (it would wait for body bytes that never come).
            self.release_upstream(False)
            self.complete()

    cdef void resp_body(self, bytes data):
        if self.resp_nobody:
            return
        self.client.write_body(self, data)

    cdef void resp_end(self, bint reusable):
        if self.done:
            return
        self.client.write_end(self)
        self.release_upstream(reusable)
        self.complete()

    cdef void complete(self):
        if not self.done:
            self.done = True
            if self.after is not None:
                self.run_after()
            self.client.w.observe(self)
            self.client.finished(self)

    cdef void drop(self):
        """End the exchange where it stands (its client is gone): pending work is cancelled and the
        upstream connection, mid-request, is closed."""
        self.done = True
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.gate_task is not None:
            self.gate_task.cancel()
            self.gate_task = None
        if self.after is not None:
            self.run_after()
        if self.up is not None:
            self.release_upstream(False)

    cdef void run_after(self):
        fns = self.after
        self.after = None
        for fn in fns:
            try:
                fn(self)
            except Exception as exc:            # a policy bug must not take the connection down
                _report_policy_error("on_complete", exc)

    # -- policy interface ------------------------------------------------------------------------------
    # A route's phases (compiled from its policies at config load; fastgw/policies/contract.py) receive
    # the exchange. Its `gate` (on_request) is called as gate(exchange) once the route is known and before
    # any upstream work. It returns None to let the request through, a rejection tuple (status, slug,
    # detail bytes or None, extra header lines bytes or None), a Respond (the policy answers), or an
    # awaitable resolving to one of those (only policies that must wait for I/O, e.g. Redis, do that).
    # Everything a policy may read or add is below; nothing else of the exchange is public.
    @property
    def method(self):
        return self.head.method

    @property
    def path(self):
        return self.head.path

    @property
    def query(self):
        return self.head.query

    @property
    def host(self):
        return self.head.host

    @property
    def peer(self):
        return self.client.peer

    @property
    def xff(self):
        """The client's X-Forwarded-For (fields joined), or None: believe it only from a trusted proxy."""
        return self.head.xff

    @property
    def peercert(self):
        """The verified TLS client certificate of the connection (ssl getpeercert() form), or None."""
        return self.client.peercert()

    @property
    def request_id(self):
        return self.rid

    @property
    def route_name(self):
        return self.route.name if self.route is not None else None

    @property
    def route_params(self):
        return self.params

    def header(self, bytes lname):
        """The value of the forwarded request header `lname` (lowercase), or None. Headers the gateway
        owns (Host, framing, hop-by-hop, X-Forwarded-*, identity headers) are not visible here."""
        cdef list pieces = self.head.pieces
        cdef Py_ssize_t i
        for i in range(0, len(pieces), 4):
            if len(<bytes>pieces[i]) == len(lname) and (<bytes>pieces[i]).lower() == lname:
                return pieces[i + 2]
        return None

    def add_upstream_header(self, bytes name, bytes value):
        line = name + b": " + value + b"\r\n"
        self.up_extra = line if self.up_extra is None else self.up_extra + line

    def add_response_header(self, bytes name, bytes value):
        if self.resp_view is not None:                  # on_response: checked, then as outside it
            name = _ph.check_name(name)
            value = _ph.check_value(value)
            if self.viewed:
                self.resp_view.append((name, value))
                return
        line = name + b": " + value + b"\r\n"
        self.resp_extra = line if self.resp_extra is None else self.resp_extra + line

    def set_query(self, bytes query):
        """Replace the query forwarded upstream (b"" or b"?..."), e.g. without a credential parameter."""
        if query and query[0] != 63:
            raise ValueError("a query starts with '?'")
        self.head.query = query

    def add_upstream_lines(self, bytes lines):
        """Complete header lines (b"Name: value\\r\\n"...), prebuilt by a policy, for the upstream request."""
        self.up_extra = lines if self.up_extra is None else self.up_extra + lines

    def add_response_lines(self, bytes lines):
        """Complete header lines for the response, whatever its status."""
        if self.resp_view is not None and self.viewed:
            _ph.parse_lines(lines, self.resp_view)
            return
        self.resp_extra = lines if self.resp_extra is None else self.resp_extra + lines

    def on_complete(self, fn):
        """Run fn(exchange) once when the exchange ends, whatever the outcome."""
        if self.after is None:
            self.after = []
        self.after.append(fn)

    # -- policy interface: the phases (fastgw/policies/contract.py) --------------------------------------
    @property
    def response_status(self):
        """The status of the response (on_response: the one being answered; on_log: the one sent, 499 when
        the client went away first)."""
        return self.status

    @property
    def response_headers(self):
        """on_response: the response's (name, value) pairs, in order, as a tuple (None outside the phase);
        edits go through the methods below, which check them. Framing, hop-by-hop fields and X-Request-ID
        are the gateway's, not in it."""
        return tuple(self.edit_view()) if self.resp_view is not None else None

    def response_header(self, bytes lname):
        """on_response: the first value of response header `lname` (lowercase), or None."""
        return _ph.first(self.edit_view(), lname)

    def set_response_header(self, name, value):
        """on_response: `name: value` in place of every `name` field of the response."""
        _ph.replace(self.edit_view(), name, value)

    def remove_response_header(self, name):
        """on_response: drop every `name` field of the response; how many there were."""
        return _ph.drop(self.edit_view(), name)

    cdef list edit_view(self):
        """The response's (name, value) pairs, made from its header blocks and the lines added so far on
        first use: a phase whose policies only add headers never builds them."""
        cdef list view
        if self.resp_view is None:
            raise RuntimeError("response headers are edited in on_response")
        if not self.viewed:
            view = []
            for block in self.resp_view:
                _ph.parse_lines(<bytes>block, view)
            if self.resp_extra is not None:
                _ph.parse_lines(self.resp_extra, view)
                self.resp_extra = None
            self.resp_view = view
            self.viewed = True
        return self.resp_view

    def remove_upstream_header(self, name):
        """Do not send request header `name` (any case) upstream: neither the client's nor one a policy
        added before. (Headers the gateway sets itself cannot be removed: ValueError.)"""
        cdef bytes low = _ph.check_name(name).lower()
        cdef list pieces = self.head.pieces
        cdef list kept = []
        cdef Py_ssize_t i
        for i in range(0, len(pieces), 4):
            if (<bytes>pieces[i]).lower() != low:
                kept.extend(pieces[i:i + 4])
        self.head.pieces = kept
        if self.up_extra is not None:
            kept = [pair for pair in _ph.parse_lines(self.up_extra, []) if (<bytes>pair[0]).lower() != low]
            self.up_extra = _ph.join_pairs(kept) if kept else None

    cdef bint upstream_request_phase(self):
        """phase: on_upstream_request, each policy in order (they return None). False when one failed:
        then the request was answered with a 500 problem and never sent."""
        try:
            for fn in self.route.on_upstream_request:
                if fn(self) is not None:
                    raise TypeError("on_upstream_request returns None")
        except Exception as exc:
            _report_policy_error(self.route.name, exc)
            self.policy_failed()
            return False
        return True

    cdef object response_phase(self, tuple fns, list blocks, int status):
        """phase: on_response, each policy in order, over the response's header `blocks` (header lines,
        bytes) and the lines policies added (resp_extra). A Respond from a policy replaces the response:
        the later policies see it. Returns None, the last replacing Respond (its status is then
        self.status), or False when a policy failed (the caller answers 500); then phase_lines() gives the
        result. Runs once per exchange: an answer made after it skips it."""
        cdef object replaced = None
        self.phased = True
        self.resp_view = blocks
        self.viewed = False
        self.status = status
        try:
            for fn in fns:
                r = fn(self)
                if r is None:
                    continue
                if type(r) is not Respond:
                    raise TypeError(f"on_response returned {type(r).__name__}, not None or a Respond")
                replaced = r
                self.resp_view = list((<Respond>r).headers)
                self.viewed = True
                self.resp_extra = None
                self.status = (<Respond>r).status
        except Exception as exc:
            _report_policy_error(self.route.name if self.route is not None else "on_response", exc)
            self.resp_view = None
            return False
        return replaced

    cdef bytes phase_lines(self):
        """After response_phase: the response's header lines when a policy read or edited them (the lines
        added on the way are in them), or None when they stand as they were (resp_extra still to add)."""
        cdef bytes lines = _ph.join_pairs(self.resp_view) if self.viewed else None
        self.resp_view = None
        return lines

    cdef bint upstream_response(self, UpstreamConn c, int status):
        """phase: on_response over an upstream's response head (its kept lines, then the route's added
        ones). True when the policies replaced it (answered here; the upstream connection is closed)."""
        cdef list blocks = c.rpieces
        if self.route.phase_resp_add:
            blocks = blocks + [self.route.phase_resp_add]
        r = self.response_phase(self.route.on_response, blocks, status)
        if r is False:
            self.settle(0)
            self.policy_failed()
            return True
        lines = self.phase_lines()
        if r is None:
            c.rpieces = [lines] if lines is not None else blocks
            return False
        self.settle(0)
        self.send_answer(self.status, lines, (<Respond>r).body)
        return True

    cdef void answer(self, Respond r):
        """A policy answered itself (a Respond from on_request), before any upstream work: the answer
        passes the on_response phase, then goes to the client."""
        cdef bytes lines = _ph.join_pairs(r.headers)
        self.settle(0)
        fns = self.route.on_response if self.route is not None else self.rt.unrouted_response
        if fns is not None and not self.phased:             # phase: on_response
            rr = self.response_phase(fns, [lines], r.status)
            if rr is False:
                self.policy_failed()
                return
            if rr is not None:
                r = <Respond>rr
            edited = self.phase_lines()
            if edited is not None:
                self.send_answer(self.status, edited, r.body)
                return
        if self.resp_extra is not None:
            lines = lines + self.resp_extra
        self.send_answer(r.status, lines, r.body)

    cdef void send_answer(self, int status, bytes lines, bytes body):
        self.status = status
        self.resp_nobody = (self.head is not None and self.head.method == b"HEAD") or status == 204 \
            or status == 304
        self.client.write_answer(self, status, lines, body)
        self.complete()

    cdef void policy_failed(self):
        """A policy raised in a phase: a 500 problem (without what the policies had added)."""
        self.err_extra = None
        self.resp_extra = None
        self.resp_view = None
        self.fail(500, "internal-error", None)

    cdef void settle(self, int status):
        """Before an answer the gateway makes itself (before any upstream response byte): stop the upstream
        work, and decide whether the connection closes after it (`status`: of a problem, else 0)."""
        cdef ClientConn cl = self.client
        if self.connect_task is not None:
            t = self.connect_task
            self.connect_task = None
            t.cancel()
        if self.up is not None:
            self.release_upstream(False)
        if not self.body_done or status == 400 or status == 408 or status == 413 or status == 431 \
                or status == 414:
            self.close_after = True
        if cl.draining or cl.reader_done() or cl.nreq + 1 >= cl.rt0.max_requests \
                or (self.head is not None and not self.head.keep_alive):   # the client asked to close
            self.close_after = True

    cdef void fail(self, int status, str slug, bytes detail):
        """A response made by fastgw (problem+json), before any upstream response byte. It passes the
        on_response phase (the route's; before routing the runtime's unrouted one), unless that ran."""
        cdef list view
        self.settle(status)
        self.status = status
        extra = self.err_extra
        if self.route is None:
            fns = self.rt.unrouted_response
            if self.rt.unrouted_log is not None and self.after is None:   # phase: on_log (unrouted)
                self.after = list(self.rt.unrouted_log)
        else:
            fns = self.route.on_response
        if fns is not None and not self.phased:             # phase: on_response
            r = self.response_phase(fns, [extra] if extra is not None else [], status)
            if r is False:
                self.policy_failed()
                return
            lines = self.phase_lines()
            if r is not None:
                self.send_answer(self.status, lines, (<Respond>r).body)
                return
            if lines is not None:
                extra = lines
        if self.resp_extra is not None:
            extra = self.resp_extra if extra is None else extra + self.resp_extra
        self.client.write_problem(self, slug, detail, extra)
        self.complete()


cdef uint64_t name_lengths(object names):
    """Bit min(len, 63) set for every name in `names` (None: 0)."""
    cdef uint64_t mask = 0
    cdef Py_ssize_t k
    if names is not None:
        for nm in names:
            k = len(<bytes>nm)
            mask |= (<uint64_t>1) << (k if k < 63 else 63)
    return mask


cdef list filter_headers(list pieces, object drop, object remove, uint64_t remove_lengths):
    """Pieces without the headers named in `drop` or `remove` (folded: lowercase, "_" read as "-", as
    upstreams that fold names read them; fastgw/headers.py): `pieces` itself when none is (the common
    case: nothing allocated). A name is folded and looked up only when its length is the length of a name
    in the sets (`remove_lengths`: name_lengths(remove), computed at config load)."""
    cdef list out = None
    cdef Py_ssize_t i, k, n = len(pieces)
    cdef uint64_t lengths = remove_lengths | name_lengths(drop)
    cdef bint hit
    cdef bytes name
    for i in range(0, n, 4):
        k = len(<bytes>pieces[i])
        hit = False
        if (lengths >> (k if k < 63 else 63)) & 1:
            name = (<bytes>pieces[i]).lower()
            if memchr(<const char*>name, 95, k) != NULL:       # '_'
                name = name.replace(b"_", b"-")
            hit = (drop is not None and name in drop) or (remove is not None and name in remove)
        if hit:
            if out is None:
                out = pieces[:i]
        elif out is not None:
            out += pieces[i:i + 4]
    return pieces if out is None else out


cdef dict STATUS_LINES = {}


def _init_status_lines():
    from http import HTTPStatus
    for s in HTTPStatus:
        STATUS_LINES[s.value] = b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode())


_init_status_lines()


# ---------------------------------------------------------------------------------------------------
# Downstream connection

cdef class ClientConn(RequestReader):
    cdef public object transport
    cdef object loop
    cdef Worker w
    cdef bytes peer                       # the client address: the TCP peer, or a PROXY header's source
    cdef bytes tcp_peer                   # the TCP peer (the access log's `peer`)
    cdef Exchange active
    cdef Exchange rx
    cdef list queue
    cdef int rpause
    cdef bint wpaused
    cdef public bint closed
    cdef public bint batching
    cdef bint eof
    cdef bint discard
    cdef public bint draining
    cdef list wbuf
    cdef double last_rx
    cdef double head_start
    cdef int nreq
    cdef Runtime rt0
    cdef public bint want_proxy           # server.proxy_protocol: a PROXY v1/v2 header comes first
    cdef public bytes proxied_peer        # the client address from a PROXY header read before TLS (worker.py)
    cdef public bytes proto               # b"http" | b"https", for X-Forwarded-Proto
    cdef bytes pre                        # input held until the PROXY header is complete
    cdef H2Conn h2                        # set when the connection speaks HTTP/2 (h2.pxi)
    cdef bint sniffed                     # the first bytes were checked for the h2c preface
    cdef bytes sbuf                       # a partial preface-looking start, until 24 bytes are in
    cdef bint admitted                    # counted in Worker.nconns (until connection_lost or freed)
    cdef bint parked                      # accepted beyond max_connections: not read until room (Worker)
    cdef double closed_at                 # when close() was called (unsent output is dropped later)
    cdef double wpaused_at                # when the transport's buffer last went over its high-water mark

    def __init__(self, Worker w):
        cdef Runtime rt = w.rt
        RequestReader.__init__(self, rt.max_line, rt.max_hbytes, rt.max_headers, rt.headers)
        self.w = w
        self.loop = w.loop
        self.rt0 = rt
        self.draining = w.draining
        self.queue = []
        self.wbuf = []

    # -- asyncio protocol ------------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        # Up to 256 KiB may wait in the client's write buffer before the upstream is paused (uvloop's
        # default, 64 KiB, paused and resumed the upstream on every 64 KiB response; nginx buffers 128 KiB
        # per request with the benchmark's proxy_buffers).
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.tcp_peer = (peer[0] if peer else "unknown").encode()
        self.peer = self.proxied_peer if self.proxied_peer is not None else self.tcp_peer
        self.proto = b"https" if transport.get_extra_info("sslcontext") is not None else b"http"
        self.last_rx = self.w.clock.now
        self.head_start = self.last_rx
        self.w.conns.add(self)
        if self.parked:
            transport.pause_reading()        # over the cap: read nothing until Worker.make_room
            self.w.parked.append(self)
            return
        self.begin()

    cdef void begin(self):
        ssl = self.transport.get_extra_info("ssl_object")
        if ssl is not None and ssl.selected_alpn_protocol() == "h2":
            self.start_h2(b"")

    cdef void unpark(self):
        """Room under max_connections: serve this connection from now on (its timers start now)."""
        self.parked = False
        if self.closed:
            return
        self.last_rx = self.head_start = self.w.clock.now
        self.transport.resume_reading()
        self.begin()

    def data_received(self, bytes data):
        if self.closed:
            return
        if self.want_proxy:
            data = self.proxy_preface(data)
            if not data:
                return
        if self.h2 is not None:
            self.h2.feed(data)
            return
        if not self.sniffed:
            data = self.sniff(data)
            if data is None:
                return
        self.last_rx = self.w.clock.now
        if self.active is None and self._state == 0:
            self.head_start = self.last_rx
        self.batching = True
        try:
            self.feed(data)
        finally:
            self.batching = False
        self.flush()

    cdef bytes proxy_preface(self, bytes data):
        """Hold input until the PROXY header is parsed (fastgw.proxyproto), take the client address
        from it, return the bytes after it (b"" while incomplete; a bad header aborts the connection)."""
        buf = data if self.pre is None else self.pre + data
        try:
            res = proxyproto.parse(buf)
        except proxyproto.ProxyProtocolError:
            self.abort()
            return b""
        if res is None:
            self.pre = buf
            return b""
        self.want_proxy = False
        self.pre = None
        if res.source is not None:
            self.peer = res.source.encode()
        return buf[res.consumed:]

    def eof_received(self):
        cdef Exchange ex = self.rx
        self.eof = True
        if self.h2 is not None:
            self.h2.lost()
            return False
        if ex is not None and not ex.body_done and not ex.done:
            # The client closed before its request body ended: the request can never complete. Abort it
            # upstream now [nginx, HAProxy abort on client close] rather than at the upstream timeout.
            self.rx = None
            self.discard = True
            self._state = 3
            if ex is self.active:
                self.abort()                  # nothing of the response can be owed (connection_lost)
                return False
            self.queue.remove(ex)             # a queued request: the ones before it are still answered
            self.client_gone(ex)
        if self.active is None and not self.queue:
            self.close()
            return False
        return True                         # keep writing the answers still owed

    def connection_lost(self, exc):
        cdef Exchange ex
        self.closed = True
        self.w.conns.discard(self)
        if self.admitted:
            self.admitted = False
            if self.parked:
                self.w.parked.remove(self)
            self.w.release()
        if self.h2 is not None:
            self.h2.lost()
        if self.active is not None and not self.active.done:
            self.client_gone(self.active)
        for ex in ([self.active] if self.active is not None else []) + self.queue:
            ex.drop()
        self.active = None
        self.queue = []

    def pause_writing(self):
        cdef UpstreamConn up
        self.wpaused = True
        self.wpaused_at = self.w.clock.now
        if self.h2 is not None:
            self.h2.pause_writing()
        if self.active is not None and self.active.up is not None:
            up = self.active.up
            if up.transport is not None and not up.rpaused:
                up.rpaused = True
                up.transport.pause_reading()

    def resume_writing(self):
        cdef UpstreamConn up
        self.wpaused = False
        if self.h2 is not None:
            self.h2.resume_writing()
        if self.active is not None and self.active.up is not None:
            up = self.active.up
            if up.transport is not None and up.rpaused:
                up.rpaused = False
                up.transport.resume_reading()
                self.active.up_last = self.w.clock.now    # the upstream's time runs again from here

    # -- HTTP/2 selection -----------------------------------------------------------------------------
    cdef bytes sniff(self, bytes data):
        """The connection's first bytes: an h2c prior-knowledge preface hands the connection to the
        HTTP/2 engine (None returned); anything else is HTTP/1.1 (the bytes returned, to feed)."""
        cdef Py_ssize_t n
        if self.sbuf is not None:
            data = self.sbuf + data
            self.sbuf = None
        n = len(data)
        if n == 0:
            return data
        if n > 24:
            n = 24
        if (<const char*>data)[0] != b'P' or data[:n] != H2_PREFACE[:n]:
            self.sniffed = True
            return data
        if n < 24:
            self.sbuf = data
            return None
        self.start_h2(data)
        return None

    cpdef start_h2(self, bytes data):
        """Speak HTTP/2 on this connection from now on (h2c preface seen, or ALPN chose "h2"); `data`
        is what was received so far (the client preface included)."""
        self.sniffed = True
        self.h2 = H2Conn(self)
        if data:
            self.h2.feed(data)

    # -- output ----------------------------------------------------------------------------------------
    cdef void send(self, bytes data):
        if self.batching:
            self.wbuf.append(data)
        elif not self.closed:
            self.transport.write(data)

    cdef void flush(self):
        cdef Exchange ex = self.active
        if self.wbuf and not self.closed:
            write_parts(self.transport, self.wbuf)
            self.wbuf = []
        if ex is not None:
            ex.flush_upstream()

    cdef void close(self):
        if not self.closed:
            self.closed = True
            self.closed_at = self.w.clock.now
            self.flush_now()
            self.transport.close()

    cdef void abort(self):
        if not self.closed:
            self.closed = True
            self.wbuf = []
            self.transport.abort()

    cdef void flush_now(self):
        if self.wbuf:
            write_parts(self.transport, self.wbuf)
            self.wbuf = []

    cdef void pause_reading(self, int why):
        if self.rpause == 0 and not self.closed:
            self.transport.pause_reading()
        self.rpause |= why

    cdef void resume_reading(self, int why):
        if self.rpause & why:
            self.rpause &= ~why
            if self.rpause == 0 and not self.closed:
                self.last_rx = self.w.clock.now   # the client's silence counts from now (check)
                self.transport.resume_reading()

    cdef bint reader_done(self):
        return self._state == 3 or self.upgraded or self.eof or self.discard

    cdef object peercert(self):
        """The verified TLS client certificate of this connection, or None (asked of the TLS transport
        only when a policy wants it: mTLS routes)."""
        t = self.transport
        return t.get_extra_info("peercert") if t is not None else None

    # -- response output (the downstream interface the Exchange writes through) ------------------------
    # ClientConn serialises HTTP/1.1 here; H2Stream (h2.pxi) overrides these four for HTTP/2. The
    # Exchange calls them and nothing protocol-specific: routing, policies and upstream handling are
    # shared by both engines.
    cdef void write_head(self, Exchange ex, UpstreamConn c, int status):
        cdef RouteRT route = ex.route
        cdef RequestHead h = ex.head
        cdef list parts
        line = STATUS_LINES.get(status)
        if line is None:
            line = b"HTTP/1.1 %d Unknown\r\n" % status
        # Straight into the output batch when there is one (flush joins it once with the body).
        parts = self.wbuf if self.batching else []
        parts.append(line)
        if c.rpieces:
            parts.extend(c.rpieces)
        if route.resp_add:
            parts.append(route.resp_add)
        if ex.resp_extra is not None:
            parts.append(ex.resp_extra)
        parts.append(b"X-Request-ID: ")
        parts.append(ex.rid)
        if ex.resp_nobody:
            if c.r_has_cl and status != 204:
                parts.append(b"\r\nContent-Length: ")
                parts.append(c.r_cl)
        elif c.r_has_cl and not c.r_chunked:
            parts.append(b"\r\nContent-Length: ")
            parts.append(c.r_cl)
        elif h.minor == 1:
            ex.resp_chunked = True
            parts.append(b"\r\nTransfer-Encoding: chunked")
        else:
            ex.close_after = True            # HTTP/1.0 client: the end of the body is the close
        if not ex.body_done or not h.keep_alive or self.draining or self.reader_done() \
                or self.nreq + 1 >= self.rt0.max_requests:
            ex.close_after = True
        if ex.close_after:
            parts.append(b"\r\nConnection: close\r\n\r\n")
        elif h.minor == 0:
            parts.append(b"\r\nConnection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n\r\n")
        if not self.batching and not self.closed:
            self.transport.write(concat(parts))

    cdef void write_body(self, Exchange ex, bytes data):
        if ex.resp_chunked:
            self.send(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.send(data)

    cdef void write_end(self, Exchange ex):
        if ex.resp_chunked:
            self.send(b"0\r\n\r\n")

    cdef void write_answer(self, Exchange ex, int status, bytes lines, bytes body):
        """A response a policy made (Respond): its header lines and body, framed here."""
        cdef RequestHead h = ex.head
        line = STATUS_LINES.get(status)
        if line is None:
            line = b"HTTP/1.1 %d Unknown\r\n" % status
        parts = [line, lines, b"X-Request-ID: ", ex.rid, b"\r\n", self.w.clock.date]
        if status != 204 and status != 304:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if ex.close_after:
            parts.append(b"Connection: close\r\n")
        elif h is not None and h.minor == 0:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not ex.resp_nobody:
            parts.append(body)
        self.send(concat(parts))

    cdef void write_problem(self, Exchange ex, str slug, bytes detail, bytes extra):
        self.send(self.render_problem(ex.rt, slug, ex.head, ex.rid, detail, extra, ex.close_after,
                                      ex.failure_members()))

    cdef bytes render_problem(self, Runtime rt, str slug, RequestHead h, bytes rid, bytes detail,
                              bytes extra, bint close, bytes members=b""):
        cdef Problem p = <Problem>rt.problems[slug]
        return p.render(h.path if h is not None and h.path is not None else b"", rid, self.w.clock.date,
                        json_bytes(detail) if detail is not None else None, extra or b"", close, members)

    # -- reader events ---------------------------------------------------------------------------------
    cdef Exchange new_exchange(self, RequestHead head):
        cdef Exchange ex = Exchange.__new__(Exchange)
        ex.client = self
        ex.head = head
        ex.rt = self.w.rt
        ex.t0 = mono_ns()
        ex.pending = []
        ex.out = []
        if head is not None and head.request_id is not None:
            ex.rid = head.request_id
        else:
            ex.rid = self.w.next_id()
        if head is not None and head.dropped is not None:
            self.w.headers_dropped(ex)
        return ex

    cdef void enqueue(self, Exchange ex):
        if self.active is None:
            self.start(ex)
        else:
            self.queue.append(ex)
            if len(self.queue) >= self.rt0.max_pipelined:
                # Bounded: answer what is queued, then close; later requests are not read.
                ex.close_after = True
                self.discard = True
                self.pause_reading(P_TERM)
            else:
                self.pause_reading(P_PIPELINE)

    cpdef request_head(self, RequestHead head):
        cdef Exchange ex
        if self.discard:
            self.rx = None
            return
        ex = self.new_exchange(head)
        ex.has_body = head.chunked or head.content_length > 0
        ex.body_done = not ex.has_body
        self.rx = ex
        self.enqueue(ex)

    cpdef request_body(self, bytes data):
        cdef Exchange ex = self.rx
        if ex is None or ex.done:
            return
        ex.body_bytes += len(data)
        if ex.route is not None and ex.body_bytes > ex.route.max_body:
            self.body_too_large(ex)
            return
        if ex.head.chunked:
            ex.to_upstream(b"%x\r\n" % len(data))
            ex.to_upstream(data)
            ex.to_upstream(b"\r\n")
        else:
            ex.to_upstream(data)

    cdef void body_too_large(self, Exchange ex):
        self.discard = True
        self._state = 3                         # stop reading requests on this connection
        ex.body_done = False
        if ex.resp_started:
            ex.done = True
            self.abort()
        else:
            ex.err_extra = None
            ex.fail(413, "payload-too-large", b"request body exceeds the route's limit")

    cpdef request_end(self):
        cdef Exchange ex = self.rx
        self.rx = None
        if ex is None:
            return
        ex.body_done = True
        if ex.done:
            return
        if ex.has_body:
            ex.up_last = self.w.clock.now      # the whole request is sent: the response timeout starts
        if ex.head.chunked:
            ex.to_upstream(b"0\r\n\r\n")

    cpdef request_error(self, int status, str slug, str detail):
        cdef Exchange ex = self.rx
        self.rx = None
        self.discard = True
        if ex is not None and not ex.done:
            # The request in progress turned bad (body framing, trailers, size): it must not complete
            # upstream. Answer if nothing was answered yet, else drop the connection.
            ex.body_done = False
            ex.out = []
            if ex.resp_started:
                ex.done = True
                self.abort()
            elif ex is self.active or ex in self.queue:
                if ex is not self.active:
                    self.queue = self.queue[:self.queue.index(ex) + 1]
                ex.close_after = True
                if ex is self.active:
                    ex.fail(status, slug, detail.encode())
                else:
                    ex.err_status = status
                    ex.err_slug = slug
                    ex.err_detail = detail.encode()
            return
        ex = self.new_exchange(None)
        ex.err_status = status
        ex.err_slug = slug
        ex.err_detail = detail.encode()
        ex.close_after = True
        self.queue = self.queue[:]
        self.enqueue(ex)

    # -- running exchanges -----------------------------------------------------------------------------
    cdef void start(self, Exchange ex):
        cdef Runtime rt = ex.rt
        cdef RequestHead h = ex.head
        cdef RouteRT route
        self.active = ex
        if ex.err_status:
            ex.fail(ex.err_status, ex.err_slug, ex.err_detail)
            return
        m = (<Router>rt.router).match(h.method, h.host, h.path)      # a C call (router.pxd)
        code = <int>m[0]
        if code != 0:
            if code == 404:
                ex.fail(404, "not-found", None)
            else:
                ex.err_extra = b"Allow: " + <bytes>m[1] + b"\r\n"
                ex.fail(405, "method-not-allowed", None)
            return
        route = <RouteRT>m[1]
        ex.route = route
        if route.on_log is not None:            # phase: on_log (run with the on_complete callbacks)
            ex.after = list(route.on_log)
        if route.grpc:
            if not isinstance(self, H2Stream):
                ex.fail(505, "http2-required", None)      # gRPC needs HTTP/2 end to end (grpc.pxi)
                return
            h.chunked = False                 # the request body goes to an HTTP/2 stream as it is
        if h.content_length > route.max_body or ex.body_bytes > route.max_body:
            self.body_too_large(ex)
            return
        if route.gate is not None:
            ex.params = m[2]
            try:
                res = route.gate(ex)
            except Exception as exc:
                _report_policy_error(route.name, exc)
                res = (500, "internal-error", None, None)
            if res is not None:
                if type(res) is tuple:
                    self.reject(ex, res)
                elif type(res) is Respond:        # phase: on_request answered
                    ex.answer(<Respond>res)
                else:
                    ex.gate_task = self.loop.create_task(_await_gate(ex, res))
                return
        self.proceed(ex)

    cdef void proceed(self, Exchange ex):
        """The request passed its route's policies: build the upstream head and go."""
        cdef RequestHead h = ex.head
        if ex.route.on_upstream_request is not None and not ex.upstream_request_phase():
            return                                # phase: on_upstream_request (a policy failed: 500)
        if ex.route.grpc:
            grpc_start(<H2Stream>self, ex)
            return
        ex.up_head = self.build_upstream_head(ex, ex.route, h, ex.params)
        if h.expect_continue and ex.has_body and h.minor == 1 and ex.body_bytes == 0:
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        ex.acquire(False)

    cdef void reject(self, Exchange ex, tuple res):
        status, slug, detail, extra = res
        if extra is not None:
            ex.err_extra = extra if ex.err_extra is None else ex.err_extra + extra
        ex.fail(status, slug, detail)

    cdef void gate_done(self, Exchange ex, object res):
        self.batching = True
        try:
            if res is None:
                self.proceed(ex)
            elif type(res) is Respond:            # phase: on_request answered
                ex.answer(<Respond>res)
            else:
                self.reject(ex, res)
        finally:
            self.batching = False
            self.flush()

    cdef bytes build_upstream_head(self, Exchange ex, RouteRT route, RequestHead h, object params):
        cdef bytes path = h.path
        cdef list parts
        cdef list pieces = h.pieces
        if route.strip:
            path = path[route.strip:]
            if len(path) == 0 or path[0] != 47:
                path = b"/" + path
        if h.drop is not None or route._req_remove is not None:
            pieces = filter_headers(pieces, h.drop, route._req_remove, route.req_remove_lengths)
        host = h.host if h.host else ex.route.group.pick().hostport
        parts = [h.method, b" ", path, h.query, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        if pieces:
            parts.extend(pieces)
        if route.req_add:
            parts.append(route.req_add)
        if ex.up_extra is not None:
            parts.append(ex.up_extra)
        parts.append(b"X-Forwarded-For: ")
        if h.xff is not None:
            parts.append(h.xff)
            parts.append(b", ")
        parts.append(self.peer)
        parts.append(b"\r\nX-Forwarded-Proto: ")
        parts.append(self.proto)
        if h.host:
            parts.append(b"\r\nX-Forwarded-Host: ")
            parts.append(h.host)
        parts.append(b"\r\nX-Request-ID: ")
        parts.append(ex.rid)
        if h.traceparent:
            parts.append(b"\r\ntraceparent: ")
            parts.append(h.traceparent)
            if h.tracestate is not None:
                parts.append(b"\r\ntracestate: ")
                parts.append(h.tracestate)
        if h.chunked:
            parts.append(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        elif h.content_length >= 0:
            parts.append(b"\r\nContent-Length: %d\r\n\r\n" % h.content_length)
        else:
            parts.append(b"\r\n\r\n")
        return concat(parts)

    cdef void finished(self, Exchange ex):
        """The response of `ex` (the active exchange) is complete."""
        cdef Exchange nxt
        if ex is not self.active:
            return
        self.active = None
        self.nreq += 1
        if self.nreq >= self.rt0.max_requests:
            ex.close_after = True             # (its response already said so when it could)
        if ex.close_after or self.closed:
            self.discard = True
            self.close()
            return
        self.last_rx = self.w.clock.now
        if self.queue:
            nxt = <Exchange>self.queue.pop(0)
            self.start(nxt)
            if not self.queue:
                self.resume_reading(P_PIPELINE)
        else:
            self.resume_reading(P_PIPELINE)
            if self.eof:
                self.close()

    cdef void client_gone(self, Exchange ex):
        """`ex` ends because its client went away (closed or reset): its upstream request is aborted (the
        connection closed, never pooled) and it is logged with the status sent, or 499 if none was
        [nginx 499 "client closed request"]."""
        if not ex.resp_started:
            ex.status = 499
        ex.drop()
        self.w.observe(ex)

    # -- timeouts (called by Worker.sweep) -------------------------------------------------------------
    # Whose time is it? While the request body is coming, the client's: body_timeout (silence) and the
    # minimum body rate; while the gateway does not read it (the upstream or the pending buffer is full),
    # nobody's but the upstream's. Once the whole request is sent upstream, the upstream's `timeout`; it
    # stops while the upstream is paused because the client does not take the response, which is the
    # client's time again: send_timeout.
    cdef void check(self, double now):
        cdef Exchange ex = self.active
        cdef Runtime rt = self.rt0
        if self.closed:
            # Closed with output the client does not take (uvloop keeps the socket until it is sent):
            # dropped send_timeout after the close [nginx send_timeout applies to the lingering close].
            if self.transport is not None and now - self.closed_at > rt.send_timeout:
                self.reset_connection()
            return
        if self.transport is not None:        # the connection itself (an H2Stream has no transport)
            if self.parked:
                return                        # like a connection in the kernel's backlog: no timers
            if self.wpaused and now - self.wpaused_at > rt.send_timeout:
                # The client has not taken the buffered response (high-water mark 256 KiB, resumed at
                # 64 KiB) for send_timeout: close and free the upstream [nginx send_timeout 60s, which
                # measures between two writes; here the client must drain 192 KiB per send_timeout].
                self.reset_connection()
                return
        if self.h2 is not None:
            self.h2.check(now)
            return
        if ex is None:
            if self._state == 0 and self.nreq == 0:
                if now - self.head_start > rt.header_timeout:
                    self.close()                  # connected, sent nothing: drop silently
            elif self._state == 1 or self._state == 2:
                if now - self.head_start > rt.header_timeout:
                    self.timeout_response(408, "request-timeout", b"request head not received in time")
            elif now - self.last_rx > rt.idle_timeout:
                self.close()
            return
        if ex.connect_task is not None:
            if now > ex.connect_deadline:
                ex.connect_task.cancel()
            return
        if not ex.body_done and self.rx is ex:
            if self.rpause & (P_UPSTREAM | P_PENDING):
                if ex.body_tick != 0:
                    ex.body_tick = now            # not the client's time
                if ex.up is not None and now - ex.up_last > ex.route.group.timeout:
                    ex.upstream_failed(504, "upstream-timeout", b"upstream did not take the request in time")
            elif now - self.last_rx > rt.body_timeout:
                self.body_timed_out(ex, b"request body not received in time")
            elif rt.min_body_rate > 0 and self.body_slow(ex, rt, now):
                self.body_timed_out(ex, b"request body arriving too slowly")
            return
        if ex.up is not None and not ex.up.rpaused and now - ex.up_last > ex.route.group.timeout:
            ex.upstream_failed(504, "upstream-timeout", None, _failures.TIMEOUT)

    cdef void reset_connection(self):
        """Drop the connection with a reset, discarding unsent output in the kernel too (a plain close
        leaves it queued, for as long as the client keeps its window barely open) [nginx
        reset_timedout_connection]."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        self.closed = True
        self.wbuf = []
        self.transport.abort()

    cdef bint body_slow(self, Exchange ex, Runtime rt, double now):
        """The minimum body rate [Apache mod_reqtimeout body=20,MinRate=500; Kestrel
        MinRequestBodyDataRate 240 B/s after a 5 s grace]: the body gets a time allowance of body_timeout,
        refilled by one second per min_body_rate bytes received and capped at body_timeout (a burst does
        not buy a later trickle), spent while the gateway waits for the client. Empty: too slow."""
        if ex.body_tick == 0:
            ex.body_allow = rt.body_timeout
        else:
            ex.body_allow += (ex.body_bytes - ex.body_seen) / rt.min_body_rate - (now - ex.body_tick)
            if ex.body_allow > rt.body_timeout:
                ex.body_allow = rt.body_timeout
        ex.body_seen = ex.body_bytes
        ex.body_tick = now
        return ex.body_allow < 0

    cdef void body_timed_out(self, Exchange ex, bytes detail):
        """408 from the gateway; the upstream request is aborted (Exchange.fail: never pooled)."""
        self.discard = True
        self._state = 3
        if ex.resp_started:
            self.abort()
        else:
            ex.fail(408, "request-timeout", detail)

    cdef void timeout_response(self, int status, str slug, bytes detail):
        cdef Exchange ex = self.new_exchange(None)
        self.discard = True
        self._state = 3
        ex.close_after = True
        self.active = ex
        ex.fail(status, slug, detail)


# ---------------------------------------------------------------------------------------------------
# The worker

cdef class Handshake:
    """The protocol of an admitted TLS connection until its handshake completes. A failed handshake never
    reaches the protocol (no connection_made, no connection_lost), and a ClientConn is only freed by the
    cycle collector (its parser refers back to it): this small object, freed as soon as uvloop drops it,
    gives the connection's place back then. On success it hands the transport to a ClientConn
    (transport.set_protocol), so requests never pass through it."""
    cdef Worker w
    cdef bint started
    cdef bint parked
    cdef public bytes proxied_peer        # the client address from a PROXY header (fastgw.worker.ProxiedTLS)

    def connection_made(self, transport):
        cdef ClientConn c = ClientConn(self.w)
        self.started = True
        c.admitted = True
        c.parked = self.parked
        c.proxied_peer = self.proxied_peer
        transport.set_protocol(c)
        c.connection_made(transport)

    def connection_lost(self, exc):
        pass                                  # (never before connection_made, which hands over)

    def __dealloc__(self):
        if not self.started and self.w is not None:
            self.w.nconns -= 1                # Worker.sweep resumes accepting if this made room


cdef class Clock:
    cdef public double now
    cdef public bytes date


cdef class Worker:
    cdef public Runtime rt
    cdef public object loop
    cdef public Clock clock
    cdef public set conns
    cdef bytes id_prefix
    cdef unsigned long long id_counter
    cdef public bint draining             # new connections answer with Connection: close
    cdef public object access_log         # list of per-request tuples, or None (see observe)
    cdef public object debug_log          # None, or f(request_id, peer, dropped) at log level "debug"
    cdef uint64_t* mbuf                   # this worker's metrics region (fastgw.metrics layout), or NULL
    cdef Py_ssize_t mroutes               # route slots in the region
    cdef object mkeep                     # keeps the buffer behind mbuf alive
    # Connection cap (server.limits.max_connections; fastgw/worker.py pauses and resumes the listeners)
    cdef public Py_ssize_t max_conns      # 0: no cap
    cdef public Py_ssize_t nconns         # client connections accepted and not yet gone (TLS handshakes too)
    cdef public bint full                 # accepting is paused
    cdef public object on_full            # called soon after the cap is reached: pause the listeners
    cdef public object on_room            # called when a connection may be accepted again
    cdef public list parked               # accepted beyond the cap in one accept batch, not read yet

    def __init__(self, Runtime rt, loop, bytes id_prefix):
        self.rt = rt
        self.loop = loop
        self.clock = Clock()
        self.conns = set()
        self.id_prefix = id_prefix
        self.id_counter = 0
        self.parked = []

    def protocol(self, bint reserved=False):
        """The protocol factory of every listener, called as each connection is accepted. `reserved`:
        the connection was counted at accept already (admit(), by fastgw.worker.ProxiedTLS)."""
        cdef ClientConn c = ClientConn(self)
        if not reserved:
            self.admit()
        c.admitted = True
        # uvloop accepts everything queued in one go before the pause can act: connections past the cap
        # are held unread, as the kernel backlog would hold them, and served in order as room appears.
        c.parked = self.max_conns != 0 and self.nconns > self.max_conns
        return c

    cpdef admit(self):
        """Count one more client connection; at the cap, accepting pauses [HAProxy maxconn pauses
        its listeners; nginx worker_connections]."""
        self.nconns += 1
        self.check_full()

    cdef void check_full(self):
        if self.max_conns != 0 and not self.full and self.nconns >= self.max_conns:
            self.full = True
            self.count(M_CONN_FULL)
            if self.on_full is not None:
                self.loop.call_soon(self.on_full)   # not from inside uvloop's accept callback

    def tls_protocol(self, bint reserved=False):
        """The protocol factory of TLS listeners: a Handshake, which becomes a ClientConn once the
        handshake completes."""
        cdef Handshake h = Handshake.__new__(Handshake)
        if not reserved:
            self.admit()
        h.w = self
        h.parked = self.max_conns != 0 and self.nconns > self.max_conns
        return h

    cpdef release(self):
        """One client connection is gone (or was never handed over)."""
        self.nconns -= 1
        self.make_room()

    cdef void make_room(self):
        cdef ClientConn c
        while self.parked and (self.max_conns == 0 or self.nconns - len(self.parked) < self.max_conns):
            c = <ClientConn>self.parked.pop(0)
            c.unpark()
        if self.full and not self.parked and (self.max_conns == 0 or self.nconns < self.max_conns):
            self.full = False
            if self.on_room is not None:
                self.on_room()

    cdef void count(self, Py_ssize_t word):
        """Increment a per-worker counter of the metrics header (M_OVERRUNS, M_CONN_FULL)."""
        if self.mbuf != NULL:
            self.mbuf[word] += 1

    cdef bytes next_id(self):
        """id_prefix + the request counter as 12 hex digits (snprintf cost ~900 instructions)."""
        cdef char buf[64]
        cdef Py_ssize_t plen = len(self.id_prefix)
        cdef unsigned long long v
        cdef int i
        self.id_counter += 1
        v = self.id_counter
        if plen > 40:
            plen = 40
        memcpy(buf, <char*>self.id_prefix, plen)
        for i in range(11, -1, -1):
            buf[plen + i] = HEXDIGITS[v & 15]
            v >>= 4
        return PyBytes_FromStringAndSize(buf, plen + 12)

    def sweep(self, double now, bytes date):
        """Advance the coarse clock and enforce every connection's timeouts."""
        cdef ClientConn c
        self.clock.now = now
        self.clock.date = date
        for c in list(self.conns):
            c.check(now)
        # The cap may have changed on reload, and connections freed without connection_lost.
        if self.full:
            self.make_room()
        else:
            self.check_full()

    def drain(self, double fresh_idle=-1.0):
        """Stop keep-alive: idle connections close now, busy ones after their response.

        A connection that has not sent its first request yet is only closed once it has been silent for
        `fresh_idle` seconds (never if negative): while the listeners still accept, such a connection was
        just opened by a client whose request is on its way, and closing it would fail that request.
        """
        cdef ClientConn c
        self.draining = True
        for c in list(self.conns):
            c.draining = True
            if c.h2 is not None:
                c.h2.drain()                  # GOAWAY; in-flight streams finish, then it closes
                continue
            if c.active is None and c._state == 0 and (
                    c.nreq > 0 or (fresh_idle >= 0 and self.clock.now - c.head_start > fresh_idle)):
                c.close()

    # -- metrics and access log (layout: fastgw/metrics.py) -------------------------------------------
    def attach_metrics(self, buf, Py_ssize_t routes):
        """Count into `buf` (a writable buffer: this worker's region of the shared metrics memory)."""
        cdef unsigned char[::1] view = buf
        if view.shape[0] < (M_HEADER + routes * M_ROUTE) * 8:
            raise ValueError("metrics buffer too small")
        self.mkeep = view
        self.mroutes = routes
        self.mbuf = <uint64_t*>&view[0]

    cdef void observe(self, Exchange ex):
        """One finished response: plain increments into this worker's own region (no lock: one writer;
        the supervisor reads aligned 64-bit words), and a tuple for the access log when it is on."""
        cdef uint64_t* m = self.mbuf
        cdef Target t
        cdef long long dur
        cdef int cls
        cdef Py_ssize_t slot = 0
        cdef int b = 0
        if m == NULL and self.access_log is None:
            return
        dur = mono_ns() - ex.t0
        if ex.route is not None:
            slot = ex.route.mslot
        if m != NULL:
            if slot < 0 or slot >= self.mroutes:
                slot = 0
            m = m + M_HEADER + slot * M_ROUTE
            cls = ex.status // 100 - 1
            if cls < 0 or cls > 4:
                cls = 4
            m[method_index(ex.head.method if ex.head is not None else None) * 5 + cls] += 1
            while b < M_NBOUNDS and dur > HIST_NS[b]:
                b += 1
            m[M_HIST + b] += 1
            m[M_SUM_US] += <uint64_t>(dur // 1000)
        if self.access_log is not None:         # (fields: fastgw/_core/accesslog.pyx format_lines)
            t = ex.target
            self.access_log.append((ex.t0 + dur, dur, ex.status, ex.head, ex.client.peer, ex.client.tcp_peer,
                                    ex.rid, ex.route.name if ex.route is not None else None,
                                    t.group.name if t is not None else None, t.hostport if t is not None else None,
                                    ex.up_error, ex.grpc_code - 1 if ex.grpc_code else None))

    cdef void headers_dropped(self, Exchange ex):
        """Header fields the wire table dropped for their "_" (RequestHead.dropped, fastgw/headers.py):
        counted by reason (fastgw_headers_dropped_total), and one debug log line per request."""
        cdef tuple d
        if self.mbuf != NULL:
            for d in ex.head.dropped:
                self.mbuf[HDROP_ALIAS if <int>d[0] == A_ALIAS else HDROP_UNDERSCORE] += 1
        if self.debug_log is not None:
            self.debug_log(ex.rid, ex.client.peer,
                           [(HEADER_DROPS[HDROP_ALIAS - H_HDROP if <int>d[0] == A_ALIAS
                                          else HDROP_UNDERSCORE - H_HDROP], d[1]) for d in ex.head.dropped])

    cdef void upstream_error(self, Exchange ex, int status):
        cdef uint64_t* m = self.mbuf
        cdef Py_ssize_t slot = 0
        if m == NULL:
            return
        if ex.route is not None and 0 <= ex.route.mslot < self.mroutes:
            slot = ex.route.mslot
        m[M_HEADER + slot * M_ROUTE + M_UPERR + (0 if status == 502 else 1 if status == 503 else 2)] += 1


# ---------------------------------------------------------------------------------------------------
# HTTP/2 (downstream)

include "h2.pxi"

# ---------------------------------------------------------------------------------------------------
# gRPC passthrough (routes with protocol = "grpc")

include "grpc.pxi"
