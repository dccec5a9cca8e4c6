"""Usage metering (fastgw/policies/metering/): real gateways (2 workers), a real redis-server
(tests/conftest.py redis_server), the echo origin, httpx over HTTP/1.1 and HTTP/2.

Counts per consumer, route and status class exact after a known mix (fastgw_consumer_requests_total and
the Redis sink read back through GET /usage), bytes, `billable`; the sink: a replayed batch applied once,
Redis killed and restarted (nothing lost, the buffer replays in order), the buffer bound (dropped counter),
a SIGKILLed worker losing at most one flush interval (measured), a drain flushing; /usage per granularity;
the per-consumer count of a deprecated route; config errors.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import rlutil

from fastgw.config.root import ConfigError, loads
from tests.procutil import Gateway, admin_get, metric

KEYS = {"partner-a": "key-a", "partner-b": "key-b"}
ROOT = Path(__file__).resolve().parent.parent


def config(origin: str, redis_url: str | None, metering: str = 'sink = "redis"\nflush_every = "200ms"',
           drain: str = "") -> str:
    consumers = "".join(f'[consumers.{c}]\napi_keys_sha256 = ["{hashlib.sha256(k.encode()).hexdigest()}"]\n'
                        for c, k in KEYS.items())
    redis = f'[redis]\nurl = "{redis_url}"\ntimeout = "250ms"\nretry_interval = "100ms"\n' if redis_url else ""
    return f'''
[server]
listen = ["127.0.0.1:0"]
{drain}
[admin]
listen = "127.0.0.1:0"
{redis}
[metering]
{metering}
[upstreams.echo]
targets = ["{origin}"]
{consumers}
[[routes]]
name = "pay"
path = "/pay/*"
upstream = "echo"
auth = ["api_key"]
[[routes]]
name = "old"
path = "/old/*"
upstream = "echo"
auth = ["api_key"]
lifecycle = {{ deprecated = "2020-01-01T00:00:00Z" }}
[[routes]]
name = "open"
path = "/open/*"
upstream = "echo"
'''


def start(tmp_path: Path, text: str, workers: int = 2, name: str = "gw") -> Gateway:
    return rlutil.start(tmp_path, text, workers, name)


def usage(gw: Gateway, consumer: str, **q: str) -> dict[str, Any]:
    from urllib.parse import urlencode

    status, text, _ = admin_get(gw.admin_base + "/usage?" + urlencode({"consumer": consumer, **q}))
    assert status == 200, text
    return json.loads(text)


def wait_usage(gw: Gateway, consumer: str, requests: int, timeout: float = 10.0, **q: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = usage(gw, consumer, **q)
        if doc["totals"]["requests"] >= requests or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def send(c: httpx.Client, path: str, who: str | None, body: bytes = b"") -> httpx.Response:
    headers = {"X-API-Key": KEYS[who]} if who else {}
    r = c.post(path, content=body, headers=headers) if body else c.get(path, headers=headers)
    return r


def test_counts_bytes_and_billable_over_h1_and_h2(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url))
    try:
        req_bytes = resp_bytes = 0
        # HTTP/1.1 without keep-alive: each request a new connection, spread over both workers (SO_REUSEPORT).
        with httpx.Client(base_url=gw.base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as h1, \
                httpx.Client(base_url=gw.base, timeout=10, http1=False, http2=True) as h2:
            for i in range(12):                                 # partner-a: 2xx over both protocols, bodies
                c = h1 if i % 2 else h2
                body = b"x" * (10 + i)
                r = send(c, f"/pay/{i}?size={100 * i}", "partner-a", body)
                assert r.status_code == 200 and r.http_version == ("HTTP/1.1" if i % 2 else "HTTP/2")
                req_bytes += len(body)
                resp_bytes += len(r.content)
            for i in range(5):                                  # partner-a: 404s (billable: non5xx)
                assert send(h1 if i % 2 else h2, "/pay/x?status=404&size=7", "partner-a").status_code == 404
                resp_bytes += 7
            for _ in range(3):                                  # partner-a: 500s (not billable)
                assert send(h2, "/pay/x?status=500", "partner-a").status_code == 500
            for _ in range(4):                                  # partner-b on the deprecated route
                assert send(h1, "/old/x", "partner-b").status_code == 200
            assert send(h1, "/pay/x", None).status_code == 401  # no key: counted as anonymous, 4xx
            for _ in range(2):
                assert send(h2, "/open/x", None).status_code == 200
        text = rlutil.metrics(gw)
        series = [(c, r, cls, n) for c, r, cls, n in [
            ("partner-a", "pay", "2xx", 12), ("partner-a", "pay", "4xx", 5), ("partner-a", "pay", "5xx", 3),
            ("partner-b", "old", "2xx", 4), ("(anonymous)", "pay", "4xx", 1), ("(anonymous)", "open", "2xx", 2)]]
        for c, r, cls, n in series:
            assert metric(text, "fastgw_consumer_requests_total", consumer=c, route=r, status_class=cls) == n, (c, r, cls)
        assert metric(text, "fastgw_deprecated_consumer_requests_total", route="old", consumer="partner-b") == 4
        assert metric(text, "fastgw_deprecated_requests_total", route="old") == 4
        doc = wait_usage(gw, "partner-a", 17)
        assert doc["totals"] == {"requests": 17, "request_bytes": req_bytes, "response_bytes": resp_bytes}
        rows = {(r["route"], r["status_class"]): r["requests"] for b in doc["buckets"] for r in b["routes"]}
        assert sum(v for (_, cls), v in rows.items() if cls == "2xx") == 12
        assert sum(v for (_, cls), v in rows.items() if cls == "5xx") == 0      # billable = non5xx
        assert wait_usage(gw, "partner-b", 4)["totals"]["requests"] == 4
        assert wait_usage(gw, "(anonymous)", 3)["totals"]["requests"] == 3
        # Flushed batches counted; nothing pending.
        time.sleep(0.5)
        text = rlutil.metrics(gw)
        assert metric(text, "fastgw_metering_flushed_total") >= 1
        assert metric(text, "fastgw_metering_unflushed") == 0
        assert metric(text, "fastgw_metering_dropped_total") == 0
    finally:
        gw.close()


def test_two_instances_two_workers_exact(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    """2 gateway instances x 2 workers flushing into one Redis: /usage (read from either) is the exact sum."""
    text = config(echo_origin.addr, redis_server.url)
    gws = [start(tmp_path, text, name=f"gw{i}") for i in range(2)]
    try:
        sent = {"partner-a": 0, "partner-b": 0}
        for i, gw in enumerate(gws):
            with httpx.Client(base_url=gw.base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
                for n in range(20 + 7 * i):
                    who = "partner-a" if n % 3 else "partner-b"
                    assert send(c, f"/pay/{n}", who).status_code == 200
                    sent[who] += 1
        for who, n in sent.items():
            for gw in gws:
                assert wait_usage(gw, who, n)["totals"]["requests"] == n, who
    finally:
        for gw in gws:
            gw.close()


def test_bytes_through_an_http2_upstream(tmp_path: Path, redis_server: Any) -> None:
    """The response body bytes of an HTTP/2 upstream (the H2 call's DATA path) are counted too."""
    from h2upstream import H2Origin

    origin = H2Origin().start()
    text = config(origin.addr, redis_server.url).replace(
        f'targets = ["{origin.addr}"]\n', f'targets = ["{origin.addr}"]\nprotocol = "h2"\n').replace(
        'path = "/pay/*"\n', 'path = "/pay/*"\nstrip_prefix = true\n')
    gw = start(tmp_path, text, workers=1)
    try:
        sizes = [1000, 70000, 5]
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            for n in sizes:
                r = send(c, f"/pay/big/{n}", "partner-a", b"b" * 33)
                assert r.status_code == 200 and len(r.content) == n
        doc = wait_usage(gw, "partner-a", 3)
        assert doc["totals"] == {"requests": 3, "request_bytes": 99, "response_bytes": sum(sizes)}
    finally:
        gw.close()
        origin.stop()


def test_billable_2xx_and_memory_sink(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url,
                                'sink = "redis"\nflush_every = "200ms"\nbillable = "2xx"'), workers=1)
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            for q in ("", "?status=404", "?status=302", ""):
                send(c, "/pay/x" + q, "partner-b")
        time.sleep(0.8)
        assert usage(gw, "partner-b")["totals"]["requests"] == 2
    finally:
        gw.close()
    gw = start(tmp_path, config(echo_origin.addr, None, ""), workers=1, name="mem")
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            for _ in range(3):
                send(c, "/pay/x", "partner-b")
        assert metric(rlutil.metrics(gw), "fastgw_consumer_requests_total", consumer="partner-b", route="pay",
                      status_class="2xx") == 3
        status, text, _ = admin_get(gw.admin_base + "/usage?consumer=partner-b")
        assert status == 404 and "sink" in text
    finally:
        gw.close()


