"""Active health checks: one prober per host, in the supervisor, for the upstreams with a [upstreams.NAME.health]
table.

One prober per host, not one per worker: N workers probing on their own would multiply the probes every
target receives (pods x workers x targets per interval) [the probe amplification gateways' users report].
Each target is probed every `interval`, jittered by +-10% so that the probes of many targets and pods do
not line up. A probe is one GET of `path` with the `host` Host header (default: the target's address) on
a fresh connection, passed when its status is within `expect` before `timeout`. After `unhealthy`
failures in a row a target in service is marked down; after `healthy` passes in a row a down target is
back. The mark is the target's record in shared memory (fastgw/upstream/state.py): "down" is an ejection
that never runs out (DOWN_FOREVER), with the reason "health", which every worker reads at pick time; "back"
clears it (a passing check also ends a passive ejection, as in Envoy) and counts the return in the
upstream's G_CHANGES, from which every worker's balancer starts the target's slow start. A target starts in
service: before its first verdict it is neither doubted nor trusted more than passive detection does.

A host-name target (DNS discovery) is checked as the addresses the workers resolved it to, each on its own
record (the ones the balancers pick; fastgw/upstream/state.py `resolved`), with the name as the default Host
and TLS server name; before the name first resolves, the name itself is probed on the name's record.
"""
from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastgw.config.checks import parse_hostport
from fastgw.config.upstreams import Health, Upstream, address, is_ip
from fastgw.upstream.state import (
    G_CHANGES,
    REASONS,
    W_DOWN_UNTIL,
    W_EJECTED_BY,
    W_REASON,
    W_SINCE,
    owner_of,
    resolved,
)

REASON_HEALTH = REASONS.index("health")

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

JITTER = 0.10                 # +-10% of the interval
DOWN_FOREVER = (1 << 63) - 1  # an ejection end no clock reaches: only a passing check lifts it
MAX_HEAD = 16384              # bytes of a probe's response head read at most


async def probe(host: str, port: int, hc: Health, ctx: ssl.SSLContext | None, server_name: str | None,
                name: str | None = None) -> bool:
    """One probe: True when the target answers a status within `expect` in time. `name`: the configured host
    name an address was resolved from (the default Host and TLS server name, as when the name was probed)."""
    named = name or host
    try:
        async with asyncio.timeout(hc.timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=(server_name or named) if ctx is not None else None)
            try:
                hostport = f"[{named}]:{port}" if ":" in named else f"{named}:{port}"
                writer.write(f"GET {hc.path} HTTP/1.1\r\nHost: {hc.host or hostport}\r\n"
                             "User-Agent: fastgw-health\r\nConnection: close\r\n\r\n".encode("latin-1"))
                line = await reader.readuntil(b"\r\n")
            finally:
                writer.close()
        parts = line.split(b" ", 2)
        return (len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit()
                and hc.expect[0] <= int(parts[1]) <= hc.expect[1])
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return False


class Prober:
    """The host's prober: one task per checked target, restarted on each config that changes its checks."""

    def __init__(self, shm: SharedMemory | None) -> None:
        self.shm = shm
        self.tasks: dict[tuple[str, str], tuple[Upstream, asyncio.Task[None]]] = {}

    def apply(self, cfg: Config) -> None:
        from fastgw._core.balancer import TargetTable
        from fastgw.compile import target_key
        from fastgw.upstream.state import SECTION
        if self.shm is None or SECTION not in self.shm.layout.sections:
            return
        table = TargetTable(self.shm.section(SECTION))
        want: dict[tuple[str, str], Upstream] = {}
        for name, up in cfg.upstreams.items():
            if up.health is not None:
                for t in up.targets:
                    want[(name, address(t))] = up
        for key, (up, task) in list(self.tasks.items()):
            if want.get(key) != up:
                task.cancel()
                del self.tasks[key]
                if key not in want:           # no longer checked: its last verdict no longer holds
                    owner = owner_of(target_key(*key))
                    for words in [table.words(target_key(*key))] + [w for _, w in resolved(table, owner)]:
                        if words is not None and words[W_DOWN_UNTIL] == DOWN_FOREVER:
                            words[W_DOWN_UNTIL] = 0
        loop = asyncio.get_running_loop()
        for key, up in want.items():
            if key not in self.tasks:
                words = table.words(target_key(*key))
                if words is not None:
                    back = functools.partial(table.add, target_key(key[0], ""), G_CHANGES, 1)
                    self.tasks[key] = (up, loop.create_task(self.run(key[1], up, words, back, table,
                                                                     owner_of(target_key(*key)))))

    def stop(self) -> None:
        for _, task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    async def run(self, addr: str, up: Upstream, words: Any, back: Callable[[], None], table: Any,
                  owner: int) -> None:
        """Probe one configured target for ever; `back` counts a return to service in its upstream's record.
        A host name's target is the addresses the workers' discovery resolved it to (marked with `owner` in
        their records: the ones the balancers send to), each probed and judged on its own record; until the
        name has resolved, the name itself."""
        hc = up.health
        assert hc is not None
        host, port = parse_hostport(addr)
        ctx = server_name = None
        if up.tls is not None:
            from fastgw.tls import upstream_context
            ctx, server_name = upstream_context(up.tls), up.tls.server_name
        runs: dict[str, Run] = {}
        while True:
            await asyncio.sleep(hc.interval * random.uniform(1 - JITTER, 1 + JITTER))
            checks = resolved(table, owner) if not is_ip(host) else []
            name = host if checks else None
            if not checks:
                checks = [(host, words)]
            verdicts = await asyncio.gather(*(probe(ip, port, hc, ctx, server_name, name)
                                              for ip, _ in checks))
            runs = {ip: runs.get(ip) or Run() for ip, _ in checks}       # vanished addresses are forgotten
            for (ip, w), ok in zip(checks, verdicts, strict=True):
                runs[ip].judge(ok, hc, w, back)


class Run:
    """One target's run of probe results: `unhealthy` failures in a row mark it down, `healthy` passes in a
    row bring it back."""

    def __init__(self) -> None:
        self.passes = self.fails = 0

    def judge(self, ok: bool, hc: Health, words: Any, back: Callable[[], None]) -> None:
        if ok:
            self.passes, self.fails = self.passes + 1, 0
            if self.passes >= hc.healthy and words[W_DOWN_UNTIL] != 0:
                words[W_SINCE] = int(time.monotonic() * 1000)
                words[W_DOWN_UNTIL] = 0
                back()
        else:
            self.passes, self.fails = 0, self.fails + 1
            if self.fails >= hc.unhealthy and words[W_DOWN_UNTIL] != DOWN_FOREVER:
                words[W_REASON] = REASON_HEALTH
                words[W_SINCE] = int(time.monotonic() * 1000)
                words[W_EJECTED_BY + REASON_HEALTH] += 1
                words[W_DOWN_UNTIL] = DOWN_FOREVER

