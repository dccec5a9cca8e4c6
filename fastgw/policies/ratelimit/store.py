"""The traffic policy's use of the shared store: one Redis client per worker (fastgw/store/redis.py),
its failures counted and logged, and the instance heartbeat that sizes the local fallback
(`on_store_error = "local"`: limits divided by the live instances last seen, or redis.expected_instances).
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from fastgw._core import buckets as B
from fastgw.observe.log import log
from fastgw.policies.ratelimit.scripts import HEARTBEAT, HEARTBEAT_KEY, SCRIPTS
from fastgw.policies.ratelimit.stats import SHARE_SOURCES, Stats
from fastgw.store import stats as store_stats
from fastgw.store.redis import StoreDown, connect

if TYPE_CHECKING:
    from fastgw.config.root import Config


class Store:
    """Redis client + heartbeat for one worker (services["ratelimit_store"])."""

    def __init__(self, cfg: Config, table: B.Table, stats: Stats | None, loop: asyncio.AbstractEventLoop,
                 nodes_words: Any = None) -> None:
        rd = cfg.redis
        assert rd is not None
        self.url = rd.url
        self.where = {"standalone": rd.url, "cluster": ",".join(rd.nodes),
                      "sentinel": f"sentinel:{rd.master_name}@" + ",".join(rd.sentinels)}[rd.mode]
        self.settings = rd
        self.table = table                   # the host table: its header keeps the last count seen
        self.instance = b"%016x" % (table.instance or int.from_bytes(os.urandom(8), "big"))
        self.stats = stats
        self.shares: dict[tuple[int, int], bytes] = {}
        self.last_share = (0, 0)
        self.nodes_words = nodes_words       # this worker's region of fastgw/store/stats.py, or None
        self.client = connect(rd, SCRIPTS, loop, self._on_error)
        self.client.on_change = self.publish
        self.was_up = False
        self.down_logged = False
        self.failed = False                  # a call failed since the last gauge refresh
        self.logged_at = -1e9                # error replies: last logged (monotonic s), and not logged since
        self.quiet = 0
        self.task = loop.create_task(self._beat())

    def publish(self) -> None:
        """The client's nodes into shared memory (/status/redis, fastgw_redis_node_*): on every change of a
        node's state, so a failover shows at once, and at every heartbeat."""
        if self.nodes_words is not None:
            store_stats.publish(self.nodes_words, self.client)

    def _on_error(self, reason: str, breaker_open: bool) -> None:
        """Every Redis failure (fastgw/store/node.py): counted, and the degraded gauge is on at once;
        the heartbeat loop turns it off after a beat period without failure."""
        self.failed = True
        if self.stats is not None:
            self.stats.words[0] += 1
            self.stats.words[1] = 1
        if breaker_open:
            if self.was_up or not self.down_logged:      # a change of state, or the first failure ever
                self.was_up, self.down_logged = False, True
                log("ratelimit_store_down", level="warning", url=self.where, error=reason)
            return
        # An error reply (a Redis Cluster MOVED, OOM, a script error): the connection stays, the calls
        # that get one fall back. Logged at most every 10 s, with the count of those not logged.
        now = time.monotonic()
        self.quiet += 1
        if now - self.logged_at >= 10.0:
            log("ratelimit_store_error", level="warning", url=self.where, error=reason,
                since_last=self.quiet)
            self.logged_at, self.quiet = now, 0

    @property
    def up(self) -> bool:
        up = self.client.up
        if up and not self.was_up:
            self.was_up = True
            log("ratelimit_store_up", url=self.where)
        return up

    def share(self) -> tuple[int, int, bytes]:
        """The local fallback's instance count, its source (SHARE_SOURCES) and the RateLimit-Degraded
        value saying so: the larger of the last live count seen in Redis and redis.expected_instances,
        so that an instance that never saw Redis does not enforce the whole limit."""
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
        self.publish()

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
        if self.nodes_words is not None:
            self.nodes_words[0] = 0              # no client in this worker any more

