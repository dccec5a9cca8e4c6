"""The shared store's client, one per worker process: hiredis on an asyncio Protocol, pipelined
(fastgw/store/node.py), in one of three modes ([redis].mode, fastgw/store/config.py):

  standalone  one node, at redis.url
  sentinel    one node, the master the Sentinels name (fastgw/store/sentinel.py): asked before every
              connection, followed on +switch-master, re-asked when the connection is lost
  cluster     one node per primary, keys routed by slot (fastgw/store/cluster.py)

What every store user calls (the traffic policy today; idempotency records, the shared cache and metering
flushes use the same calls):
  client.up                          some node can answer (attribute: read per request)
  client.run(script, keys, args)     EVALSHA on the node owning keys[0]'s slot, EVAL after NOSCRIPT on that
                                     node; every key of one call must share a hash tag (fastgw/store/keys.py)
  client.command(name, key, *rest)   one command on the node owning `key` (GET, SET NX PX, HINCRBY, XADD)
Both return a future, or raise StoreDown at once when that node's breaker is open; the future raises
StoreDown (timeout, connection lost) or StoreError (an error reply). Reads and writes always go to the
primary: counters, locks and records are never read from a replica.

`client.nodes()` lists the nodes in use (address, up, since, commands, errors) for /status/redis and the
fastgw_redis_* metrics (fastgw/store/stats.py); `changes` counts topology changes seen (a new master, a
new slot map) and `redirects` the MOVED / ASK / TRYAGAIN replies followed.
"""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from fastgw.store.cluster import ClusterClient
from fastgw.store.config import URL, RedisSettings, password
from fastgw.store.node import Link, Node, Script, StoreDown, StoreError
from fastgw.store.sentinel import SentinelClient
from fastgw.store.single import Client

__all__ = ["Client", "Script", "StoreDown", "StoreError", "connect", "link_of"]

def link_of(rd: RedisSettings) -> Link:
    tls = None
    if rd.tls:
        tls = ssl.create_default_context(cafile=rd.tls_ca)
    m = URL.fullmatch(rd.url)
    db = int(m["db"] or 0) if m is not None and rd.mode != "cluster" else 0
    return Link(rd.timeout, rd.retry_interval, rd.username, password(rd), db, tls)


def connect(rd: RedisSettings, scripts: list[Script], loop: asyncio.AbstractEventLoop,
            on_error: Callable[[str, bool], None] | None = None) -> Any:
    """The client for `rd.mode`, started (it connects in the background; `up` says when it can answer)."""
    link = link_of(rd)
    client: Any
    if rd.mode == "cluster":
        client = ClusterClient(rd, link, scripts, loop, on_error)
    elif rd.mode == "sentinel":
        client = SentinelClient(rd, link, scripts, loop, on_error)
    else:
        m = URL.fullmatch(rd.url)
        if m is None:
            raise ValueError(f"invalid redis url {rd.url!r}")
        client = Client(Node(m["host"], int(m["port"] or 6379), link, scripts, loop, on_error))
    client.start()
    return client