def test_no_metering_no_series(tmp_path: Path, echo_origin: Any) -> None:
    text = config(echo_origin.addr, None).replace("[metering]\nsink = \"redis\"\nflush_every = \"200ms\"", "")
    gw = start(tmp_path, text, workers=1)
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            assert send(c, "/pay/x", "partner-a").status_code == 200
        assert "fastgw_consumer_requests_total" not in rlutil.metrics(gw)
        assert admin_get(gw.admin_base + "/usage?consumer=partner-a")[0] == 404
    finally:
        gw.close()


def test_redis_killed_and_restarted_nothing_lost(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    # Redis with persistence off loses its data when killed: the test keeps it up for the first part, reads
    # the flushed total, then kills it, counts while it is down, restarts it empty and sees the buffered
    # batches arrive in full.
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url))
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            for _ in range(5):
                send(c, "/pay/x", "partner-a")
            assert wait_usage(gw, "partner-a", 5)["totals"]["requests"] == 5
            redis_server.kill()
            for _ in range(23):
                assert send(c, "/pay/x", "partner-a").status_code == 200
            time.sleep(1.0)                                   # several flush intervals while Redis is down
            assert metric(rlutil.metrics(gw), "fastgw_metering_unflushed") >= 1
            redis_server.start()
        doc = wait_usage(gw, "partner-a", 23, timeout=15)
        assert doc["totals"]["requests"] == 23                # the 5 went with the old Redis; all 23 arrived
        time.sleep(0.5)
        assert metric(rlutil.metrics(gw), "fastgw_metering_unflushed") == 0
        assert metric(rlutil.metrics(gw), "fastgw_metering_dropped_total") == 0
    finally:
        gw.close()


