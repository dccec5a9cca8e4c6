"""Strictness and limits on the client side, over raw sockets (docs/errors.md, docs/http1.md "Limits").

Every malformed or ambiguous request must get a problem+json answer, the connection must close (nothing
after an unparseable message can be trusted), and the origin must never see the request.
"""
from __future__ import annotations

import time
import uuid

import pytest
from upstreams import Closed, assert_raw_problem, chunked

HEADER_TIMEOUT = 0.5
IDLE_TIMEOUT = 0.7
BODY_TIMEOUT = 0.7
SWEEP = 0.3           # timeouts are enforced by a 250 ms sweep over a coarse clock: allow that much early


@pytest.fixture(scope="module")
def setup(gateway_launcher, echo_origin):
    routes = [
        {"name": "small", "path": "/small/*", "upstream": "echo", "max_body": "64KiB"},
        {"name": "all", "path": "/*", "upstream": "echo"},
    ]
    limits = {"header_timeout": f"{int(HEADER_TIMEOUT * 1000)}ms", "idle_timeout": f"{int(IDLE_TIMEOUT * 1000)}ms",
              "body_timeout": f"{int(BODY_TIMEOUT * 1000)}ms"}
    gw = gateway_launcher.start({"echo": {"targets": [echo_origin.addr], "timeout": "5s"}}, routes, limits)
    return gw, echo_origin


@pytest.fixture
def gw(setup):
    return setup[0]


@pytest.fixture
def origin(setup):
    return setup[1]


def mark() -> str:
    return "m" + uuid.uuid4().hex[:12]


def refused(gw, origin, data: bytes, m: str, status: int = 400, slug: str = "bad-request") -> None:
    """Send `data`; expect a problem response, then the connection closed; the origin saw nothing."""
    with gw.raw() as c:
        c.send(data)
        r = c.read_response()
        assert_raw_problem(r, status, slug)
        assert c.closed_by_server(2) is not None, "connection left open after a rejected request"
    time.sleep(0.05)
    assert not origin.heads_for(m), f"origin received {origin.heads_for(m)}"


def head(m: str, *lines: str, method: str = "POST", version: str = "HTTP/1.1", host: bool = True) -> bytes:
    out = [f"{method} /{m} {version}"] + (["Host: gw.test"] if host else []) + list(lines)
    return ("\r\n".join(out) + "\r\n\r\n").encode()


BODY = chunked(b"hello")

