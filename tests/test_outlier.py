"""Passive outlier detection: ejection after consecutive failures counted by every worker, automatic
re-admission, max_ejected_percent, panic and on_panic (on the compiled balancer), then with real origins
(one refusing connections, one answering 503, one stopped mid-load) through the gateway, /status/upstreams
and the metrics."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections import Counter

import pytest

from fastgw._core.balancer import Target, UpstreamGroup, finish_target, pick_target
from tests.test_balancing import _Req
from tests.upstreams import EchoOrigin

CONNECT, RESET, TIMEOUT, STATUS = range(4)


def group(n: int, balance: str = "round_robin", fails: int = 5, base: float = 0.3, pct: int = 100,
          panic: int = 0, fail: bool = False) -> UpstreamGroup:
    g = UpstreamGroup()
    g.name = "u"
    g.targets = [Target(f"10.0.0.{i + 1}", 80, 0, g) for i in range(n)]
    g.outlier(fails, base, 10 * base, pct, panic, fail)
    g.setup(balance, "header:k" if balance == "hash" else None, 0.0, 1)
    return g


def picks(g: UpstreamGroup, n: int = 300) -> Counter:
    out: Counter = Counter()
    for i in range(n):
        t = pick_target(g, _Req(b"key-%d" % i))
        out[None if t is None else t.index] += 1
        if t is not None and g.balance == 1:
            finish_target(t)
    return out


@pytest.mark.parametrize("balance", ["round_robin", "least_request", "hash"])
def test_a_target_is_ejected_after_consecutive_failures_and_readmitted_by_itself(balance: str) -> None:
    g = group(3, balance)
    t = g.targets[1]
    for _ in range(4):
        t.record_failure(CONNECT)
    assert not t.ejected and picks(g)[1] > 0            # 4 failures: still in service
    t.record_failure(CONNECT)
    assert t.ejected and picks(g)[1] == 0               # the 5th: out, for base_ejection
    time.sleep(0.35)
    assert not t.ejected and picks(g)[1] > 0            # back without anyone's help
    for _ in range(5):
        t.record_failure(STATUS)
    time.sleep(0.35)
    assert t.ejected                                     # the 2nd ejection lasts twice as long
    time.sleep(0.3)
    assert not t.ejected


def test_a_hashed_key_of_another_target_never_moves_when_one_is_ejected() -> None:
    g = group(5, "hash")
    keys = [b"acct-%d" % i for i in range(5000)]
    before = {k: pick_target(g, _Req(k)).index for k in keys}
    for _ in range(5):
        g.targets[2].record_failure(RESET)
    after = {k: pick_target(g, _Req(k)).index for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == 2 for k in moved) and 2 not in after.values()


def test_never_more_than_max_ejected_percent() -> None:
    g = group(10, pct=20)
    for t in g.targets[:4]:
        for _ in range(5):
            t.record_failure(TIMEOUT)
    assert [t.ejected for t in g.targets[:4]] == [True, True, False, False]
    g = group(3, pct=0)                                   # 0%: still one may be ejected
    for t in g.targets:
        for _ in range(5):
            t.record_failure(TIMEOUT)
    assert sum(t.ejected for t in g.targets) == 1


@pytest.mark.parametrize("fail", [False, True])
def test_below_the_panic_threshold_on_panic_decides(fail: bool) -> None:
    g = group(3, panic=50, fail=fail)
    for t in g.targets[:2]:
        for _ in range(5):
            t.record_failure(CONNECT)
    counts = picks(g)                                      # 1 of 3 usable: 33% < 50%
    if fail:
        assert counts == {None: 300}
    else:
        assert set(counts) == {0, 1, 2}                   # all targets, ejected or not
    g = group(3, panic=30, fail=fail)
    for _ in range(5):
        g.targets[0].record_failure(CONNECT)
    assert set(picks(g)) == {1, 2}                        # 66% usable: above the threshold


def test_a_success_ends_the_run_of_failures() -> None:
    g = group(3)
    t = g.targets[0]
    for _ in range(4):
        t.record_failure(CONNECT)
    assert t.consecutive_failures == 4
    t.record_success()
    t.record_failure(CONNECT)
    assert not t.ejected and t.consecutive_failures == 1


# -- with real origins ------------------------------------------------------------------------------------
class FlakyOrigin(EchoOrigin):
    """Answers 503 while `failing`, else as the echo origin."""

    failing = True

    async def respond(self, rec, writer):  # type: ignore[no-untyped-def]
        if self.failing:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return True
        return await super().respond(rec, writer)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                    # nothing listens there: connections are refused
    return port


def admin_get(gw, path: str) -> str:  # type: ignore[no-untyped-def]
    admin = next(e["admin"] for e in gw.events if e.get("event") == "started")
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as r:
        return r.read().decode()


def test_refusing_and_503_targets_are_ejected_then_readmitted(gateway) -> None:
    good, flaky = EchoOrigin().start(), FlakyOrigin().start()
    refused = closed_port()
    try:
        gw = gateway.start({"u": {"targets": [good.addr, flaky.addr, f"127.0.0.1:{refused}"],
                                  "outlier": {"base_ejection": "1s", "max_ejected_percent": 70,
                                              "panic_threshold": 30}}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2})
        statuses: Counter = Counter()
        with gw.client() as c:
            for _ in range(120):
                statuses[c.get("/x").status_code] += 1
        # Each bad target fails at most consecutive_failures (5) times, counted across both workers,
        # then is ejected: the rest goes to the good one.
        assert statuses[200] >= 120 - 10 and statuses[502] <= 5 and statuses[503] <= 5, statuses
        status = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"]
        by_addr = {t["target"]: t for t in status}
        assert by_addr[flaky.addr]["state"] == "ejected" and by_addr[flaky.addr]["reason"] == "status"
        assert by_addr[f"127.0.0.1:{refused}"]["reason"] == "connect"
        assert by_addr[good.addr] == {**by_addr[good.addr], "state": "up", "ejections": 0}
        text = admin_get(gw, "/metrics")
        assert f'fastgw_upstream_target_up{{upstream="u",target="{flaky.addr}"}} 0' in text
        assert f'fastgw_upstream_ejections_total{{upstream="u",target="{flaky.addr}",reason="status"}} 1' in text
        # Recovery: the 503 origin heals; once the ejection runs out it gets traffic again.
        flaky.failing = False
        time.sleep(1.2)
        n = len(flaky.requests)
        with gw.client() as c:
            for _ in range(60):
                assert c.get("/x").status_code in (200, 502)
        assert len(flaky.requests) - n >= 15
        status = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"]
        assert {t["target"]: t["state"] for t in status}[flaky.addr] == "up"
    finally:
        good.stop()
        flaky.stop()


def test_an_origin_stopped_mid_load_costs_a_few_errors(gateway) -> None:
    origins = [EchoOrigin().start() for _ in range(3)]
    try:
        gw = gateway.start({"u": {"targets": [o.addr for o in origins],
                                  "outlier": {"max_ejected_percent": 50}}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2})
        statuses: Counter = Counter()
        lock = threading.Lock()

        def load() -> None:
            with gw.client() as c:
                for _ in range(100):
                    code = c.get("/x").status_code
                    with lock:
                        statuses[code] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        # Stopped once a quarter of the 400 requests are answered, not after a fixed 0.3 s: on a fast core
        # the load could be over by then, and nothing met the stopped origin.
        assert origins[0].wait_for(lambda: sum(statuses.values()) >= 100, 10)
        origins[1].stop()
        for t in threads:
            t.join()
        errors = sum(n for code, n in statuses.items() if code != 200)
        assert sum(statuses.values()) == 400 and errors <= 10, statuses
        status = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"]
        assert {t["target"]: t["state"] for t in status}[origins[1].addr] == "ejected"
    finally:
        for o in origins[::2]:
            o.stop()


# -- slow start after a return to service -----------------------------------------------------------------
def test_a_target_back_from_an_ejection_slow_starts_in_every_worker() -> None:
    """Two balancers on one shared table, as two workers: the ejection's end is recorded by the one that
    finds it over; the other ramps the target up from the same instant (G_CHANGES, R_SINCE)."""
    from scipy.stats import chisquare

    from fastgw._core.balancer import TargetTable
    from fastgw.compile import target_key
    from tests.test_balancing import P_FLOOR, shares
    from tests.test_balancing import group as wgroup
    table = TargetTable(bytearray(64 * 128), init=True)
    workers = []
    for seed in (1, 2):
        g = wgroup([1, 1, 1], slow_start=100.0, seed=seed, table=table)
        g.attach_records(table, target_key("up", ""))
        g.outlier(5, 0.2, 2.0, 50, 0, False)
        workers.append(g)
    a, b = workers
    for _ in range(5):
        a.targets[1].record_failure(STATUS)
    assert b.targets[1].ejected and shares(b, 300)[1] == 0
    time.sleep(0.25)
    shares(a, 30)                                  # a finds the ejection over and records the return
    for g in workers:                              # both ramp: the target starts near 10% of its weight
        counts = shares(g, 20000)
        share = [1 / 2.1, 0.1 / 2.1, 1 / 2.1]
        assert chisquare(counts, [20000 * s for s in share]).pvalue > P_FLOOR, counts


class _TimedOrigin(FlakyOrigin):
    """Records (when, the gateway's local port) of each request it answers 200."""

    failing = False

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, int]] = []

    async def respond(self, rec, writer):  # type: ignore[no-untyped-def]
        if not self.failing:
            self.seen.append((time.monotonic(), writer.get_extra_info("peername")[1]))
        return await super().respond(rec, writer)


