"""Sentinel mode: the one node is the master that the Sentinels name.

Before every connection attempt the Sentinels are asked in turn, each with a short deadline (a dead
Sentinel must not hold the reconnect up), `SENTINEL get-master-addr-by-name`; the node then checks ROLE
before it counts as up (fastgw/store/node.py), so a stale answer never sends writes to a replica. A
watcher stays subscribed to `+switch-master` on one Sentinel: a promotion moves the node to the new master
at once instead of at the next failed command. A lost connection, a timeout or a READONLY reply open the
node's breaker, and the reconnect asks the Sentinels again.

Sentinels are reached over plain TCP without AUTH (their own port; a Sentinel with requirepass is not
supported yet).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import hiredis

from fastgw.config.checks import parse_hostport
from fastgw.store.config import RedisSettings
from fastgw.store.node import Link, Node, Script, StoreDown, encode
from fastgw.store.single import Client

ASK_TIMEOUT = 0.3          # seconds one Sentinel may take to answer


class SentinelClient(Client):
    mode = "sentinel"

    def __init__(self, rd: RedisSettings, link: Link, scripts: list[Script], loop: asyncio.AbstractEventLoop,
                 on_error: Callable[[str, bool], None] | None) -> None:
        self.sentinels = [parse_hostport(s) for s in rd.sentinels]
        self.name = rd.master_name
        self.loop = loop
        self.retry = link.retry_interval
        self.master: tuple[str, int] | None = None
        host, port = self.sentinels[0]
        super().__init__(Node(host, port, link, scripts, loop, on_error, resolve=self.discover, master_only=True))
        self.watch_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        super().start()
        if self.watch_task is None:
            self.watch_task = self.loop.create_task(self.watch())

    def close(self) -> None:
        super().close()
        if self.watch_task is not None:
            self.watch_task.cancel()

    async def discover(self) -> tuple[str, int]:
        """The master's address, from the first Sentinel that knows it."""
        for host, port in self.sentinels:
            with contextlib.suppress(OSError, TimeoutError, ValueError, StoreDown):
                reply = await asyncio.wait_for(_ask(host, port, (b"SENTINEL", b"get-master-addr-by-name",
                                                                 self.name)), ASK_TIMEOUT)
                if isinstance(reply, list) and len(reply) == 2:
                    addr = reply[0].decode(), int(reply[1])
                    if addr != self.master:
                        if self.master is not None:
                            self.changes += 1
                        self.master = addr
                    return addr
        raise StoreDown(f'no Sentinel knows master "{self.name}"')

    async def watch(self) -> None:
        """Follow +switch-master on one Sentinel; on losing it, the next one."""
        i = 0
        while True:
            host, port = self.sentinels[i % len(self.sentinels)]
            i += 1
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), ASK_TIMEOUT)
                try:
                    writer.write(encode((b"SUBSCRIBE", b"+switch-master")))
                    parser = hiredis.Reader()
                    while data := await reader.read(4096):
                        parser.feed(data)
                        while (msg := parser.gets()) is not False:
                            if isinstance(msg, list) and msg[0] == b"message":
                                self._switched(msg[2].split())
                finally:
                    writer.close()
            await asyncio.sleep(self.retry)

    def _switched(self, fields: list[bytes]) -> None:
        """`<name> <old ip> <old port> <new ip> <new port>`: reconnect to the new master now."""
        if len(fields) == 5 and fields[0].decode() == self.name:
            new = fields[3].decode(), int(fields[4])
            if new != (self.node.host, self.node.port) or not self.node.up:
                if self.node.up:
                    self.node.fail(f"{self.node.addr}: +switch-master to {new[0]}:{new[1]}")
                else:
                    self.node.start()


async def _ask(host: str, port: int, args: tuple[Any, ...]) -> Any:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(encode(args))
        parser = hiredis.Reader()
        while (reply := parser.gets()) is False:
            data = await reader.read(4096)
            if not data:
                raise StoreDown(f"{host}:{port} closed the connection")
            parser.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise StoreDown(str(reply))
        return reply
    finally:
        writer.close()
