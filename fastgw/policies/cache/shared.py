"""The Redis second level (`shared = true`): entries every instance of every pod can read, so a key is
fetched from the upstream once per TTL for the whole fleet rather than once per worker.

A worker's first miss of a key (its in-worker and pod-wide leader) asks Redis before the upstream; an
answer it stores in memory it also writes to Redis, compressed (zlib over msgpack), with the time it has
left (freshness plus the larger stale window) as the key's PX. Only answers without Vary are kept there
(a variant's key would need the request fields the Vary names before the answer is known). Keys:
`fastgw:cache:<route>:<consumer>:<host> <path>?<query>`. An unsafe method drops the URL's key (the
requester's consumer's, on per_consumer routes); a purge drops the matching keys (SCAN, from worker 0).

Redis is never in the way: a command that fails or a node whose breaker is open is a miss (the upstream
answers, memory keeps it), every write is fire-and-forget, and a read waits at most the store client's
deadline ([redis] timeout).
"""
from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import msgspec

from fastgw.policies.cache.rules import Verdict

PREFIX = b"fastgw:cache:"
SCAN_COUNT = 500
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def key_of(primary: tuple[Any, ...]) -> bytes:
    route, host, path, query, consumer = primary
    return (PREFIX + route.encode() + b":" + consumer.encode() + b":" + host + b" " + path
            + (b"?" + query if query else b""))


def _quiet(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()                      # read: a failed write is a miss later, nothing more


class Shared:
    def __init__(self, client: Any) -> None:
        self.client = client

    def write(self, primary: tuple[Any, ...], status: int, v: Any, body: bytes) -> None:
        """Keep an answer without Vary for every instance (fire-and-forget)."""
        if v.vary or not self.client.up:
            return
        left = v.lifetime - v.age + max(v.swr, v.sie)
        if left <= 0:
            return
        data = zlib.compress(_encode([status, v.kept, body, v.lifetime, v.age, v.swr, v.sie, v.etag,
                                      v.last_modified, time.time()]), 1)
        try:
            fut = self.client.command(b"SET", key_of(primary), data, b"PX", int(left * 1000) + 1)
        except Exception:                    # StoreDown at once: the breaker is open
            return
        fut.add_done_callback(_quiet)

    async def read(self, primary: tuple[Any, ...]) -> tuple[int, Verdict, bytes] | None:
        """The answer another instance kept, aged by the time since it was written; None: none, or Redis
        failed."""
        if not self.client.up:
            return None
        try:
            data = await self.client.command(b"GET", key_of(primary))
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            return None
        if not data:
            return None
        try:
            status, kept, body, lifetime, age, swr, sie, etag, lm, written = _decode(zlib.decompress(data))
        except (zlib.error, msgspec.DecodeError, ValueError, TypeError):
            return None
        v = Verdict(None)
        v.lifetime, v.swr, v.sie, v.etag, v.last_modified = lifetime, swr, sie, etag, lm
        v.age = age + max(0.0, time.time() - written)
        v.kept = [(n, val) for n, val in kept]
        return status, v, body

    def drop(self, primary: tuple[Any, ...]) -> None:
        try:
            fut = self.client.command(b"DEL", key_of(primary))
        except Exception:
            return
        fut.add_done_callback(_quiet)

    async def purge(self, route: str, url: bytes | None, prefix: bytes | None) -> int:
        """Drop the route's keys whose URL (path?query) is `url` or starts with `prefix` (both None: all)."""
        pattern = PREFIX + route.encode().replace(b"*", b"\\*").replace(b"?", b"\\?") + b":*"
        cursor, n = b"0", 0
        while True:
            cursor, keys = await self.client.command(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT)
            doomed = []
            for k in keys:
                target = k.split(b" ", 1)[1] if b" " in k else b""
                if (url is None or target == url) and (prefix is None or target.startswith(prefix)):
                    doomed.append(k)
            for k in doomed:
                await self.client.command(b"DEL", k)
            n += len(doomed)
            if cursor in (b"0", 0):
                return n