def test_a_recovered_target_ramps_up_in_both_workers(gateway) -> None:
    """slow_start after an ejection, through the gateway with 2 workers: counted at the origins and split by
    the worker whose connection carried each request, the recovered target's share over the first part of
    the window is well below its weight, and is its weight after the window, in each worker."""
    import psutil
    steady, back = _TimedOrigin().start(), _TimedOrigin().start()
    try:
        gw = gateway.start({"u": {"targets": [steady.addr, back.addr], "slow_start": "2s",
                                  "outlier": {"consecutive_failures": 3, "base_ejection": "1s",
                                              "max_ejected_percent": 50}}},
                           [{"name": "r", "path": "/*", "upstream": "u"}], server={"workers": 2})
        owner: dict[int, int] = {}                 # the gateway's local port -> worker pid
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for pid in gw.worker_pids:
                    try:
                        for c in psutil.Process(pid).net_connections(kind="tcp"):
                            if c.raddr and c.raddr.port in (steady.port, back.port):
                                owner[c.laddr.port] = pid
                    except psutil.Error:
                        pass
                time.sleep(0.05)

        def load() -> None:
            with gw.client() as c:
                while not stop.is_set():
                    c.get("/x")

        threads = [threading.Thread(target=watch)] + [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        back.failing = True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = json.loads(admin_get(gw, "/status/upstreams"))["upstreams"]["u"]["targets"]
            if {t["target"]: t["state"] for t in state}[back.addr] == "ejected":
                break
            time.sleep(0.02)
        cleared = time.monotonic()
        back.failing = False
        # The ejection, the 2 s window, then at full weight. (A 4 s window, all times doubled, proved the
        # same: ~800-1,300 requests per worker and window there, ~400-650 here, against a floor of 40.)
        time.sleep(1.0 + 2.0 + 1.25)
        stop.set()
        for t in threads:
            t.join()
        t0 = min(w for w, _ in back.seen if w > cleared)   # the first request after the ejection's end

        def share(pid: int, start: float, end: float) -> tuple[float, int]:
            n = {o: sum(1 for w, p in o.seen if start <= w < end and owner.get(p) == pid) for o in (steady, back)}
            return n[back] / max(1, n[steady] + n[back]), n[steady] + n[back]

        for pid in set(gw.worker_pids):
            early, n_early = share(pid, t0, t0 + 0.75)       # weight from 10% to ~44%: a share of ~20%
            late, n_late = share(pid, t0 + 2.25, t0 + 3.25)  # full weight: 50%
            assert n_early >= 40 and n_late >= 40, (pid, n_early, n_late)
            assert early < 0.35 and 0.4 < late < 0.6, (pid, early, late)
    finally:
        steady.stop()
        back.stop()
