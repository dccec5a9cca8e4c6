"""GatewayError: every failure says who failed (its source), whether the upstream can have processed
nothing of it (retryable), and which retry condition it meets; the exchange's one retry decision retries
(retry.attempts = 1 by default) what nothing reached, and an idempotent request lost before its response.
Real origins on loopback, a real gateway process; what the exchange decided is read from its access log
(`error_source`, `error_retryable`, `retried_after`, `attempts`). Retries on other targets, the budget and
the opt-in conditions: tests/test_resilience.py."""
from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from conftest import free_port
from upstreams import Head, ResetOrigin, StaleOrigin, reset

_marks = itertools.count()


def mark() -> str:
    return f"m{next(_marks)}-{time.monotonic_ns()}"


class ReuseResetOrigin(StaleOrigin):
    """Answers the first request on each connection; resets the connection (RST) on the second one's head,
    before any response byte: a kept-alive connection that breaks just as the gateway reuses it."""

    def drop(self, head: Head, writer: asyncio.StreamWriter) -> None:
        reset(writer)


@pytest.fixture(scope="module")
def origins():
    reset, reuse = ResetOrigin().start(), ReuseResetOrigin().start()
    yield reset, reuse
    reset.stop()
    reuse.stop()


@pytest.fixture(scope="module")
def gw(gateway_launcher, origins):
    reset, reuse = origins
    upstreams = {
        "refused": {"targets": [f"127.0.0.1:{free_port()}"]},
        "reset": {"targets": [reset.addr]},
        "reuse": {"targets": [reuse.addr]},
    }
    routes = [{"name": n, "path": f"/{n}/*", "upstream": n} for n in upstreams]
    return gateway_launcher.start(upstreams, routes, server={"access_log": True})


def access_line(gw, path: str, timeout: float = 5.0) -> dict:
    """The access line of the request for `path` (lines are written by the worker's quarter-second sweep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in gw.events:
            if e.get("type") == "access" and e.get("path") == path:
                return e
        time.sleep(0.05)
    raise AssertionError(f"no access line for {path}")


def test_connect_failure_is_upstream_connect_retryable_and_retried_once(gw):
    path = f"/refused/{mark()}"
    with gw.client() as client:
        r = client.post(path, content=b"nothing was sent")    # any method: nothing reached the upstream
    assert r.status_code == 502 and r.json()["upstream_error"] == "connect refused", r.text
    line = access_line(gw, path)
    assert line["error_source"] == "upstream_connect"
    assert line["error_retryable"] is True
    assert line["retried_after"] == "upstream_connect"          # the only target, once more: refused again
    assert line["attempts"] == f"{line['target']} connect refused; {line['target']} connect refused"


def test_reset_on_a_fresh_connection_is_retried_for_a_get_only(gw, origins):
    reset, _ = origins
    path, post = f"/reset/{mark()}", f"/reset/{mark()}"
    with gw.client() as client:
        r = client.get(path)
        assert client.post(post, content=b"once").status_code == 502
    assert r.status_code == 502, r.text
    line = access_line(gw, path)
    assert line["error_source"] == "upstream_response"
    assert line["error_retryable"] is False            # nothing says the upstream did not act on it...
    assert line["upstream_error"] == "reset"
    assert line["retried_after"] == "upstream_response"  # ...but a GET may be repeated
    assert len([h for h in reset.heads if h.target == path]) == 2, "expected exactly one retry"
    assert "retried_after" not in access_line(gw, post)
    assert len([h for h in reset.heads if h.target == post]) == 1, "a POST was sent twice"


def test_reset_on_a_reused_connection_is_retryable_and_retried_once(gw, origins):
    _, reuse = origins
    warm, path = f"/reuse/warm-{mark()}", f"/reuse/{mark()}"
    with gw.client() as client:
        assert client.get(warm).status_code == 200
        r = client.get(path)                   # on the pooled connection, which the origin resets
    assert r.status_code == 200, r.text
    assert r.json()["target"] == path
    line = access_line(gw, path)
    assert line["retried_after"] == "upstream_response"  # the reset was retryable, and was retried
    assert "error_source" not in line                   # ... and the retry succeeded
    assert len([h for h in reuse.heads if h.target == path]) == 2, "expected exactly one retry"


def test_the_same_reset_is_not_retryable_for_a_request_with_a_body(gw, origins):
    _, reuse = origins
    warm, path = f"/reuse/warm-{mark()}", f"/reuse/{mark()}"
    with gw.client() as client:
        assert client.get(warm).status_code == 200
        r = client.post(path, content=b"sent once")
    assert r.status_code == 502, r.text
    line = access_line(gw, path)
    assert line["error_source"] == "upstream_response"
    assert line["error_retryable"] is False
    assert "retried_after" not in line
    assert len([h for h in reuse.heads if h.target == path]) == 1, "a request with a body was sent twice"


def test_a_request_no_route_matches_is_the_downstream_s_failure(gw):
    path = f"/nowhere/{mark()}"
    with gw.client() as client:
        assert client.get(path).status_code == 404
    line = access_line(gw, path)
    assert line["error_source"] == "downstream" and line["error_retryable"] is False
    assert "upstream_error" not in line