# (id, request builder taking the marker); each must be refused with 400
MALFORMED = [
    ("te-on-http10", lambda m: head(m, "Transfer-Encoding: chunked", version="HTTP/1.0") + BODY),
    ("te-leading-comma", lambda m: head(m, "Transfer-Encoding: ,chunked") + BODY),
    ("te-gzip-chunked", lambda m: head(m, "Transfer-Encoding: gzip, chunked") + BODY),
    ("te-chunked-chunked", lambda m: head(m, "Transfer-Encoding: chunked, chunked") + BODY),
    ("te-two-headers", lambda m: head(m, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + BODY),
    ("te-identity", lambda m: head(m, "Transfer-Encoding: identity") + b"hello"),
    ("cl-and-te", lambda m: head(m, "Content-Length: 5", "Transfer-Encoding: chunked") + BODY),
    ("te-and-cl", lambda m: head(m, "Transfer-Encoding: chunked", "Content-Length: 5") + BODY),
    ("cl-conflicting", lambda m: head(m, "Content-Length: 5", "Content-Length: 6") + b"hello!"),
    ("cl-plus-sign", lambda m: head(m, "Content-Length: +5") + b"hello"),
    ("cl-not-a-number", lambda m: head(m, "Content-Length: 5x") + b"hello"),
    ("missing-host", lambda m: head(m, method="GET", host=False)),
    ("duplicate-host", lambda m: head(m, "Host: other.test", method="GET")),
    ("empty-host", lambda m: f"GET /{m} HTTP/1.1\r\nHost:\r\n\r\n".encode()),
    ("empty-host-http10", lambda m: f"GET /{m} HTTP/1.0\r\nHost: \r\n\r\n".encode()),
    ("duplicate-authorization", lambda m: head(m, "Authorization: Bearer a", "authorization: Bearer b", method="GET")),
    ("host-with-path", lambda m: f"GET /{m} HTTP/1.1\r\nHost: gw.test/evil\r\n\r\n".encode()),
    ("http09-request-line", lambda m: f"GET /{m}\r\n\r\n".encode()),
    ("http2-version", lambda m: head(m, method="GET", version="HTTP/2.0")),
    ("star-target-get", lambda m: f"GET * HTTP/1.1\r\nHost: gw.test\r\nX-M: {m}\r\n\r\n".encode()),
    ("absolute-form", lambda m: f"GET http://evil.test/{m} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode()),
    ("space-before-colon", lambda m: head(m, "X-Foo : bar", method="GET")),
    ("obs-fold", lambda m: head(m, "X-Foo: a", "  folded", method="GET")),
    ("bare-lf", lambda m: f"GET /{m} HTTP/1.1\nHost: gw.test\n\n".encode()),
    ("nul-in-header", lambda m: head(m, "X-Foo: a\x00b", method="GET")),
    ("dot-segments", lambda m: f"GET /{m}/../admin HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode()),
    ("encoded-slash", lambda m: f"GET /{m}%2F..%2Fadmin HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode()),
    ("fragment", lambda m: f"GET /{m}#frag HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode()),
]


@pytest.mark.parametrize("build", [b for _, b in MALFORMED], ids=[i for i, _ in MALFORMED])
def test_malformed_request_refused(gw, origin, build):
    m = mark()
    refused(gw, origin, build(m), m)


# Errors found in a chunked body. The head is valid and is streamed upstream as soon as an upstream
# connection is at hand (a warm pool makes that immediate), so the origin may see the head and part of
# the body; it must never receive a complete request, and the client gets 400 and a closed connection.
MALFORMED_BODY = [
    ("huge-chunk-extension", lambda m: head(m, "Transfer-Encoding: chunked")
        + b"5;ext=" + b"x" * 6000 + b"\r\nhello\r\n0\r\n\r\n"),
    ("huge-chunk-extension-20k", lambda m: head(m, "Transfer-Encoding: chunked")
        + b"5;ext=" + b"x" * 20000 + b"\r\nhello\r\n0\r\n\r\n"),
    ("many-chunk-extensions", lambda m: head(m, "Transfer-Encoding: chunked")
        + b"".join(b"1;e=" + b"y" * 200 + b"\r\na\r\n" for _ in range(40)) + b"0\r\n\r\n"),
    ("trailers", lambda m: head(m, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\nX-Trailer: evil\r\n\r\n"),
    ("trailers-only", lambda m: head(m, "Transfer-Encoding: chunked") + b"0\r\nX-Trailer: evil\r\n\r\n"),
    ("bad-chunk-size", lambda m: head(m, "Transfer-Encoding: chunked") + b"5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("chunk-without-crlf", lambda m: head(m, "Transfer-Encoding: chunked") + b"5\r\nhelloXX0\r\n\r\n"),
]


@pytest.mark.parametrize("build", [b for _, b in MALFORMED_BODY], ids=[i for i, _ in MALFORMED_BODY])
def test_malformed_chunked_body_refused(gw, origin, build):
    with gw.raw() as warm:                 # leave a pooled upstream connection ready
        warm.send(head(mark(), method="GET"))
        assert warm.read_response().status == 200
    m = mark()
    with gw.raw() as c:
        c.send(build(m))
        r = c.read_response()
        assert_raw_problem(r, 400, "bad-request")
        assert c.closed_by_server(2) is not None, "connection left open after a rejected request"
    time.sleep(0.05)
    assert not origin.requests_for(m), "the origin received the malformed request complete"


def test_malformed_request_after_a_good_one_on_same_connection(gw, origin):
    m = mark()
    with gw.raw() as c:
        c.send(head(m + "-ok", "Content-Length: 2") + b"ok")
        assert c.read_response().status == 200
        c.send(head(m, "Content-Length: 5", "Transfer-Encoding: chunked") + BODY)
        assert_raw_problem(c.read_response(), 400, "bad-request")
        assert c.closed_by_server(2) is not None
    assert len(origin.heads_for(m)) == 1          # only the good one


def test_smuggled_request_in_body_is_not_forwarded(gw, origin):
    # A CL/TE desync attempt: if either side framed this by Content-Length, the bytes after the empty chunk
    # would become a second request to the origin.
    m = mark()
    smuggled = f"GET /{m}-smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode()
    body = b"0\r\n\r\n" + smuggled
    data = head(m, f"Content-Length: {len(body)}", "Transfer-Encoding: chunked") + body
    with gw.raw() as c:
        c.send(data)
        assert_raw_problem(c.read_response(), 400, "bad-request")
        assert c.closed_by_server(2) is not None
    time.sleep(0.05)
    assert not origin.heads_for(m)


def test_options_star_is_not_rejected_as_malformed(gw):
    with gw.raw() as c:
        c.send(b"OPTIONS * HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        r = c.read_response()
    assert r.status != 400, r.raw_head


# ---------------------------------------------------------------------------------------------------
# Size limits: 431, 414, 413

def test_too_many_headers(gw, origin):
    m = mark()
    refused(gw, origin, head(m, *[f"X-H{i}: v" for i in range(100)], method="GET"), m, 431, "header-too-large")


def test_hundred_headers_accepted(gw):
    with gw.raw() as c:
        c.send(head(mark(), *[f"X-H{i}: v" for i in range(99)], method="GET"))
        r = c.read_response()
    assert r.status == 200
    assert sum(1 for n, _ in r.json()["headers"] if n.startswith("X-H")) == 99


def test_one_header_too_large(gw, origin):
    m = mark()
    refused(gw, origin, head(m, "X-Big: " + "a" * 33 * 1024, method="GET"), m, 431, "header-too-large")


def test_headers_too_large_in_total(gw, origin):
    m = mark()
    refused(gw, origin, head(m, *[f"X-H{i}: " + "b" * 1024 for i in range(40)], method="GET"), m, 431,
            "header-too-large")


def test_large_header_within_limit_accepted(gw):
    with gw.raw() as c:
        c.send(head(mark(), "X-Big: " + "a" * 16 * 1024, method="GET"))
        r = c.read_response()
    assert r.status == 200
    assert dict((n.lower(), v) for n, v in r.json()["headers"])["x-big"] == "a" * 16 * 1024


def test_uri_too_long(gw, origin):
    m = mark()
    refused(gw, origin, f"GET /{m}/{'u' * 9000} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode(), m, 414, "uri-too-long")


def test_long_uri_within_limit_accepted(gw):
    path = f"/{mark()}/" + "u" * 7900
    with gw.raw() as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
        r = c.read_response()
    assert r.status == 200 and r.json()["target"] == path


def test_body_over_route_limit_by_content_length(gw, origin):
    m = mark()
    with gw.raw() as c:
        c.send(f"POST /small/{m} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 70000\r\n\r\n".encode())
        r = c.read_response()
        assert_raw_problem(r, 413, "payload-too-large")
        assert c.closed_by_server(2) is not None
    assert not origin.heads_for(m)


def test_body_over_server_limit_by_content_length(gw, origin):
    m = mark()
    with gw.raw() as c:
        c.send(f"PUT /{m} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {2 * 1024 * 1024}\r\n\r\n".encode())
        assert_raw_problem(c.read_response(), 413, "payload-too-large")
        assert c.closed_by_server(2) is not None
    assert not origin.heads_for(m)


def test_body_over_route_limit_chunked(gw, origin):
    m = mark()
    data = head(f"small/{m}", "Transfer-Encoding: chunked") + chunked(*[b"z" * 16384] * 7)   # 112 KiB > 64 KiB
    with gw.raw() as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                          # the gateway may close before it has read everything
        r = c.read_response()
        assert_raw_problem(r, 413, "payload-too-large")
        assert c.closed_by_server(2) is not None
    time.sleep(0.05)
    assert not origin.requests_for(m), "the origin received the whole over-limit body"


def test_chunked_body_within_route_limit_accepted(gw):
    with gw.raw() as c:
        c.send(head(f"small/{mark()}", "Transfer-Encoding: chunked") + chunked(*[b"z" * 16384] * 3))
        r = c.read_response()
    assert r.status == 200 and r.json()["body_len"] == 3 * 16384


# ---------------------------------------------------------------------------------------------------
# Timeouts: 408 for a slow head or body, idle keep-alive connections closed

def test_head_not_received_in_time(gw, origin):
    m = mark()
    with gw.raw() as c:
        c.send(f"GET /{m} HTTP/1.1\r\nHost: gw.test\r\n".encode())
        t0 = time.monotonic()
        r = c.read_response()
        elapsed = time.monotonic() - t0
        assert_raw_problem(r, 408, "request-timeout")
        assert HEADER_TIMEOUT - SWEEP <= elapsed <= HEADER_TIMEOUT + 1.5, elapsed
        assert c.closed_by_server(2) is not None
    assert not origin.heads_for(m)


def test_head_timeout_is_for_the_whole_head(gw, origin):
    # Trickling bytes (slowloris) does not extend the deadline.
    m = mark()
    with gw.raw() as c:
        c.send(f"GET /{m} HTTP/1.1\r\nHost: gw.test\r\n".encode())
        t0 = time.monotonic()
        got = None
        for i in range(40):
            try:
                c.send(f"X-Slow-{i}: x\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                break
            c.sock.settimeout(0.1)
            try:
                data = c.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            got = data
            break
        elapsed = time.monotonic() - t0
    assert got is not None and got.startswith(b"HTTP/1.1 408 "), got
    assert elapsed <= HEADER_TIMEOUT + 1.5, elapsed
    assert not origin.heads_for(m)


def test_silent_connection_closed_after_header_timeout(gw):
    with gw.raw() as c:
        t0 = time.monotonic()
        how = c.closed_by_server(HEADER_TIMEOUT + 2)
        elapsed = time.monotonic() - t0
    assert how is not None, "a connection that never sent anything was kept open"
    assert elapsed >= HEADER_TIMEOUT - SWEEP, elapsed


def test_idle_keep_alive_connection_closed(gw):
    with gw.raw() as c:
        c.send(head(mark(), method="GET"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        how = c.closed_by_server(IDLE_TIMEOUT + 2)
        elapsed = time.monotonic() - t0
    assert how is not None, "idle keep-alive connection never closed"
    assert IDLE_TIMEOUT - SWEEP <= elapsed <= IDLE_TIMEOUT + 1.5, elapsed


def test_keep_alive_connection_usable_before_idle_timeout(gw):
    with gw.raw() as c:
        for _ in range(3):
            c.send(head(mark(), method="GET"))
            assert c.read_response().status == 200
            time.sleep(IDLE_TIMEOUT / 3)


def test_slow_origin_response_is_not_cut_by_client_timeouts(gw):
    # The client is silent while the origin works for longer than the idle and body timeouts.
    with gw.raw() as c:
        c.send(f"GET /{mark()}?delay={IDLE_TIMEOUT + 0.4} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
        r = c.read_response()
    assert r.status == 200


def test_body_not_received_in_time(gw, origin):
    m = mark()
    with gw.raw() as c:
        c.send(head(m, "Content-Length: 10") + b"abc")
        t0 = time.monotonic()
        try:
            r = c.read_response()
        except Closed as e:
            raise AssertionError(f"connection {e.how} without a 408 response") from None
        elapsed = time.monotonic() - t0
        assert_raw_problem(r, 408, "request-timeout")
        assert elapsed <= BODY_TIMEOUT + 1.5, elapsed
        assert c.closed_by_server(2) is not None
    time.sleep(0.05)
    assert not origin.requests_for(m)
