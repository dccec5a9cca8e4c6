"""Reload under load (issue 3): traffic throughout 30 reloads (SIGHUPs) alternating a valid config with an
invalid one, and not one request may fail or be reset."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.procutil import Gateway, Origin, admin_get, config, metric

# Each reload is signalled once the previous one has landed in the supervisor and (a valid one) in both
# workers, after SERVE_SECONDS of traffic under it: the same 30 reloads under load as a SIGHUP every
# second for 30 s (the test's first form), in about a fifth of the time, with no two SIGHUPs merged into one.
# 0.15 s: ~400 answers under each config (0.3 s served twice that in 4 s more); a /slow/200 request
# is still in flight across at least one reload.
RELOADS = 30
SERVE_SECONDS = 0.15


def _variant(origin: Origin, tag: str) -> str:
    # The two valid configs differ in a response header of the catch-all route, so the test can see the
    # swap take effect; they also add and remove a route, so the router itself changes.
    extra = ('\n[[routes]]\nname = "extra"\npath = "/extra"\nupstream = "origin"\n' if tag == "b" else "")
    return config(origin) + f'[routes.response_headers]\nadd = {{ "X-Config" = "{tag}" }}\n' + extra


def _invalid(origin: Origin, i: int) -> str:
    if i % 2:
        return config(origin).replace('upstream = "origin"', 'upstream = "orign"', 1)   # unknown upstream
    return config(origin) + "[server\n"                                                # TOML syntax error


def _read_response(s: socket.socket) -> bytes:
    """One response with a Content-Length body (reading until the body is complete, not until EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _wait_applied(gw: Gateway, gen: int, after: int, timeout: float = 15.0) -> None:
    """Both workers logged config_applied for generation `gen`."""
    deadline = time.monotonic() + timeout
    while sum(1 for e in gw.events[after:] if e.get("event") == "config_applied" and e.get("gen") == gen) < 2:
        assert time.monotonic() < deadline, f"generation {gen} not applied by both workers: {gw.events[-10:]}"
        time.sleep(0.02)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_thirty_reloads_under_load_fail_no_request(tmp_path: Path) -> None:
    origin = Origin()
    path = tmp_path / "gw.toml"
    _write(path, _variant(origin, "a"))
    gw = Gateway(path, workers=2)
    failures: list[str] = []
    ok = [0]
    tags: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def record(r: httpx.Response | None, err: str | None) -> None:
        with lock:
            if err is not None or r is None or r.status_code != 200:
                failures.append(err or f"status {r.status_code if r is not None else '?'}")
            else:
                ok[0] += 1
                tag = r.headers.get("x-config", "-")
                tags[tag] = tags.get(tag, 0) + 1

    def keepalive_client(path_: str) -> None:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            while not stop.is_set():
                try:
                    record(c.get(path_), None)
                except httpx.HTTPError as e:
                    record(None, f"{type(e).__name__}: {e}")

    def fresh_client() -> None:
        host, port = gw.listen.rsplit(":", 1)
        while not stop.is_set():
            try:
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    s.sendall(b"GET /fresh HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    data = _read_response(s)
                if not data.startswith(b"HTTP/1.1 200 "):
                    record(None, f"fresh: {data[:60]!r}")
                else:
                    with lock:
                        ok[0] += 1
            except OSError as e:
                record(None, f"fresh: {type(e).__name__}: {e}")

    try:
        gw.wait_ready()
        threads = [threading.Thread(target=keepalive_client, args=(p,))
                   for p in ("/hello", "/a", "/slow/40", "/slow/200")]
        threads.append(threading.Thread(target=fresh_client))
        for t in threads:
            t.start()
        reloads = {"valid": 0, "invalid": 0}
        for i in range(1, RELOADS + 1):
            time.sleep(SERVE_SECONDS)
            mark = len(gw.events)
            if i % 2:
                _write(path, _invalid(origin, i // 2))
                reloads["invalid"] += 1
                gw.signal(signal.SIGHUP)
                gw.wait_event("config_reload_failed", after=mark)
            else:
                _write(path, _variant(origin, "b" if (i // 2) % 2 else "a"))
                reloads["valid"] += 1
                gw.signal(signal.SIGHUP)
                gen = gw.wait_event("config_reload", after=mark)["gen"]
                _wait_applied(gw, gen, mark)
        stop.set()
        for t in threads:
            t.join(15)
        # Let the last reload land, then check the books.
        gw.wait_ready()
        text = admin_get(gw.admin_base + "/metrics")[1]
    finally:
        stop.set()
        gw.close()
        origin.close()

    print(f"{ok[0]} answered over {sum(reloads.values())} reloads; per config {tags}")
    assert failures == [], failures[:10]
    assert ok[0] > 1000, ok
    assert tags.get("a", 0) > 100 and tags.get("b", 0) > 100, tags      # both configs really served
    assert reloads["valid"] >= 14 and reloads["invalid"] >= 14
    assert metric(text, "fastgw_config_reloads_total", result="success") == reloads["valid"]
    assert metric(text, "fastgw_config_reloads_total", result="error") == reloads["invalid"]
    failed = [e for e in gw.events if e.get("event") == "config_reload_failed"]
    assert len(failed) == reloads["invalid"]
    assert any("routes[0].upstream: unknown upstream" in line for e in failed for line in e["errors"])
    assert any("TOML syntax error" in line for e in failed for line in e["errors"])
    assert metric(text, "fastgw_worker_restarts_total") == 0
