"""Where a worker keeps one [cache.NAME]'s answers: a memory store bounded in bytes, the least recently
used evicted first, at most MAX_VARIANTS variants per key, with the index a URL's invalidation and the
admin's purge read.

Recency is kept the CLOCK way (second chance): a hit only sets its entry's `used` bit (the compiled fast
path, fastgw/_core/gates.pyx CacheGate, does that and nothing else to the store); the eviction hand walks
from the oldest insertion, moves a used entry to the young end with its bit cleared, and evicts the first
unused one. Moving an entry on every hit (OrderedDict.move_to_end) costs each hit a method call.

A key is (route, host, path, query, consumer) (`Primary`); its variants are told apart by the values of the
request fields its latest response's Vary names (`Entry.vary`). An entry's size is its body plus its header
bytes plus a fixed OVERHEAD for the objects around it, so max_memory bounds what the worker really holds.
"""
from __future__ import annotations

from typing import Any

from fastgw._core.gates import CacheEntry
from fastgw.policies.cache.rules import MAX_VARIANTS

Primary = tuple[str, bytes, bytes, bytes, str]
# Bytes counted per entry beyond its header and body bytes: the entry object, its Respond, the header
# tuples, the dict slots (measured with tracemalloc on CPython 3.11: ~900 bytes for 6 header fields).
OVERHEAD = 1024


class Entry(CacheEntry):
    """One stored response (the fields: fastgw/_core/gates.pyx CacheEntry)."""

    def __init__(self, respond: Any, stored: float, verdict: Any, size: int) -> None:
        self.respond = respond
        self.stored = stored
        self.age = verdict.age
        self.lifetime = verdict.lifetime
        self.swr = verdict.swr
        self.sie = verdict.sie
        self.etag = verdict.etag
        self.last_modified = verdict.last_modified
        self.vary = verdict.vary
        self.size = size
        self.key = None
        self.revalidating = False
        self.used = False


class Store:
    def __init__(self, max_memory: int, max_object: int) -> None:
        self.max_memory = max_memory
        self.max_object = max_object
        self.bytes = 0
        self.evictions = 0
        self.entries: dict[tuple[Primary, tuple[bytes | None, ...]], Entry] = {}     # oldest first
        self.vary: dict[Primary, tuple[bytes, ...]] = {}           # a key's Vary names (latest response)
        self.variants: dict[Primary, dict[tuple[bytes | None, ...], None]] = {}   # insertion order
        self.urls: dict[tuple[bytes, bytes, bytes], set[Primary]] = {}   # (host, path, query) -> keys
        self.flights: dict[Primary, Any] = {}      # keys with a GET in flight (policy.Flight)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: tuple[Primary, tuple[bytes | None, ...]]) -> Entry | None:
        e = self.entries.get(key)
        if e is not None:
            e.used = True
        return e

    def put(self, primary: Primary, values: tuple[bytes | None, ...], e: Entry) -> bool:
        """Store `e` (False: larger than max_object, not stored)."""
        if e.size > self.max_object:
            return False
        if self.vary.get(primary, e.vary) != e.vary:      # the upstream changed its Vary: old variants go
            self.drop_primary(primary)
        key = (primary, values)
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        else:
            vs = self.variants.setdefault(primary, {})
            if len(vs) >= MAX_VARIANTS:
                self.remove((primary, next(iter(vs))))
                self.evictions += 1
                vs = self.variants.setdefault(primary, {})
            vs[values] = None
        self.vary[primary] = e.vary
        self.urls.setdefault(primary[1:4], set()).add(primary)
        e.key = key
        self.entries[key] = e
        self.bytes += e.size
        while self.bytes > self.max_memory and self.entries:
            self.evict_one()
        return True

    def evict_one(self) -> None:
        """The CLOCK hand: used entries from the old end go to the young end (bit cleared); the first
        unused one is evicted. Ends: each pass clears the bits it moves."""
        while True:
            key = next(iter(self.entries))
            e = self.entries[key]
            if not e.used:
                self.remove(key)
                self.evictions += 1
                return
            e.used = False
            del self.entries[key]
            self.entries[key] = e

    def remove(self, key: tuple[Primary, tuple[bytes | None, ...]]) -> None:
        e = self.entries.pop(key, None)
        if e is None:
            return
        self.bytes -= e.size
        primary, values = key
        vs = self.variants.get(primary)
        if vs is not None:
            vs.pop(values, None)
            if not vs:
                del self.variants[primary]
                self.vary.pop(primary, None)
                keys = self.urls.get(primary[1:4])
                if keys is not None:
                    keys.discard(primary)
                    if not keys:
                        del self.urls[primary[1:4]]

    def drop_primary(self, primary: Primary) -> int:
        vs = self.variants.get(primary)
        if not vs:
            return 0
        values = list(vs)
        for v in values:
            self.remove((primary, v))
        return len(values)

    def invalidate(self, host: bytes, path: bytes, query: bytes) -> int:
        """Drop every entry of a URL, whoever's (RFC 9111 4.4: after an unsafe method succeeded there)."""
        return sum(self.drop_primary(p) for p in list(self.urls.get((host, path, query), ())))

    def purge(self, route: str | None, path: bytes | None, prefix: bytes | None) -> int:
        """Drop the entries of `route` (None: any) whose path+query is `path` or starts with `prefix`
        (both None: all of the route's). Returns how many went."""
        doomed = []
        for key in self.entries:
            p = key[0]
            if route is not None and p[0] != route:
                continue
            url = p[2] + (b"?" + p[3] if p[3] else b"")
            if path is not None and url != path:
                continue
            if prefix is not None and not url.startswith(prefix):
                continue
            doomed.append(key)
        for key in doomed:
            self.remove(key)
        return len(doomed)
