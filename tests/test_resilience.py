"""Circuit breaking and retries, with real origins on loopback and a real gateway (2 workers: the limits and
the retry budget are counted pod-wide in shared memory).

Circuit breaking: beyond limits.max_requests (or max_connections) in flight, a request is answered at once
with 503 upstream-overloaded and Retry-After, never queued. Retries: a refused connection costs no client
GET or POST (nothing was sent); a GET reset before its response goes to another target, a POST does not;
a target killed mid-load costs no GET; a blackholed target costs a per-try timeout (with "timeout" opted
in); a 503 is retried only when opted in; a flapping upstream meets at most budget_percent of the requests
in flight (+ budget_min) as concurrent retries. The access log names each attempt."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections import Counter

import httpx
import pytest

from tests.h2upstream import H2Origin
from tests.test_outlier import FlakyOrigin, closed_port
from tests.upstreams import EchoOrigin, ResetOrigin, SlowOrigin

ROUTE = [{"name": "r", "path": "/*", "upstream": "u"}]
NO_OUTLIER = {"consecutive_failures": 0}       # the retries, not the ejections, are under test


def admin_get(gw, path: str) -> str:  # type: ignore[no-untyped-def]
    admin = next(e["admin"] for e in gw.events if e.get("event") == "started")
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as r:
        return r.read().decode()


def metric(gw, line_start: str) -> int:  # type: ignore[no-untyped-def]
    for line in admin_get(gw, "/metrics").splitlines():
        if line.startswith(line_start + " "):
            return int(float(line.split()[-1]))
    raise AssertionError(f"no metric {line_start}")


def access_lines(gw, marker: str, n: int = 1, timeout: float = 5.0) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in gw.events if e.get("type") == "access" and marker in (e.get("path") or "")]
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} access lines for {marker}")


def saturate(gw, origin, n: int, delay: float) -> threading.Thread:  # type: ignore[no-untyped-def]
    """`n` requests the origin holds for `delay` seconds, each on its own connection, in flight once this
    returns (join the thread to wait for their answers)."""
    t = threading.Thread(target=lambda: in_threads(n, lambda i: httpx.get(
        f"{gw.url}/slow-{i}?delay={delay}", timeout=delay + 10).status_code))
    t.start()
    assert origin.wait_for(lambda: len(origin.heads_for("/slow-")) == n)
    return t


def settled(gw) -> dict:  # type: ignore[no-untyped-def]
    """The upstream's counts once the load is over: every request and retry gave its place back."""
    deadline = time.monotonic() + 3
    while True:
        limits = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["limits"]
        if limits["requests"] == limits["retrying"] == limits["pending"] == 0 or time.monotonic() > deadline:
            return limits
        time.sleep(0.05)


def in_threads(n: int, fn) -> list:  # type: ignore[no-untyped-def]
    out: list = []
    lock = threading.Lock()

    def run(i: int) -> None:
        r = fn(i)
        with lock:
            out.append(r)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# -- circuit breaking -------------------------------------------------------------------------------------
def test_overflow_answers_503_at_once_while_the_upstream_is_saturated(gateway) -> None:
    origin = EchoOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [origin.addr], "limits": {"max_requests": 4}}}, ROUTE,
                           server={"workers": 2})
        # The origin holds the 4 for 3.5 s: the 20 overflows below take about 1 s (each a new client), and one
        # that queued instead of overflowing would wait until then (took < 0.5 and 503 fail).
        slow = saturate(gw, origin, 4, 3.5)
        answers = []
        for i in range(20):                    # each on a new connection: whichever worker takes it
            t0 = time.monotonic()
            r = httpx.get(f"{gw.url}/over-{i}", timeout=5)
            answers.append((r, time.monotonic() - t0))
        for r, took in answers:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "urn:fastgw:problem:upstream-overloaded"
            assert r.json()["upstream_error"] == "overloaded: max_requests"
            assert r.headers["retry-after"] == "1"
            assert took < 0.5, f"an overflow waited {took:.3f}s"
        assert not origin.heads_for("/over-"), "an overflowing request reached the upstream"
        slow.join()
        assert httpx.get(f"{gw.url}/after", timeout=5).status_code == 200      # room again
        assert metric(gw, 'fastgw_upstream_overflow_total{upstream="u",limit="requests"}') == 20
        assert settled(gw)["requests"] == 0
    finally:
        origin.stop()


