"""Traffic policy: plans of rate, quota and concurrency limits per consumer, IP, header or route
(issue 4; README "Traffic policy").

Which plan: the identity's plan (set by the auth policy from the consumer or a token claim) when it names a
known plan, else the route's `plan`. A route with no plan and a config where no consumer has a plan gets
no policy at all (it pays nothing).

Where the state lives, by the plan's `sync`:
  local   the per-host bucket table in shared memory (fastgw/_core/buckets.pyx): exact for the host, a few
          C operations per request, no await.
  strict  one atomic Redis script per request (quota.TAKE): exact across every instance; the request waits
          for one pipelined round trip.
  lease   each worker takes a batch of tokens from the global bucket (one TAKE with partial grants) and
          spends them locally; the batch follows the worker's share of the traffic (its spending rate over
          `redis.lease_period`, at most `redis.lease_max`). Most requests touch only local memory.
Without a [redis] section, lease and strict plans are enforced locally (DESIGN.md §2: "absent: quotas are
local to this host"). Concurrency limits are always per host (they must be released by the host that
counted them).

When Redis fails (`on_store_error`): "local" enforces limit / instances in the host table, "open" admits,
"closed" answers 503 store-unavailable. Responses say so in `RateLimit-Degraded: <mode>`, and the worker's
degraded gauge is 1. The instance count of "local" (Store.share) is the larger of the live count in the
last Redis heartbeat this instance saw (instances beat every `redis.heartbeat`; kept in the host table, so
a restarted worker still knows it) and `redis.expected_instances`: an instance started while Redis is down
does not enforce the whole limit. `RateLimit-Degraded: local;instances=N;source=heartbeat|configured|none`
and the gauge fastgw_ratelimit_fallback_instances{source} say which applies.

The policy derives from fastgw._core.gates.RateGate: a local plan is decided in one compiled call (key
hash, bucket check, decision counter, header lines); plans kept in Redis come back to `shared` here.

Responses on limited routes carry `RateLimit-Policy` (every limit of the plan) and `RateLimit` (the limit
with the fewest requests left), in the form of draft-ietf-httpapi-ratelimit-headers-10; a 429 also carries
`Retry-After`. Rejected requests are not charged (a plan is checked all-or-nothing).
"""
from __future__ import annotations

import asyncio
import collections
import math
import os
import time
from collections.abc import Awaitable
from typing import Any

from fastgw._core import buckets as B
from fastgw._core import gates as G
from fastgw.config import Config, PlanLimit, RatePlan, Route
from fastgw.observe import log
from fastgw.quota import HEARTBEAT, HEARTBEAT_KEY, SCRIPTS, TAKE, RedisClient, StoreDown, limit_name
from fastgw.units import parse_quota, parse_rate

