"""The shared store: a Redis client on hiredis, calling Lua scripts by SHA (the traffic policy's are in
fastgw/policies/ratelimit/scripts.py).

One client per worker process, one TCP connection. The client is an asyncio.Protocol that feeds the bytes
it receives to a hiredis.Reader; replies are matched to commands in order. Commands issued during one event
loop iteration are written together when it ends (auto-pipelining: a burst of 200 requests is one write and
one read, not 200 round trips).

Scripts are loaded once per connection (SCRIPT LOAD, pipelined after connect) and called by SHA. A server
that lost its script cache (restart, SCRIPT FLUSH, failover) answers NOSCRIPT; the call is then re-sent as
EVAL, which also caches the script again.

Failures. Every command must be answered within `timeout` (default 20 ms). A timeout or a lost connection
opens the circuit breaker: commands in flight fail with StoreDown, and while the breaker is open calls fail
at once (no request waits for a timeout), so the policy applies its `on_store_error` fallback. A reconnect is
tried every `retry_interval` (200 ms); when it succeeds (connect + scripts loaded) the breaker closes, so a
recovered Redis is used again within a fraction of a second. An error reply to a script (a Redis Cluster
MOVED/ASK redirection: this client speaks to one node; OOM; a script error) fails that call with
StoreError, a StoreDown, without opening the breaker: other keys may still work. Every one of these
failures, and every failed connection attempt, is reported to `on_error(reason, breaker_open)`, so that
no fallback to local enforcement goes uncounted.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import re
from collections.abc import Callable
from typing import Any

import hiredis


class StoreDown(Exception):
    """The store cannot answer now (breaker open, timeout, connection lost)."""


class StoreError(StoreDown):
    """The store answered a script call with an error (MOVED, ASK, OOM, a script error)."""


class Script:
    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


_URL = re.compile(r"redis://(?::(?P<pw>[^@/]*)@)?(?P<host>[^:/@]+)(?::(?P<port>\d+))?(?:/(?P<db>\d+))?")


class _Conn(asyncio.Protocol):
    """One TCP connection of a RedisClient; events of a connection already replaced are ignored."""

    def __init__(self, client: RedisClient, gen: int) -> None:
        self.client = client
        self.gen = gen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.gen == self.client.gen:
            self.client.transport = transport  # type: ignore[assignment]
        else:
            transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.gen == self.client.gen:
            self.client.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gen == self.client.gen:
            self.client.connection_lost(exc)


class RedisClient:
    def __init__(self, url: str, timeout: float, retry_interval: float, scripts: list[Script],
                 loop: asyncio.AbstractEventLoop, on_error: Callable[[str, bool], None] | None = None) -> None:
        m = _URL.fullmatch(url)
        if m is None:
            raise ValueError(f"invalid redis url {url!r}")
        self.host = m["host"]
        self.port = int(m["port"] or 6379)
        self.password = m["pw"]
        self.db = int(m["db"] or 0)
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.scripts = scripts
        self.loop = loop
        self.on_error = on_error
        self.up = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.sent = 0               # commands written
        self.recv = 0               # replies read
        self.timer: asyncio.TimerHandle | None = None
        self.timer_target = 0
        self.errors = 0
        self.commands = 0
        self.connect_task: asyncio.Task[None] | None = None
        self.gen = 0

    # -- connection ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.connect_task is None and not self.closed:
            self.connect_task = self.loop.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        try:
            while not self.closed and not self.up:
                try:
                    await asyncio.wait_for(self._connect(), max(0.5, self.timeout * 10))
                except (TimeoutError, OSError, StoreDown, ConnectionError) as e:
                    self._error(f"connect: {type(e).__name__}: {e}" if str(e) else f"connect: {type(e).__name__}", True)
                    self._drop()
                    await asyncio.sleep(self.retry_interval)
        finally:
            self.connect_task = None

    async def _connect(self) -> None:
        self.reader = hiredis.Reader()
        self.recv = self.sent = 0
        self.gen += 1
        gen = self.gen
        await self.loop.create_connection(lambda: _Conn(self, gen), self.host, self.port)
        hello: list[asyncio.Future[Any]] = []
        if self.password:
            hello.append(self._send(("AUTH", self.password)))
        if self.db:
            hello.append(self._send(("SELECT", self.db)))
        for s in self.scripts:
            hello.append(self._send((b"SCRIPT", b"LOAD", s.body)))
        for r in await asyncio.gather(*hello):
            if isinstance(r, hiredis.ReplyError):
                raise StoreDown(str(r))
        self.up = True

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
            self._fail("connection lost")

    def _drop(self) -> None:
        self.up = False
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
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _error(self, reason: str, breaker_open: bool) -> None:
        self.errors += 1
        if self.on_error is not None:
            self.on_error(reason, breaker_open)

    def _fail(self, reason: str) -> None:
        """Open the breaker: fail what is in flight, reconnect in the background."""
        self._error(reason, True)
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
        if self.timer is None:
            self.timer_target = self.sent
            self.timer = self.loop.call_later(self.timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self.timer = None
        if self.recv < self.timer_target:
            self._fail("timeout")              # the oldest command waited `timeout`: breaker opens
        elif self.recv < self.sent:            # later commands are still out: watch them
            self.timer_target = self.sent
            self.timer = self.loop.call_later(self.timeout, self._check_timeout)

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Send one command; raises StoreDown at once while the breaker is open."""
        if not self.up:
            raise StoreDown("redis unavailable")
        return self._send(args)

    def run(self, script: Script, keys: list[bytes], args: list[Any]) -> asyncio.Future[Any]:
        """EVALSHA `script`, falling back to EVAL on NOSCRIPT. The future resolves to the reply or raises
        StoreDown (StoreError for an error reply, reported to on_error)."""
        if not self.up:
            raise StoreDown("redis unavailable")
        outer: asyncio.Future[Any] = self.loop.create_future()
        tail = (len(keys), *keys, *args)
        first = self._send((b"EVALSHA", script.sha, *tail))

        def done(f: asyncio.Future[Any], resent: bool = False) -> None:
            if outer.done():
                return
            exc = f.exception()
            if exc is not None:
                outer.set_exception(exc)
                return
            r = f.result()
            if isinstance(r, hiredis.ReplyError):
                if not resent and str(r).startswith("NOSCRIPT"):
                    try:
                        again = self._send((b"EVAL", script.body, *tail))
                    except StoreDown as e:
                        outer.set_exception(e)
                        return
                    again.add_done_callback(lambda g: done(g, True))
                    return
                self._error(f"error reply: {r}", False)
                outer.set_exception(StoreError(str(r)))
                return
            outer.set_result(r)

        first.add_done_callback(done)
        return outer
