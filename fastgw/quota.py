"""The shared quota store: a Redis client on hiredis, and the Lua scripts that keep the global buckets.

One client per worker process, one TCP connection. The client is an asyncio.Protocol that feeds the bytes
it receives to a hiredis.Reader; replies are matched to commands in order. Commands issued during one event
loop iteration are written together when it ends (auto-pipelining: a burst of 200 requests is one write and
one read, not 200 round trips).

Scripts are loaded once per connection (SCRIPT LOAD, pipelined after connect) and called by SHA. A server
that lost its script cache (restart, SCRIPT FLUSH, failover) answers NOSCRIPT; the call is then re-sent as
EVAL, which also caches the script again.

Time comes from the Redis server (TIME inside the scripts), never from gateway clocks, so instances with
skewed clocks still share one bucket. Keys carry a hash tag ({...}) so every key of one script call lands
in one Redis Cluster slot.

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

from fastgw.config import Config, PlanLimit
from fastgw.units import parse_rate


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


# ---------------------------------------------------------------------------------------------------
# Scripts. Units: microseconds of Redis server time.
#
# TAKE: KEYS[i] holds the state of limit i. ARGV = want, partial, then 4 values per limit:
#   kind (1 rate; 2 minute, 3 hour, 4 day, 5 month quota), a (rate: emission interval µs; quota: count),
#   b (rate: tau = burst * interval µs), enforce (1/0).
# Grants g tokens: g = want when every enforced limit has that many; with partial = 1, the most every
# enforced limit can give (maybe 0); with partial = 0, want or nothing. Granted tokens are charged to
# every limit (shadow limits too, capped at what they have). Reply: {g, shadowed, then per limit:
# remaining after the grant, ms until more quota is made available (rate: the next token; quota: the
# window end; the `t` of draft-ietf-httpapi-ratelimit-headers-10 §4.1.2), ms until one more token when
# none is left (the same number: a 429's Retry-After and t agree)}.
TAKE = Script(r"""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local partial = ARGV[2] == '1'
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function window_end(kind)
  if kind == 2 then return (math.floor(sec / 60) + 1) * 60 end
  if kind == 3 then return (math.floor(sec / 3600) + 1) * 3600 end
  if kind == 4 then return (math.floor(sec / 86400) + 1) * 86400 end
  local z = math.floor(sec / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  if m <= 2 then y = y + 1 end
  if m == 12 then return days_from_civil(y + 1, 1, 1) * 86400 end
  return days_from_civil(y, m + 1, 1) * 86400
end
local n = #KEYS
local grant = want
local st = {}
local shadow = 0
for i = 1, n do
  local base = 2 + (i - 1) * 4
  local kind = tonumber(ARGV[base + 1])
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local enforce = ARGV[base + 4] == '1'
  local can, s0, s1
  if kind == 1 then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    can = math.floor((b - (tat - now)) / a)
    s0 = tat
  else
    local wend = window_end(kind)
    local v = redis.call('HMGET', KEYS[i], 'w', 'n')
    local cnt = 0
    if tonumber(v[1]) == wend then cnt = tonumber(v[2]) or 0 end
    can = a - cnt
    s0 = wend
    s1 = cnt
  end
  if can < 0 then can = 0 end
  st[i] = {kind, a, b, enforce, can, s0, s1}
  if enforce then
    if can < grant then grant = can end
  elseif can < want then
    shadow = shadow + 1
  end
end
if (not partial) and grant < want then grant = 0 end
local out = {grant, shadow}
for i = 1, n do
  local kind, a, b, enforce, can, s0, s1 = unpack(st[i])
  local g = grant
  if g > can then g = can end
  local left = can - g
  local reset, retry
  if kind == 1 then
    local tat = s0 + g * a
    if g > 0 then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
    end
    local credit = b - (tat - now)
    reset = math.ceil(((left + 1) * a - credit) / 1000)
    retry = 0
    if left < 1 then retry = reset end
  else
    if g > 0 then
      redis.call('HSET', KEYS[i], 'w', s0, 'n', s1 + g)
      redis.call('PEXPIREAT', KEYS[i], s0 * 1000 + 60000)
    end
    reset = math.ceil((s0 * 1000000 - now) / 1000)
    retry = 0
    if left < 1 then retry = reset end
  end
  out[#out + 1] = left
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
""")

# HEARTBEAT: KEYS[1] a sorted set of instances scored by their last beat (ms of Redis time).
# ARGV[1] this instance's id, ARGV[2] ms after which a silent instance no longer counts. Returns the
# number of live instances (this one included).
HEARTBEAT = Script(r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
""")

SCRIPTS = [TAKE, HEARTBEAT]
HEARTBEAT_KEY = b"fgw:{hb}:instances"


# ---------------------------------------------------------------------------------------------------
# `fastgw check` (no compiled code needed here)

def limit_name(lim: PlanLimit) -> str:
    if lim.name:
        return lim.name
    if lim.quota is not None:
        return lim.quota.rpartition("/")[2]
    return "rate" if lim.rate is not None else "concurrency"


def overshoot_summary(cfg: Config, workers: int) -> list[str]:
    """Lines for `fastgw check`: where each plan's state lives and, in lease mode, the worst case."""
    out = []
    for name, plan in cfg.plans.items():
        sync = plan.sync if cfg.redis is not None else "local"
        note = "" if sync == plan.sync else f" (sync = {plan.sync}, but no [redis]: enforced per host)"
        out.append(f"  {name}: sync={sync}, on_store_error={plan.on_store_error}{note}")
        if sync == "local" or cfg.redis is None:
            continue
        rd = cfg.redis
        if plan.on_store_error == "local":
            floor = (f"redis.expected_instances = {rd.expected_instances}" if rd.expected_instances else
                     "redis.expected_instances unset: an instance that starts while Redis is down enforces "
                     "the whole limit until it sees a heartbeat")
            out.append(f"    while Redis is unavailable: limits / the larger of the live instances last seen in "
                       f"Redis and {floor}")
        if sync != "lease":
            continue
        for i, lim in enumerate(plan.limits):
            if lim.concurrency is not None:
                continue
            cap = rd.lease_max
            if lim.rate is not None:
                count, period = parse_rate(lim.rate)
                rates = [parse_rate(x.rate) for x in plan.limits if x.rate is not None and x.enforce]
                tight = min(c / p for c, p in rates) if rates else count / period
                cap = max(1, min(cap, int(tight * rd.lease_period)))
            held = 2 * cap                  # the rest of the batch being spent + the next one (prefetched)
            per_host = held * workers
            out.append(f"    {limit_name(lim)} (limits[{i}]): lease worst-case overshoot per key: {held} requests "
                       f"per worker (2 batches of at most {cap}) = {per_host} per instance ({workers} workers), "
                       f"times the number of instances "
                       f"(leased tokens spent up to lease_ttl = {rd.lease_ttl:g}s after they were granted)")
    return out

