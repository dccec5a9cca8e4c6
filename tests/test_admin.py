"""Admin listener and metrics, against a real supervisor with 2 workers and a real origin."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procutil import Gateway, Origin, admin_get, config, metric


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def gw(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    path = tmp_path_factory.mktemp("admin") / "gw.toml"
    path.write_text(config(origin, extra_server="access_log = true"))
    g = Gateway(path, workers=2)
    g.wait_ready()
    yield g
    g.close()


def test_health_and_ready(gw: Gateway) -> None:
    status, body, headers = admin_get(gw.admin_base + "/healthz")
    assert status == 200 and body == "ok\n"
    status, body, _ = admin_get(gw.admin_base + "/readyz")
    assert status == 200 and "2 workers" in body
    assert admin_get(gw.admin_base + "/healthz", method="HEAD")[0] == 200
    assert admin_get(gw.admin_base + "/nope")[0] == 404
    assert admin_get(gw.admin_base + "/metrics", method="POST")[0] == 405


def test_admin_rejects_garbage(gw: Gateway) -> None:
    host, port = gw.admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.1 431 ")


def test_admin_is_not_on_the_public_listener(gw: Gateway) -> None:
    # /metrics on the public port is just a path: the catch-all route proxies it to the origin.
    r = httpx.get(gw.base + "/metrics")
    assert r.text == "ok /metrics\n" and r.headers["x-origin"] == "o1"


def test_metrics_sum_over_workers(gw: Gateway) -> None:
    before = admin_get(gw.admin_base + "/metrics")[1]
    n_hello, n_post = 60, 7
    # Fresh connections spread over both workers' SO_REUSEPORT sockets.
    for _ in range(n_hello):
        assert httpx.get(gw.base + "/hello").status_code == 200
    for _ in range(n_post):
        assert httpx.post(gw.base + "/hello", content=b"x").status_code == 200   # the catch-all route
    host, port = gw.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\n\r\n")     # no Host: 400, before any route is chosen
        assert s.recv(1000).startswith(b"HTTP/1.1 400 ")
    time.sleep(0.6)   # let the access log batches flush (every quarter second)
    status, text, headers = admin_get(gw.admin_base + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")

    def delta(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert delta("fastgw_requests_total", route="hello", method="GET", status_class="2xx") == n_hello
    assert delta("fastgw_requests_total", route="all", method="POST", status_class="2xx") == n_post
    assert delta("fastgw_requests_total", route="(none)", method="other", status_class="4xx") == 1
    assert delta("fastgw_request_duration_seconds_count", route="hello") == n_hello
    assert delta("fastgw_request_duration_seconds_bucket", route="hello", le="+Inf") == n_hello
    assert metric(text, "fastgw_request_duration_seconds_sum", route="hello") > 0
    assert metric(text, "fastgw_workers", state="ready") == 2
    assert metric(text, "fastgw_config_reloads_total", result="error") == 0
    assert 'fastgw_config_version_info{hash="' in text
    # Both workers served some of the requests (per-worker counters really are summed).
    served_by = {e["worker"] for e in gw.access_lines() if e["path"] == "/hello"}
    assert served_by == {0, 1}


def test_access_log_lines(gw: Gateway) -> None:
    r = httpx.get(gw.base + "/hello?secret=1", headers={"X-Request-ID": "trace-me-123"})
    assert r.status_code == 200
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [e for e in gw.access_lines() if e.get("request_id") == "trace-me-123"]
        if lines:
            break
        time.sleep(0.05)
    assert len(lines) == 1
    line = lines[0]
    assert line["path"] == "/hello" and "secret" not in json.dumps(line)     # never the query string
    assert line["route"] == "hello" and line["status"] == 200 and line["method"] == "GET"
    assert 0 <= line["duration_ms"] < 1000 and abs(line["ts"] - time.time()) < 10


def test_upstream_errors_counted(origin: Origin, tmp_path: Path) -> None:
    # An upstream nobody listens on: 502 bad-gateway, counted per route.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    path = tmp_path / "gw.toml"
    path.write_text(config(origin).replace(origin.addr, f"127.0.0.1:{dead}"))
    g = Gateway(path, workers=1)
    try:
        g.wait_ready()
        for _ in range(3):
            assert httpx.get(g.base + "/hello").status_code == 502
        text = admin_get(g.admin_base + "/metrics")[1]
        assert metric(text, "fastgw_upstream_errors_total", route="hello", kind="bad_gateway") == 3
        assert metric(text, "fastgw_requests_total", route="hello", method="GET", status_class="5xx") == 3
    finally:
        g.close()


def test_metrics_off(origin: Origin, tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(config(origin).replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nmetrics = false'))
    g = Gateway(path, workers=1)
    try:
        g.wait_ready()
        assert httpx.get(g.base + "/hello").status_code == 200
        text = admin_get(g.admin_base + "/metrics")[1]
        assert "fastgw_requests_total" not in text and "fastgw_config_reloads_total" in text
    finally:
        g.close()
