"""One connection to one Redis server, with its own deadline and circuit breaker.

The connection is an asyncio.Protocol that feeds what it receives to a hiredis.Reader; replies are matched
to commands in order. Commands issued during one event-loop iteration are written together when it ends
(auto-pipelining: a burst of 200 requests is one write and one read, not 200 round trips).

Setting up a connection: TLS if configured, AUTH (ACL user and password), SELECT, every script loaded
(SCRIPT LOAD, pipelined) and, for a Sentinel-discovered master, ROLE must say "master" (a demoted master
answers READONLY to every write). Only then is the node up.

Failures. Every command must be answered within `timeout`. A timeout or a lost connection opens this
node's breaker: its commands in flight fail with StoreDown, and while the breaker is open calls to it fail
at once (no request waits for a timeout), so the policy applies its `on_store_error` rule. A reconnect is
tried every `retry_interval`; when it succeeds the breaker closes. Other nodes are not affected. Every
failure is reported to `on_error(reason, breaker_open)`; every change of state to `on_state(node)`.

Replies. A script is called by SHA; a server that lost its script cache (restart, SCRIPT FLUSH, a failover:
script caches are per node) answers NOSCRIPT, and the call is re-sent on this node as EVAL, which caches it
again. A Cluster redirection (MOVED, ASK, TRYAGAIN) goes to the node's `router` (the cluster client);
any other error reply fails that call with StoreError without opening the breaker.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis


class StoreDown(Exception):
    """The store cannot answer now (breaker open, timeout, connection lost)."""


class StoreError(StoreDown):
    """The store answered with an error (OOM, a script error, a redirection that could not be followed)."""


class Script:
    """A Lua script called by SHA. `keys`: its key templates (fastgw/store/keys.py says how they are
    checked), the placeholders <tag>, <name>, <n> filled by the caller."""

    def __init__(self, name: str, body: str, keys: tuple[bytes, ...]) -> None:
        self.name = name
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()
        self.keys = keys


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


@dataclass(frozen=True)
class Link:
    """How every node of one store is reached."""

    timeout: float
    retry_interval: float
    username: str = ""
    password: str | None = None
    db: int = 0
    tls: ssl.SSLContext | None = None


class Router(Protocol):
    def redirect(self, node: Node, reply: hiredis.ReplyError, args: tuple[Any, ...], outer: asyncio.Future[Any],
                 script: Script | None, hops: int) -> None: ...


class _Conn(asyncio.Protocol):
    """One TCP connection of a Node; events of a connection already replaced are ignored."""

    def __init__(self, node: Node, gen: int) -> None:
        self.node = node
        self.gen = gen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.gen == self.node.gen:
            self.node.transport = transport  # type: ignore[assignment]
        else:
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.gen == self.node.gen:
            self.node.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gen == self.node.gen:
            self.node.connection_lost(exc)


def _ignore(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


class Node:
    def __init__(self, host: str, port: int, link: Link, scripts: list[Script], loop: asyncio.AbstractEventLoop,
                 on_error: Callable[[str, bool], None] | None = None,
                 on_state: Callable[[Node], None] | None = None,
                 resolve: Callable[[], Awaitable[tuple[str, int]]] | None = None,
                 master_only: bool = False, router: Router | None = None) -> None:
        self.host, self.port = host, port
        self.link = link
        self.timeout = link.timeout
        self.scripts = scripts
        self.loop = loop
        self.on_error = on_error
        self.on_state = on_state
        self.resolve = resolve              # Sentinel: where the master is now, asked before every connect
        self.master_only = master_only
        self.router = router
        self.up = False
        self.closed = False
        self.since = time.time()            # of the last change of `up`
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.sent = 0               # commands written
        self.recv = 0               # replies read
        self.timer: asyncio.TimerHandle | None = None
        self.writes: collections.deque[tuple[int, float]] = collections.deque()   # (sent after it, loop time)
        self.errors = 0
        self.commands = 0
        self.connect_task: asyncio.Task[None] | None = None
        self.gen = 0

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -- connection ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.connect_task is None and not self.closed:
            self.connect_task = self.loop.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        try:
            while not self.closed and not self.up:
                try:
                    await asyncio.wait_for(self._connect(), max(0.5, self.timeout * 10))
                except (TimeoutError, OSError, StoreDown, ConnectionError, ssl.SSLError) as e:
                    self.report(f"connect {self.addr}: {type(e).__name__}: {e}" if str(e)
                                else f"connect {self.addr}: {type(e).__name__}", True)
                    self._drop()
                    await asyncio.sleep(self.link.retry_interval)
        finally:
            self.connect_task = None

    async def _connect(self) -> None:
        if self.resolve is not None:
            self.host, self.port = await self.resolve()
        self.reader = hiredis.Reader()
        self.recv = self.sent = 0
        self.gen += 1
        gen = self.gen
        link = self.link
        await self.loop.create_connection(lambda: _Conn(self, gen), self.host, self.port, ssl=link.tls,
                                          server_hostname=self.host if link.tls is not None else None)
        hello: list[asyncio.Future[Any]] = []
        if link.password:
            hello.append(self._send(("AUTH", link.username, link.password) if link.username
                                    else ("AUTH", link.password)))
        if link.db:
            hello.append(self._send(("SELECT", link.db)))
        for s in self.scripts:
            hello.append(self._send((b"SCRIPT", b"LOAD", s.body)))
        if self.master_only:
            hello.append(self._send((b"ROLE",)))
        for r in await asyncio.gather(*hello):
            if isinstance(r, hiredis.ReplyError):
                raise StoreDown(str(r))
        if self.master_only and hello[-1].result()[0] != b"master":
            raise StoreDown(f"{self.addr} is a {hello[-1].result()[0].decode()}, not the master")
        self._set_up(True)

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.since = time.time()
            if self.on_state is not None:
                self.on_state(self)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while True:
            r = self.reader.gets()
            if r is False:
                break
            self.recv += 1
            if pending:
                f = pending.popleft()
                if not f.done():
                    f.set_result(r)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed:
            self.fail(f"{self.addr}: connection lost")

    def _drop(self) -> None:
        self.gen += 1
        if self.transport is not None:
            t, self.transport = self.transport, None
            t.abort()
        err = StoreDown("redis connection lost")
        while self.pending:
            f = self.pending.popleft()
            if not f.done():
                f.set_exception(err)
                f.exception()     # retrieved: nobody may be waiting any more
        self.out.clear()
        self.writes.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._set_up(False)

    def report(self, reason: str, breaker_open: bool) -> None:
        self.errors += 1
        if self.on_error is not None:
            self.on_error(reason, breaker_open)

    def fail(self, reason: str) -> None:
        """Open the breaker: fail what is in flight, reconnect in the background."""
        self.report(reason, True)
        self._drop()
        if not self.closed:
            self.start()

    def close(self) -> None:
        self.closed = True
        self._drop()
        if self.connect_task is not None:
            self.connect_task.cancel()

    # -- commands --------------------------------------------------------------------------------------
    def _send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        if self.transport is None:
            raise StoreDown("redis not connected")
        f: asyncio.Future[Any] = self.loop.create_future()
        self.pending.append(f)
        self.out.append(encode(args))
        self.commands += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return f

    def _flush(self) -> None:
        self.flush_scheduled = False
        if not self.out or self.transport is None:
            return
        n = len(self.out)
        self.transport.write(b"".join(self.out))
        self.out.clear()
        self.sent += n
        now = self.loop.time()
        self.writes.append((self.sent, now))
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        """Runs when the oldest write still unanswered reaches its deadline (one timer per connection,
        re-armed for the next write: each command fails `timeout` after it was written, not later)."""
        self.timer = None
        writes = self.writes
        while writes and writes[0][0] <= self.recv:
            writes.popleft()
        if not writes:
            return
        due = writes[0][1] + self.timeout
        if due <= self.loop.time():
            self.fail(f"{self.addr}: timeout")  # a command waited `timeout`: the breaker opens
        else:
            self.timer = self.loop.call_at(due, self._check_timeout)

    def raw(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command; the future holds the reply as parsed (an error reply as a ReplyError)."""
        if not self.up:
            raise StoreDown("redis unavailable")
        return self._send(args)

    def request(self, args: tuple[Any, ...], outer: asyncio.Future[Any] | None = None, script: Script | None = None,
                hops: int = 0, asking: bool = False) -> asyncio.Future[Any]:
        """Send `args` (EVALSHA of `script`, or any command); `outer` resolves to the reply or raises
        StoreDown (StoreError for an error reply, reported to on_error). `asking`: after an ASK
        redirection, the command is preceded by ASKING (valid for that one command)."""
        if not self.up:
            raise StoreDown("redis unavailable")
        if outer is None:
            outer = self.loop.create_future()
        if asking:
            self._send((b"ASKING",)).add_done_callback(_ignore)
        first = self._send(args)
        out: asyncio.Future[Any] = outer

        def done(f: asyncio.Future[Any], resent: bool = False) -> None:
            if out.done():
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            r = f.result()
            if type(r) is not hiredis.ReplyError:
                out.set_result(r)
                return
            text = str(r)
            if script is not None and not resent and text.startswith("NOSCRIPT"):
                try:
                    if asking:
                        self._send((b"ASKING",)).add_done_callback(_ignore)
                    again = self._send((b"EVAL", script.body, *args[2:]))
                except StoreDown as e:
                    out.set_exception(e)
                    return
                again.add_done_callback(lambda g: done(g, True))
                return
            if self.router is not None and text.startswith(("MOVED ", "ASK ", "TRYAGAIN")):
                self.router.redirect(self, r, args, out, script, hops)
                return
            self.report(f"{self.addr}: error reply: {text}", False)
            out.set_exception(StoreError(text))
            if self.master_only and text.startswith("READONLY"):
                self.fail(f"{self.addr}: no longer the master")   # a Sentinel failover: find the new one

        first.add_done_callback(done)
        return outer