Rejection = tuple[int, str, bytes | None, bytes | None]
NS = 1_000_000_000
PRIVATE_TABLE = 1024 * 1024          # bytes of the per-worker lease table / the table without shm
_KIND = {"minute": B.QUOTA_MINUTE, "hour": B.QUOTA_HOUR, "day": B.QUOTA_DAY, "month": B.QUOTA_MONTH}
_WINDOW_S = {"minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}

# Decisions counted per (route, plan): fastgw_ratelimit_decisions_total{decision=...}.
DECISIONS = ("allowed", "rate_limited", "quota_exceeded", "shadow_rejected", "store_unavailable", "degraded")
D_ALLOWED, D_RATE, D_QUOTA, D_SHADOW, D_UNAVAILABLE, D_DEGRADED = range(6)


def fnv32(text: str) -> int:
    h = 0x811C9DC5
    for b in text.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


# ---------------------------------------------------------------------------------------------------
# Per-worker counters in shared memory (section "rlstats", one region per worker slot).
#
# Region layout in 64-bit words: [0] Redis errors [1] degraded gauge (0/1) [2] Redis commands sent
# [3] the local fallback's instance count [4] its source (index in SHARE_SOURCES) [5..7] reserved;
# then STAT_ENTRIES entries of 8 words: [0] key = fnv32(route) << 32 | fnv32(plan)
# (0: unused), [1..6] counts by DECISIONS. The supervisor sums the regions and names the entries from
# its current config (labels come from config names only).
STAT_HEADER = 8
# Where the local fallback's instance count comes from: nothing known (the whole limit), the last Redis
# heartbeat seen, redis.expected_instances.
SHARE_SOURCES = ("none", "heartbeat", "configured")
STAT_ENTRIES = 1024
STAT_WORDS = 8
STATS_REGION_BYTES = (STAT_HEADER + STAT_ENTRIES * STAT_WORDS) * 8


class Stats:
    def __init__(self, words: Any) -> None:
        self.words = words                   # memoryview cast to "Q" (gates.Counter writes it)
        self.index: dict[int, int] = {}
        for i in range(STAT_ENTRIES):
            k = words[STAT_HEADER + i * STAT_WORDS]
            if k:
                self.index[k] = STAT_HEADER + i * STAT_WORDS

    def slot(self, route: str, plan: str) -> int:
        """Base word of the (route, plan) entry, created on first use (the worker is its only writer)."""
        key = fnv32(route) << 32 | fnv32(plan) or 1
        base = self.index.get(key)
        if base is None:
            if len(self.index) >= STAT_ENTRIES:
                return -1
            base = STAT_HEADER + len(self.index) * STAT_WORDS
            self.words[base] = key
            self.index[key] = base
        return base

# Counting is gates.Counter (one C increment per decision).


def decisions_snapshot(regions: list[Any]) -> dict[int, list[int]]:
    """Sum the entries of every worker region: key -> counts by decision."""
    out: dict[int, list[int]] = {}
    for words in regions:
        for i in range(STAT_ENTRIES):
            base = STAT_HEADER + i * STAT_WORDS
            k = words[base]
            if not k:
                break
            acc = out.setdefault(k, [0] * len(DECISIONS))
            for d in range(len(DECISIONS)):
                acc[d] += words[base + 1 + d]
    return out


def render_metrics(regions: list[Any], live: list[Any], cfg: Config) -> list[str]:
    """Prometheus lines for the traffic policy (called by the supervisor at scrape time)."""
    out = ["# HELP fastgw_ratelimit_decisions_total Rate-limit decisions, by route, plan and decision.",
           "# TYPE fastgw_ratelimit_decisions_total counter"]
    names: dict[int, tuple[str, str]] = {}
    for r in cfg.routes:
        for p in cfg.plans:
            names[fnv32(r.name) << 32 | fnv32(p) or 1] = (r.name, p)
    for key, counts in sorted(decisions_snapshot(regions).items()):
        if key not in names:
            continue
        route, plan = names[key]
        for d, n in enumerate(counts):
            if n:
                out.append(f'fastgw_ratelimit_decisions_total{{route="{route}",plan="{plan}",'
                           f'decision="{DECISIONS[d]}"}} {n}')
    out += ["# HELP fastgw_redis_errors_total Redis failures over all workers: timeouts, lost or refused "
            "connections, error replies (a Redis Cluster MOVED, OOM, script errors).",
            "# TYPE fastgw_redis_errors_total counter",
            f"fastgw_redis_errors_total {sum(w[0] for w in regions)}",
            "# HELP fastgw_redis_commands_total Redis commands sent by the workers.",
            "# TYPE fastgw_redis_commands_total counter",
            f"fastgw_redis_commands_total {sum(w[2] for w in regions)}",
            "# HELP fastgw_ratelimit_degraded Workers falling back from Redis (breaker open, or a failed call "
            "within the last heartbeat).",
            "# TYPE fastgw_ratelimit_degraded gauge",
            f"fastgw_ratelimit_degraded {sum(w[1] for w in live)}"]
    shares = [(w[3], w[4]) for w in live if w[3]]
    if shares:
        n, src = max(shares)
        out += ["# HELP fastgw_ratelimit_fallback_instances Instances the local fallback divides limits by "
                "while Redis is unavailable, by where the count comes from (heartbeat, configured, none).",
                "# TYPE fastgw_ratelimit_fallback_instances gauge",
                f'fastgw_ratelimit_fallback_instances{{source="{SHARE_SOURCES[src]}"}} {n}']
    return out


# ---------------------------------------------------------------------------------------------------
# The worker's long-lived state: tables, the Redis client, the live-instance count.

class Store:
    """Redis client + heartbeat for one worker (services["ratelimit_store"])."""

    def __init__(self, cfg: Config, table: B.Table, stats: Stats | None, loop: asyncio.AbstractEventLoop) -> None:
        rd = cfg.redis
        assert rd is not None
        self.url = rd.url
        self.settings = rd
        self.table = table                   # the host table: its header keeps the last count seen
        self.instance = b"%016x" % (table.instance or int.from_bytes(os.urandom(8), "big"))
        self.stats = stats
        self.shares: dict[tuple[int, int], bytes] = {}
        self.last_share = (0, 0)
        self.client = RedisClient(rd.url, rd.timeout, rd.retry_interval, SCRIPTS, loop, self._on_error)
        self.client.start()
        self.was_up = False
        self.failed = False                  # a call failed since the last gauge refresh
        self.logged_at = -1e9                # error replies: last logged (monotonic s), and not logged since
        self.quiet = 0
        self.task = loop.create_task(self._beat())

    def _on_error(self, reason: str, breaker_open: bool) -> None:
        """Every Redis failure (fastgw.quota.RedisClient): counted, and the degraded gauge is on at once;
        the heartbeat loop turns it off after a beat period without failure."""
        self.failed = True
        if self.stats is not None:
            self.stats.words[0] += 1
            self.stats.words[1] = 1
        if breaker_open:
            if self.was_up:
                self.was_up = False
                log("ratelimit_store_down", level="warning", url=_safe_url(self.url), error=reason)
            return
        # An error reply (a Redis Cluster MOVED, OOM, a script error): the connection stays, the calls
        # that get one fall back. Logged at most every 10 s, with the count of those not logged.
        now = time.monotonic()
        self.quiet += 1
        if now - self.logged_at >= 10.0:
            log("ratelimit_store_error", level="warning", url=_safe_url(self.url), error=reason,
                since_last=self.quiet)
            self.logged_at, self.quiet = now, 0

    @property
    def up(self) -> bool:
        up = self.client.up
        if up and not self.was_up:
            self.was_up = True
            log("ratelimit_store_up", url=_safe_url(self.url))
        return up

    def share(self) -> tuple[int, int, bytes]:
        """The local fallback's instance count, its source (SHARE_SOURCES) and the RateLimit-Degraded
        value saying so: the larger of the last live count seen in Redis and redis.expected_instances,
        so that an instance that never saw Redis does not enforce the whole limit [issue 11 item 12]."""
        seen = self.table.instances_seen
        expected = self.settings.expected_instances or 0
        if seen and seen >= expected:
            n, src = seen, 1
        elif expected:
            n, src = expected, 2
        else:
            n, src = 1, 0
        value = self.shares.get((n, src))
        if value is None:
            value = self.shares[(n, src)] = b"local;instances=%d;source=%s" % (n, SHARE_SOURCES[src].encode())
        return n, src, value

    def refresh_gauges(self) -> None:
        """Degraded: the breaker is open, or a call failed since the previous refresh (one beat ago)."""
        up = self.up
        n, src, _ = self.share()
        if self.stats is not None:
            self.stats.words[1] = 0 if up and not self.failed else 1
            self.stats.words[2] = self.client.commands
            self.stats.words[3], self.stats.words[4] = n, src
        if (n, src) != self.last_share:
            self.last_share = (n, src)
            log("ratelimit_fallback_share", instances=n, source=SHARE_SOURCES[src])
        self.failed = False

    async def _beat(self) -> None:
        while True:
            try:
                if self.client.up:
                    n = await self.client.run(HEARTBEAT, [HEARTBEAT_KEY],
                                              [self.instance, int(self.settings.heartbeat * 3000)])
                    if isinstance(n, int) and n > 0:
                        self.table.instances_seen = n
            except StoreDown:
                pass                             # counted by _on_error
            self.refresh_gauges()
            await asyncio.sleep(self.settings.heartbeat if self.client.up else min(0.1, self.settings.heartbeat))

    def close(self) -> None:
        self.task.cancel()
        self.client.close()


def _safe_url(url: str) -> str:
    if "@" in url:
        return "redis://***@" + url.split("@", 1)[1]
    return url


def shm_sections(cfg: Config, workers: int) -> dict[str, int]:
    """Shared-memory sections the supervisor creates for the traffic policy."""
    return {"ratelimit": cfg.ratelimit.table_size, "rlstats": workers * STATS_REGION_BYTES}


def init_shared(shm: Any) -> None:
    """Supervisor side: format the host's bucket table and give this instance its random id."""
    table = B.Table(shm.section("ratelimit"), init=True, zeroed=True)   # a fresh memfd: untouched pages
    table.instance = int.from_bytes(os.urandom(8), "big") or 1


def stats_regions(shm: Any, workers: int) -> list[Any]:
    sec = shm.section("rlstats")
    return [sec[i * STATS_REGION_BYTES:(i + 1) * STATS_REGION_BYTES].cast("Q") for i in range(workers)]


def worker_services(shm: Any, slot: int, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Worker side: the long-lived resources policies get in `services`."""
    services: dict[str, Any] = {"loop": loop}
    if shm is not None and "ratelimit" in shm.layout.sections:
        services["ratelimit_table"] = B.Table(shm.section("ratelimit"), init=False)
        sec = shm.section("rlstats")
        services["ratelimit_stats"] = Stats(sec[slot * STATS_REGION_BYTES:(slot + 1) * STATS_REGION_BYTES].cast("Q"))
    return services


def _services(cfg: Config, services: dict[str, Any]) -> tuple[B.Table, B.Table, Stats | None, Store | None]:
    table = services.get("ratelimit_table")
    if table is None:                        # no shared memory (tests in one process, tools)
        table = services["ratelimit_table"] = B.Table(bytearray(PRIVATE_TABLE))
    lease = services.get("ratelimit_lease")
    if lease is None:
        lease = services["ratelimit_lease"] = B.Table(bytearray(PRIVATE_TABLE))
    stats = services.get("ratelimit_stats")
    store: Store | None = None
    if cfg.redis is not None and services.get("loop") is not None:
        store = services.get("ratelimit_store")
        if store is None or store.url != cfg.redis.url or store.settings != cfg.redis:
            if store is not None:
                store.close()
            store = services["ratelimit_store"] = Store(cfg, table, stats, services["loop"])
    return table, lease, stats, store


# ---------------------------------------------------------------------------------------------------
# Compiled plans

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
            # A token bucket in quota units (README "Responses"): q tokens are made available every w
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
            # from RateGate.check when the plan has no concurrency limit, else from leased() below.
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


class RateLimitPolicy(G.RateGate):
    """RateGate.check picks the plan (the identity's, else the route's) and decides local plans; the
    methods below are the paths through Redis and the store's failure modes."""

    def __init__(self, route: Route, default: PlanRT | None, plans: dict[str, PlanRT], stats: Stats | None) -> None:
        self.route = route.name
        self.default = default.gate if default is not None else None
        self.by_name = {name: p.gate for name, p in plans.items()}
        self.counters = {}
        if stats is not None:
            for name in plans:
                self.counters[name] = G.Counter(stats.words, stats.slot(route.name, name))

    def shadow(self, ex: Any, plan: PlanRT) -> None:
        self.count(plan.name, D_SHADOW)
        log("ratelimit_shadow", route=self.route, plan=plan.name, request_id=ex.request_id.decode())

    def shared(self, ex: Any, plan: PlanRT, keys: tuple[int, ...]) -> Rejection | Awaitable[Rejection | None] | None:
        if plan.store is None or not plan.store.client.up:    # the breaker (the heartbeat loop updates gauges and logs)
            return self.degraded(ex, plan, keys)
        if plan.sync == "strict":
            return self.strict(ex, plan, keys)
        return self.leased(ex, plan, keys)

    # -- store unavailable -----------------------------------------------------------------------------
    def degraded(self, ex: Any, plan: PlanRT, keys: tuple[int, ...]) -> Rejection | None:
        mode = plan.on_error
        if mode == "closed":
            self.count(plan.name, D_UNAVAILABLE)
            ex.add_response_header(b"RateLimit-Degraded", b"closed")
            return (503, "store-unavailable", None, b"Retry-After: 1\r\n")
        if mode == "open":
            self.count(plan.name, D_DEGRADED)
            ex.add_response_header(b"RateLimit-Degraded", b"open")
            return None
        bp, value = plan.fallback_plan()
        return self.local(ex, plan.gate, bp, keys, value)

    # -- strict ----------------------------------------------------------------------------------------
    def redis_keys(self, plan: PlanRT, keys: tuple[int, ...]) -> tuple[bytes, list[bytes]]:
        tag = b"%x" % (hash_tuple(keys) ^ (plan.limits[0].seed if plan.limits else 0))
        return tag, [b"fgw:{%s}:%s:%d" % (tag, plan.name.encode(), i) for i in plan.shared]

    def strict(self, ex: Any, plan: PlanRT, keys: tuple[int, ...]) -> Awaitable[Rejection | None] | Rejection | None:
        # Concurrency limits are per host: take them first (they are given back if Redis says no).
        local_conc = None
        if plan.has_conc:
            r = self.conc_only(ex, plan, keys)
            if r is not None:
                return r
            local_conc = True
        _, rkeys = self.redis_keys(plan, keys)
        try:
            fut = plan.store.client.run(TAKE, rkeys, [1, 0, *plan.redis_args])  # type: ignore[union-attr]
        except StoreDown:
            return self.degraded(ex, plan, keys)
        return self._strict_wait(ex, plan, keys, fut, local_conc)

    async def _strict_wait(self, ex: Any, plan: PlanRT, keys: tuple[int, ...], fut: asyncio.Future[Any],
                           conc: bool | None) -> Rejection | None:
        try:
            rep = await fut
        except StoreDown:
            return self.degraded(ex, plan, keys)
        granted, shadow = rep[0], rep[1]
        if shadow:
            self.count(plan.name, D_SHADOW)
        tight, remaining, reset_ms, retry_ms = self.tightest(plan, rep)
        if granted < 1:
            self.count(plan.name, plan.limits[tight].decision)
            return self.reject(ex, plan.gate, tight, _ceil_s(reset_ms), _ceil_s(retry_ms), None)
        self.count(plan.name, D_ALLOWED)
        ex.add_response_lines(plan.hdrs.lines(tight, remaining, _ceil_s(reset_ms), None))
        return None

    def tightest(self, plan: PlanRT, rep: list[int]) -> tuple[int, int, int, int]:
        """From a TAKE reply: the enforced limit with the fewest left (a refusing one first)."""
        best = (-1, 1 << 62, 0, 0)
        for j, i in enumerate(plan.shared):
            if not plan.limits[i].enforce:
                continue
            left, reset, retry = rep[2 + 3 * j], rep[3 + 3 * j], rep[4 + 3 * j]
            if left < best[1] or (left == best[1] and reset > best[2]):
                best = (i, left, reset, retry)
        if best[0] < 0:
            return plan.shared[0] if plan.shared else 0, 0, 0, 0
        return best

    def conc_only(self, ex: Any, plan: PlanRT, keys: tuple[int, ...]) -> Rejection | None:
        conc_specs = [lim.spec(plan.keyidx[i]) for i, lim in enumerate(plan.limits) if lim.kind == B.CONCURRENCY]
        bp = B.Plan(plan.table, conc_specs)
        if bp.check(keys, time.monotonic_ns(), 0) >= 0:
            self.count(plan.name, D_RATE)
            return (429, "rate-limited", None, b"Retry-After: 1\r\n")
        charged = bp.charged
        ex.on_complete(lambda _ex: bp.release(keys, charged))
        return None

    # -- lease -----------------------------------------------------------------------------------------
    def leased(self, ex: Any, plan: PlanRT, keys: tuple[int, ...]) -> Awaitable[Rejection | None] | Rejection | None:
        if plan.has_conc:
            r = self.conc_only(ex, plan, keys)
            if r is not None:
                return r
        # Per request only integers: the Redis key names are built when a refill is needed.
        tag = keys[0] if len(keys) == 1 else hash_tuple(keys)
        if self.spend_lease(ex, plan.gate, tag, keys):
            return None
        lk = (tag ^ plan.lease_seed) or 1
        mono = time.monotonic_ns()
        st = plan.lease_state.get(tag)
        if st is not None and st[2] > mono:        # the store said no until then: refuse locally
            return self.lease_reject(ex, plan, st, mono)
        if plan.store is None or not plan.store.client.up:
            return self.degraded(ex, plan, keys)
        return self._lease_wait(ex, plan, tag, keys, lk)

    def prefetch(self, plan: PlanRT, tag: int, keys: tuple[int, ...], mono: int) -> None:
        """Half of the last batch is spent: take the next one now, so that requests keep spending local
        tokens while it is in flight instead of queueing for it (a worker holds at most two batches)."""
        if plan.store is None or not plan.store.client.up:
            return
        try:
            self.refill(plan, tag, keys, (tag ^ plan.lease_seed) or 1, mono)
        except StoreDown:
            pass    # counted by the client's breaker; the request that finds the lease empty degrades

    def lease_reject(self, ex: Any, plan: PlanRT, st: list[float], mono: int) -> Rejection:
        tight = int(st[3])
        self.count(plan.name, plan.limits[tight].decision)
        retry = max(1, math.ceil((st[2] - mono) / NS))
        reset = max(0, math.ceil((st[5] - mono) / NS))
        return self.reject(ex, plan.gate, tight, reset, retry, None)

    async def _lease_wait(self, ex: Any, plan: PlanRT, tag: int, keys: tuple[int, ...], lk: int) -> Rejection | None:
        # Requests of one key that find the lease empty queue up; a refill hands its tokens to the queue
        # first (in arrival order), then banks the rest. So a waiter cannot be starved by requests that
        # arrive while the refill is in flight, and the refill asks for enough tokens for the whole queue.
        w: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        plan.waitq.setdefault(tag, collections.deque()).append(w)
        if tag not in plan.inflight:
            try:
                self.refill(plan, tag, keys, lk, time.monotonic_ns())
            except StoreDown:
                self._release_queue(plan, tag, StoreDown("redis unavailable"))
        try:
            got = await w
        except StoreDown:
            return self.degraded(ex, plan, self._keys_of(ex, plan))
        mono = time.monotonic_ns()
        st = plan.lease_state.get(tag)
        if got:
            self.count(plan.name, D_ALLOWED)
            if st is not None:
                self.lease_headers(ex, plan.gate, st, mono)
            return None
        if st is not None:
            return self.lease_reject(ex, plan, st, mono)
        self.count(plan.name, D_RATE)
        return (429, "rate-limited", None, b"Retry-After: 1\r\n")

    def _release_queue(self, plan: PlanRT, tag: int, result: bool | BaseException) -> None:
        q = plan.waitq.pop(tag, None)
        while q:
            w = q.popleft()
            if not w.done():
                if isinstance(result, BaseException):
                    w.set_exception(result)
                else:
                    w.set_result(result)

    def _keys_of(self, ex: Any, plan: PlanRT) -> tuple[int, ...]:
        ident = ex.identity
        return plan.keys(ex, getattr(ident, "consumer", None) if ident is not None else None)

    def refill(self, plan: PlanRT, tag: int, keys: tuple[int, ...], lk: int, mono: int) -> asyncio.Future[Any]:
        """Take a batch of tokens from the global bucket; the batch follows this worker's spending rate
        (and covers the requests waiting for it)."""
        st = plan.lease_state.get(tag)
        if st is None:
            if len(plan.lease_state) > 100_000:      # bounded: forget idle keys wholesale
                plan.lease_state.clear()
            st = plan.lease_state[tag] = [0.0, 0.0, 0.0, -1.0, 0.0, 0.0]
        batch = 1
        store = plan.store
        assert store is not None
        if st[0] > 0:
            elapsed = max(1e-6, (mono - st[0]) / NS)
            batch = math.ceil(st[1] / elapsed * store.settings.lease_period)
        q = plan.waitq.get(tag)
        batch = max(1, min(max(batch, len(q) if q else 0), plan.lease_cap))
        fut = store.client.run(TAKE, self.redis_keys(plan, keys)[1], [batch, 1, *plan.redis_args])
        plan.inflight[tag] = fut
        ttl = int(store.settings.lease_ttl * NS)

        def done(f: asyncio.Future[Any]) -> None:
            plan.inflight.pop(tag, None)
            exc = f.exception()
            if exc is not None:
                self._release_queue(plan, tag, exc if isinstance(exc, StoreDown) else StoreDown(str(exc)))
                return
            rep = f.result()
            now = time.monotonic_ns()
            granted = rep[0]
            if rep[1]:
                self.count(plan.name, D_SHADOW)
            tight, remaining, reset_ms, retry_ms = self.tightest(plan, rep)
            st[0], st[1] = float(now), float(max(granted, 1))
            st[3], st[4], st[5] = float(tight), float(remaining), float(now + reset_ms * 1_000_000)
            st[2] = 0.0 if granted > 0 else float(now + max(1, retry_ms) * 1_000_000)
            waiting = plan.waitq.get(tag)
            while waiting and granted > 0:
                w = waiting.popleft()
                if not w.done():
                    w.set_result(True)
                    granted -= 1
            if granted > 0:
                plan.lease.lease_put(lk, now, granted, now + ttl)
            if waiting:
                if st[2] > now:                     # the store is empty for now: refuse the rest
                    self._release_queue(plan, tag, False)
                else:                               # a partial grant: ask again for the rest
                    try:
                        self.refill(plan, tag, keys, lk, now)
                    except StoreDown as e:
                        self._release_queue(plan, tag, e)
            else:
                plan.waitq.pop(tag, None)

        fut.add_done_callback(done)
        return fut


def hash_tuple(keys: tuple[int, ...]) -> int:
    h = 0
    for k in keys:
        h = B.hash_key(h, k.to_bytes(8, "little"))
    return h


def _ceil_s(ms: int) -> int:
    return max(0, -(-ms // 1000))


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> RateLimitPolicy | None:
    consumers = getattr(cfg, "consumers", {}) or {}
    consumer_plans = {getattr(c, "plan", None) for c in consumers.values()} - {None}
    if route.plan is None and not consumer_plans and not cfg.plans:
        return None
    if route.plan is None and not consumer_plans:
        # Plans may still come from a token's plan claim; only when the auth stage can set one.
        if not getattr(route, "auth", None):
            return None
    table, lease, stats, store = _services(cfg, services)
    cache: dict[str, PlanRT] = services.setdefault("ratelimit_plans", {}).setdefault(id(cfg), {})
    if len(services["ratelimit_plans"]) > 1:         # a reload: drop plans compiled for older configs
        for k in [k for k in services["ratelimit_plans"] if k != id(cfg)]:
            del services["ratelimit_plans"][k]
    plans: dict[str, PlanRT] = {}
    for name, p in cfg.plans.items():
        rt = cache.get(name)
        if rt is None:
            rt = cache[name] = PlanRT(name, p, cfg, table, lease, store)
        plans[name] = rt
    default = plans.get(route.plan) if route.plan is not None else None
    return RateLimitPolicy(route, default, plans, stats)
