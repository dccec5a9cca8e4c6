"""Local limits end to end: real gateway processes, the real echo origin (tests/upstreams.py).

Header values are checked exactly (draft-ietf-httpapi-ratelimit-headers-10 form), a rejected request
never reaches the origin, and a limit holds per host across 2 workers however connections are spread.
"""
from __future__ import annotations

import http.client
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import rlutil
from procutil import metric

ROUTES = '''
[[routes]]
name = "limited"
path = "/limited/*"
upstream = "origin"
plan = "slow"

[[routes]]
name = "daily"
path = "/daily/*"
upstream = "origin"
plan = "daily"

[[routes]]
name = "shadow"
path = "/shadow/*"
upstream = "origin"
plan = "shadow"

[[routes]]
name = "free"
path = "/free/*"
upstream = "origin"
'''

PLANS = '''
[plans.slow]
limits = [{ rate = "3/min", key = ["header:X-Key"] }]

[plans.daily]
limits = [{ quota = "2/day", key = ["header:X-Key"] }, { rate = "100/s", burst = 100, key = ["header:X-Key"] }]

[plans.shadow]
limits = [{ rate = "2/min", burst = 2, enforce = false, key = ["header:X-Key"] }]

[ratelimit]
table_size = "1MiB"
'''


def test_headers_exact_and_rejections_not_forwarded(tmp_path: Path, echo_origin) -> None:
    gw = rlutil.start(tmp_path, rlutil.config(echo_origin.addr, ROUTES, PLANS), workers=1)
    try:
        marker = uuid.uuid4().hex
        key = {"X-Key": marker}
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            seen = []
            for i in range(5):
                r = c.get(f"/limited/{marker}/{i}", headers=key)
                seen.append(r)
            # 3/min, burst 3 (default: the rate's count): one token every 20 s; t is the time to the
            # next one (draft-ietf-httpapi-ratelimit-headers-10 §4.1.2), which the 429's Retry-After repeats.
            assert [r.status_code for r in seen] == [200, 200, 200, 429, 429]
            for r in seen:
                assert r.headers["RateLimit-Policy"] == '"rate";q=3;w=60'
            assert [r.headers["RateLimit"] for r in seen[:3]] == ['"rate";r=2;t=20', '"rate";r=1;t=20',
                                                                  '"rate";r=0;t=20']
            assert seen[3].headers["RateLimit"] == '"rate";r=0;t=20'
            assert seen[3].headers["Retry-After"] == "20"
            assert "Retry-After" not in seen[0].headers
            problem = seen[3].json()
            assert seen[3].headers["Content-Type"] == "application/problem+json"
            assert problem["type"] == "urn:fastgw:problem:rate-limited" and problem["status"] == 429
            # The origin saw exactly the three admitted requests.
            assert echo_origin.wait_for(lambda: len(echo_origin.heads_for(marker)) >= 3)
            time.sleep(0.2)
            assert sorted(h.target for h in echo_origin.heads_for(marker)) == [
                f"/limited/{marker}/{i}" for i in range(3)]

            # Another key has its own budget; a route without a plan has no headers.
            other = c.get(f"/limited/{marker}/x", headers={"X-Key": marker + "-2"})
            assert other.status_code == 200 and other.headers["RateLimit"] == '"rate";r=2;t=20'
            free = c.get(f"/free/{marker}")
            assert free.status_code == 200
            assert "RateLimit" not in free.headers and "RateLimit-Policy" not in free.headers

            # Quota: 2 per UTC day; t is the time to the next UTC midnight; a refusal is quota-exceeded.
            qkey = {"X-Key": marker + "-q"}
            q = [c.get(f"/daily/{marker}/{i}", headers=qkey) for i in range(3)]
            now = datetime.now(UTC)
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            to_midnight = (midnight - now).total_seconds()
            assert [r.status_code for r in q] == [200, 200, 429]
            assert q[0].headers["RateLimit-Policy"] == '"day";q=2;w=86400, "rate";q=100;w=1'
            name, r_, t_ = q[0].headers["RateLimit"].split(";")
            assert (name, r_) == ('"day"', "r=1")
            assert abs(int(t_[2:]) - to_midnight) <= 2
            assert q[2].json()["type"] == "urn:fastgw:problem:quota-exceeded"
            assert abs(int(q[2].headers["Retry-After"]) - to_midnight) <= 2
            assert q[1].headers["RateLimit"].startswith('"day";r=0;')

            # Shadow mode: over the limit, never refused, counted.
            sh = [c.get(f"/shadow/{marker}/{i}", headers=key).status_code for i in range(4)]
            assert sh == [200, 200, 200, 200]
        text = rlutil.metrics(gw)
        assert metric(text, "fastgw_ratelimit_decisions_total", route="limited", plan="slow",
                      decision="allowed") == 4
        assert metric(text, "fastgw_ratelimit_decisions_total", route="limited", plan="slow",
                      decision="rate_limited") == 2
        assert metric(text, "fastgw_ratelimit_decisions_total", route="daily", plan="daily",
                      decision="quota_exceeded") == 1
        assert metric(text, "fastgw_ratelimit_decisions_total", route="shadow", plan="shadow",
                      decision="shadow_rejected") == 2
    finally:
        gw.close()