def test_max_connections_overflows_instead_of_opening_more(gateway) -> None:
    origin = EchoOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [origin.addr], "limits": {"max_connections": 2}}}, ROUTE,
                           server={"workers": 2})
        slow = saturate(gw, origin, 2, 1.5)     # the third request is answered long before they end
        r = httpx.get(f"{gw.url}/third", timeout=5)
        assert r.status_code == 503 and r.json()["upstream_error"] == "overloaded: max_connections", r.text
        assert origin.connections == 2
        slow.join()
    finally:
        origin.stop()


def test_clients_that_go_away_give_their_places_back(gateway) -> None:
    origin = EchoOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [origin.addr], "limits": {"max_requests": 3}}}, ROUTE,
                           server={"workers": 2})
        def leave(i: int) -> str:
            try:
                httpx.get(f"{gw.url}/gone-{i}?delay=1", timeout=0.3)
            except httpx.TimeoutException:
                return "left"
            return "answered"

        # Each time the limit fills at once with clients that leave 0.7 s before the origin answers; a place
        # kept would fill the limit by the next round (503 instead of a timeout) and fail settled().
        for _ in range(3):
            assert in_threads(3, leave) == ["left"] * 3
            assert settled(gw)["requests"] == 0
        assert httpx.get(f"{gw.url}/after", timeout=5).status_code == 200
    finally:
        origin.stop()


# -- retries ------------------------------------------------------------------------------------------------
def test_a_refusing_target_costs_no_failed_get_or_post(gateway) -> None:
    a, b = EchoOrigin().start(), EchoOrigin().start()
    refused = f"127.0.0.1:{closed_port()}"
    try:
        gw = gateway.start({"u": {"targets": [a.addr, refused, b.addr], "outlier": NO_OUTLIER}}, ROUTE,
                           server={"workers": 2, "access_log": True})

        def load(i: int) -> Counter:
            c: Counter = Counter()
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                for k in range(30):
                    c[client.get(f"/refuse-g{i}-{k}").status_code] += 1
                    c[client.post(f"/refuse-p{i}-{k}", content=b"x" * 3000).status_code] += 1
            return c

        statuses = sum(in_threads(4, load), Counter())
        assert statuses == Counter({200: 240}), statuses
        assert len(a.requests) + len(b.requests) == 240
        assert all(r.body == b"x" * 3000 for r in a.requests + b.requests if r.head.method == "POST")
        retried = [e for e in access_lines(gw, "/refuse-", 240) if "attempts" in e]
        assert retried, "no request met the refusing target"
        for e in retried:
            first, last = e["attempts"].split("; ")
            assert first == f"{refused} connect refused" and last == f"{e['target']} 200", e
            assert e["target"] != refused and e["retried_after"] == "upstream_connect"
        assert metric(gw, 'fastgw_upstream_retries_total{upstream="u",reason="connect-failure"}') == len(retried)
    finally:
        a.stop()
        b.stop()


def test_a_get_reset_before_its_response_goes_to_another_target_a_post_does_not(gateway) -> None:
    bad, good = ResetOrigin().start(), EchoOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [bad.addr, good.addr], "outlier": NO_OUTLIER}}, ROUTE,
                           server={"access_log": True})
        with gw.client() as c:
            gets = [c.get(f"/rg-{i}").status_code for i in range(10)]
            puts = [c.put(f"/rput-{i}", content=b"idempotent").status_code for i in range(10)]
            posts = [c.post(f"/rp-{i}", content=b"once").status_code for i in range(10)]
        assert gets == [200] * 10 and puts == [200] * 10       # idempotent: the reset is retried
        assert posts.count(502) == 5 and posts.count(200) == 5  # never sent twice: half met the reset
        assert all(len(bad.heads_for(f"/rp-{i}")) + len(good.heads_for(f"/rp-{i}")) == 1 for i in range(10))
        assert all(r.body == b"idempotent" for r in good.requests_for("/rput-"))
        line = next(e for e in access_lines(gw, "/rg-", 10) if "attempts" in e)
        assert line["attempts"] == f"{bad.addr} reset; {good.addr} 200"
    finally:
        bad.stop()
        good.stop()


