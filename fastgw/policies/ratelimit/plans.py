"""A plan, compiled: its limits (rate: a token bucket; quota: a UTC calendar window; concurrency: requests
in flight), the key of each, the local bucket plan and the prebuilt RateLimit header bytes, and what a
plan kept in Redis needs (script arguments, the lease state).
"""
from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from fastgw._core import buckets as B
from fastgw._core import gates as G
from fastgw.config.units import parse_quota, parse_rate
from fastgw.policies.ratelimit.config import limit_name
from fastgw.policies.ratelimit.stats import D_QUOTA, D_RATE
from fastgw.policies.ratelimit.store import Store

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.policies.ratelimit.config import PlanLimit, RatePlan

NS = 1_000_000_000
_KIND = {"minute": B.QUOTA_MINUTE, "hour": B.QUOTA_HOUR, "day": B.QUOTA_DAY, "month": B.QUOTA_MONTH}
_WINDOW_S = {"minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}


class Limit:
    def __init__(self, plan: str, i: int, lim: PlanLimit) -> None:
        self.name = limit_name(lim)
        self.enforce = lim.enforce
        self.key = tuple(lim.key)
        self.seed = B.hash_key(0, f"{plan}\0{i}\0{self.name}".encode())
        self.burst = 0
        self.count = 0
        self.window = ""
        if lim.rate is not None:
            count, period = parse_rate(lim.rate)
            self.kind = B.RATE
            self.burst = lim.burst if lim.burst is not None else count
            self.count, self.period = count, period
            self.slug = "rate-limited"
            self.decision = D_RATE
        elif lim.quota is not None:
            count, window = parse_quota(lim.quota)
            self.kind = _KIND[window]
            self.count, self.window = count, window
            self.period = _WINDOW_S[window]
            self.slug = "quota-exceeded"
            self.decision = D_QUOTA
        else:
            self.kind = B.CONCURRENCY
            self.count = lim.concurrency or 1
            self.period = 0
            self.slug = "rate-limited"
            self.decision = D_RATE
        self.is_conc = self.kind == B.CONCURRENCY

    def spec(self, keyidx: int, divide: int = 1) -> tuple[int, int, int, bool, int, int]:
        """The buckets.Plan entry; `divide` splits the limit between live instances (fallback)."""
        if self.kind == B.RATE:
            count = max(1, self.count // divide)
            return (B.RATE, self.period * NS // count, max(1, self.burst // divide), self.enforce, self.seed, keyidx)
        if self.kind == B.CONCURRENCY:
            return (self.kind, self.count, 0, self.enforce, self.seed, keyidx)
        return (self.kind, max(1, self.count // divide), 0, self.enforce, self.seed, keyidx)

    def policy_item(self) -> str | None:
        if self.kind == B.CONCURRENCY:
            return None
        if self.kind == B.RATE:
            # A token bucket in quota units (docs/traffic-policy.md "Responses"): q tokens are made available every w
            # seconds, which a client spreading its requests evenly can rely on (and, with burst >= q,
            # q requests in any w-second window however bunched). A burst other than the count is said
            # in a vendor parameter (draft-ietf-httpapi-ratelimit-headers-10 §3.1): with burst = 1,
            # "10/s" is 10 per second one at a time, not 1 per second.
            burst = f";fastgw-burst={self.burst}" if self.burst != self.count else ""
            return f'"{self.name}";q={self.count};w={self.period}{burst}'
        return f'"{self.name}";q={self.count};w={self.period}'


class PlanRT:
    """One plan, compiled: its limits, key functions, local bucket plan and prebuilt header bytes."""

    def __init__(self, name: str, plan: RatePlan, cfg: Config, table: B.Table, lease: B.Table,
                 store: Store | None) -> None:
        self.name = name
        self.limits = [Limit(name, i, lim) for i, lim in enumerate(plan.limits)]
        self.keyspecs: list[tuple[str, ...]] = []
        for lim in self.limits:
            if lim.key not in self.keyspecs:
                self.keyspecs.append(lim.key)
        self.keyidx = [self.keyspecs.index(lim.key) for lim in self.limits]
        self.table = table
        self.lease = lease
        self.local = B.Plan(table, [lim.spec(self.keyidx[i]) for i, lim in enumerate(self.limits)])
        self.fallbacks: dict[int, B.Plan] = {1: self.local}
        self.sync = plan.sync if cfg.redis is not None else "local"
        self.on_error = plan.on_store_error
        self.store = store if self.sync != "local" else None
        items = [it for it in (lim.policy_item() for lim in self.limits if lim.enforce) if it]
        self.policy_header = ", ".join(items).encode() if items else None
        self.rl_prefix = [f'"{lim.name}";r='.encode() for lim in self.limits]
        self.hdrs = G.Headers(self.policy_header, self.rl_prefix)
        self.has_quota = any(lim.window for lim in self.limits)
        self.has_conc = any(lim.kind == B.CONCURRENCY for lim in self.limits)
        # Limits kept in Redis (concurrency stays per host) and the script arguments describing them.
        self.shared = [i for i, lim in enumerate(self.limits) if lim.kind != B.CONCURRENCY]
        self.redis_args: list[Any] = []
        for i in self.shared:
            lim = self.limits[i]
            if lim.kind == B.RATE:
                iv = lim.period * 1_000_000 // lim.count
                self.redis_args += [1, iv, iv * lim.burst, 1 if lim.enforce else 0]
            else:
                self.redis_args += [lim.kind, lim.count, 0, 1 if lim.enforce else 0]
        rates = [lim for lim in self.limits if lim.kind == B.RATE and lim.enforce]
        self.lease_cap = store.settings.lease_max if store is not None else 1
        if rates and store is not None:
            # No worker holds more than one lease period of the whole limit.
            tight = min(lim.count / lim.period for lim in rates)
            self.lease_cap = max(1, min(self.lease_cap, int(tight * store.settings.lease_period)))
        # A refused worker refuses locally for at least this long (RateLimitPolicy.refill): a lease period,
        # but at most half the time the smallest rate bucket takes to fill, so that a worker still asks
        # before the shared bucket is full and would drop tokens (the limit would be under-admitted).
        self.lease_deny = store.settings.lease_period if store is not None else 0.0
        for lim in rates:
            self.lease_deny = min(self.lease_deny, lim.burst * lim.period / lim.count / 2)
        self.lease_seed = B.hash_key(1, name.encode())
        self.lease_state: dict[int, list[float]] = {}     # key hash -> [last refill mono, batch, deny until,
        #                                                   tight index, remaining, reset deadline]
        self.inflight: dict[int, asyncio.Future[Any]] = {}
        self.waitq: dict[int, collections.deque[asyncio.Future[bool]]] = {}   # requests waiting for a refill
        keys = G.Keys(self.keyspecs)
        self.keys = keys.of                  # (ex, consumer) -> tuple of key hashes
        # What the compiled RateGate needs; no local bucket plan when the plan is kept in Redis.
        self.gate = G.PlanGate(self, self.local if self.store is None else None, keys, self.hdrs,
                               self.has_quota, self.has_conc, self.limits)
        if self.sync == "lease" and self.store is not None:
            # Spending a token of this worker's lease is compiled (RateGate.spend_lease), called straight
            # from RateGate.on_request when the plan has no concurrency limit, else from leased() below.
            g = self.gate
            g.lease, g.lease_seed, g.lease_state, g.client = lease, self.lease_seed, self.lease_state, self.store.client
            g.inflight, g.lease_fast = self.inflight, not self.has_conc

    def fallback_plan(self) -> tuple[B.Plan, bytes]:
        """The plan's share of the host (Store.share) and the RateLimit-Degraded value saying which."""
        if self.store is None:
            return self.local, b"local"
        n, _, value = self.store.share()
        p = self.fallbacks.get(n)
        if p is None:
            p = self.fallbacks[n] = B.Plan(self.table, [lim.spec(self.keyidx[i], n)
                                                        for i, lim in enumerate(self.limits)])
        return p, value
