"""A client that goes away before its request body ends (issue 11 item 5).

The request can never complete, so the upstream request is aborted at once: its connection is closed
(never pooled: the upstream is mid-request on it) and the exchange is recorded in the access log with
status 499, nginx's "client closed request". Before the fix the incomplete request stayed open upstream
until the upstream timeout and was then logged as a 504 that nobody received.
"""
from __future__ import annotations

import socket
import struct
import time
import uuid

import pytest

UPSTREAM_TIMEOUT = 10.0      # far beyond the time the test allows for the abort


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin):
    ups = {"echo": {"targets": [echo_origin.addr], "timeout": f"{int(UPSTREAM_TIMEOUT)}s"}}
    routes = [{"name": "abort", "path": "/abort/*", "upstream": "echo"}]
    return gateway_launcher.start(ups, routes, limits={"body_timeout": "20s"}, server={"access_log": True})


def access_line(gw, path: str, timeout: float = 3.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in list(gw.events):
            if ev.get("type") == "access" and ev.get("path") == path:
                return ev
        time.sleep(0.05)
    return None


def start_upload(gw, origin, path: str) -> socket.socket:
    """A POST promising 100000 body bytes, 1000 of them sent; returns once the origin has them."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
    assert origin.wait_for(lambda: origin.progress.get(path, 0) >= 1000), "the body never reached the origin"
    return s


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_body_aborts_the_upstream_request(gw, echo_origin, how):
    path = f"/abort/{uuid.uuid4().hex[:12]}"
    s = start_upload(gw, echo_origin, path)
    head = echo_origin.heads_for(path)[0]
    if how == "reset":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t0 = time.monotonic()
    s.close()
    # The upstream connection is closed at once, mid-body (the origin sees an incomplete request).
    assert echo_origin.wait_for(lambda: head.conn in echo_origin.ended, timeout=2.0), \
        f"upstream request still open {time.monotonic() - t0:.1f}s after the client went away"
    assert head in echo_origin.incomplete
    assert not echo_origin.requests_for(path)
    line = access_line(gw, path)
    assert line is not None, "no access-log line for the aborted request"
    assert line["status"] == 499 and line["method"] == "POST" and line["route"] == "abort", line
    assert line["duration_ms"] < 2000, line


def test_next_request_gets_a_fresh_upstream_connection(gw, echo_origin):
    path = f"/abort/{uuid.uuid4().hex[:12]}"
    s = start_upload(gw, echo_origin, path)
    aborted = echo_origin.heads_for(path)[0].conn
    s.close()
    assert echo_origin.wait_for(lambda: aborted in echo_origin.ended, timeout=2.0)
    with gw.client() as c:
        for i in range(3):
            r = c.get(f"/abort/after-{i}")
            assert r.status_code == 200 and r.json()["conn"] != aborted, r.text