def test_a_target_killed_mid_load_costs_no_failed_get(gateway) -> None:
    origins = [EchoOrigin().start() for _ in range(3)]
    try:
        gw = gateway.start({"u": {"targets": [o.addr for o in origins]}}, ROUTE, server={"workers": 2})

        def load(i: int) -> Counter:
            c: Counter = Counter()
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                for k in range(100):
                    c[client.get(f"/kill-{i}-{k}?delay=0.005").status_code] += 1
            return c

        killer = threading.Timer(0.4, origins[1].stop)
        killer.start()
        statuses = sum(in_threads(6, load), Counter())
        killer.join()
        assert statuses == Counter({200: 600}), statuses
        assert settled(gw)["requests"] == 0
    finally:
        for o in origins[::2]:
            o.stop()


def test_a_blackholed_target_costs_a_per_try_timeout_only_when_timeouts_are_retried(gateway) -> None:
    hole, good = SlowOrigin().start(), EchoOrigin().start()
    try:
        retry = {"on": ["connect-failure", "timeout"], "per_try_timeout": "300ms"}
        gw = gateway.start({"u": {"targets": [hole.addr, good.addr], "outlier": NO_OUTLIER, "retry": retry},
                            "v": {"targets": [hole.addr, good.addr], "outlier": NO_OUTLIER, "timeout": "300ms"}},
                           [{"name": "r", "path": "/u/*", "upstream": "u", "timeout": "2s"},
                            {"name": "s", "path": "/v/*", "upstream": "v"}])
        with gw.client() as c:
            for i in range(4):
                t0 = time.monotonic()
                assert c.get(f"/u/{i}").status_code == 200
                assert time.monotonic() - t0 < 1.5
            statuses = Counter(c.get(f"/v/{i}").status_code for i in range(4))
        assert statuses == Counter({200: 2, 504: 2}), statuses   # not opted in: the timeout is the answer
        assert len(hole.heads_for("/u/")) == 2
    finally:
        hole.stop()
        good.stop()


def test_a_503_is_retried_only_when_opted_in(gateway) -> None:
    flaky, good = FlakyOrigin().start(), EchoOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [flaky.addr, good.addr], "outlier": NO_OUTLIER,
                                  "retry": {"on": ["connect-failure", "503"]}},
                            "v": {"targets": [flaky.addr, good.addr], "outlier": NO_OUTLIER}},
                           [{"name": "r", "path": "/u/*", "upstream": "u"},
                            {"name": "s", "path": "/v/*", "upstream": "v"}])
        with gw.client() as c:
            assert [c.get(f"/u/{i}").status_code for i in range(6)] == [200] * 6
            assert Counter(c.get(f"/v/{i}").status_code for i in range(6)) == Counter({200: 3, 503: 3})
            assert Counter(c.post(f"/u/p{i}", content=b"x").status_code for i in range(6)) == \
                Counter({200: 3, 503: 3})                       # not idempotent: the 503 is the answer
        assert metric(gw, 'fastgw_upstream_retries_total{upstream="u",reason="503"}') == 3
    finally:
        flaky.stop()
        good.stop()


