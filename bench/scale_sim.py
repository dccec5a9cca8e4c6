"""A discrete-event simulation of a fleet too large for this machine: P pods x W workers behind a load
balancer, C consumers with Zipf-skewed traffic, one rate limit per consumer kept in a Redis Cluster of N
primaries, in each sync mode of the traffic policy.

Model (one event per request, one per Redis call):
- arrivals: Poisson, `rps` in all; consumer k (1..C) sends a share proportional to k^-s; each request goes
  to a uniformly random worker of a uniformly random pod.
- Redis: each primary is a FIFO server. A call costs `redis_us` of that node's time (measured here:
  bench/results/redis-modes.json, Redis' usec_per_call for the TAKE script) and reaches it after half a
  round trip `rtt_ms`; the reply comes back after the other half. Keys go to primaries by CRC16 slot of
  their hash tag, as fastgw/store/cluster.py sends them.
- the global bucket: the TAKE script's GCRA (rate L/s, burst L), on Redis time.
- strict: one call per request, admitted if the bucket grants it.
- lease: as fastgw/policies/ratelimit/policy.py: a worker spends its leased tokens locally; an empty
  lease queues the request and asks for a batch = spending rate x lease_period (at most
  min(lease_max, L x lease_period)), the next batch is fetched when half is spent; a refusal makes the
  worker refuse locally until the next token is due and for at least min(lease_period, half the bucket's
  fill time) (--deny token: only until the next token, the rule before). Unspent tokens expire after
  lease_ttl.
- a call that would queue longer than `timeout` on its primary fails (the deadline) and the request
  follows on_store_error = "local", as below.
- failover (--failover): primary 0 is unavailable from 1/3 to 2/3 of the run; its keys follow
  on_store_error = "local": each pod enforces L / P with a local bucket (the heartbeat count).
Reported per mode: admitted / (L x duration + burst) for the worst consumer over its limit, Redis calls
per second on the busiest primary and on average, the lease batch sizes picked, and the same during the
failover.

usage: python3 bench/scale_sim.py [--pods 200] [--workers 16] [--rps 1000000] [--consumers 10000]
       [--limit 1000] [--primaries 6] [--seconds 1.0] [--failover]
"""
from __future__ import annotations

import argparse
import binascii
import bisect
import heapq
import itertools
import json
import math
import random
import statistics
from pathlib import Path

from progress import Progress  # bench/progress.py (this script's folder is on the path when run)

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 16384


def calibration() -> float:
    """Redis µs per TAKE call, measured on this machine (bench/redis_modes.py), else 12 µs."""
    f = ROOT / "bench" / "results" / "redis-modes.json"
    if f.exists():
        return float(json.loads(f.read_text())["cluster"]["redis_usec_per_call"])
    return 12.0


