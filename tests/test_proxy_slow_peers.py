"""Slow clients on either side of a request (issue 11 items 15, 16, 17).

* The upstream response timeout runs only once the whole request has been sent upstream: a healthy upload
  slower than the upstream `timeout` is not cut with a 504 (item 15).
* A request body that trickles in (1 byte every 0.5 s: never idle for body_timeout) is ended by the
  gateway's minimum body rate with a 408, and the upstream request is aborted (item 16).
* A client that reads a large response too slowly is disconnected after send_timeout and the upstream
  connection is released; so is one that never reads a response held in the gateway's buffer (item 17).
"""
from __future__ import annotations

import socket
import time
import uuid

import pytest
from procutil import admin_get, metric
from upstreams import Closed, RawClient, assert_raw_problem

UPSTREAM_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
SEND_TIMEOUT = 1.0
SWEEP = 0.3


def mark() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin):
    """Short upstream timeout, default minimum body rate (keys every version of the config knows)."""
    ups = {"echo": {"targets": [echo_origin.addr], "timeout": f"{int(UPSTREAM_TIMEOUT * 1000)}ms"}}
    routes = [{"name": "up", "path": "/up/*", "upstream": "echo", "max_body": "4MiB"}]
    return gateway_launcher.start(ups, routes, limits={"body_timeout": f"{int(BODY_TIMEOUT)}s"})


def send_slowly(c: RawClient, pieces: int, size: int, gap: float) -> None:
    for _ in range(pieces):
        c.send(b"u" * size)
        time.sleep(gap)


# -- item 15 ----------------------------------------------------------------------------------------

def test_healthy_upload_slower_than_the_upstream_timeout(gw, echo_origin):
    # 48 KiB over ~3 s (16 KiB/s): three times the upstream timeout, far above any minimum rate.
    m = mark()
    with gw.raw() as c:
        c.send(f"POST /up/{m} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {12 * 4096}\r\n\r\n".encode())
        send_slowly(c, 12, 4096, 0.25)
        r = c.read_response()
    assert r.status == 200, r.body[:300]
    assert r.json()["body_len"] == 12 * 4096


def test_response_timeout_counts_from_the_end_of_the_body(gw, echo_origin):
    m = mark()
    with gw.raw() as c:
        c.send(f"POST /up/{m}?delay=5 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {8 * 1024}\r\n\r\n".encode())
        send_slowly(c, 7, 1024, 0.25)
        c.send(b"u" * 1024)
        t_end = time.monotonic()
        r = c.read_response()
        elapsed = time.monotonic() - t_end
    assert_raw_problem(r, 504, "upstream-timeout")
    assert UPSTREAM_TIMEOUT - SWEEP <= elapsed <= UPSTREAM_TIMEOUT + 1.0, elapsed
    assert echo_origin.wait_for(lambda: echo_origin.requests_for(m)), "the body did not reach the origin whole"


# -- item 16 ----------------------------------------------------------------------------------------

def test_trickling_body_gets_the_gateways_408(gw, echo_origin):
    m = mark()
    with gw.raw(timeout=10) as c:
        c.send(f"POST /up/{m} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\n".encode())
        t0 = time.monotonic()
        got = b""
        c.sock.settimeout(0.5)
        for _ in range(30):                       # 1 byte every 0.5 s: never silent for body_timeout
            try:
                c.send(b"u")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                got = c.sock.recv(65536)
                break
            except TimeoutError:
                continue
        elapsed = time.monotonic() - t0
        c.buf += got
        c.sock.settimeout(5)
        r = c.read_response()
    assert_raw_problem(r, 408, "request-timeout", f"/up/{m}")
    assert "close" in r.conn_tokens
    assert elapsed <= BODY_TIMEOUT + 1.5, elapsed
    # The upstream request was aborted, not left to time out.
    head = echo_origin.heads_for(m)[0]
    assert echo_origin.wait_for(lambda: head.conn in echo_origin.ended, 2.0)
    assert head in echo_origin.incomplete


# -- item 17 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def send_gw(gateway_launcher, echo_origin):
    ups = {"echo": {"targets": [echo_origin.addr], "timeout": "30s"}}
    routes = [{"name": "down", "path": "/down/*", "upstream": "echo"}]
    return gateway_launcher.start(ups, routes, limits={"send_timeout": f"{int(SEND_TIMEOUT * 1000)}ms",
                                                        "idle_timeout": "1s"})


def small_window_client(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # little kernel buffering on our side
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def open_connections(gw) -> float:
    admin = next(e["admin"] for e in gw.events if e.get("event") == "started")
    return metric(admin_get(f"http://{admin}/metrics")[1], "fastgw_connections", state="open")


def test_slow_reader_is_disconnected_and_the_upstream_released(send_gw, echo_origin):
    m = mark()
    s = small_window_client(send_gw.port)
    s.sendall(f"GET /down/{m}?size=50000000 HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
    t0 = time.monotonic()
    got, how = 0, None
    while time.monotonic() - t0 < 15:              # 512 B every 0.5 s (the response would take 14 hours)
        try:
            d = s.recv(512)
        except ConnectionResetError:
            how = "reset"
            break
        if not d:
            how = "closed"
            break
        got += len(d)
        time.sleep(0.5)
    elapsed = time.monotonic() - t0
    s.close()
    assert how is not None, f"a client reading 1 KiB/s was still served after {elapsed:.0f}s ({got} bytes)"
    head = echo_origin.heads_for(m)[0]
    assert echo_origin.wait_for(lambda: head.conn in echo_origin.ended, 2.0), "upstream connection still held"


def test_client_that_never_reads_is_reset(send_gw, echo_origin):
    # The client asks for 8 MB and reads nothing. Whether the gateway still holds part of the response
    # when the client stops (paused upstream) or has it all and closed the connection with output unsent
    # (Connection: close), the connection is reset send_timeout later: the worker forgets it, and the
    # kernel drops what it still queued (a reader coming back later gets a reset, not the 8 MB).
    base = open_connections(send_gw)
    m = mark()
    s = small_window_client(send_gw.port)
    s.sendall(f"GET /down/{m}?size=8000000 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".encode())
    time.sleep(0.3)
    deadline = time.monotonic() + 6
    while open_connections(send_gw) > base and time.monotonic() < deadline:
        time.sleep(0.1)
    assert open_connections(send_gw) == base, "a connection whose client never reads stays open"
    head = echo_origin.heads_for(m)[0]
    assert echo_origin.wait_for(lambda: head.conn in echo_origin.ended, 2.0), "upstream connection still held"
    got = 0
    with pytest.raises(ConnectionResetError):
        while d := s.recv(65536):
            got += len(d)
    assert got < 8000000
    s.close()


def test_steady_reader_gets_the_whole_response(send_gw):
    # A client that reads as fast as the gateway sends is never cut, however long the response takes.
    with send_gw.raw(timeout=10) as c:
        c.send(f"GET /down/{mark()}?size=20000000 HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
        try:
            r = c.read_response()
        except Closed as e:
            raise AssertionError(f"steady reader cut: {e}") from None
    assert r.status == 200 and len(r.body) == 20000000
