"""Idempotency-Key (fastgw/policies/idempotency/): real gateways, a real redis-server (tests/conftest.py
redis_server), the echo origin counting what reaches it, httpx over HTTP/1.1 and HTTP/2.

Replay (the upstream called once, the stored status, headers and body replayed with Idempotent-Replayed),
a chunked body fingerprinted as the same request, the 400s, 413, 422 on another body, keys per consumer;
concurrent duplicates across two gateway instances x two workers sharing one Redis (exactly one reaches the
upstream, the others 409 then the replay); the unknown outcome (upstream timeout: the key stays locked until
lock_ttl, nothing stored), a connect failure and an upstream 503 freeing the key; ttl expiry; Redis stopped
(503 store-unavailable, or passed through with on_store_error "open") and restarted.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from conftest import free_port

from fastgw.config.root import ConfigError, loads
from tests.procutil import Gateway, admin_get

KEYS = {"partner-a": "key-a", "partner-b": "key-b"}


def base(redis_url: str) -> str:
    """The listeners and the store every gateway of these tests has."""
    return f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[redis]
url = "{redis_url}"
timeout = "250ms"
'''


def config(origin: str, redis_url: str, *, idem: str = "", timeout: str = "5s") -> str:
    consumers = "".join(f'[consumers.{c}]\napi_keys_sha256 = ["{hashlib.sha256(k.encode()).hexdigest()}"]\n'
                        for c, k in KEYS.items())
    return base(redis_url) + f'''
[upstreams.echo]
targets = ["{origin}"]
timeout = "{timeout}"
[upstreams.down]
targets = ["127.0.0.1:{free_port()}"]
{consumers}
[[routes]]
name = "pay"
path = "/pay/*"
upstream = "echo"
auth = ["api_key"]
idempotency = {{ required = true, lock_ttl = "1s", ttl = "3s", max_body = "64KiB" {idem} }}
[[routes]]
name = "pay-open"
path = "/open/*"
upstream = "echo"
idempotency = {{ on_store_error = "open" }}
[[routes]]
name = "pay-down"
path = "/down/*"
upstream = "down"
idempotency = {{ lock_ttl = "5s" }}
'''


def start(tmp_path: Path, text: str, workers: int = 1, name: str = "gw") -> Gateway:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(text)
    gw = Gateway(cfg, workers=workers)
    gw.wait_ready()
    return gw


def post(c: httpx.Client, path: str, body: Any = b"{}", key: str | None = None, who: str = "partner-a",
         **kw: Any) -> httpx.Response:
    headers = {"X-API-Key": KEYS[who], "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return c.post(path, content=body, headers=headers, **kw)


def problem(r: httpx.Response, status: int, slug: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == f"urn:fastgw:problem:{slug}"


def one_went_upstream(rs: list[httpx.Response]) -> None:
    """Concurrent duplicates: one 200, every other one 409 idempotency-conflict with Retry-After."""
    statuses = sorted(r.status_code for r in rs)
    assert statuses.count(200) == 1 and statuses.count(409) == len(rs) - 1, statuses
    for r in rs:
        if r.status_code == 409:
            problem(r, 409, "idempotency-conflict")
            assert r.headers["retry-after"] == "1"


def outcomes(gw: Gateway, route: str) -> dict[str, int]:
    text = admin_get(gw.admin_base + "/metrics")[1]
    found = re.finditer(rf'^fastgw_idempotency_total\{{route="{route}",outcome="([a-z_]+)"\}} ([0-9]+)$', text, re.M)
    return {m.group(1): int(m.group(2)) for m in found}


def test_replay_mismatch_and_the_400s(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url))
    try:
        for http2 in (False, True):
            with httpx.Client(base_url=gw.base, timeout=5, http1=not http2, http2=http2) as c:
                m = uuid.uuid4().hex
                path = f"/pay/{m}"
                problem(post(c, path), 400, "idempotency-key-required")
                problem(post(c, path, key="two words"), 400, "idempotency-key-invalid")
                problem(post(c, path, key='"' + "x" * 256 + '"'), 400, "idempotency-key-invalid")
                assert len(echo_origin.heads_for(m)) == 0
                body = json.dumps({"amount": "10.00", "to": "DE89370400440532013000"}).encode()
                first = post(c, path, body, key=f'"{m}"')
                assert first.status_code == 200 and "idempotent-replayed" not in first.headers
                assert echo_origin.wait_for(lambda m=m: len(echo_origin.requests_for(m)) == 1)
                # The origin saw the body and the key as sent.
                assert first.json()["body"] == body.decode()
                assert ["idempotency-key", f'"{m}"'] in [[n.lower(), v] for n, v in first.json()["headers"]]
                time.sleep(0.1)                    # the record is written after the response went out
                # The same key, bare or as an sf-string, and the same body: replayed, the upstream not called.
                for spelling in (m, f'"{m}"'):
                    again = post(c, path, body, key=spelling)
                    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
                    assert again.content == first.content
                    assert again.headers["content-type"] == "application/json"
                    assert "server" not in again.headers                       # not on the allow-list
                    assert again.headers["x-request-id"] != first.headers["x-request-id"]
                # A chunked body with the same bytes is the same request.
                again = post(c, path, iter([body[:7], body[7:]]), key=m)
                assert again.headers.get("idempotent-replayed") == "true"
                assert len(echo_origin.requests_for(m)) == 1
                # Another body (or target) with that key: 422; the record is kept.
                problem(post(c, path, b'{"amount":"99.00"}', key=m), 422, "idempotency-mismatch")
                problem(post(c, path + "?x=1", body, key=m), 422, "idempotency-mismatch")
                # Keys are per consumer: partner-b's same key is its own request.
                other = post(c, path, body, key=m, who="partner-b")
                assert other.status_code == 200 and "idempotent-replayed" not in other.headers
                assert echo_origin.wait_for(lambda m=m: len(echo_origin.requests_for(m)) == 2)
                # GET is not an idempotency method: always forwarded, nothing recorded.
                r = c.get(path, headers={"X-API-Key": KEYS["partner-a"], "Idempotency-Key": m})
                assert r.status_code == 200 and "idempotent-replayed" not in r.headers
                assert echo_origin.wait_for(lambda m=m: len(echo_origin.requests_for(m)) == 3)
                # A body over max_body: 413 before any store work; the upstream never sees it.
                problem(post(c, path, b"x" * (64 * 1024 + 1), key=uuid.uuid4().hex), 413, "payload-too-large")
                time.sleep(0.1)
                assert len(echo_origin.requests_for(m)) == 3
        o = outcomes(gw, "pay")
        assert o["first"] == 4 and o["stored"] == 4 and o["replayed"] == 6 and o["mismatch"] == 4
        assert o["missing_key"] == 2 and o["invalid_key"] == 4 and o["body_too_large"] == 2
    finally:
        gw.close()


def test_concurrent_duplicates_two_instances_one_reaches_the_upstream(tmp_path: Path, echo_origin: Any,
                                                                       redis_server: Any) -> None:
    text = config(echo_origin.addr, redis_server.url)
    gws = [start(tmp_path, text, workers=2, name=f"gw{i}") for i in range(2)]
    try:
        m = uuid.uuid4().hex
        body = b'{"amount":"5.00"}'

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=gws[i % 2].base, timeout=10) as c:
                return post(c, f"/pay/{m}?delay=0.8", body, key=m)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(one, range(12)))
        one_went_upstream(rs)
        assert len(echo_origin.requests_for(m)) == 1
        time.sleep(0.2)
        # After completion every instance replays it.
        for g in gws:
            with httpx.Client(base_url=g.base, timeout=10) as c:
                for _ in range(3):
                    r = post(c, f"/pay/{m}?delay=0.8", body, key=m)
                    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
        assert len(echo_origin.requests_for(m)) == 1
    finally:
        for g in gws:
            g.close()


def test_unknown_outcome_released_keys_and_ttl(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url, timeout="300ms"))
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            # An upstream 4xx is a result: stored and replayed. After ttl (3 s) the key is forgotten. Stored
            # first, so that its ttl runs out while the rest is tested (not after it).
            m4 = uuid.uuid4().hex
            assert post(c, f"/pay/{m4}?status=404", key=m4).status_code == 404
            stored = time.monotonic()
            time.sleep(0.1)
            r = post(c, f"/pay/{m4}?status=404", key=m4)
            assert r.status_code == 404 and r.headers["idempotent-replayed"] == "true"
            # The upstream times out after the request was sent: 504, the outcome is unknown, so the key
            # stays locked (409) until lock_ttl, and nothing is stored as a success.
            m = uuid.uuid4().hex
            problem(post(c, f"/pay/{m}?delay=0.6", key=m), 504, "upstream-timeout")
            problem(post(c, f"/pay/{m}?delay=0.6", key=m), 409, "idempotency-conflict")
            time.sleep(1.1)
            r = post(c, f"/pay/{m}?delay=0.6", key=m)
            problem(r, 504, "upstream-timeout")                     # the lock expired: it went upstream again
            assert echo_origin.wait_for(lambda: len(echo_origin.heads_for(m)) == 2)
            # A connect failure never reached the upstream: the key is free at once.
            k = uuid.uuid4().hex
            problem(c.post("/down/x", content=b"{}", headers={"Idempotency-Key": k}), 502, "bad-gateway")
            problem(c.post("/down/x", content=b"{}", headers={"Idempotency-Key": k}), 502, "bad-gateway")
            # The upstream's 503 (it did not act): the key is free, the retry goes upstream.
            m3 = uuid.uuid4().hex
            assert post(c, f"/pay/{m3}?status=503", key=m3).status_code == 503
            time.sleep(0.1)
            r = post(c, f"/pay/{m3}?status=503", key=m3)
            assert r.status_code == 503 and "idempotent-replayed" not in r.headers
            assert echo_origin.wait_for(lambda: len(echo_origin.requests_for(m3)) == 2)
            time.sleep(max(0.0, stored + 3.2 - time.monotonic()))       # m4's ttl is over
            r = post(c, f"/pay/{m4}?status=404", key=m4)
            assert r.status_code == 404 and "idempotent-replayed" not in r.headers
            assert echo_origin.wait_for(lambda: len(echo_origin.requests_for(m4)) == 2)
        o = outcomes(gw, "pay")
        assert o["unknown"] == 2 and o["released"] == 2 and o["conflict"] == 1
        assert outcomes(gw, "pay-down")["released"] == 2
    finally:
        gw.close()


def test_store_down_closed_and_open_then_back(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, redis_server.url))
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            m = uuid.uuid4().hex
            assert post(c, f"/pay/{m}", key=m).status_code == 200
            redis_server.kill()
            r = post(c, f"/pay/{m}", key=m)
            problem(r, 503, "store-unavailable")
            assert r.headers["retry-after"] == "1"
            k = uuid.uuid4().hex
            r = c.post(f"/open/{k}", content=b"{}", headers={"Idempotency-Key": k})
            assert r.status_code == 200                        # on_store_error = "open": passed, unprotected
            assert len(echo_origin.requests_for(m)) == 1
            redis_server.start()                               # empty: the records are gone with it
            deadline = time.monotonic() + 5
            while True:
                r = post(c, f"/pay/{m}", key=m)
                if r.status_code != 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert r.status_code == 200 and "idempotent-replayed" not in r.headers
        assert outcomes(gw, "pay")["store_error"] >= 1 and outcomes(gw, "pay-open")["store_error"] == 1
    finally:
        gw.close()


def test_config_checks() -> None:
    base = '[upstreams.u]\ntargets = ["127.0.0.1:9"]\n[[routes]]\nname = "r"\npath = "/x"\nupstream = "u"\n'
    for extra, words in (('idempotency = {}\n[redis]\nurl = "redis://127.0.0.1:6379"\n[idempotency]\n',
                          "only without [redis]"),
                         ('idempotency = {}\n[idempotency]\npath = "rel.db"\nmax_records = 0\n',
                          "idempotency.path: an absolute file path"),
                         ('idempotency = {}\n[idempotency]\nmax_records = 0\n', "idempotency.max_records"),
                         ('idempotency = { methods = ["GET"] }\n[redis]\nurl = "redis://127.0.0.1:6379"\n',
                          "safe method"),
                         ('idempotency = { lock_ttl = "10s", ttl = "5s" }\n[redis]\nurl = "redis://127.0.0.1:6379"\n',
                          "shorter than lock_ttl")):
        try:
            loads(base + extra)
        except ConfigError as e:
            assert words in str(e), str(e)
        else:
            raise AssertionError(extra)


def test_replay_through_an_http2_upstream(tmp_path: Path, redis_server: Any) -> None:
    """The body tap on an HTTP/2 upstream (DATA frames, a response ended by trailers) and the held request
    body sent as DATA: stored and replayed the same, the upstream answering each key once."""
    from h2upstream import H2Origin
    origin = H2Origin().start()
    text = base(redis_server.url) + f'''
[upstreams.h2]
targets = ["{origin.addr}"]
protocol = "h2"
[[routes]]
name = "h2pay"
path = "/*"
upstream = "h2"
idempotency = {{ lock_ttl = "2s" }}
'''
    gw = start(tmp_path, text)
    try:
        body = bytes(range(256)) * 400                     # 102,400 bytes: past the stream window
        for http2 in (False, True):
            with httpx.Client(base_url=gw.base, timeout=10, http1=not http2, http2=http2) as c:
                for path in (f"/big/70000?{uuid.uuid4().hex}", f"/trailers/{uuid.uuid4().hex}"):
                    k = uuid.uuid4().hex
                    first = c.post(path, content=body, headers={"Idempotency-Key": k})
                    assert first.status_code == 200
                    assert first.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
                    time.sleep(0.1)
                    again = c.post(path, content=iter([body[:5000], body[5000:]]), headers={"Idempotency-Key": k})
                    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
                    assert again.content == first.content and "x-body-sha256" not in again.headers
                    assert origin.answered.count(path.encode()) == 1
    finally:
        gw.close()
        origin.stop()


def test_with_the_cache_on_one_route(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    """Each policy keeps its own request state (Gate.state): on a route with both the cache and the
    Idempotency-Key, a keyed POST is recorded and replayed, and a GET is still cached (and dropped by the
    POST that succeeded, as any unsafe method does). Refused by `fastgw check` before the slots."""
    text = base(redis_server.url) + f'''
[upstreams.echo]
targets = ["{echo_origin.addr}"]
[cache.c]
[[routes]]
name = "shop"
path = "/shop/*"
upstream = "echo"
cache = "c"
idempotency = {{ lock_ttl = "2s" }}
'''
    gw = start(tmp_path, text)
    try:
        m = uuid.uuid4().hex
        url = f"/shop/{m}?hdr=Cache-Control:%20max-age=60"
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            first = c.get(url)
            assert first.status_code == 200 and first.headers["cache-status"].startswith("fastgw; fwd=")
            again = c.get(url)
            assert again.headers["cache-status"].startswith("fastgw; hit") and again.content == first.content
            assert len(echo_origin.heads_for(m)) == 1
            k = uuid.uuid4().hex
            paid = c.post(url, content=b'{"amount": 10}', headers={"Idempotency-Key": k})
            assert paid.status_code == 200 and "idempotent-replayed" not in paid.headers
            time.sleep(0.1)                                # (the record is written as the response ends)
            replay = c.post(url, content=b'{"amount": 10}', headers={"Idempotency-Key": k})
            assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
            assert replay.content == paid.content
            assert [r.head.method for r in echo_origin.requests_for(m)] == ["GET", "POST"]
            # The POST succeeded: the URL's entry was dropped (the cache's state was kept beside the key's).
            assert c.get(url).headers["cache-status"].startswith("fastgw; fwd=")
            assert c.get(url).headers["cache-status"].startswith("fastgw; hit")
            assert [r.head.method for r in echo_origin.requests_for(m)] == ["GET", "POST", "GET"]
        o = outcomes(gw, "shop")
        assert o["first"] == 1 and o["stored"] == 1 and o["replayed"] == 1
    finally:
        gw.close()


def test_a_keyed_post_is_retried_on_another_target(tmp_path: Path, echo_origin: Any, redis_server: Any) -> None:
    """A validated Idempotency-Key makes a POST safe to send again (ex.retry_safe, retry.pyx): reset by the
    first target before any answer, it goes to the second with its body, the client gets that answer and
    exactly one record is kept (the same key is then replayed, the upstream not called again). Without a
    key the POST is never sent twice: the requests that met the reset get 502."""
    from upstreams import ResetOrigin
    bad = ResetOrigin().start()
    text = base(redis_server.url) + f'''
[upstreams.two]
targets = ["{bad.addr}", "{echo_origin.addr}"]
outlier = {{ consecutive_failures = 0 }}
[[routes]]
name = "pay"
path = "/pay/*"
upstream = "two"
idempotency = {{ lock_ttl = "5s" }}
'''
    gw = start(tmp_path, text)
    try:
        m = uuid.uuid4().hex
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            keyed = [c.post(f"/pay/{m}-k{i}", content=b"pay %d" % i, headers={"Idempotency-Key": f"{m}-{i}"})
                     for i in range(6)]
            plain = [c.post(f"/pay/{m}-p{i}", content=b"pay 10").status_code for i in range(6)]
            assert [r.status_code for r in keyed] == [200] * 6, [r.text for r in keyed]
            assert sorted(plain) == [200] * 3 + [502] * 3, plain
            assert len(bad.heads_for(f"{m}-k")) == 3              # half met the reset, then went on
            for i in range(6):
                got = echo_origin.requests_for(f"/pay/{m}-k{i}")
                assert len(got) == 1 and got[0].body == b"pay %d" % i
            assert all(len(bad.heads_for(f"{m}-p{i}")) + len(echo_origin.heads_for(f"{m}-p{i}")) == 1
                       for i in range(6))
            time.sleep(0.1)
            for i in range(6):
                r = c.post(f"/pay/{m}-k{i}", content=b"pay %d" % i, headers={"Idempotency-Key": f"{m}-{i}"})
                assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
                assert r.content == keyed[i].content
            assert len(echo_origin.requests_for(f"{m}-k")) == 6
        o = outcomes(gw, "pay")
        assert o["first"] == 6 and o["stored"] == 6 and o["replayed"] == 6 and o.get("unknown", 0) == 0
    finally:
        gw.close()
        bad.stop()