class Sim:
    def __init__(self, a: argparse.Namespace, mode: str) -> None:
        self.a = a
        self.mode = mode
        self.rng = random.Random(a.seed)
        weights = [k ** -a.zipf for k in range(1, a.consumers + 1)]
        total = sum(weights)
        self.cum = list(itertools.accumulate(w / total for w in weights))
        self.rate = [a.rps * w / total for w in weights]
        # Each consumer's key lands on a primary by the slot of its hash tag.
        self.node_of = [binascii.crc_hqx(b"%x" % (c * 2654435761 % (1 << 64)), 0) % SLOTS * a.primaries // SLOTS
                        for c in range(a.consumers)]
        self.node_free = [0.0] * a.primaries
        self.calls = [0] * a.primaries
        self.calls_failover = [0] * a.primaries
        self.timeouts = [0] * a.primaries
        self.tat = [0.0] * a.consumers            # GCRA state per consumer (Redis time = sim time)
        self.interval = 1.0 / a.limit
        self.tau = a.limit * self.interval        # burst = limit
        self.admitted = [0] * a.consumers
        self.admitted_failover = [0] * a.consumers
        self.leases: dict[tuple[int, int], list] = {}   # (consumer, worker) -> [tokens, expiry, deny_until,
        #                                                  last_refill, last_batch, inflight, waiters]
        self.batches: list[int] = []
        self.local: dict[tuple[int, int], float] = {}   # (consumer, pod) -> local GCRA tat (fallback)
        self.events: list[tuple[float, int, int, tuple]] = []
        self.seq = itertools.count()
        self.fail = (a.seconds / 3, 2 * a.seconds / 3) if a.failover else (math.inf, math.inf)
        self.cap = max(1, min(a.lease_max, int(a.limit * a.lease_period)))

    # -- Redis ------------------------------------------------------------------------------------------
    def take(self, c: int, want: int, partial: bool, now: float) -> int:
        """The TAKE script at Redis time `now`: tokens granted."""
        tat = max(self.tat[c], now)
        can = int((self.tau - (tat - now)) / self.interval)
        g = min(want, can) if partial else (want if can >= want else 0)
        if g > 0:
            self.tat[c] = tat + g * self.interval
        return max(0, g)

    def down(self, node: int, now: float) -> bool:
        return node == 0 and self.fail[0] <= now < self.fail[1]

    def call(self, c: int, now: float, kind: int, payload: tuple) -> bool:
        """Send a call for consumer c's key; schedules the reply. False: the node is down (breaker open)."""
        n = self.node_of[c]
        if self.down(n, now):
            return False
        arrive = now + self.a.rtt_ms / 2000
        start = max(arrive, self.node_free[n])
        if start - arrive > self.a.timeout:
            self.timeouts[n] += 1                     # queued past the deadline: the caller falls back
            return False
        done = start + self.a.redis_us / 1e6
        self.node_free[n] = done
        self.calls[n] += 1
        if self.fail[0] <= now < self.fail[1]:
            self.calls_failover[n] += 1
        heapq.heappush(self.events, (done + self.a.rtt_ms / 2000, next(self.seq), kind, (c, done, *payload)))
        return True

    # -- fallback -----------------------------------------------------------------------------------------
    def fallback(self, c: int, pod: int, now: float) -> None:
        share = self.a.limit / self.a.pods
        iv = 1.0 / share
        tat = max(self.local.get((c, pod), 0.0), now)
        if share * iv - (tat - now) >= iv:
            self.local[(c, pod)] = tat + iv
            self.count(c, now)

    def count(self, c: int, now: float) -> None:
        self.admitted[c] += 1
        if self.fail[0] <= now < self.fail[1]:
            self.admitted_failover[c] += 1

    # -- lease ----------------------------------------------------------------------------------------------
    def refill(self, c: int, w: int, st: list, now: float) -> None:
        batch = 1
        if st[3] > 0:
            batch = math.ceil(st[4] / max(1e-6, now - st[3]) * self.a.lease_period)
        batch = max(1, min(max(batch, st[6]), self.cap))
        if self.call(c, now, 1, (w, batch)):
            st[5] = True
        else:
            for _ in range(st[6]):
                self.fallback(c, w // self.a.workers, now)
            st[6] = 0

    def lease_request(self, c: int, w: int, now: float) -> None:
        st = self.leases.get((c, w))
        if st is None:
            st = self.leases[(c, w)] = [0, 0.0, 0.0, 0.0, 0, False, 0]
        if st[1] < now:
            st[0] = 0
        if st[0] > 0:
            st[0] -= 1
            self.count(c, now)
            if st[0] * 2 <= st[4] and not st[5] and st[2] <= now:
                self.refill(c, w, st, now)
            return
        if st[2] > now:
            return                                    # refused locally until the next token is due
        if self.down(self.node_of[c], now):
            self.fallback(c, w // self.a.workers, now)
            return
        st[6] += 1
        if not st[5]:
            self.refill(c, w, st, now)

    def lease_reply(self, c: int, redis_now: float, w: int, batch: int, now: float) -> None:
        st = self.leases[(c, w)]
        st[5] = False
        g = self.take(c, batch, True, redis_now)
        self.batches.append(g)
        st[3], st[4] = now, max(g, 1)
        if g == 0:
            retry = max(1e-3, self.tat[c] - self.tau + self.interval - redis_now)
            wait = min(self.a.lease_period, self.tau / 2)     # PlanRT.lease_deny
            st[2] = now + (max(retry, wait) if self.a.deny == "period" else retry)
        served = min(g, st[6])
        for _ in range(served):
            self.count(c, now)
        st[6] -= served
        st[0] += g - served
        st[1] = now + self.a.lease_ttl
        if st[6] and st[2] > now:
            st[6] = 0                                 # refused
        elif st[6]:
            self.refill(c, w, st, now)

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        a = self.a
        workers = a.pods * a.workers
        t = 0.0
        end = a.seconds
        while True:
            t += self.rng.expovariate(a.rps)
            if t >= end:
                break
            heapq.heappush(self.events, (t, next(self.seq), 0, ()))
            while self.events and self.events[0][0] <= t:
                now, _, kind, p = heapq.heappop(self.events)
                if kind == 0:
                    c = bisect.bisect_left(self.cum, self.rng.random())
                    c = min(c, a.consumers - 1)
                    w = self.rng.randrange(workers)
                    if self.mode == "strict":
                        if not self.call(c, now, 2, ()):
                            self.fallback(c, w // a.workers, now)
                    else:
                        self.lease_request(c, w, now)
                elif kind == 1:
                    self.lease_reply(p[0], p[1], p[2], p[3], now)
                else:
                    if self.take(p[0], 1, False, p[1]):
                        self.count(p[0], now)
        return self.report()

    def report(self) -> dict:
        a = self.a
        over = [c for c in range(a.consumers) if self.rate[c] > a.limit]
        allowed = a.limit * a.seconds + a.limit          # rate x time + burst
        worst = max((self.admitted[c] / allowed for c in over), default=0.0)
        fail_s = self.fail[1] - self.fail[0] if a.failover else 0
        out = {"mode": self.mode, "consumers_over_limit": len(over), "worst_admitted_vs_limit": worst,
               "calls_per_s_busiest_primary": max(self.calls) / a.seconds,
               "calls_per_s_mean_primary": statistics.mean(self.calls) / a.seconds,
               "calls_per_request": sum(self.calls) / max(1, a.rps * a.seconds),
               "timeouts_per_s": sum(self.timeouts) / a.seconds}
        if self.batches:
            qs = statistics.quantiles(self.batches, n=100)
            out["lease_batch_p50_p99_max"] = [qs[49], qs[98], max(self.batches)]
        if a.failover:
            n0 = [c for c in over if self.node_of[c] == 0]
            during = a.limit * fail_s + a.limit
            out["failover_worst_admitted_vs_limit_on_failed_primary"] = max(
                (self.admitted_failover[c] / during for c in n0), default=0.0)
            out["failover_calls_per_s_busiest_live_primary"] = max(self.calls_failover[1:]) / fail_s
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--rps", type=float, default=1_000_000)
    ap.add_argument("--consumers", type=int, default=10_000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--limit", type=float, default=1000.0, help="per consumer, requests per second")
    ap.add_argument("--primaries", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rtt-ms", dest="rtt_ms", type=float, default=0.3)
    ap.add_argument("--timeout", type=float, default=0.02, help="redis.timeout, seconds")
    ap.add_argument("--redis-us", dest="redis_us", type=float, default=calibration())
    ap.add_argument("--lease-period", dest="lease_period", type=float, default=0.1)
    ap.add_argument("--lease-max", dest="lease_max", type=int, default=1000)
    ap.add_argument("--lease-ttl", dest="lease_ttl", type=float, default=1.0)
    ap.add_argument("--modes", default="strict,lease")
    ap.add_argument("--deny", choices=("token", "period"), default="period",
                    help="a refused lease: ask again when the next token is due, or after a lease period")
    ap.add_argument("--failover", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    print(f"# {a.pods} pods x {a.workers} workers, {a.rps:,.0f} req/s over {a.consumers:,} consumers (Zipf "
          f"{a.zipf}), limit {a.limit:g}/s each, {a.primaries} primaries at {a.redis_us:.1f} us/call, "
          f"RTT {a.rtt_ms} ms, {a.seconds} s simulated")
    modes = a.modes.split(",")
    progress = Progress("scale_sim", len(modes))
    for mode in modes:
        progress.step(f"{mode}: {a.pods} pods x {a.workers} workers, {a.seconds} s simulated")
        print(json.dumps(Sim(a, mode).run()))
    progress.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
