"""Standalone mode (and the base of Sentinel mode): the store is one node (fastgw/store/node.py); the
client's calls are that node's, and `up` is that node's breaker state, kept as a plain attribute because
the lease fast path reads it for every request."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastgw.store.node import Node, Script


class Client:
    """Standalone and Sentinel: one node."""

    mode = "standalone"

    def __init__(self, node: Node) -> None:
        self.node = node
        self.up = False
        self.changes = 0
        self.redirects = [0, 0, 0]
        self.on_change: Callable[[], None] | None = None
        node.on_state = self._state

    def _state(self, node: Node) -> None:
        self.up = node.up
        if self.on_change is not None:
            self.on_change()

    def start(self) -> None:
        self.node.start()

    def close(self) -> None:
        self.node.close()

    def nodes(self) -> list[Node]:
        return [self.node]

    @property
    def commands(self) -> int:
        return sum(n.commands for n in self.nodes())

    @property
    def errors(self) -> int:
        return sum(n.errors for n in self.nodes())

    def run(self, script: Script, keys: list[bytes], args: list[Any]) -> asyncio.Future[Any]:
        return self.node.request((b"EVALSHA", script.sha, len(keys), *keys, *args), None, script)

    def command(self, name: bytes, key: bytes, *rest: Any) -> asyncio.Future[Any]:
        return self.node.request((name, key, *rest))
