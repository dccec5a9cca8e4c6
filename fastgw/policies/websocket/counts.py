"""Open tunnels and their metrics in shared memory: one region per worker slot (the worker is its only
writer, so no lock), summed by whoever reads (a worker checking a cap, the supervisor rendering metrics).

An entry per key (a route, a consumer, the pod), placed by hashing with linear probing and never freed, so
a key sits at the same or a later probe position in every worker's region and a reader stops at the first
empty entry. A cap read sums the regions without a lock: two handshakes in two workers at the same instant
may both pass the last free place (the cap is exceeded by at most workers - 1 for that instant).
"""
from __future__ import annotations

import zlib
from typing import Any

SECTION = "websocket"
ENTRIES = 512
# An entry's words: [0] the key (crc32 + 1; 0 = free), open tunnels, then for route entries the totals.
OPEN, OPENED, BYTES_UP, BYTES_DOWN, SUM_MS = range(1, 6)
# Duration histogram bounds, seconds (a notification socket lives minutes to hours).
BOUNDS = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0)
HIST = 6                                       # len(BOUNDS) + 1 buckets, the last one +Inf
CODES = (1000, 1001, 1006, 1008, 1011, 1012)   # close codes counted by name; the rest as "other"
CLOSES = HIST + len(BOUNDS) + 1
WORDS = CLOSES + len(CODES) + 1
REGION_WORDS = ENTRIES * WORDS
REGION_BYTES = REGION_WORDS * 8


def key(kind: str, name: str) -> int:
    return zlib.crc32(f"{kind}\0{name}".encode()) + 1


POD = key("pod", "")


def find(words: Any, k: int, claim: bool) -> int:
    """The offset of key `k`'s entry in a region, claimed when `claim` (else -1 when absent or full)."""
    i = k % ENTRIES
    for _ in range(ENTRIES):
        at = i * WORDS
        if words[at] == k:
            return at
        if words[at] == 0:
            if not claim:
                return -1
            words[at] = k
            return at
        i = (i + 1) % ENTRIES
    return -1


def open_count(regions: list[Any], k: int) -> int:
    total = 0
    for words in regions:
        at = find(words, k, False)
        if at >= 0:
            total += words[at + OPEN]
    return total


def add_open(words: Any, keys: tuple[int, ...], delta: int) -> None:
    for k in keys:
        at = find(words, k, True)
        if at >= 0:
            words[at + OPEN] = max(0, words[at + OPEN] + delta)


def closed(words: Any, route: int, secs: float, up: int, down: int, code: int) -> None:
    """A tunnel of route `route` ended: its totals."""
    at = find(words, route, True)
    if at < 0:
        return
    words[at + OPENED] += 1
    words[at + BYTES_UP] += up
    words[at + BYTES_DOWN] += down
    words[at + SUM_MS] += int(secs * 1000)
    b = 0
    while b < len(BOUNDS) and secs > BOUNDS[b]:
        b += 1
    words[at + HIST + b] += 1
    words[at + CLOSES + (CODES.index(code) if code in CODES else len(CODES))] += 1


def reset_open(words: Any) -> None:
    """A worker (re)starting in its slot: the tunnels its previous process counted are gone with it."""
    for i in range(ENTRIES):
        words[i * WORDS + OPEN] = 0
