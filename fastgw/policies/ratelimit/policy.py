"""Traffic policy: plans of rate, quota and concurrency limits per consumer, IP, header or route
(docs/traffic-policy.md).

Which plan: the identity's plan (set by the auth policy from the consumer or a token claim) when it names a
known plan, else the route's `plan`. A route with no plan and a config where no consumer has a plan gets
no policy at all (it pays nothing).

Where the state lives, by the plan's `sync`:
  local   the per-host bucket table in shared memory (fastgw/_core/buckets.pyx): exact for the host, a few
          C operations per request, no await.
  strict  one atomic Redis script per request (scripts.TAKE): exact across every instance; the request waits
          for one pipelined round trip.
  lease   each worker takes a batch of tokens from the global bucket (one TAKE with partial grants) and
          spends them locally; the batch follows the worker's share of the traffic (its spending rate over
          `redis.lease_period`, at most `redis.lease_max`). Most requests touch only local memory.
Without a [redis] section, lease and strict plans are enforced locally (quotas are then per host). Concurrency limits are always per host (they must be released by the host that
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
from typing import TYPE_CHECKING, Any

from fastgw._core import buckets as B
from fastgw._core import gates as G
from fastgw.observe.log import log
from fastgw.policies.contract import Rejection
from fastgw.policies.ratelimit.plans import NS, PlanRT
from fastgw.policies.ratelimit.scripts import TAKE, TAKE_KEY
from fastgw.policies.ratelimit.stats import (
    D_ALLOWED,
    D_DEGRADED,
    D_RATE,
    D_SHADOW,
    D_UNAVAILABLE,
    STATS_REGION_BYTES,
    STATS_SECTION,
    Stats,
    render_metrics,
    stats_region,
)
from fastgw.policies.ratelimit.store import Store
from fastgw.process.shm import Section, SharedMemory
from fastgw.store import stats as store_stats
from fastgw.store.redis import StoreDown

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route

PRIVATE_TABLE = 1024 * 1024          # bytes of the per-worker lease table / the table without shm
TABLE_SECTION = "ratelimit"          # the host's bucket table in the shared file


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
            store = services["ratelimit_store"] = Store(cfg, table, stats, services["loop"],
                                                        services.get("redis_nodes"))
    return table, lease, stats, store


class RateLimitPolicy(G.RateGate):
    """RateGate.on_request picks the plan (the identity's, else the route's) and decides local plans; the
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
        return tag, [TAKE_KEY % (tag, plan.name.encode(), i) for i in plan.shared]

    def strict(self, ex: Any, plan: PlanRT, keys: tuple[int, ...]) -> Awaitable[Rejection | None] | Rejection | None:
        # Concurrency limits are per host: take them first (given back when the request completes,
        # refused by Redis or not: conc_only).
        if plan.has_conc:
            r = self.conc_only(ex, plan, keys)
            if r is not None:
                return r
        _, rkeys = self.redis_keys(plan, keys)
        try:
            fut = plan.store.client.run(TAKE, rkeys, [1, 0, *plan.redis_args])  # type: ignore[union-attr]
        except StoreDown:
            return self.degraded(ex, plan, keys)
        return self._strict_wait(ex, plan, keys, fut)

    async def _strict_wait(self, ex: Any, plan: PlanRT, keys: tuple[int, ...],
                           fut: asyncio.Future[Any]) -> Rejection | None:
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
        return plan.keys(ex, ident.consumer if ident is not None else None)

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
        deny_ns = int(plan.lease_deny * NS)

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
            # Refused: this worker refuses locally until the next token is due, and for at least a lease
            # period (PlanRT.lease_deny). Asking again at every token would make each worker of the fleet ask once per request of
            # an over-limit key (at 3,200 workers a hot key's primary saturates: bench/scale_sim.py);
            # tokens keep accruing in the shared bucket meanwhile and the next ask takes them as a batch.
            st[2] = 0.0 if granted > 0 else float(now + max(max(1, retry_ms) * 1_000_000, deny_ns))
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
    consumer_plans = {c.plan for c in cfg.consumers.values()} - {None}
    if route.plan is None and not consumer_plans and not cfg.plans:
        return None
    if route.plan is None and not consumer_plans:
        # Plans may still come from a token's plan claim; only when the auth stage can set one.
        if not route.auth:
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


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------

def _format_table(mem: memoryview) -> None:
    """The host's bucket table, and this instance's random id (kept in it)."""
    table = B.Table(mem, init=True, zeroed=True)   # a fresh memfd: untouched pages
    table.instance = int.from_bytes(os.urandom(8), "big") or 1


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    # The store's node table (fastgw/store/stats.py) is registered here while the traffic policy is the
    # store's only user in a worker.
    return [Section(TABLE_SECTION, cfg.ratelimit.table_size, _format_table),
            Section(STATS_SECTION, workers * STATS_REGION_BYTES),
            Section(store_stats.SECTION, workers * store_stats.REGION_BYTES)]


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    """The host's bucket table and this worker's stats region (absent without shared memory: _services
    then makes tables of this process)."""
    if shm is not None and TABLE_SECTION in shm.layout.sections:
        services["ratelimit_table"] = B.Table(shm.section(TABLE_SECTION), init=False)
        services["ratelimit_stats"] = Stats(stats_region(shm, slot))
        services["redis_nodes"] = store_stats.region(shm, slot)


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    regions = [stats_region(shm, i) for i in range(workers)]
    nodes = [store_stats.region(shm, i) for i in live]
    return render_metrics(regions, [regions[i] for i in live], cfg) + store_stats.render_metrics(nodes)
