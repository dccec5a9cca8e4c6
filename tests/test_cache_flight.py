"""Single-flight: concurrent misses for one key send one request upstream per pod; the others wait (at
most lock_timeout) and are answered from what it stored, with Cache-Status "collapsed", in the other
workers too (the answer handed over through the shared-memory table, fastgw/policies/cache/flights.py);
when the leader's response may not be stored (Set-Cookie) the waiters go upstream themselves and none of
them gets the leader's Set-Cookie. A real gateway process, tests/cacheutil.py's slow origin, 200
concurrent httpx requests."""
from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from tests.cacheutil import CacheOrigin, config, start
from tests.procutil import admin_get, metric

N = 200


async def burst(base: str, path: str, params: list[tuple[str, str]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=N, max_keepalive_connections=N)
    async with httpx.AsyncClient(base_url=base, timeout=20, limits=limits) as c:
        return await asyncio.gather(*(c.get(path, params=params) for _ in range(N)))


def run(tmp_path: Path, workers: int, path: str, params: list[tuple[str, str]],
        leader_only: bool = False) -> tuple[Any, CacheOrigin, list[httpx.Response]]:
    """`leader_only`: only the first request upstream is held; the waiters that go upstream after it are
    answered at once (they are sent once the leader's answer is in: the hold has gathered them)."""
    o = CacheOrigin().start()
    # The leader's response takes a while: the others pile up. Long enough for all 200 to arrive during
    # the flight on a loaded machine (0.5 s let a third of them arrive after the entry was stored).
    o.delay = 2.0
    gw = start(tmp_path, config(o.addr, f"127.0.0.1:{free_port()}"), workers=workers)
    try:
        if leader_only:
            def release() -> None:
                if o.wait_for(lambda: o.n(path) >= 1, 20):
                    o.delay = 0.0
            threading.Thread(target=release, daemon=True).start()
        rs = asyncio.run(burst(gw.base, path, params))
        return gw, o, rs
    except BaseException:
        gw.close()
        o.stop()
        raise


def test_200_cold_requests_one_origin_request_per_worker(tmp_path: Path) -> None:
    gw, o, rs = run(tmp_path, 1, "/c/cold", [("hdr", "Cache-Control: max-age=60")])
    try:
        assert all(r.status_code == 200 for r in rs)
        assert len({r.content for r in rs}) == 1
        assert o.n("/c/cold") == 1
        statuses = [r.headers["cache-status"] for r in rs]
        assert statuses.count("fastgw; fwd=uri-miss; fwd-status=200; stored") == 1
        assert sum(bool(re.fullmatch(r"fastgw; fwd=uri-miss; collapsed; ttl=\d+", s)) for s in statuses) >= N - 20
        text = admin_get(gw.admin_base + "/metrics")[1]
        assert metric(text, "fastgw_cache_coalesced_total", route="c") >= N - 20
        assert metric(text, "fastgw_cache_requests_total", route="c", status="miss") == 1
    finally:
        gw.close()
        o.stop()


def test_200_cold_requests_across_two_workers_one_origin_request(tmp_path: Path) -> None:
    gw, o, rs = run(tmp_path, 2, "/c/cold2", [("hdr", "Cache-Control: max-age=60")])
    try:
        assert all(r.status_code == 200 for r in rs)
        assert len({r.content for r in rs}) == 1
        assert o.n("/c/cold2") == 1
        assert len({r.headers["x-request-id"].split("-")[0] for r in rs}) == 2      # both workers answered
        # Both workers answered some (new connections spread over them), and both hold the entry now.
        text = admin_get(gw.admin_base + "/metrics")[1]
        assert metric(text, "fastgw_cache_coalesced_total", route="c") >= N - 20
        for _ in range(10):
            with httpx.Client(base_url=gw.base, timeout=5) as c:
                assert c.get("/c/cold2", params=[("hdr", "Cache-Control: max-age=60")]).headers[
                    "cache-status"].startswith("fastgw; hit")
        assert o.n("/c/cold2") == 1
    finally:
        gw.close()
        o.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_waiters_never_get_the_leaders_set_cookie(tmp_path: Path, workers: int) -> None:
    gw, o, rs = run(tmp_path, workers, "/c/cookie", [("hdr", "Cache-Control: max-age=60"), ("hdr", "Set-Cookie: sid=1")],
                    leader_only=True)
    try:
        assert all(r.status_code == 200 for r in rs)
        assert o.n("/c/cookie") == N                     # each went upstream and got its own answer
        assert len({r.json()["conn"] * 100000 + r.json()["seq"] for r in rs}) == N
    finally:
        gw.close()
        o.stop()
