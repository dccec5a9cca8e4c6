"""The admin read-back: GET /usage?consumer=NAME&from=T&to=T&granularity=minute|hour|day (admin listener,
served by the supervisor from the Redis sink's buckets, sink.py).

  consumer      a configured consumer, "(anonymous)" or "(unlisted)" (required)
  from, to      RFC 3339 UTC instants ("2027-03-15T10:00:00Z") or epoch seconds; the buckets whose start
                is in [from, to) count; default: to = now, from = to minus one bucket
  granularity   minute (at most 1440 buckets: a day; they are kept `retention`), hour (at most 744: 31
                days) or day (at most 400); default hour

The answer (JSON): {"consumer", "granularity", "from", "to", "buckets": [{"start", "requests",
"request_bytes", "response_bytes", "routes": [{"route", "plan", "status_class", "requests",
"request_bytes", "response_bytes"}...]}...], "totals": {...}} — buckets without usage are left out. The
figures are what the workers flushed (so far: a worker's last flush interval is still on its way).
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from fastgw.policies.lifecycle.config import instant
from fastgw.policies.metering import tally as T
from fastgw.policies.metering.sink import GRANULARITIES, bucket_key
from fastgw.store.redis import StoreDown, connect

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.store.config import RedisSettings

MAX_BUCKETS = {"minute": 1440, "hour": 744, "day": 400}
CONNECT_WAIT = 2.0               # seconds the first read waits for the supervisor's store connection
_client_of: list[Any] = []          # [settings, client]: one client, for the current [redis]
Answer = tuple[int, str, None]


def _instant(text: str) -> int | None:
    if text.isdigit() and len(text) <= 12:
        return int(text)
    return instant(text)


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def admin_action(cfg: Config, method: str, query: str) -> Answer | Awaitable[Answer]:
    m = cfg.metering
    if m is None or m.sink != "redis" or cfg.redis is None:
        return 404, "usage is read back from the Redis sink: [metering] sink = \"redis\" is not configured\n", None
    try:
        q = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=8)
    except ValueError:
        return 400, "query: consumer=NAME[&from=T&to=T&granularity=minute|hour|day]\n", None
    if any(len(v) != 1 for v in q.values()) or set(q) - {"consumer", "from", "to", "granularity"}:
        return 400, "arguments: consumer, from, to, granularity (each at most once)\n", None
    consumer = q.get("consumer", [""])[0]
    if consumer not in cfg.consumers and consumer not in (T.ANONYMOUS, T.UNLISTED):
        return 400, f"consumer: a configured consumer, {T.ANONYMOUS} or {T.UNLISTED}\n", None
    gran = q.get("granularity", ["hour"])[0]
    if gran not in GRANULARITIES:
        return 400, "granularity: minute, hour or day\n", None
    step = GRANULARITIES[gran][1]
    bounds = {}
    for name in ("from", "to"):
        text = q.get(name, [None])[0]
        if text is not None:
            t = _instant(text)
            if t is None:
                return 400, f"{name}: an RFC 3339 UTC instant (2027-03-15T10:00:00Z) or epoch seconds\n", None
            bounds[name] = t
    to = bounds.get("to", int(time.time()) // step * step + step)
    first = bounds.get("from", to - step)
    if to <= first:
        return 400, "to: after from\n", None
    start = first // step * step
    n = (to - start + step - 1) // step
    if n > MAX_BUCKETS[gran]:
        return 400, f"from..to: at most {MAX_BUCKETS[gran]} {gran} buckets (asked: {n})\n", None
    return _read(cfg.redis, consumer, gran, [start + i * step for i in range(n)], to)


async def _client(rd: RedisSettings) -> Any:
    """The supervisor's store client, made on the first read and remade when [redis] changed."""
    if _client_of and _client_of[0] == rd:
        c = _client_of[1]
    else:
        if _client_of:
            _client_of[1].close()
        c = connect(rd, [], asyncio.get_running_loop())
        _client_of[:] = [rd, c]
    deadline = time.monotonic() + CONNECT_WAIT
    while not c.up and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return c


async def _read(rd: RedisSettings, consumer: str, gran: str, starts: list[int], to: int) -> Answer:
    g = GRANULARITIES[gran][0]
    try:
        c = await _client(rd)
        replies = await asyncio.gather(*[c.command(b"HGETALL", bucket_key(g, consumer, s)) for s in starts])
    except StoreDown as e:
        return 503, f"usage store unavailable: {e}\n", None
    buckets, totals = [], _zero()
    for s, reply in zip(starts, replies, strict=True):
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for i in range(0, len(reply or ()), 2):
            route, plan, cls, kind = bytes(reply[i]).decode().split("|")
            row = rows.setdefault((route, plan, cls), {"route": route, "plan": None if plan == "-" else plan,
                                                       "status_class": f"{cls}xx", **_zero()})
            row[_FIELD[kind]] += int(reply[i + 1])
        if rows:
            b = {"start": _iso(s), **_zero(), "routes": sorted(rows.values(), key=lambda r: (r["route"], r["status_class"]))}
            for row in rows.values():
                for k in _FIELD.values():
                    b[k] += row[k]
                    totals[k] += row[k]
            buckets.append(b)
    doc = {"consumer": consumer, "granularity": gran, "from": _iso(starts[0]), "to": _iso(to),
           "buckets": buckets, "totals": totals}
    return 200, json.dumps(doc) + "\n", None


_FIELD = {"n": "requests", "q": "request_bytes", "s": "response_bytes"}


def _zero() -> dict[str, int]:
    return {"requests": 0, "request_bytes": 0, "response_bytes": 0}