def test_a_policy_may_mark_a_post_safe_to_retry() -> None:
    """The Idempotency-Key hook: a policy that validated the key sets exchange.retry_safe in on_request; the
    POST is then retried like a GET (here: reset before its response, sent again to the other target with
    its body)."""
    from inprocess import InProcessWorker

    from fastgw.compile import compile_config
    from fastgw.config.root import loads
    bad, good = ResetOrigin().start(), EchoOrigin().start()
    cfg = loads(f"""
[upstreams.u]
targets = ["{bad.addr}", "{good.addr}"]
outlier = {{ consecutive_failures = 0 }}
[[routes]]
name = "r"
path = "/*"
upstream = "u"
""")
    rt = compile_config(cfg)
    route = rt.router.match(b"POST", b"h", b"/x")[1]

    def gate(ex):  # type: ignore[no-untyped-def]
        if ex.header(b"idempotency-key") is not None:     # (a real policy checks the key first)
            ex.retry_safe = True

    route.gate = gate
    gw = InProcessWorker(rt)
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            keyed = [c.post(f"/k{i}", content=b"pay 10", headers={"Idempotency-Key": f"k{i}"}).status_code
                     for i in range(6)]
            plain = [c.post(f"/p{i}", content=b"pay 10").status_code for i in range(6)]
        assert keyed == [200] * 6 and sorted(plain) == [200] * 3 + [502] * 3, (keyed, plain)
        assert all(r.body == b"pay 10" for r in good.requests_for("/k"))
    finally:
        gw.stop()
        bad.stop()
        good.stop()


class FlappingOrigin(EchoOrigin):
    """Answers 503 for 200 ms, then as the echo origin for 200 ms, and so on (every instance in phase),
    each answer after 50 ms. Counts, across instances, the requests it serves at once that are retries
    (an X-Request-ID it has seen before)."""

    lock = threading.Lock()
    seen: set[str] = set()
    now_retries = 0
    max_retries = 0

    async def respond(self, rec, writer):  # type: ignore[no-untyped-def]
        cls = FlappingOrigin
        rid = rec.head.values("x-request-id")[0]
        with cls.lock:
            again = rid in cls.seen
            cls.seen.add(rid)
            if again:
                cls.now_retries += 1
                cls.max_retries = max(cls.max_retries, cls.now_retries)
        try:
            await asyncio.sleep(0.05)
        finally:
            with cls.lock:
                cls.now_retries -= again
        if int(time.monotonic() * 5) % 2 == 0:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return True
        return await super().respond(rec, writer)


def test_a_flapping_upstream_meets_no_retry_storm(gateway) -> None:
    origins = [FlappingOrigin().start() for _ in range(3)]
    clients = 30
    try:
        gw = gateway.start({"u": {"targets": [o.addr for o in origins], "outlier": NO_OUTLIER,
                                  "retry": {"attempts": 3, "on": ["503"], "backoff": "1ms",
                                            "backoff_max": "5ms"}}},
                           ROUTE, server={"workers": 2})

        def load(i: int) -> None:
            with httpx.Client(base_url=gw.url, timeout=10) as client:
                for k in range(25):
                    client.get(f"/flap-{i}-{k}")

        in_threads(clients, load)
        # The budget: retried requests in flight at most 20% of the requests in flight (<= clients), or 3.
        assert 0 < FlappingOrigin.max_retries <= clients * 20 // 100 + 3, FlappingOrigin.max_retries
        assert metric(gw, 'fastgw_upstream_retry_budget_exhausted_total{upstream="u"}') > 0
        assert settled(gw) == {**settled(gw), "requests": 0, "retrying": 0, "pending": 0}
    finally:
        for o in origins:
            o.stop()


def test_an_h2_upstream_s_502_503_504_count_for_outlier_detection(gateway) -> None:
    origin = H2Origin().start()
    try:
        gw = gateway.start({"u": {"targets": [origin.addr], "protocol": "h2",
                                  "outlier": {"consecutive_failures": 3, "on_panic": "fail"}}}, ROUTE)
        with gw.client() as c:
            for path in ("/status/503/a", "/status/504/b", "/ok", "/status/502/c", "/status/503/d"):
                c.get(path)                          # a 200 ends the run: 2 failures in a row, no ejection
            assert c.get("/ok").status_code == 200
            assert [c.get(f"/status/50{i}/x").status_code for i in (2, 3, 4)] == [502, 503, 504]
            r = c.get("/ok")                         # 3 in a row: ejected, and no other target
        assert r.status_code == 503 and r.json()["type"] == "urn:fastgw:problem:upstream-unavailable", r.text
        target = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"][0]
        assert target["state"] == "ejected" and target["reason"] == "status", target
    finally:
        origin.stop()


