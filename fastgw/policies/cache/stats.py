"""The cache's counters in shared memory and their Prometheus families.

Section "cache": per worker slot, ENTRIES rows of ROW 64-bit words; the worker is each row's only writer.
A route's row: [0] crc32("r:" + route) + 1, then its requests by outcome (OUTCOMES order) and coalesced
waits. A [cache.NAME] store's row: [0] crc32("c:" + name) + 1, [1] bytes held, [2] entries, [3] evictions
(the gauges come from the live workers only; an old worker's store went with it).
"""
from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from fastgw.config.checks import NAME
from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

SECTION = "cache"
ENTRIES = 512
ROW = 8
REGION_BYTES = ENTRIES * ROW * 8
# fastgw_cache_requests_total{status}: hit (fresh, or a 304 to the client's validator), stale (served
# stale: while revalidating, or on an upstream error), miss (forwarded), revalidated (forwarded with our
# validators, the upstream said 304), bypass (not cacheable: method, the response's rules).
OUTCOMES = ("hit", "stale", "miss", "revalidated", "bypass")
HIT, STALE, MISS, REVALIDATED, BYPASS = range(5)
COALESCED = 6          # word of a route's row: requests that waited for the same key's request in flight
BYTES, COUNT, EVICTIONS = 1, 2, 3


def _key(kind: str, name: str) -> int:
    return zlib.crc32(f"{kind}:{name}".encode()) + 1


def row(words: Any, kind: str, name: str) -> int | None:
    """The first word of `name`'s row in this worker's region (claimed on first use), or None: full."""
    key = _key(kind, name)
    for i in range(ENTRIES):
        if words[ROW * i] == key or words[ROW * i] == 0:
            words[ROW * i] = key
            return ROW * i
    return None


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    """Always made (32 KiB a worker): a reload that adds the first [cache.NAME] counts from its start."""
    return [Section(SECTION, workers * REGION_BYTES)]


def region(shm: SharedMemory, slot: int) -> Any:
    return shm.section(SECTION)[slot * REGION_BYTES:(slot + 1) * REGION_BYTES].cast("Q")


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    if not cfg.cache or SECTION not in shm.layout.sections:
        return []
    totals: dict[int, list[int]] = {}
    gauges: dict[int, list[int]] = {}
    for slot in range(workers):
        words = region(shm, slot)
        for i in range(ENTRIES):
            k = words[ROW * i]
            if not k:
                continue
            t = totals.setdefault(k, [0] * ROW)
            g = gauges.setdefault(k, [0] * ROW)
            for j in range(1, ROW):
                t[j] += words[ROW * i + j]
                if slot in live:
                    g[j] += words[ROW * i + j]
    out = ["# HELP fastgw_cache_requests_total Requests to cached routes by cache outcome.",
           "# TYPE fastgw_cache_requests_total counter"]
    routes = [r.name for r in cfg.routes if r.cache is not None and NAME.fullmatch(r.name)]
    for name in routes:
        t = totals.get(_key("r", name), [0] * ROW)
        for i, status in enumerate(OUTCOMES):
            out.append(f'fastgw_cache_requests_total{{route="{name}",status="{status}"}} {t[1 + i]}')
    out += ["# HELP fastgw_cache_coalesced_total Cache misses that waited for the same key's request in flight.",
            "# TYPE fastgw_cache_coalesced_total counter"]
    for name in routes:
        t = totals.get(_key("r", name), [0] * ROW)
        out.append(f'fastgw_cache_coalesced_total{{route="{name}"}} {t[COALESCED]}')
    stores = [n for n in cfg.cache if NAME.fullmatch(n)]
    for fam, word, kind, what in (
            ("fastgw_cache_bytes", BYTES, "gauge", "Bytes of stored responses, summed over the live workers."),
            ("fastgw_cache_entries", COUNT, "gauge", "Stored responses, summed over the live workers."),
            ("fastgw_cache_evictions_total", EVICTIONS, "counter", "Entries evicted to stay under max_memory.")):
        out += [f"# HELP {fam} {what}", f"# TYPE {fam} {kind}"]
        src = gauges if kind == "gauge" else totals
        for name in stores:
            out.append(f'{fam}{{cache="{name}"}} {src.get(_key("c", name), [0] * ROW)[word]}')
    return out