PER_HOST_PLANS = '''
[plans.host]
limits = [{ rate = "20/h", key = ["header:X-Key"] }]
'''
PER_HOST_ROUTES = '''
[[routes]]
name = "host"
path = "/*"
upstream = "origin"
plan = "host"
'''


def test_limit_holds_per_host_across_two_workers(tmp_path: Path, echo_origin) -> None:
    gw = rlutil.start(tmp_path, rlutil.config(echo_origin.addr, PER_HOST_ROUTES, PER_HOST_PLANS), workers=2)
    try:
        # One connection: one worker serves it and gets the full limit.
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            one = [c.get("/a", headers={"X-Key": "one"}).status_code for _ in range(30)]
        assert one.count(200) == 20
        # A new connection per request: the kernel spreads them over both workers, which share one
        # bucket, so together they still admit 20, not 2 x 20.
        workers = set()
        codes = []
        host, port = gw.listen.rsplit(":", 1)
        for _ in range(60):
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", "/b", headers={"X-Key": "many"})
            r = conn.getresponse()
            r.read()
            codes.append(r.status)
            workers.add(r.headers["X-Request-ID"].split("-")[0])
            conn.close()
        assert len(workers) == 2, "the connections all went to one worker; the test proves nothing"
        assert codes.count(200) == 20
        assert codes.count(429) == 40
    finally:
        gw.close()


def test_example_config_check_prints_plans() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", "config/fastgw.toml"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "demo: sync=local, on_store_error=local" in out.stdout
    assert json.dumps("demo")  # the example's plan is live without Redis


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


CONSUMER_ROUTES = '''
[[routes]]
name = "keyed"
path = "/keyed/*"
upstream = "origin"
auth = ["api_key"]
plan = "bronze"
'''
CONSUMER_PLANS = f'''
[plans.bronze]
limits = [{{ rate = "2/h" }}]

[plans.gold]
limits = [{{ rate = "5/h" }}, {{ concurrency = 10 }}]

[consumers.partner-a]
api_keys_sha256 = ["{_sha("key-a")}"]
plan = "gold"

[consumers.partner-b]
api_keys_sha256 = ["{_sha("key-b")}"]

[consumers.partner-c]
api_keys_sha256 = ["{_sha("key-c")}"]
'''


def test_consumer_plan_overrides_route_plan_and_consumers_are_isolated(tmp_path: Path, echo_origin) -> None:
    gw = rlutil.start(tmp_path, rlutil.config(echo_origin.addr, CONSUMER_ROUTES, CONSUMER_PLANS), workers=1)
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            a = [c.get("/keyed/x", headers={"X-API-Key": "key-a"}) for _ in range(6)]
            b = [c.get("/keyed/x", headers={"X-API-Key": "key-b"}) for _ in range(3)]
            cc = [c.get("/keyed/x", headers={"X-API-Key": "key-c"}) for _ in range(3)]
            anon = c.get("/keyed/x")
        # partner-a: its own plan (gold, 5/h; concurrency is not advertised), keyed by consumer.
        assert [r.status_code for r in a] == [200] * 5 + [429]
        assert a[0].headers["RateLimit-Policy"] == '"rate";q=5;w=3600'
        assert a[0].headers["RateLimit"] == '"rate";r=4;t=720'
        # partner-b and partner-c have no plan: the route's (bronze, 2/h), each with its own budget.
        assert [r.status_code for r in b] == [200, 200, 429]
        assert [r.status_code for r in cc] == [200, 200, 429]
        assert b[0].headers["RateLimit-Policy"] == '"rate";q=2;w=3600'
        assert b[2].headers["Retry-After"] == "1800"
        # No key: the auth policy answers 401 first; the limiter never counts it.
        assert anon.status_code == 401
        assert "RateLimit" not in anon.headers
        text = rlutil.metrics(gw)
        assert metric(text, "fastgw_ratelimit_decisions_total", route="keyed", plan="gold", decision="allowed") == 5
        assert metric(text, "fastgw_ratelimit_decisions_total", route="keyed", plan="bronze",
                      decision="rate_limited") == 2
    finally:
        gw.close()


def test_ratelimit_lines_follow_every_outcome() -> None:
    """The RateLimit lines of an outcome: the same outcome again gives the same lines (kept, not formatted
    again), and a change of r=, t=, the tight limit or a degraded note gives that outcome's lines."""
    from fastgw._core.gates import Headers
    h = Headers(b'"a";q=10;w=1, "b";q=100;w=60', [b'"a";r=', b'"b";r='])
    pol = b'RateLimit-Policy: "a";q=10;w=1, "b";q=100;w=60\r\n'
    cases = [(0, 9, 1, None), (0, 9, 1, None), (0, 8, 1, None), (0, 8, 2, None), (1, 8, 2, None),
             (1, 8, 2, b"redis"), (1, 8, 2, None), (-1, 0, 0, None), (1, 8, 2, None), (1, 1234567890123, 0, None)]
    for tight, r, t, degraded in cases:
        want = pol
        if tight >= 0:
            want += b'RateLimit: "%s";r=%d;t=%d\r\n' % (b"ab"[tight:tight + 1], r, t)
        if degraded is not None:
            want += b"RateLimit-Degraded: " + degraded + b"\r\n"
        assert h.lines(tight, r, t, degraded) == want, (tight, r, t, degraded)
