"""Sans-IO tests of the HTTP/1.1 request reader: bytes in, events out.

Every well-formed case is fed whole, byte by byte, and split in two at every offset; the events must be
the same each time. Every malformed case must produce exactly one error event and no request_end.
"""
from __future__ import annotations

import pytest

from fastgw._core.http1 import RequestReader
from fastgw._core.wire import ACTIONS, HeaderTable


class Recorder(RequestReader):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.events: list = []
        self.body = b""

    def request_head(self, head):
        self.events.append(("head", head.method, head.path, head.query, head.host, head.minor,
                            head.chunked, head.content_length, tuple(head.headers()),
                            head.request_id, head.xff, head.expect_continue, head.keep_alive))

    def request_body(self, data):
        self.body += data

    def request_end(self):
        self.events.append(("end", self.body))
        self.body = b""

    def request_error(self, status, slug, detail):
        self.events.append(("error", status, slug))


def feed_all(data: bytes, chunks: list[bytes] | None = None, **kw) -> list:
    r = Recorder(**kw)
    for c in chunks if chunks is not None else [data]:
        r.feed(c)
    return r.events


def splits(data: bytes):
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


GOOD = [
    b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: api.example:8080\r\nAccept: */*\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: h\r\nX-Request-ID: abc-123\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
    b"GET /y HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
]


@pytest.mark.parametrize("data", GOOD)
def test_good_requests_parse_identically_at_every_split(data):
    expected = feed_all(data)
    assert expected and not any(e[0] == "error" for e in expected)
    assert expected[-1][0] == "end"
    for chunks in splits(data):
        assert feed_all(data, chunks) == expected, chunks


def test_head_fields():
    (head, end) = feed_all(GOOD[0])
    assert head[1:6] == (b"GET", b"/a/b", b"?x=1&y=2", b"api.example:8080", 1)
    assert head[8] == ((b"Accept", b"*/*"),)
    assert end == ("end", b"")


def test_chunked_body_is_decoded():
    events = feed_all(GOOD[2])
    assert events[0][6] is True and events[-1] == ("end", b"hello world")


def test_hop_by_hop_identity_and_forwarding_headers_are_not_forwardable():
    data = (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n"
            b"TE: trailers\r\nUpgrade-Insecure-Requests: 1\r\nProxy-Connection: x\r\nX-User-ID: root\r\n"
            b"X-Consumer: c\r\nX-Roles: admin\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
            b"X-Secret: s\r\n\r\n")
    r = Recorder()
    heads = []
    r.request_head = heads.append
    r.feed(data)
    (h,) = heads
    names = [n.lower() for n, _ in h.headers()]
    assert names == [b"upgrade-insecure-requests", b"x-secret"]
    assert h.drop == {b"x-secret"}              # named in Connection: dropped by the proxy


def head_of(data: bytes, **kw):
    r = Recorder(**kw)
    heads = []
    r.request_head = heads.append
    r.feed(data)
    (h,) = heads
    return h


def test_underscore_names_and_connection_specific_fields_are_not_forwardable():
    """A name with "_" is dropped and reported (RequestHead.dropped): folded ("_" read as "-") it may be a
    header the gateway owns (X_User_ID is X-User-ID to a CGI/WSGI/PHP upstream). HTTP2-Settings is
    connection-specific: dropped even when Connection does not name it."""
    h = head_of(b"GET / HTTP/1.1\r\nHost: h\r\nX_User_ID: root\r\nx_roles: admin\r\nX_Consumer: c\r\n"
                b"Transfer_Encoding: chunked\r\nX_Forwarded_For: 1.2.3.4\r\nX_Custom: 1\r\n"
                b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Forwarded-Port: 1\r\nAccept: */*\r\n\r\n")
    assert h.headers() == [(b"Accept", b"*/*")]
    assert h.xff is None and not h.chunked
    alias, underscore = ACTIONS["alias"], ACTIONS["underscore"]
    assert h.dropped == [(alias, b"X_User_ID"), (alias, b"x_roles"), (alias, b"X_Consumer"),
                         (alias, b"Transfer_Encoding"), (alias, b"X_Forwarded_For"), (underscore, b"X_Custom")]
    # allow_underscores keeps the name that reads as nothing the gateway owns, never the others.
    h = head_of(b"GET / HTTP/1.1\r\nHost: h\r\nX_User_ID: root\r\nX_Custom: 1\r\nX_API_Key: k\r\n\r\n",
                table=HeaderTable(credentials=["X-API-Key"], allow_underscores=True))
    assert h.headers() == [(b"X_Custom", b"1")]
    assert h.dropped == [(alias, b"X_User_ID"), (alias, b"X_API_Key")]


def test_credential_headers_are_forwarded_once_each():
    table = HeaderTable(credentials=["X-API-Key"])
    h = head_of(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\nX-API-Key: k\r\n\r\n", table=table)
    assert h.headers() == [(b"Authorization", b"Bearer t"), (b"X-API-Key", b"k")]
    r = Recorder(table=table)
    details = []
    r.request_error = lambda status, slug, detail: details.append((status, detail))
    r.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-API-Key: a\r\nx-api-key: b\r\n\r\n")
    assert details == [(400, "duplicate x-api-key header")]


def test_trace_context_fields_kept_for_the_trace_to_judge():
    """The reader keeps the one traceparent's value (b"" when it came twice) and the tracestate fields
    joined; whether they are valid is decided when the trace starts (tests/test_tracecontext.py)."""
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    h = head_of(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + tp + b"\r\ntracestate: a=1\r\n"
                b"tracestate: b=2\r\n\r\n")
    assert (h.traceparent, h.tracestate, h.headers()) == (tp, b"a=1,b=2", [])
    assert head_of(b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + tp.upper() + b"\r\n\r\n").traceparent == tp.upper()
    two = b"GET / HTTP/1.1\r\nHost: h\r\ntraceparent: " + tp + b"\r\ntraceparent: " + tp + b"\r\n\r\n"
    assert head_of(two).traceparent == b""


def test_request_id_kept_only_when_safe():
    assert feed_all(GOOD[5])[0][9] == b"abc-123"
    bad = b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID: has space\r\n\r\n"
    assert feed_all(bad)[0][9] is None
    long = b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-ID: " + b"a" * 129 + b"\r\n\r\n"
    assert feed_all(long)[0][9] is None


def test_pipelined_requests_arrive_in_order():
    events = feed_all(GOOD[5])
    assert [e[0] for e in events] == ["head", "end", "head", "end"]
    assert events[0][2] == b"/x" and events[2][2] == b"/y"
    assert events[0][10] == b"10.0.0.1"


BAD = {
    "te-on-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-comma-chunked": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n", 400),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                        400),
    "te-identity": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    "te-twice": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                 b"\r\n\r\n0\r\n\r\n", 400),
    "cl-and-te": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\n", 400),
    "cl-twice": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    "cl-sign": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "empty-host": (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
    "blank-host": (b"GET / HTTP/1.1\r\nHost:   \r\n\r\n", 400),
    "bad-host": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "http09": (b"GET /\r\n\r\n", 400),
    "http2-version": (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
    "star-not-options": (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "absolute-form": (b"GET http://x/y HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "dot-dot": (b"GET /a/../admin HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "encoded-dot-dot": (b"GET /a/%2E%2e/admin HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "encoded-slash": (b"GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "backslash": (b"GET /a\\b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "fragment": (b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    "bad-name": (b"GET / HTTP/1.1\r\nHo(st: h\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400),
    "trailers": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
                 b"X-Evil: 1\r\n\r\n", 400),
    "chunk-extension-too-large": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;"
                                  + b"a" * 8192 + b"\r\nhello\r\n0\r\n\r\n", 400),
    "too-many-headers": (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
                         + b"\r\n", 431),
    "headers-too-large": (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    "request-line-too-long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    # llhttp reads RTSP and ICE request lines; the httptools reader forwarded them as HTTP/1.x
    "rtsp-version": (b"GET / RTSP/1.0\r\nHost: h\r\n\r\n", 400),
    "rtsp-method": (b"FLUSH / RTSP/1.0\r\nHost: h\r\n\r\n", 400),
    "ice-version": (b"SOURCE / ICE/1.0\r\nHost: h\r\n\r\n", 400),
    # over 2**63 - 1: the httptools reader raised OverflowError out of feed()
    "cl-over-int64": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775808\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_requests_are_rejected_whole(name):
    data, status = BAD[name]
    events = feed_all(data)
    errors = [e for e in events if e[0] == "error"]
    assert len(errors) == 1 and errors[0][1] == status, events
    assert not any(e[0] == "end" for e in events), "a rejected request must never complete"


@pytest.mark.parametrize("name", ["te-comma-chunked", "no-host", "trailers", "dot-dot", "too-many-headers",
                                  "request-line-too-long", "headers-too-large"])
def test_malformed_requests_are_rejected_at_every_split(name):
    data, status = BAD[name]
    for chunks in [[data[i:i + 1] for i in range(len(data))]] + [[data[:i], data[i:]]
                                                                  for i in range(1, len(data), 97)]:
        events = feed_all(data, chunks)
        errors = [e for e in events if e[0] == "error"]
        assert len(errors) == 1 and errors[0][1] == status, (chunks[:2], events)
        assert not any(e[0] == "end" for e in events)


def test_unbounded_head_without_newline_is_431():
    r = Recorder(max_request_line=100, max_header_bytes=1000)
    r.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
    for _ in range(20):
        r.feed(b"a" * 100)
    assert r.events == [("error", 431, "header-too-large")]


def test_nothing_after_an_error_is_parsed():
    r = Recorder()
    r.feed(b"GET / HTTP/1.1\r\n\r\n")
    r.feed(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
    assert r.events == [("error", 400, "bad-request")]


def test_upgrade_request_is_served_and_the_rest_ignored():
    r = Recorder()
    r.feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n")
    assert [e[0] for e in r.events] == ["head", "end"]
    assert r.upgraded
    assert all(n.lower() != b"upgrade" for n, _ in r.events[0][8])


def test_every_byte_at_every_name_position() -> None:
    """Each of the 256 byte values, at each position of a 19-byte field name, is taken exactly when it is a
    token character (RFC 9110 5.6.2), and the name reaches the head as sent."""
    tchar = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    base = b"X-Custom-Field-Name"
    for pos in range(len(base)):
        for b in range(256):
            name = base[:pos] + bytes([b]) + base[pos + 1:]
            events = feed_all(b"GET / HTTP/1.1\r\nHost: h\r\n" + name + b": v\r\n\r\n",
                              table=HeaderTable(allow_underscores=True))
            if b in tchar:
                assert events[0][0] == "head" and events[0][8] == ((name, b"v"),), (pos, b, events)
            elif b == 58 and pos:                 # ":" ends the name there
                assert events[0][8] == ((base[:pos], base[pos + 1:] + b": v"),), (pos, events)
            else:
                assert events[0][0] == "error" and events[0][1] == 400, (pos, b, events)
