"""Operating the cache: the admin's PURGE/DELETE /cache (one key, a prefix, a whole route; bad arguments
answered 400 with the reason; reaching every worker over the control channel), the metric families
(fastgw_cache_requests_total by outcome, bytes, entries, evictions, coalesced waits), `fastgw check`
showing each cached route's key, and the config's checks. A real gateway process with 2 workers,
tests/cacheutil.py's origin, httpx and urllib."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from fastgw.config.root import ConfigError, loads
from tests.cacheutil import CacheOrigin, config, start
from tests.procutil import ROOT, admin_get, metric

H = [("hdr", "Cache-Control: max-age=600")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: Any) -> Iterator[tuple[Any, CacheOrigin]]:
    o = CacheOrigin().start()
    gw = start(tmp_path_factory.mktemp("cadmin"), config(o.addr, f"127.0.0.1:{free_port()}"), workers=2)
    yield gw, o
    gw.close()
    o.stop()


def fresh_connections(base: str) -> httpx.Client:
    """A client whose every request goes on a new connection (Connection: close), so that the requests
    spread over the workers; one client, not one per request (a Client costs ~20 ms to make)."""
    return httpx.Client(base_url=base, timeout=5, headers={"Connection": "close"})


def fill(base: str, path: str, params: list[tuple[str, str]] = ()) -> None:
    """Until both workers hold the entry (new connections spread over the workers)."""
    with fresh_connections(base) as c:
        for _ in range(40):
            c.get(path, params=[*H, *params])


def hits_everywhere(base: str, path: str, params: list[tuple[str, str]] = ()) -> bool:
    with fresh_connections(base) as c:
        return all(c.get(path, params=[*H, *params]).headers["cache-status"].startswith("fastgw; hit")
                   for _ in range(20))


def eventually_miss(base: str, path: str, params: list[tuple[str, str]] = ()) -> None:
    deadline = time.monotonic() + 5
    while hits_everywhere(base, path, params):
        assert time.monotonic() < deadline, "still served from the cache"
        time.sleep(0.1)


def test_purge_one_key_in_every_worker(env: Any) -> None:
    gw, o = env
    fill(gw.base, "/c/p1", [("page", "2"), ("x", "1")])
    fill(gw.base, "/c/p1")
    assert hits_everywhere(gw.base, "/c/p1", [("page", "2")])
    status, body, _ = admin_get(gw.admin_base + "/cache?route=c&key=/c/p1?x=9%26page=2", "PURGE")
    assert status == 202, body
    eventually_miss(gw.base, "/c/p1", [("page", "2")])
    assert hits_everywhere(gw.base, "/c/p1")                   # the other key stays


def test_purge_by_prefix_and_route(env: Any) -> None:
    gw, o = env
    for p in ("/c/pre/a", "/c/pre/b", "/c/other"):
        fill(gw.base, p)
    assert admin_get(gw.admin_base + "/cache?route=c&prefix=/c/pre/", "DELETE")[0] == 202
    eventually_miss(gw.base, "/c/pre/a")
    eventually_miss(gw.base, "/c/pre/b")
    assert hits_everywhere(gw.base, "/c/other")
    assert admin_get(gw.admin_base + "/cache?route=c", "PURGE")[0] == 202
    eventually_miss(gw.base, "/c/other")


@pytest.mark.parametrize("query,method,status,why", [
    ("route=nope", "PURGE", 400, "cached routes"),
    ("route=plain", "PURGE", 400, "cached routes"),
    ("route=c&key=/a&prefix=/b", "PURGE", 400, "not both"),
    ("route=c&key=a", "PURGE", 400, "starting with /"),
    ("route=c&bogus=1", "DELETE", 400, "arguments"),
    ("route=c", "GET", 405, "only DELETE, PURGE"),
])
def test_bad_purge_is_refused_with_the_reason(env: Any, query: str, method: str, status: int, why: str) -> None:
    gw, o = env
    got, body, _ = admin_get(gw.admin_base + "/cache?" + query, method)
    assert got == status and why in body


def test_metric_families(env: Any) -> None:
    gw, o = env
    fill(gw.base, "/c/m")
    with httpx.Client(base_url=gw.base, timeout=5) as c:
        c.post("/c/m")
        c.get("/c/nostore", params=[("hdr", "Cache-Control: no-store")])
    text = admin_get(gw.admin_base + "/metrics")[1]
    assert metric(text, "fastgw_cache_requests_total", route="c", status="hit") >= 30
    assert metric(text, "fastgw_cache_requests_total", route="c", status="miss") >= 1
    assert metric(text, "fastgw_cache_requests_total", route="c", status="bypass") >= 2
    assert 'fastgw_cache_requests_total{route="c",status="stale"}' in text
    assert 'fastgw_cache_requests_total{route="c",status="revalidated"}' in text
    assert metric(text, "fastgw_cache_bytes", cache="main") > 0
    assert metric(text, "fastgw_cache_entries", cache="main") >= 1
    assert 'fastgw_cache_evictions_total{cache="main"}' in text
    assert 'fastgw_cache_coalesced_total{route="c"}' in text
    assert "fastgw_cache_requests_total{route=\"plain\"" not in text


def test_evictions_keep_bytes_under_max_memory(tmp_path: Path) -> None:
    o = CacheOrigin().start()
    gw = start(tmp_path, config(o.addr, f"127.0.0.1:{free_port()}"))          # max_memory 1MiB
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            for i in range(200):                                             # 200 x ~11 KiB
                c.get("/c/ev", params=[*H, ("size", "10240"), ("page", str(i))])
            first = c.get("/c/ev", params=[*H, ("size", "10240"), ("page", "0")])
            last = c.get("/c/ev", params=[*H, ("size", "10240"), ("page", "199")])
        assert first.headers["cache-status"].startswith("fastgw; fwd=uri-miss")      # least recently used: gone
        assert last.headers["cache-status"].startswith("fastgw; hit")
        text = admin_get(gw.admin_base + "/metrics")[1]
        assert 0 < metric(text, "fastgw_cache_bytes", cache="main") <= 1024 * 1024
        assert metric(text, "fastgw_cache_evictions_total", cache="main") >= 100
    finally:
        gw.close()
        o.stop()


def test_check_shows_each_cached_routes_key(tmp_path: Path) -> None:
    cfg = tmp_path / "fastgw.toml"
    cfg.write_text(config("127.0.0.1:9", "127.0.0.1:9"))
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "c: cache main, key = method + host + path + query[page, sort] + Vary values;" in out.stdout
    assert "mine: cache keyed, key = method + host + path + no query + Vary values + consumer;" in out.stdout


@pytest.mark.parametrize("snippet,error", [
    ('[cache.x]\nmax_memory = "1KiB"', "cache.x.max_memory: at least 64KiB"),
    ('[cache.x]\nmax_memory = "1MiB"\nmax_object = "1MiB"', "cache.x.max_object: between 1 byte and a sixteenth"),
    ('[cache.x]\nquery = ["a b"]', "cache.x.query[0]"),
    ('[cache.x]\nquery = ["a", "a"]', "cache.x.query: a parameter is listed twice"),
    ('[cache.x]\nstale_if_error = "48h"', "cache.x.stale_if_error: between 0s and 86400s"),
    ('[cache.x]\nlock_timeout = "0s"', "cache.x.lock_timeout"),
    ('[cache.x]\nshared = true', "cache.x.shared: the Redis second level needs a [redis] section"),
    ('[cache.x]\nmax_memory = 5', "cache.x.max_memory"),
])
def test_config_errors_name_the_key(snippet: str, error: str) -> None:
    base = '[server]\nlisten = ["127.0.0.1:0"]\n[upstreams.u]\ntargets = ["127.0.0.1:1"]\n'
    with pytest.raises(ConfigError) as e:
        loads(base + snippet + '\n[[routes]]\nname = "r"\npath = "/*"\nupstream = "u"\ncache = "x"\n')
    assert error in str(e.value)


def test_route_naming_an_unknown_cache() -> None:
    base = '[server]\nlisten = ["127.0.0.1:0"]\n[upstreams.u]\ntargets = ["127.0.0.1:1"]\n'
    with pytest.raises(ConfigError) as e:
        loads(base + '[[routes]]\nname = "r"\npath = "/*"\nupstream = "u"\ncache = "x"\nmethods = ["POST"]\n')
    assert "routes[0].cache: no [cache.x] (known: none)" in str(e.value)


def test_reload_keeps_entries_and_adds_a_cache(tmp_path: Path) -> None:
    """A SIGHUP reload keeps the entries of a [cache.NAME] that still exists; a cache added by the reload
    works (and is counted) at once: its shared-memory sections exist from the start."""
    import signal

    o = CacheOrigin().start()
    cfg = tmp_path / "fastgw.toml"
    cfg.write_text(config(o.addr, f"127.0.0.1:{free_port()}"))
    gw = start_gateway(cfg)
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            c.get("/c/keep", params=H)
            assert "cache-status" not in c.get("/later", params=H).headers
            n = len(gw.events)
            cfg.write_text(cfg.read_text().replace('name = "plain"\npath = "/*"\nupstream = "origin"\n',
                                                   'name = "plain"\npath = "/*"\nupstream = "origin"\ncache = "keyed"\n'))
            gw.signal(signal.SIGHUP)
            gw.wait_event("config_applied", after=n)
            assert c.get("/c/keep", params=H).headers["cache-status"].startswith("fastgw; hit")
            c.get("/later", params=H)
            assert c.get("/later", params=H).headers["cache-status"].startswith("fastgw; hit")
        assert o.n("/c/keep") == 1 and o.n("/later") == 2          # /later: once before the reload
        text = admin_get(gw.admin_base + "/metrics")[1]
        assert metric(text, "fastgw_cache_requests_total", route="plain", status="hit") == 1
    finally:
        gw.close()
        o.stop()


def start_gateway(cfg: Path) -> Any:
    from tests.procutil import Gateway

    gw = Gateway(cfg, workers=1)
    gw.wait_ready()
    return gw
