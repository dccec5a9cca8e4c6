"""The Redis sink: a worker's usage, flushed every flush_every as one atomic batch, applied at most once.

Each flush cuts the worker's aggregation — (consumer, plan, route, status class, minute) -> requests,
request bytes, response bytes — into a batch numbered by the worker's sequence and appends it to the
buffer; the buffer is sent in order, one batch per call of APPLY. APPLY first takes the batch's marker
(SET NX, `fastgw:usage:{usage}:batch:<instance>:<worker>:<seq>`): a batch sent again after a timeout or a
lost reply (Redis may have applied it) finds its marker and changes nothing, so a retry never counts
twice. A batch leaves the buffer only once Redis answered; while Redis is down the batches wait, in order,
up to `buffer` of them — the oldest is dropped beyond that, counted (fastgw_metering_dropped_total).

What a crash loses: a SIGKILLed (or OOM-killed) worker loses what it counted since its last flush — at
most one flush interval of that worker — plus its unflushed buffer while Redis was down. A drain or a
stop flushes before the worker exits (Worker.run_at_stop).

Layout (all keys share the hash tag {usage}: one slot, so a batch is one atomic script in a cluster too;
billing volume is small — one write per worker and flush — and Redis is a staging area, not the ledger):
  fastgw:usage:{usage}:<g>:<consumer>:<start>   hash, g = m (minute) | h (hour) | d (day), <start> the
                                                bucket's epoch seconds; fields "<route>|<plan>|<class>|n"
                                                (requests), "...|q" (request body bytes), "...|s"
                                                (response body bytes); plan "-" when none
Each is kept `retention` (minute), HOUR_TTL, DAY_TTL after its last write.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from fastgw.policies.metering import tally as T
from fastgw.store.redis import Script, StoreDown, connect

if TYPE_CHECKING:
    from fastgw.policies.metering.config import Metering
    from fastgw.store.config import RedisSettings

PREFIX = b"fastgw:usage:{usage}:"
GRANULARITIES = {"minute": (b"m", 60), "hour": (b"h", 3600), "day": (b"d", 86400)}
HOUR_TTL = 35 * 86400
DAY_TTL = 400 * 86400
BATCH_ENTRIES = 512          # a flush with more aggregates goes as several batches (bounded script calls)

# KEYS[1] the batch marker, then per (consumer, minute) its minute, hour and day keys. ARGV[1] the marker's
# TTL, ARGV[2..4] the minute, hour and day keys' TTL, then per increment: the (consumer, minute) group
# (1-based), the field, the amount.
APPLY = Script("metering_apply", """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for j = 5, #ARGV, 3 do
  local b = 2 + (tonumber(ARGV[j]) - 1) * 3
  for g = 0, 2 do redis.call('HINCRBY', KEYS[b + g], ARGV[j + 1], ARGV[j + 2]) end
end
for b = 2, #KEYS, 3 do
  for g = 0, 2 do redis.call('EXPIRE', KEYS[b + g], ARGV[2 + g]) end
end
return 1
""", (b"fastgw:usage:{<tag>}:batch:<name>", b"fastgw:usage:{<tag>}:<n>"))
SCRIPTS = [APPLY]


def bucket_key(g: bytes, consumer: str, start: int) -> bytes:
    return PREFIX + g + b":" + consumer.encode() + b":%d" % start


Batch = tuple[list[bytes], list[Any]]


class RedisSink:
    """One worker's usage aggregation and its flushes (made by the policy's build; one per worker)."""

    def __init__(self, m: Metering, rd: RedisSettings, loop: asyncio.AbstractEventLoop, tally: T.Tally) -> None:
        self.usage: dict[tuple[str, str, str, int, int], list[int]] = {}
        self.pending: deque[Batch] = deque()
        self.tally = tally
        self.seq = 0
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}".encode()
        self.rd = rd
        self.client = connect(rd, SCRIPTS, loop)
        self.configure(m)
        self.task = loop.create_task(self.run())

    def configure(self, m: Metering) -> None:
        self.every = m.flush_every
        self.limit = m.buffer
        self.ttls = [int(max(86400, 2 * m.buffer * m.flush_every)), int(m.retention), HOUR_TTL, DAY_TTL]

    def record(self, consumer: str, plan: str, route: str, cls: int, rq: int, rs: int) -> None:
        key = (consumer, plan, route, cls, int(time.time()) // 60 * 60)
        acc = self.usage.get(key)
        if acc is None:
            self.usage[key] = [1, rq, rs]
        else:
            acc[0] += 1
            acc[1] += rq
            acc[2] += rs

    def cut(self) -> None:
        """The aggregation so far becomes the next batches in the buffer (the oldest dropped past `buffer`)."""
        if not self.usage:
            return
        items = list(self.usage.items())
        self.usage = {}
        for i in range(0, len(items), BATCH_ENTRIES):
            self.pending.append(self.batch(items[i:i + BATCH_ENTRIES]))
            while len(self.pending) > self.limit:
                self.pending.popleft()
                self.tally.add(T.W_DROPPED)
        self.tally.set(T.W_UNFLUSHED, len(self.pending))

    def batch(self, items: list[tuple[tuple[str, str, str, int, int], list[int]]]) -> Batch:
        self.seq += 1
        keys = [PREFIX + b"batch:" + self.worker + b":%d" % self.seq]
        groups: dict[tuple[str, int], int] = {}
        args: list[Any] = list(self.ttls)
        for (consumer, plan, route, cls, minute), (n, rq, rs) in items:
            g = groups.get((consumer, minute))
            if g is None:
                g = groups[(consumer, minute)] = len(groups) + 1
                keys += [bucket_key(b"m", consumer, minute), bucket_key(b"h", consumer, minute // 3600 * 3600),
                         bucket_key(b"d", consumer, minute // 86400 * 86400)]
            field = f"{route}|{plan}|{cls}|".encode()
            args += [g, field + b"n", n, g, field + b"q", rq, g, field + b"s", rs]
        return keys, args

    async def push(self) -> None:
        """Send the buffered batches in order; stop at the first that fails (it is sent again later)."""
        while self.pending:
            keys, args = self.pending[0]
            try:
                await self.client.run(APPLY, keys, args)
            except StoreDown:
                break
            self.pending.popleft()
            self.tally.add(T.W_FLUSHED)
            self.tally.set(T.W_UNFLUSHED, len(self.pending))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self.cut()
            await self.push()

    async def close(self) -> None:
        """The last flush (drain, stop): what was counted since the last one, and the buffer."""
        self.task.cancel()
        self.cut()
        await self.push()
        self.client.close()
