"""Stale answers (RFC 5861 through RFC 9111 4.2.4) with an origin that goes slow and then down:
stale-while-revalidate serves the stale entry at once and refreshes it with one background conditional
request (a 304 freshens it); stale-if-error serves it on the origin's 5xx and on the gateway's own 502
(connection refused); both stop at the window's end; must-revalidate forbids both. A real gateway
process, tests/cacheutil.py's origin, httpx."""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from tests.cacheutil import CacheOrigin, config, start


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[tuple[Any, CacheOrigin, httpx.Client]]:
    o = CacheOrigin().start()
    gw = start(tmp_path, config(o.addr, f"127.0.0.1:{free_port()}"))
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            yield gw, o, c
    finally:
        gw.close()
        o.stop()


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_stale_while_revalidate_then_background_304(setup: Any) -> None:
    gw, o, c = setup
    p = [("hdr", "Cache-Control: max-age=1, stale-while-revalidate=20"), ("etag", '"r1"')]
    first = c.get("/c/swr", params=p)
    time.sleep(1.3)
    o.delay = 1.5                                          # the origin goes slow
    t0 = time.monotonic()
    r = c.get("/c/swr", params=p)
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.content == first.content and took < 1.0
    assert re.fullmatch(r"fastgw; hit; ttl=-[0-9]+; detail=stale-while-revalidate", r.headers["cache-status"])
    assert int(r.headers["age"]) >= 1
    wait_until(lambda: o.n("/c/swr") == 2)                # one background request, conditional
    assert o.seen[-1].values("if-none-match") == ['"r1"']
    c.get("/c/swr", params=p)                              # while it is out: still stale, no second one
    o.delay = 0
    wait_until(lambda: re.fullmatch(r"fastgw; hit; ttl=[01]", c.get("/c/swr", params=p).headers["cache-status"]))
    assert o.n("/c/swr") == 2


def test_stale_if_error_on_5xx_and_on_connection_failure(setup: Any) -> None:
    gw, o, c = setup
    p = [("hdr", "Cache-Control: max-age=1, stale-if-error=60")]
    first = c.get("/c/sie", params=p)
    time.sleep(1.2)
    o.mode = "503"
    r = c.get("/c/sie", params=p)
    assert r.status_code == 200 and r.content == first.content
    assert re.fullmatch(r"fastgw; fwd=stale; fwd-status=503; ttl=-[0-9]+; detail=stale-if-error",
                        r.headers["cache-status"])
    o.mode = "drop"                                        # the gateway's own 502
    r = c.get("/c/sie", params=p)
    assert r.status_code == 200 and r.content == first.content
    assert "fwd-status=502" in r.headers["cache-status"]
    o.mode = "ok"
    r = c.get("/c/sie", params=p)
    assert r.headers["cache-status"].startswith("fastgw; fwd=stale; fwd-status=200; stored")


def test_no_stale_without_permission_or_with_must_revalidate(setup: Any) -> None:
    gw, o, c = setup
    for path, cc in (("/c/nostale", "max-age=1"), ("/c/mustrev", "max-age=1, must-revalidate, stale-if-error=60")):
        c.get(path, params=[("hdr", f"Cache-Control: {cc}")])
        time.sleep(1.2)
        o.mode = "503"
        r = c.get(path, params=[("hdr", f"Cache-Control: {cc}")])
        assert r.status_code == 503 and r.content == b"down"
        o.mode = "ok"


def test_stale_if_error_ends_with_its_window(tmp_path: Path) -> None:
    """The route's maximum bounds what the response asks: stale_if_error = "2s" in [cache.main]."""
    o = CacheOrigin().start()
    gw = start(tmp_path, config(o.addr, f"127.0.0.1:{free_port()}").replace('stale_if_error = "60s"',
                                                                            'stale_if_error = "2s"'))
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            p = [("hdr", "Cache-Control: max-age=1, stale-if-error=3600")]
            c.get("/c/window", params=p)
            time.sleep(1.2)
            o.mode = "503"
            assert c.get("/c/window", params=p).status_code == 200       # 0.2 s stale: within 2 s
            time.sleep(2.2)
            assert c.get("/c/window", params=p).status_code == 503       # 2.4 s stale: past the route's 2 s
    finally:
        gw.close()
        o.stop()
