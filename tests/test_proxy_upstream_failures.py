"""Upstream failures: refused, reset, invalid HTTP, slow, closed mid-body, stale pooled connections.

Failures before the response starts become problem+json answers (docs/errors.md); a failure after
the response started must close the client connection, never pass a truncated body off as complete.
"""
from __future__ import annotations

import time
import uuid

import httpx
import pytest
from conftest import free_port
from upstreams import assert_raw_problem, pattern, request

UPSTREAM_TIMEOUT = 0.5
SWEEP = 0.3


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin, reset_origin, garbage_origin, slow_origin, midbody_origin,
       close_delimited_origin, stale_origin, idle_close_origin):
    ups = {
        "ok": {"targets": [echo_origin.addr]},
        "refused": {"targets": [f"127.0.0.1:{free_port()}"]},
        "reset": {"targets": [reset_origin.addr]},
        "garbage": {"targets": [garbage_origin.addr]},
        "slow": {"targets": [slow_origin.addr], "timeout": f"{int(UPSTREAM_TIMEOUT * 1000)}ms"},
        "late": {"targets": [echo_origin.addr], "timeout": f"{int(UPSTREAM_TIMEOUT * 1000)}ms"},
        "midbody": {"targets": [midbody_origin.addr]},
        "closedelim": {"targets": [close_delimited_origin.addr]},
        "stale": {"targets": [stale_origin.addr]},
        "idleclose": {"targets": [idle_close_origin.addr]},
    }
    routes = [{"name": name, "path": f"/{name}/*", "upstream": name} for name in ups]
    return gateway_launcher.start(ups, routes)


def mark() -> str:
    return uuid.uuid4().hex[:12]


def problem_then_usable(gw, req: bytes, status: int, slug: str, instance: str) -> None:
    """`req` gets the problem response; if the gateway keeps the connection, it must still work."""
    with gw.raw() as c:
        c.send(req)
        r = c.read_response()
        assert_raw_problem(r, status, slug, instance)
        if "close" not in r.conn_tokens:
            c.send(request("GET", "/ok/after-failure"))
            r2 = c.read_response()
            assert r2.status == 200 and r2.json()["target"] == "/ok/after-failure"


def test_refused_connection(gw):
    # A refused connection is 502 bad-gateway (issue 2); 503 is kept for "no usable target".
    problem_then_usable(gw, request("GET", "/refused/x"), 502, "bad-gateway", "/refused/x")


def test_refused_connection_with_body(gw):
    problem_then_usable(gw, request("POST", "/refused/y", body=b"a" * 1000), 502, "bad-gateway",
                        "/refused/y")


def test_reset_by_upstream(gw, reset_origin):
    m = mark()
    problem_then_usable(gw, request("GET", f"/reset/{m}"), 502, "bad-gateway", f"/reset/{m}")


def test_reset_by_upstream_post_not_retried(gw, reset_origin):
    m = mark()
    problem_then_usable(gw, request("POST", f"/reset/{m}", body=b"payload"), 502, "bad-gateway", f"/reset/{m}")
    assert len(reset_origin.heads_for(m)) == 1


def test_invalid_http_from_upstream(gw):
    problem_then_usable(gw, request("GET", "/garbage/x"), 502, "bad-gateway", "/garbage/x")


def test_slow_upstream_times_out(gw):
    with gw.raw() as c:
        c.send(request("GET", "/slow/x"))
        t0 = time.monotonic()
        r = c.read_response()
        elapsed = time.monotonic() - t0
    assert_raw_problem(r, 504, "upstream-timeout", "/slow/x")
    assert UPSTREAM_TIMEOUT - SWEEP <= elapsed <= UPSTREAM_TIMEOUT + 1.5, elapsed


