"""What the RateLimit fields promise a client (draft-ietf-httpapi-ratelimit-headers-10), end to end with
real gateways, the real echo origin and (strict mode) a real redis-server:

- `t` is the number of seconds until more quota is made available (§4.1.2): for a token bucket, the next
  token, not the moment the bucket is full again; on a 429 it is the wait before the same request can
  pass, and Retry-After says the same number (§6: Retry-After never earlier than t).
- With several limits, a 429 reports the refusing limit that keeps the request waiting longest.
- RateLimit-Policy describes a token bucket as the rate it refills (`q` per `w` seconds) and says a burst
  other than the count in `fastgw-burst`, so "10/s, burst 1" is not advertised as one request a second.
"""
from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import rlutil

ROUTES = '''
[[routes]]
name = "slow"
path = "/slow/*"
upstream = "origin"
plan = "slow"

[[routes]]
name = "spike"
path = "/spike/*"
upstream = "origin"
plan = "spike"

[[routes]]
name = "both"
path = "/both/*"
upstream = "origin"
plan = "both"
'''


def plans(sync: str) -> str:
    return f'''
[plans.slow]
limits = [{{ rate = "3/min", key = ["header:X-Key"] }}]
sync = "{sync}"

[plans.spike]
limits = [{{ rate = "10/s", burst = 1, key = ["header:X-Key"] }}]
sync = "{sync}"

[plans.both]
limits = [{{ rate = "60/min", burst = 1, key = ["header:X-Key"] }}, {{ quota = "1/hour", key = ["header:X-Key"] }}]
sync = "{sync}"
'''


def _t(r: httpx.Response) -> int:
    name, remaining, t = r.headers["RateLimit"].split(";")
    assert remaining.startswith("r=") and t.startswith("t=")
    return int(t[2:])


def _check(gw_base: str) -> None:
    key = {"X-Key": uuid.uuid4().hex}
    with httpx.Client(base_url=gw_base, timeout=5) as c:
        # 3/min, burst 3: a token every 20 s. After each request the next token is 20 s away, however
        # many are left; the 429 says 20 in t and in Retry-After (it used to say t=60, Retry-After 20).
        seen = [c.get(f"/slow/{i}", headers=key) for i in range(4)]
        assert [r.status_code for r in seen] == [200, 200, 200, 429]
        assert all(r.headers["RateLimit-Policy"] == '"rate";q=3;w=60' for r in seen)
        assert [r.headers["RateLimit"] for r in seen] == ['"rate";r=2;t=20', '"rate";r=1;t=20',
                                                          '"rate";r=0;t=20', '"rate";r=0;t=20']
        assert seen[3].headers["Retry-After"] == "20"

        # 10/s with burst 1 (spike arrest): ten a second, one at a time. Advertised as such, and a
        # client that waits the 100 ms is served, well before the second that "q=1;w=1" would imply.
        first = c.get("/spike/a", headers=key)
        again = c.get("/spike/b", headers=key)
        assert first.status_code == 200 and again.status_code == 429
        for r in (first, again):
            assert r.headers["RateLimit-Policy"] == '"rate";q=10;w=1;fastgw-burst=1'
        assert again.headers["RateLimit"] == '"rate";r=0;t=1' and again.headers["Retry-After"] == "1"
        time.sleep(0.15)
        assert c.get("/spike/c", headers=key).status_code == 200

        # Two limits: after one request the rate (one a second) and the hourly quota are both spent.
        # The 429 reports the quota (the longer wait): Retry-After and t are the seconds to the next UTC
        # hour, not the 1 s after which the rate alone would admit the request.
        now = datetime.now(UTC)
        if now.minute == 59 and now.second >= 55:      # keep both requests inside one calendar hour
            time.sleep(6)
        ok = c.get("/both/1", headers=key)
        refused = c.get("/both/2", headers=key)
        now = datetime.now(UTC)
        to_hour = ((now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0) - now).total_seconds()
        assert ok.status_code == 200 and refused.status_code == 429
        assert refused.json()["type"] == "urn:fastgw:problem:quota-exceeded"
        assert refused.headers["RateLimit"].startswith('"hour";r=0;t=')
        assert int(refused.headers["Retry-After"]) == _t(refused)
        assert abs(_t(refused) - to_hour) <= 2


def test_reset_is_the_next_token_and_agrees_with_retry_after_local(tmp_path: Path, echo_origin) -> None:
    gw = rlutil.start(tmp_path, rlutil.config(echo_origin.addr, ROUTES, plans("local")), workers=1)
    try:
        _check(gw.base)
    finally:
        gw.close()


def test_reset_is_the_next_token_and_agrees_with_retry_after_strict(tmp_path: Path, echo_origin,
                                                                    redis_server) -> None:
    """The same answers when the buckets live in Redis (the TAKE script computes t)."""
    text = rlutil.config(echo_origin.addr, ROUTES, plans("strict"), redis_server.url) + 'timeout = "250ms"\n'
    gw = rlutil.start(tmp_path, text, workers=1)
    try:
        _check(gw.base)
    finally:
        gw.close()