def test_buffer_bound_drops_the_oldest_counted(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url,
                                'sink = "redis"\nflush_every = "100ms"\nbuffer = 2'), workers=1)
    try:
        redis_server.kill()
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            for _ in range(6):                 # one request per flush interval: one batch each
                send(c, "/pay/x", "partner-a")
                time.sleep(0.25)
        text = rlutil.metrics(gw)
        assert metric(text, "fastgw_metering_unflushed") == 2
        assert metric(text, "fastgw_metering_dropped_total") == 4
        redis_server.start()
        wait_usage(gw, "partner-a", 2, timeout=15)
        time.sleep(0.5)
        assert usage(gw, "partner-a")["totals"]["requests"] == 2       # the two newest batches, once each
    finally:
        gw.close()


def test_replayed_batch_counts_once(tmp_path: Path, redis_server: Any) -> None:
    """The sink's script against the real server: the same batch twice (a retry after a lost reply)."""
    code = f'''
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from fastgw.config.root import loads
from fastgw.policies.metering.sink import RedisSink
from fastgw.policies.metering.tally import Tally
cfg = loads("""[redis]\\nurl = "{redis_server.url}"\\n[metering]\\nsink = "redis"\\n"""
            """[upstreams.u]\\ntargets = ["127.0.0.1:1"]\\n[[routes]]\\nname = "r"\\npath = "/"\\nupstream = "u"\\n""")
async def main():
    s = RedisSink(cfg.metering, cfg.redis, asyncio.get_running_loop(), Tally(None))
    while not s.client.up:
        await asyncio.sleep(0.02)
    s.record("partner-a", "-", "pay", 2, 10, 20)
    s.cut()
    batch = s.pending[0]
    await s.push()
    s.pending.append(batch)          # sent again, as after a timeout whose reply was lost
    await s.push()
    s.record("partner-a", "-", "pay", 2, 1, 2)
    await s.close()
    print(s.seq)
asyncio.run(main())
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    keys = redis_server.command("KEYS", "fastgw:usage:{usage}:m:*").decode()
    key = [k for k in keys.split("\r\n") if k.startswith("fastgw:usage")][0]
    reply = redis_server.command("HGET", key, "pay|-|2|n").decode()
    assert reply.split("\r\n")[1] == "2"                      # 1 + 1: the replay changed nothing
    reply = redis_server.command("HGET", key, "pay|-|2|q").decode()
    assert reply.split("\r\n")[1] == "11"


def test_sigkill_loses_at_most_one_flush_interval(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    """Requests at a steady rate; one worker SIGKILLed mid-stream; the usage read back is short by at most
    what that worker served in one flush interval (measured: printed)."""
    every = 0.5
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url, f'sink = "redis"\nflush_every = "{every}s"'),
               workers=1)
    try:
        ok = 0
        stamps: list[float] = []
        killed_at = 0.0
        seen = 0
        with httpx.Client(base_url=gw.base, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3.0:
                if not killed_at and time.monotonic() - t0 > 1.7:
                    seen = len(gw.events)
                    os.kill(gw.worker_pids()[0], signal.SIGKILL)
                    killed_at = time.monotonic()
                try:
                    if send(c, "/pay/x", "partner-a").status_code == 200:
                        ok += 1
                        stamps.append(time.monotonic())
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        gw.wait_event("worker_ready", after=seen, timeout=15)
        time.sleep(3 * every)
        got = usage(gw, "partner-a", granularity="hour")["totals"]["requests"]
        lost = ok - got
        per_interval = sum(1 for s in stamps if killed_at - every <= s < killed_at)
        print(f"sigkill: served {ok}, metered {got}, lost {lost}; served in the last interval before the kill: "
              f"{per_interval}")
        assert 0 <= lost <= per_interval + 1          # +1: the request in flight when the worker died
    finally:
        gw.close()


def test_drain_flushes(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url, 'sink = "redis"\nflush_every = "60s"',
                                drain='[server.drain]\naccept_seconds = "0s"\ntimeout_seconds = "2s"'))
    with httpx.Client(base_url=gw.base, timeout=10) as c:
        for _ in range(9):
            send(c, "/pay/x", "partner-a")
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0
    keys = redis_server.command("KEYS", "fastgw:usage:{usage}:d:partner-a:*").decode()
    key = [k for k in keys.split("\r\n") if k.startswith("fastgw:usage")][0]
    assert redis_server.command("HGET", key, "pay|-|2|n").decode().split("\r\n")[1] == "9"


def test_usage_granularities_and_bad_queries(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url), workers=1)
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            for _ in range(4):
                send(c, "/pay/x", "partner-b")
        now = int(time.time())
        wait_usage(gw, "partner-b", 4)
        for g, step in (("minute", 60), ("hour", 3600), ("day", 86400)):
            doc = usage(gw, "partner-b", granularity=g, **{"from": str(now - 2 * step), "to": str(now + step)})
            assert doc["granularity"] == g and doc["totals"]["requests"] == 4
            assert len(doc["buckets"]) == 1 and doc["buckets"][0]["start"].endswith("Z")
            start_epoch = time.mktime(time.strptime(doc["buckets"][0]["start"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
            assert start_epoch % step == 0 and start_epoch <= now < start_epoch + step
        assert usage(gw, "partner-b", **{"from": "2020-01-01T00:00:00Z", "to": "2020-01-01T05:00:00Z"})["totals"][
            "requests"] == 0
        for q in ("consumer=nobody", "consumer=partner-b&granularity=week", "consumer=partner-b&from=yesterday",
                  "consumer=partner-b&granularity=minute&from=0&to=999999", "consumer=partner-b&to=10&from=20",
                  "consumer=partner-b&consumer=partner-a", "consumer=partner-b&x=1"):
            status, text, _ = admin_get(gw.admin_base + "/usage?" + q)
            assert status == 400 and text.strip(), q
        assert admin_get(gw.admin_base + "/usage?consumer=partner-b", method="POST")[0] == 405
    finally:
        gw.close()


def test_config_errors(tmp_path: Path) -> None:
    base = '[upstreams.u]\ntargets = ["127.0.0.1:1"]\n[[routes]]\nname = "r"\npath = "/"\nupstream = "u"\n'
    for section, want in (('[metering]\nsink = "redis"\n', "metering.sink"),
                          ('[metering]\nflush_every = "5ms"\n', "metering.flush_every"),
                          ('[metering]\nbuffer = 0\n', "metering.buffer"),
                          ('[metering]\nbillable = "3xx"\n', "metering.billable"),
                          ('[metering]\nretention = "1m"\n', "metering.retention"),
                          ('[metering]\ncolour = 1\n', "metering.colour")):
        try:
            loads(base + section)
        except ConfigError as e:
            assert want in str(e), (want, str(e))
        else:
            raise AssertionError(f"accepted: {section}")
        cfg = tmp_path / "bad.toml"
        cfg.write_text(base + section)
        out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], capture_output=True,
                             text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 2 and want in out.stdout + out.stderr, (want, out.stdout, out.stderr)
