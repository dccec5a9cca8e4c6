"""The Redis second level (`shared = true`) with two gateway instances and a real redis-server: what one
instance stored the other serves without the upstream (Cache-Status detail=shared, Age carried over),
an unsafe method and a purge on one instance drop the key for both, and with Redis down each instance
goes on from its own memory (no error, no wait). tests/cacheutil.py's origin, httpx."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from tests.cacheutil import CacheOrigin, config, start
from tests.procutil import admin_get

H = [("hdr", "Cache-Control: max-age=600")]


@pytest.fixture()
def pair(tmp_path: Path, redis_server: Any) -> Any:
    o = CacheOrigin().start()
    text = config(o.addr, f"127.0.0.1:{free_port()}").replace(
        '[cache.keyed]', f'shared = true\n[redis]\nurl = "{redis_server.url}"\n[cache.keyed]')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start(tmp_path / "a", text)
    b = start(tmp_path / "b", text)
    try:
        yield a, b, o, redis_server
    finally:
        a.close()
        b.close()
        o.stop()


def get(gw: Any, path: str) -> httpx.Response:
    """The same Host at both instances (the key holds the host), as behind one public name."""
    with httpx.Client(base_url=gw.base, timeout=10) as c:
        return c.get(path, params=H, headers={"Host": "api.test"})


def eventually(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_one_instance_stores_the_other_serves(pair: Any) -> None:
    a, b, o, redis = pair
    first = get(a, "/c/fleet")
    assert "stored" in first.headers["cache-status"]
    eventually(lambda: redis.command("EXISTS", "fastgw:cache:c::api.test /c/fleet") == b":1\r\n")
    r = get(b, "/c/fleet")
    assert r.content == first.content
    assert re.fullmatch(r"fastgw; hit; ttl=\d+; detail=shared", r.headers["cache-status"]), r.headers["cache-status"]
    assert o.n("/c/fleet") == 1
    assert get(b, "/c/fleet").headers["cache-status"].startswith("fastgw; hit; ttl=")   # now in b's memory


def test_unsafe_method_and_purge_reach_the_second_level(pair: Any) -> None:
    a, b, o, redis = pair
    get(a, "/c/inv")
    time.sleep(0.2)
    with httpx.Client(base_url=a.base, timeout=10) as c:
        assert c.post("/c/inv", headers={"Host": "api.test"}).status_code == 200
    time.sleep(0.2)
    assert get(b, "/c/inv").headers["cache-status"].startswith("fastgw; fwd=uri-miss")
    get(a, "/c/purged")
    time.sleep(0.2)
    assert admin_get(a.admin_base + "/cache?route=c&prefix=/c/pur", "PURGE")[0] == 202
    time.sleep(0.5)
    assert get(b, "/c/purged").headers["cache-status"].startswith("fastgw; fwd=uri-miss")
    assert o.n("/c/purged") == 2


def test_redis_down_memory_only(pair: Any) -> None:
    a, b, o, redis = pair
    redis.kill()
    t0 = time.monotonic()
    r = get(b, "/c/down")
    assert r.status_code == 200 and "stored" in r.headers["cache-status"]
    assert get(b, "/c/down").headers["cache-status"].startswith("fastgw; hit")
    assert time.monotonic() - t0 < 3
    assert o.n("/c/down") == 1