def test_timed_out_upstream_connection_not_reused(gw):
    # The late answer to the first request must never be delivered as the answer to the next one.
    with gw.raw() as c:
        c.send(request("GET", f"/late/first?delay={UPSTREAM_TIMEOUT + 0.5}"))
        assert_raw_problem(c.read_response(), 504, "upstream-timeout")
    time.sleep(0.1)
    with gw.client() as client:
        for i in range(3):
            r = client.get(f"/late/next{i}")
            assert r.status_code == 200 and r.json()["target"] == f"/late/next{i}", r.text
        time.sleep(0.6)             # the late response has now reached the gateway
        r = client.get("/late/last")
        assert r.status_code == 200 and r.json()["target"] == "/late/last", r.text


def test_httpx_sees_problem_json(gw):
    with gw.client() as client:
        r = client.get("/garbage/httpx")
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["type"] == "urn:fastgw:problem:bad-gateway" and doc["request_id"] == r.headers["x-request-id"]


# ---------------------------------------------------------------------------------------------------
# Failures after the response started

def test_upstream_closes_mid_body_content_length(gw):
    with gw.raw() as c:
        c.send(request("GET", "/midbody/cl"))
        h = c.read_head()
        assert h.status == 200 and h.header("content-length") == "100000"
        rest = c.read_to_end()
        assert c.eof
    assert len(rest) < 100_000, "the client got a complete body the origin never sent"
    assert rest == pattern(0, len(rest))


def test_upstream_closes_mid_body_chunked(gw):
    with gw.raw() as c:
        c.send(request("GET", "/midbody/chunked?te=chunked"))
        h = c.read_head()
        assert h.status == 200 and h.header("transfer-encoding") == "chunked", h.raw_head
        rest = c.read_to_end()
        assert c.eof
    assert not rest.endswith(b"0\r\n\r\n"), "the truncated response was terminated as complete"
    assert len(rest) < 100_000


def test_upstream_closes_mid_body_seen_by_httpx(gw):
    with gw.client() as client, pytest.raises(httpx.TransportError):
        client.get("/midbody/httpx")


def test_close_delimited_response_relayed_complete(gw):
    with gw.raw() as c:
        c.send(request("GET", "/closedelim/x"))
        r = c.read_response()
        assert r.status == 200 and r.chunked, r.raw_head
        assert r.body == pattern(0, 300_000)
        c.send(request("GET", "/ok/after-close-delimited"))
        assert c.read_response().json()["target"] == "/ok/after-close-delimited"


# ---------------------------------------------------------------------------------------------------
# Pooled connections the origin closed

def test_stale_pooled_connection_retried_for_get(gw, stale_origin):
    m = mark()
    with gw.client() as client:
        first = client.get(f"/stale/warm-{m}")
        assert first.status_code == 200
        r = client.get(f"/stale/{m}")          # goes out on the pooled connection, which the origin drops
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["target"] == f"/stale/{m}"
    assert doc["conn"] != first.json()["conn"], "served on the dropped connection?"
    assert len(stale_origin.heads_for(f"/stale/{m}")) == 2, "expected one retry on a fresh connection"


def test_stale_pooled_connection_not_retried_for_post(gw, stale_origin):
    m = mark()
    with gw.client() as client:
        assert client.get(f"/stale/warm-{m}").status_code == 200
        r = client.post(f"/stale/{m}", content=b"not idempotent")
    assert r.status_code == 502, r.text
    assert r.json()["type"] == "urn:fastgw:problem:bad-gateway"
    assert len(stale_origin.heads_for(f"/stale/{m}")) == 1, "a POST with a body was sent twice"


def test_origin_closed_idle_connection_not_reused(gw, idle_close_origin):
    # The origin closes each connection 50 ms after answering; by the next request the gateway has seen
    # the close, so even a POST (never retried) must go out on a fresh connection.
    with gw.client() as client:
        for i in range(3):
            r = client.post(f"/idleclose/{i}", content=b"body %d" % i)
            assert r.status_code == 200, r.text
            assert r.json()["body"] == f"body {i}"
            time.sleep(0.15)
    assert idle_close_origin.connections >= 3
