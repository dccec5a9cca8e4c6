"""The per-worker tally: requests per (consumer, route, status class) in shared memory, read by the
supervisor for fastgw_consumer_requests_total (and, on a deprecated route, the requests from its
deprecation instant on: fastgw_deprecated_consumer_requests_total), plus the worker's sink gauges.

Section "metering": per worker slot, HEADER words then ENTRIES entries of ENTRY 64-bit words:
  [0] crc32(consumer) + 1 (0: unused)  [1] crc32(route) << 3 | class (1..5)  [2] requests  [3] deprecated
Entries are claimed on first use by the worker (their only writer; the supervisor reads aligned words) and
named from the config at scrape time, so a label is always a configured name: a consumer the config does
not list (a JWT's claim) is counted as UNLISTED, a request without a verified consumer as ANONYMOUS. Keys
by name hash, not position, survive a reload that reorders the config. A full table counts the requests it
could not place in W_OVERFLOW (the usage records still get them).
"""
from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from fastgw.config.checks import NAME
from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

SECTION = "metering"
HEADER = 8
W_UNFLUSHED, W_DROPPED, W_FLUSHED, W_OVERFLOW = 0, 1, 2, 3
ENTRIES = 4096
ENTRY = 4
REGION_WORDS = HEADER + ENTRIES * ENTRY
REGION_BYTES = REGION_WORDS * 8
# Consumer labels no config name can take (NAME has no parentheses).
ANONYMOUS = "(anonymous)"
UNLISTED = "(unlisted)"
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _crc(name: str) -> int:
    return zlib.crc32(name.encode())


class Tally:
    """One worker's counters (its region of the section, or None when there is no shared memory)."""

    def __init__(self, words: Any) -> None:
        self.words = words
        self.slots: dict[tuple[str, str, int], int] = {}

    def slot(self, consumer: str, route: str, cls: int) -> int:
        """The index of the requests word of (consumer, route, class); -1 when the table is full."""
        key = (consumer, route, cls)
        i = self.slots.get(key)
        if i is not None:
            return i
        w = self.words
        if w is None:
            return -1
        ck, rk = _crc(consumer) + 1, _crc(route) << 3 | cls
        for e in range(ENTRIES):
            b = HEADER + e * ENTRY
            if w[b] == 0 or (w[b] == ck and w[b + 1] == rk):
                if w[b] == 0:
                    w[b + 1] = rk
                    w[b] = ck               # written last: a reader sees the entry whole or not at all
                self.slots[key] = b + 2
                return b + 2
        self.slots[key] = -1
        return -1

    def add(self, word: int, n: int = 1) -> None:
        if self.words is not None:
            self.words[word] += n

    def set(self, word: int, v: int) -> None:
        if self.words is not None:
            self.words[word] = v


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    """Only with [metering]: the section made for every gateway cost `plain` ~65 instructions per request
    (bench/callgrind.py: 26,474 against 26,409). Shared memory is laid out at start, so metering turned on
    by a reload counts in Redis but shows its series after the next restart."""
    return [Section(SECTION, workers * REGION_BYTES)] if cfg.metering is not None else []


def region(shm: SharedMemory, slot: int) -> Any:
    return shm.section(SECTION)[slot * REGION_BYTES:(slot + 1) * REGION_BYTES].cast("Q")


def _family(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    if cfg.metering is None or SECTION not in shm.layout.sections:
        return []
    consumers = {_crc(c) + 1: c for c in cfg.consumers if NAME.fullmatch(c)}
    consumers.update({_crc(ANONYMOUS) + 1: ANONYMOUS, _crc(UNLISTED) + 1: UNLISTED})
    routes = {_crc(r.name): r.name for r in cfg.routes if NAME.fullmatch(r.name)}
    deprecated = {r.name for r in cfg.routes if r.lifecycle is not None and r.lifecycle.deprecated is not None}
    counts: dict[tuple[str, str, int], list[int]] = {}
    head = [0] * HEADER
    for slot in range(workers):
        w = region(shm, slot)
        if slot in live:
            head[W_UNFLUSHED] += w[W_UNFLUSHED]
        for k in (W_DROPPED, W_FLUSHED, W_OVERFLOW):
            head[k] += w[k]
        for e in range(ENTRIES):
            b = HEADER + e * ENTRY
            ck = w[b]
            if ck == 0:
                break                   # claimed in order: the first unused entry ends the table
            c, r = consumers.get(ck), routes.get(w[b + 1] >> 3)
            if c is None or r is None:
                continue                # a name the config no longer has (reloaded away)
            acc = counts.setdefault((c, r, w[b + 1] & 7), [0, 0])
            acc[0] += w[b + 2]
            acc[1] += w[b + 3]
    out = _family("fastgw_consumer_requests_total", "counter",
                  "Requests per consumer, route and status class (metering; every status counts).")
    for (c, r, cls), (n, _) in sorted(counts.items()):
        out.append(f'fastgw_consumer_requests_total{{consumer="{c}",route="{r}",status_class="{CLASSES[cls - 1]}"}} {n}')
    out += _family("fastgw_deprecated_consumer_requests_total", "counter",
                   "Requests per consumer to a route after its deprecation instant: who still calls it.")
    dep: dict[tuple[str, str], int] = {}
    for (c, r, _), (_, d) in counts.items():
        if r in deprecated:
            dep[(r, c)] = dep.get((r, c), 0) + d
    for (r, c), d in sorted(dep.items()):
        out.append(f'fastgw_deprecated_consumer_requests_total{{route="{r}",consumer="{c}"}} {d}')
    out += _family("fastgw_metering_unflushed", "gauge",
                   "Usage batches waiting for the store (kept in order while Redis is down).")
    out.append(f"fastgw_metering_unflushed {head[W_UNFLUSHED]}")
    out += _family("fastgw_metering_dropped_total", "counter",
                   "Usage batches dropped: the buffer of unflushed batches was full.")
    out.append(f"fastgw_metering_dropped_total {head[W_DROPPED]}")
    out += _family("fastgw_metering_flushed_total", "counter", "Usage batches the store applied.")
    out.append(f"fastgw_metering_flushed_total {head[W_FLUSHED]}")
    out += _family("fastgw_metering_untallied_total", "counter",
                   "Requests the per-worker table had no room for (not in fastgw_consumer_requests_total).")
    out.append(f"fastgw_metering_untallied_total {head[W_OVERFLOW]}")
    return out
