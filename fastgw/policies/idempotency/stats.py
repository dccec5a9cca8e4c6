"""fastgw_idempotency_total{route,outcome}: what the policy decided, counted per worker in shared memory
(section "idempotency") and summed by the admin listener.

Per worker slot, ENTRIES entries of 1 + len(OUTCOMES) 64-bit words: [0] crc32(route name) + 1 (0: unused),
then one counter per outcome. The worker is the only writer of its region.
"""
from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from fastgw.config.checks import NAME
from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

SECTION = "idempotency"
FAMILY = "fastgw_idempotency_total"
# first: the request took the key and went upstream; stored: its response was stored for replay;
# replayed: a stored response answered; conflict: 409 (in flight, or its response was not stored);
# mismatch: 422; missing_key / invalid_key: 400; body_too_large: 413; store_error: the store failed
# (503 with on_store_error "closed", passed through with "open"); unknown: the outcome is unknown (the
# upstream failed after the request was sent): the key stays locked until lock_ttl; released: the request
# never reached the upstream, or it answered 429/503: the key is free again.
OUTCOMES = ("first", "stored", "replayed", "conflict", "mismatch", "missing_key", "invalid_key",
            "body_too_large", "store_error", "unknown", "released")
(FIRST, STORED, REPLAYED, CONFLICT, MISMATCH, MISSING_KEY, INVALID_KEY, BODY_TOO_LARGE, STORE_ERROR, UNKNOWN,
 RELEASED) = range(1, len(OUTCOMES) + 1)
ENTRIES = 256
WORDS = 1 + len(OUTCOMES)
REGION_BYTES = ENTRIES * WORDS * 8


def _key(route: str) -> int:
    return zlib.crc32(route.encode()) + 1


def counter(words: Any, route: str) -> tuple[Any, int] | None:
    """(words, base): this worker's entry for `route` (claimed on first use); words[base + OUTCOME] counts.
    None when the region is full or not attached (fastgw check)."""
    if words is None:
        return None
    key = _key(route)
    for i in range(ENTRIES):
        if words[WORDS * i] == key or words[WORDS * i] == 0:
            words[WORDS * i] = key
            return words, WORDS * i
    return None


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    # Always (24 KiB per worker): a reload that adds the policy to a route finds its section there.
    return [Section(SECTION, workers * REGION_BYTES)]


def region(shm: SharedMemory, slot: int) -> Any:
    return shm.section(SECTION)[slot * REGION_BYTES:(slot + 1) * REGION_BYTES].cast("Q")


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    routes = [r.name for r in cfg.routes if r.idempotency is not None and NAME.fullmatch(r.name)]
    out = [f"# HELP {FAMILY} Requests with an Idempotency-Key on the route's methods, by what the gateway did.",
           f"# TYPE {FAMILY} counter"]
    if not routes or SECTION not in shm.layout.sections:
        return out
    totals: dict[int, list[int]] = {}
    for slot in range(workers):
        words = region(shm, slot)
        for i in range(ENTRIES):
            k = words[WORDS * i]
            if k:
                t = totals.setdefault(k, [0] * len(OUTCOMES))
                for j in range(len(OUTCOMES)):
                    t[j] += words[WORDS * i + 1 + j]
    for name in routes:
        t = totals.get(_key(name), [0] * len(OUTCOMES))
        out.extend(f'{FAMILY}{{route="{name}",outcome="{o}"}} {t[j]}' for j, o in enumerate(OUTCOMES))
    return out
