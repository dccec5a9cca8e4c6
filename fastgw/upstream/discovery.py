"""DNS discovery: an upstream's host-name targets become the addresses the name resolves to, again every
`resolve_every` (each worker, off the event loop).

A target given as a host name ("accounts.internal:8000", a Kubernetes headless Service name) is resolved by
the system resolver (getaddrinfo: /etc/hosts, then DNS), in the loop's executor thread so the event loop
never waits on it; every address becomes a target of the upstream with the name's weight and port. On each
resolution:
  - an address that appears joins, slow-starting over `slow_start` (not at the first resolution);
  - an address that vanished leaves the balancer at once: requests in flight to it finish on the
    connections they have, and its idle pooled connections are closed (drained);
  - a failed resolution (no answer, an error, an empty answer) keeps the last good set: a resolver outage
    never empties an upstream. Until the first success the name itself stays the target (connections
    resolve it when they open).
The name's state (addresses, last success, failing since) is written in the name target's record in
shared memory (fastgw/upstream/state.py W_DNS_*), and each address it resolved to is marked in its own record
as the name's (W_DNS_OWNER; unmarked when it vanishes): the prober (health.py) checks those addresses, the
ones the balancers use, and /status/upstreams lists them with their states. Every worker resolves on
its own (a few queries per interval per worker; their answers agree unless the name changes between
them, which the next round settles) [nginx's `resolve`: per worker too].
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from typing import TYPE_CHECKING, Any

from fastgw.config.checks import parse_hostport
from fastgw.config.upstreams import Upstream, address, is_ip, weight

if TYPE_CHECKING:
    from fastgw._core.balancer import TargetTable, UpstreamGroup
    from fastgw.config.root import Config

JITTER = 0.10                 # +-10% of resolve_every, so workers and pods do not query in step
RESOLVE_TIMEOUT = 5.0         # one resolution at most; then it counts as failed


def is_name(host: str) -> bool:
    return not is_ip(host)


class Discovery:
    """The worker's resolvers: one task per upstream with host-name targets, restarted when a reload
    replaces the upstream's group."""

    def __init__(self, table: TargetTable | None) -> None:
        self.table = table
        self.tasks: dict[str, tuple[UpstreamGroup, asyncio.Task[None]]] = {}

    def apply(self, cfg: Config, groups: dict[str, UpstreamGroup]) -> None:
        for name, (g, task) in list(self.tasks.items()):
            if groups.get(name) is not g:
                task.cancel()
                del self.tasks[name]
        loop = asyncio.get_running_loop()
        for name, up in cfg.upstreams.items():
            g = groups[name]
            if name not in self.tasks and any(is_name(parse_hostport(address(t))[0]) for t in up.targets):
                self.tasks[name] = (g, loop.create_task(self.run(name, up, g)))

    def stop(self) -> None:
        for _, task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def run(self, name: str, up: Upstream, group: UpstreamGroup) -> None:
        loop = asyncio.get_running_loop()
        last: dict[str, list[str]] = {}            # name target's address -> its last good addresses
        first = True
        while True:
            for t in up.targets:
                host, port = parse_hostport(address(t))
                if is_name(host):
                    found = await self.resolve(loop, host, port)
                    self.note(name, address(t), found)
                    if found:
                        last[address(t)] = found
            self.update(name, up, group, last, first)
            first = False
            await asyncio.sleep(up.resolve_every * random.uniform(1 - JITTER, 1 + JITTER))

    @staticmethod
    async def resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[str] | None:
        """The addresses of `host`, sorted, or None when it did not resolve (or to nothing)."""
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
        except (OSError, TimeoutError, UnicodeError):
            return None
        return sorted({str(i[4][0]) for i in infos}) or None

    def note(self, upstream: str, addr: str, found: list[str] | None) -> None:
        """The name target's record: how many addresses, when it last resolved, since when it fails."""
        from fastgw.compile import target_key
        from fastgw.upstream.state import (
            W_DNS_ADDRESSES,
            W_DNS_FAILING,
            W_DNS_OK,
            mark_resolved,
            owner_of,
            resolved,
        )
        table = self.table
        words = table.words(target_key(upstream, addr)) if table is not None else None
        if table is None or words is None:
            return
        now = int(time.monotonic() * 1000)
        if found:
            words[W_DNS_ADDRESSES] = len(found)
            words[W_DNS_OK] = now
            words[W_DNS_FAILING] = 0
            # The marks follow this worker's answer; another worker's differing answer (for at most one
            # interval after the name changed) is settled by the next resolution of each.
            owner = owner_of(target_key(upstream, addr))
            port = parse_hostport(addr)[1]
            for ip, aw in resolved(table, owner):
                if ip not in found:
                    mark_resolved(aw, 0, ip)
            for ip in found:
                aw = table.words(target_key(upstream, f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"))
                if aw is not None:
                    mark_resolved(aw, owner, ip)
        elif words[W_DNS_FAILING] == 0:
            words[W_DNS_FAILING] = now

    def update(self, name: str, up: Upstream, group: UpstreamGroup, last: dict[str, list[str]],
               first: bool) -> None:
        """Make the group's targets the configured addresses and the names' last good addresses; a change
        re-runs the balancer's setup (weights, hash table)."""
        from fastgw._core.balancer import Target
        from fastgw.compile import target_key
        have = {t.hostport: t for t in group.targets}
        now = time.monotonic()
        targets: list[Any] = []
        for t in up.targets:
            host, port = parse_hostport(address(t))
            addrs = last.get(address(t)) if is_name(host) else None
            if addrs is None:                      # an address, or a name not resolved yet: as configured
                hp = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
                targets.append(have.get(hp) or Target(host, port, up.keepalive, group, weight(t), self.table,
                                                      target_key(name, address(t))))
                continue
            for ip in addrs:
                hp = (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()
                old = have.get(hp)
                if old is None:
                    old = Target(ip, port, up.keepalive, group, weight(t), self.table,
                                 target_key(name, hp.decode()))
                    if up.slow_start > 0 and not first:
                        old.since = now
                targets.append(old)
        if [t.hostport for t in targets] == [t.hostport for t in group.targets]:
            return
        kept = {id(x) for x in targets}
        for gone in group.targets:
            if id(gone) not in kept:
                gone.close_idle()                  # drained: in-flight requests keep their connections
        group.targets = targets
        if up.protocol != "http1":
            from fastgw.compile import attach_h2_pools
            attach_h2_pools(group, up)
        group.setup(up.balance, up.hash_key, up.slow_start, int.from_bytes(os.urandom(8), "little"))
