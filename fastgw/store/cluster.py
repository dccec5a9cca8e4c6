"""Cluster mode: one node (connection, deadline, breaker: fastgw/store/node.py) per primary, each key sent to
the primary that owns its slot (fastgw/store/keys.py). Replicas are never used: counters, locks and
records must be read where they are written.

The slot map comes from CLUSTER SLOTS, asked of any node that is up (the seeds, `redis.nodes`, at first).
It is refreshed
  - when a reply says MOVED: that slot is pointed at the new owner at once and the command re-sent there;
    one refresh of the whole map follows, shared by every command that got a MOVED meanwhile;
  - every `retry_interval` while a primary of the map is down (a failover: the replica promoted appears
    in the next map, so requests for its slots go back to Redis within about that interval of the
    promotion), and
  - every REFRESH_EVERY seconds otherwise (a reshard or a new primary seen without waiting for a MOVED).
ASK (a slot being migrated): the command is sent once to the target, preceded by ASKING; the map is kept.
TRYAGAIN (the keys of a multi-key command are split by a migration in progress): re-sent after
TRYAGAIN_DELAY, at most MAX_HOPS redirections in all; then the call fails like a timeout would.
While a slot's primary is down, calls for its keys raise StoreDown at once (that node's breaker), and calls
for other slots go on.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import hiredis

from fastgw.config.checks import parse_hostport
from fastgw.store.config import RedisSettings
from fastgw.store.keys import SLOTS, slot
from fastgw.store.node import Link, Node, Script, StoreDown, StoreError

REFRESH_EVERY = 30.0
TRYAGAIN_DELAY = 0.005
MAX_HOPS = 5
REDIRECTS = ("moved", "ask", "tryagain")


class ClusterClient:
    mode = "cluster"

    def __init__(self, rd: RedisSettings, link: Link, scripts: list[Script], loop: asyncio.AbstractEventLoop,
                 on_error: Callable[[str, bool], None] | None) -> None:
        self.link = link
        self.scripts = scripts
        self.loop = loop
        self.on_error = on_error
        self.on_change: Callable[[], None] | None = None
        self.seeds = [parse_hostport(s) for s in rd.nodes]
        self.pool: dict[tuple[str, int], Node] = {}
        self.slots: list[Node | None] = [None] * SLOTS
        self.primaries: list[Node] = []
        self.up = False
        self.changes = 0
        self.redirects = [0, 0, 0]
        self.closed = False
        self.refreshing: asyncio.Future[bool] | None = None
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    # -- nodes and the slot map ------------------------------------------------------------------------
    def node(self, host: str, port: int) -> Node:
        n = self.pool.get((host, port))
        if n is None:
            n = self.pool[(host, port)] = Node(host, port, self.link, self.scripts, self.loop, self.on_error,
                                               self._state, router=self)
            n.start()
        return n

    def nodes(self) -> list[Node]:
        return list(self.primaries) or list(self.pool.values())

    @property
    def commands(self) -> int:
        return sum(n.commands for n in self.pool.values())

    @property
    def errors(self) -> int:
        return sum(n.errors for n in self.pool.values())

    def _state(self, node: Node) -> None:
        self.up = any(n.up for n in self.primaries)
        if not node.up:
            self.wake.set()                  # a primary lost: look for its successor now
        elif not self.primaries:
            self.wake.set()                  # a seed answers: the first map
        if self.on_change is not None:
            self.on_change()

    def start(self) -> None:
        for host, port in self.seeds:
            self.node(host, port)
        if self.task is None:
            self.task = self.loop.create_task(self._maintain())

    def close(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        for n in self.pool.values():
            n.close()

    async def _maintain(self) -> None:
        """Refresh the map: soon after a change of node state, every retry_interval while a primary is
        down or no map is known, every REFRESH_EVERY otherwise."""
        while not self.closed:
            degraded = not self.primaries or any(not n.up for n in self.primaries)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.link.retry_interval if degraded else REFRESH_EVERY)
            self.wake.clear()
            await self.refresh()
            if not any(n.up for n in self.pool.values()):
                for host, port in self.seeds:       # every known node gone: start from the seeds again
                    self.node(host, port)

    def refresh(self) -> asyncio.Future[bool]:
        """One CLUSTER SLOTS in flight at a time; callers share its outcome."""
        if self.refreshing is None or self.refreshing.done():
            self.refreshing = asyncio.ensure_future(self._refresh())
        return self.refreshing

    async def _refresh(self) -> bool:
        asked = sorted((n for n in self.pool.values() if n.up), key=lambda n: n not in self.primaries)
        for n in asked:
            try:
                reply = await n.raw(b"CLUSTER", b"SLOTS")
            except StoreDown:
                continue
            if isinstance(reply, hiredis.ReplyError) or not isinstance(reply, list) or not reply:
                continue
            try:
                self._apply(reply, n)
            except (ValueError, IndexError, TypeError, AttributeError) as e:   # a reply of another shape
                n.report(f"{n.addr}: CLUSTER SLOTS: unreadable reply: {type(e).__name__}", False)
                continue
            return True
        return False

    def _apply(self, reply: list[Any], asked: Node) -> None:
        slots: list[Node | None] = [None] * SLOTS
        primaries: list[Node] = []
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if primary[0] else asked.host    # "" / "?": the node asked
            if host == "?":
                host = asked.host
            n = self.node(host, int(primary[1]))
            if n not in primaries:
                primaries.append(n)
            for s in range(start, end + 1):
                slots[s] = n
        if slots != self.slots:
            if any(self.slots):
                self.changes += 1
            self.slots = slots
        self.primaries = primaries
        for addr, n in list(self.pool.items()):     # replicas among the seeds, primaries gone
            if n not in primaries:
                n.close()
                del self.pool[addr]
        self.up = any(n.up for n in primaries)
        if self.on_change is not None:
            self.on_change()

    # -- calls -----------------------------------------------------------------------------------------
    def _owner(self, key: bytes) -> Node:
        n = self.slots[slot(key)]
        if n is None:
            raise StoreDown("redis: no node known for the slot")
        return n

    def run(self, script: Script, keys: list[bytes], args: list[Any]) -> asyncio.Future[Any]:
        return self._owner(keys[0]).request((b"EVALSHA", script.sha, len(keys), *keys, *args), None, script)

    def command(self, name: bytes, key: bytes, *rest: Any) -> asyncio.Future[Any]:
        return self._owner(key).request((name, key, *rest))

    def redirect(self, node: Node, reply: hiredis.ReplyError, args: tuple[Any, ...], outer: asyncio.Future[Any],
                 script: Script | None, hops: int) -> None:
        """A MOVED, ASK or TRYAGAIN reply from `node` to `args`: follow it (see the module's text)."""
        text = str(reply)
        kind = 0 if text.startswith("MOVED") else 1 if text.startswith("ASK") else 2
        self.redirects[kind] += 1
        if hops >= MAX_HOPS:
            node.report(f"{node.addr}: {REDIRECTS[kind]} {MAX_HOPS} times: {text}", False)
            outer.set_exception(StoreError(text))
            return
        try:
            if kind == 2:
                self.loop.call_later(TRYAGAIN_DELAY, self._again, node, args, outer, script, hops + 1)
                return
            _, where, addr = text.split(" ", 2)
            host, port = parse_hostport(addr if not addr.startswith(":") else asked_host(node) + addr)
            target = self.node(host, port)
            if kind == 0:
                self.slots[int(where)] = target
                self.refresh()
                target.request(args, outer, script, hops + 1)
            else:
                target.request(args, outer, script, hops + 1, asking=True)
        except (StoreDown, ValueError) as e:
            if not outer.done():
                node.report(f"{node.addr}: cannot follow {text}: {e}", False)
                outer.set_exception(e if isinstance(e, StoreDown) else StoreError(text))

    def _again(self, node: Node, args: tuple[Any, ...], outer: asyncio.Future[Any], script: Script | None,
               hops: int) -> None:
        if outer.done():
            return
        try:
            node.request(args, outer, script, hops)
        except StoreDown as e:
            outer.set_exception(e)


def asked_host(node: Node) -> str:
    """A redirection that names no host (":port", a node announced without an address) means the host of
    the node that answered."""
    return node.host
