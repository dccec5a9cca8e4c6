"""The traffic policy's per-worker counters in shared memory (section "rlstats", one region per worker
slot) and their Prometheus families: decisions per (route, plan), Redis errors and commands, the degraded
gauge and the local fallback's instance count.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

STATS_SECTION = "rlstats"

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



def stats_region(shm: SharedMemory, slot: int) -> memoryview:
    """The region of worker `slot`, as 64-bit words."""
    return shm.section(STATS_SECTION)[slot * STATS_REGION_BYTES:(slot + 1) * STATS_REGION_BYTES].cast("Q")