def test_check_warns_when_the_attempts_cannot_fit_the_route_deadline() -> None:
    from fastgw.config.root import loads
    text = """
[server]
listen = ["127.0.0.1:8080"]
[upstreams.u]
targets = ["127.0.0.1:9000"]
retry = { attempts = 2, per_try_timeout = "6s" }
[[routes]]
name = "r"
path = "/*"
upstream = "u"
timeout = "15s"
"""
    warnings: list[str] = []
    loads(text, warnings=warnings)
    assert any("routes[0].timeout: 3 attempts" in w and "18s exceed" in w for w in warnings), warnings
    warnings = []
    loads(text.replace('"6s"', '"5s"'), warnings=warnings)
    assert not any("attempts" in w for w in warnings), warnings


@pytest.mark.parametrize("bad,message", [
    ('retry = { on = ["5xx"] }', 'retry.on[0]: unknown condition "5xx"'),
    ("retry = { attempts = 9 }", "retry.attempts: must be between 0 and 5"),
    ('retry = { backoff = "1s", backoff_max = "10ms" }', "retry.backoff_max: must be at least backoff"),
    ("limits = { max_requests = 0 }", "limits.max_requests: must be at least 1"),
])
def test_bad_retry_and_limits_keys_are_config_errors(bad: str, message: str) -> None:
    from fastgw.config.root import ConfigError, loads
    text = f"""
[server]
listen = ["127.0.0.1:8080"]
[upstreams.u]
targets = ["127.0.0.1:9000"]
{bad}
[[routes]]
name = "r"
path = "/*"
upstream = "u"
"""
    with pytest.raises(ConfigError) as e:
        loads(text)
    assert message in str(e.value)


class HoldingOrigin(EchoOrigin):
    """While `hold`, keeps each request unanswered (its connection noted) until the test resets them."""

    hold = False

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[int, asyncio.StreamWriter]] = []

    async def respond(self, rec, writer):  # type: ignore[no-untyped-def]
        if self.hold:
            self.held.append((rec.head.conn, writer))
            await asyncio.Event().wait()         # until the test resets the connection
        return await super().respond(rec, writer)


def test_re_sends_of_a_dead_target_s_pooled_connections_take_no_retry_budget(gateway) -> None:
    """A target dies with requests in flight (bench/resilience.py's kill): those on pooled connections are
    re-sent (reset-before-send: nothing of them can have been processed, no work added), and a GET on the
    connection just opened to it (reset-before-response) must still find room in the budget (3 here): the
    re-sends are no retry storm. Before, they filled the budget and that GET was a 502."""
    from tests.upstreams import reset
    dying, other = HoldingOrigin().start(), EchoOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [dying.addr, other.addr], "outlier": NO_OUTLIER}}, ROUTE)
        assert in_threads(12, lambda i: httpx.get(f"{gw.url}/warm-{i}?delay=0.5", timeout=10).status_code) \
            == [200] * 12
        warm = {h.conn for h in dying.heads}
        k = len(warm)                            # pooled connections to the dying target
        assert k > 3, warm                       # more re-sends than budget_min
        dying.hold = True
        loads = threading.Thread(target=lambda: codes.extend(in_threads(2 * (k + 1), lambda i: httpx.get(
            f"{gw.url}/kill-{i}?delay=1", timeout=10).status_code)))
        codes: list[int] = []
        loads.start()
        assert dying.wait_for(lambda: len(dying.held) == k + 1)
        pooled = [w for conn, w in dying.held if conn in warm]
        fresh = [w for conn, w in dying.held if conn not in warm]
        assert len(pooled) == k and len(fresh) == 1
        for w in pooled:                         # the kill: the pooled connections first...
            dying.loop.call_soon_threadsafe(reset, w)
        time.sleep(0.2)                          # (their re-sends in flight at the other target)
        dying.loop.call_soon_threadsafe(reset, fresh[0])      # ...then the one just opened
        loads.join()
        assert codes == [200] * (2 * (k + 1)), codes
        assert settled(gw) == {**settled(gw), "requests": 0, "retrying": 0, "pending": 0}
    finally:
        dying.stop()
        other.stop()
