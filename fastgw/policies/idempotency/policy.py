"""Idempotency-Key on a route (draft-ietf-httpapi-idempotency-key-header): a request of the configured
methods that carries a key runs upstream at most once per key; a retry gets the first answer back.

  on_request   no key: passes (400 idempotency-key-required when `required`); a malformed key: 400
               idempotency-key-invalid. Otherwise the whole body is read (more than max_body: 413), the
               record key and the fingerprint computed (record.py) and one atomic call (BEGIN) either takes
               the key's lock for lock_ttl (the request goes upstream) or returns the record:
                 in flight, same fingerprint      409 idempotency-conflict, Retry-After: 1
                 stored, same fingerprint         the stored response, Idempotent-Replayed: true; the
                                                  upstream is not called
                 either, another fingerprint      422 idempotency-mismatch
               The store failing: 503 store-unavailable (on_store_error "closed", the default: never a
               duplicate payment), or the request passes unprotected ("open").
  on_response  the owner of the lock keeps the upstream's status and allow-listed headers (ALLOWED).
  on_response_body
               the owner keeps the body up to max_body; at its end, FINISH stores the response for ttl (a
               larger body: status and headers stored, replays answer 409). A 429 or 503 from the upstream
               (it says it did not act) releases the key instead.
  on_log       the owner whose response never completed: when the request was sent upstream its outcome is
               unknown (timeout, reset, the client gone) and the lock stays until lock_ttl, never stored
               as a success; when it was not (a connect failure, a later policy's answer) the key is freed.

The store calls go through the worker's own store client (fastgw/store/redis.py), with the scripts of
record.py loaded on every node; without [redis], through the worker's connection to the per-host store
(hoststore.py: the same two operations, inline: one is tens of microseconds). When another worker holds
that file's lock, the call is tried again without blocking the loop (hoststore.wait: BEGIN awaits it,
FINISH goes on in a task, like the Redis FINISH), for up to BUSY_S, then it is a store failure.
"""
from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Gate
from fastgw._core.phases import Respond
from fastgw.policies.idempotency import record as R
from fastgw.policies.idempotency import stats as S
from fastgw.policies.idempotency.config import host_store
from fastgw.policies.idempotency.hoststore import Busy, HostStore, StoreFull, wait
from fastgw.store.redis import StoreDown, connect

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.contract import Rejection
    from fastgw.policies.idempotency.config import Idempotency
    from fastgw.process.shm import SharedMemory

# Response headers stored with a response and replayed: what describes the representation and where it is.
# Never Set-Cookie or anything else that belongs to one client session.
ALLOWED = frozenset((b"content-type", b"content-encoding", b"content-language", b"content-location",
                     b"content-disposition", b"location", b"etag", b"last-modified", b"link", b"cache-control",
                     b"expires"))
# Upstream statuses that say the request was not acted on (RFC 6585 §4, RFC 9110 §15.6.4): the key is freed.
NOT_ACTED = (429, 503)
REPLAYED = (b"Idempotent-Replayed", b"true")
RETRY_AFTER = b"Retry-After: 1\r\n"
# The per-host FINISH calls waiting for another worker's lock (the loop holds only weak references to tasks).
_WAITING: set[asyncio.Task[Any]] = set()


class _Owned:
    """The state (Gate.state) of the request that holds a key's lock."""

    __slots__ = ("key", "lock", "fp", "status", "headers", "chunks", "size", "over", "ended")

    def __init__(self, key: bytes, lock: bytes, fp: bytes) -> None:
        self.key, self.lock, self.fp = key, lock, fp
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.over = False
        self.ended = False


def _ignore(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()                 # retrieved: a failed store write is counted by the client


class IdempotencyPolicy(Gate):
    def __init__(self, route: str, idem: Idempotency, services: dict[str, Any], counter: Any) -> None:
        self.route = route
        self.methods = frozenset(m.encode() for m in idem.methods)
        self.required = idem.required
        self.ttl_ms = max(1, int(idem.ttl * 1000))
        self.lock_ms = max(1, int(idem.lock_ttl * 1000))
        self.max_body = idem.max_body
        self.closed = idem.on_store_error == "closed"
        self.services = services
        self.words: Any
        self.at: int
        self.words, self.at = counter if counter is not None else (None, 0)

    def count(self, outcome: int) -> None:
        if self.words is not None:
            self.words[self.at + outcome] += 1

    @property
    def client(self) -> Any:
        return self.services.get("idempotency_client")

    @property
    def host(self) -> HostStore | None:
        return self.services.get("idempotency_host")

    def on_request(self, ex: Any) -> Any:
        if ex.method not in self.methods:
            return None
        raw = ex.header(b"idempotency-key")
        if raw is None:
            if self.required:
                self.count(S.MISSING_KEY)
                return (400, "idempotency-key-required", None, None)
            return None
        key = R.parse_key(raw)
        if key is None:
            self.count(S.INVALID_KEY)
            return (400, "idempotency-key-invalid", None, None)
        return self.begin(ex, key)

    def store_failed(self) -> Rejection | None:
        self.count(S.STORE_ERROR)
        if self.closed:
            return (503, "store-unavailable", b"The idempotency store is unavailable; retry with the same key.",
                    RETRY_AFTER)
        return None

    async def begin(self, ex: Any, key: bytes) -> Rejection | Respond | None:
        body = await ex.read_body(self.max_body)
        if body is None:
            self.count(S.BODY_TOO_LARGE)
            return (413, "payload-too-large", b"The request body exceeds the route's idempotency max_body.", None)
        ident = ex.identity
        rkey = R.record_key(ident.consumer if ident is not None else "", self.route, ex.method, key)
        fp = R.fingerprint(ex.method, ex.path + ex.query, body)
        lock = b"L" + fp + os.urandom(16)
        host = self.host
        if host is not None:
            try:
                try:
                    value = host.begin(rkey, lock, self.lock_ms)
                except Busy:
                    value = await wait(host.begin, rkey, lock, self.lock_ms)
            except (sqlite3.Error, StoreFull):                 # (Busy too, after BUSY_S)
                return self.store_failed()
        else:
            client = self.client
            if client is None or not client.up:
                return self.store_failed()
            try:
                value = R.decode_reply(await client.run(R.BEGIN, [rkey], [lock, self.lock_ms]))
            except StoreDown:                 # (StoreError too)
                return self.store_failed()
        if value is None:
            self.count(S.FIRST)
            self.set_state(ex, _Owned(rkey, lock, fp))
            ex.retry_safe = True           # the key holds: a failed try may go to another target (retry.pyx)
            return None
        if value[1:1 + R.FP] != fp:
            self.count(S.MISMATCH)
            return (422, "idempotency-mismatch", None, None)
        if value[0] == R.LOCKED:
            self.count(S.CONFLICT)
            return (409, "idempotency-conflict", None, RETRY_AFTER)
        status, headers, stored_body = R.stored(value)
        if stored_body is None:
            self.count(S.CONFLICT)
            return (409, "idempotency-conflict", b"The request with this Idempotency-Key completed, but its response "
                    b"was larger than the route's idempotency max_body and cannot be replayed.", None)
        self.count(S.REPLAYED)
        return Respond(status, headers + [REPLAYED], stored_body)

    def on_response(self, ex: Any) -> None:
        st = self.state(ex)
        if type(st) is not _Owned:
            return
        st.status = ex.response_status
        st.headers = [(n, v) for n, v in ex.response_headers if n.lower() in ALLOWED]

    def on_response_body(self, ex: Any, chunk: bytes, end: bool) -> None:
        st = self.state(ex)
        if type(st) is not _Owned or st.ended:
            return
        if not end:
            if not st.over:
                st.size += len(chunk)
                if st.size > self.max_body:
                    st.over, st.chunks = True, []
                else:
                    st.chunks.append(chunk)
            return
        st.ended = True
        if st.status in NOT_ACTED:
            self.count(S.RELEASED)
            self.finish(st, b"")
            return
        self.count(S.STORED)
        self.finish(st, R.done_value(st.fp, st.status, st.headers, None if st.over else b"".join(st.chunks)),
                    R.done_value(st.fp, st.status, st.headers, None))

    def on_log(self, ex: Any) -> None:
        st = self.state(ex)
        if type(st) is not _Owned or st.ended:
            return
        st.ended = True
        if ex.request_sent:
            self.count(S.UNKNOWN)         # the lock expires after lock_ttl; nothing is stored
        else:
            self.count(S.RELEASED)
            self.finish(st, b"")

    def finish(self, st: _Owned, value: bytes, smaller: bytes = b"") -> None:
        """Replace this request's lock with `value` (b"": delete it), if the lock is still ours. (`smaller`:
        the record without its body, for a per-host store with no room for the body.)"""
        host = self.host
        if host is not None:
            try:
                host.finish(st.key, st.lock, value, self.ttl_ms, smaller)
            except Busy:
                task = asyncio.get_running_loop().create_task(
                    wait(host.finish, st.key, st.lock, value, self.ttl_ms, smaller))
                _WAITING.add(task)
                task.add_done_callback(self._finished)
            except sqlite3.Error:
                self.count(S.STORE_ERROR)     # the lock expires after lock_ttl
            return
        client = self.client
        if client is None:
            return
        try:
            fut = client.run(R.FINISH, [st.key], [st.lock, value, self.ttl_ms])
        except StoreDown:
            self.count(S.STORE_ERROR)     # the lock expires after lock_ttl
            return
        fut.add_done_callback(_ignore)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        _WAITING.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.count(S.STORE_ERROR)         # the lock expires after lock_ttl


def _client(cfg: Config, services: dict[str, Any]) -> Any:
    """The worker's store client for idempotency records (its own connection, its scripts loaded), made
    on first use and remade when [redis] changes on a reload."""
    rd = cfg.redis
    old = services.get("idempotency_client")
    if old is not None and services.get("idempotency_redis") == rd:
        return old
    if old is not None:
        old.close()
    services["idempotency_redis"] = rd
    services["idempotency_client"] = connect(rd, R.SCRIPTS, services["loop"])
    return services["idempotency_client"]


def _host(cfg: Config, services: dict[str, Any]) -> None:
    """The worker's connection to the per-host store (no [redis]), opened on first use and reopened when
    [idempotency] changes on a reload; the Redis client is closed when a reload removes [redis], and the
    host store when one adds it. The file outlives the workers: a reload keeps the records. Opening never
    waits for another worker (hoststore.HostStore: a busy setup is finished by the first call)."""
    hs = host_store(cfg)
    old = services.get("idempotency_host")
    if old is not None and (hs is None or services.get("idempotency_host_settings") != hs):
        services.pop("idempotency_host").close()
    if hs is None:
        return
    rc = services.pop("idempotency_client", None)
    if rc is not None:
        rc.close()
        services.pop("idempotency_redis", None)
    if services.get("idempotency_host") is None:
        services["idempotency_host_settings"] = hs
        try:
            services["idempotency_host"] = HostStore(hs.path, hs.max_records, hs.max_bytes)
        except sqlite3.Error:             # counted as store_error by every request that needs it, which
            pass                          # meets on_store_error (503 by default)


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> IdempotencyPolicy | None:
    idem = route.idempotency
    if idem is None:
        return None
    if services.get("loop") is not None:
        _host(cfg, services)
        if cfg.redis is not None:
            _client(cfg, services)
    return IdempotencyPolicy(route.name, idem, services, S.counter(services.get("idempotency_words"), route.name))


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------

shm_sections = S.shm_sections
metrics = S.metrics


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    if shm is not None and S.SECTION in shm.layout.sections:
        services["idempotency_words"] = S.region(shm, slot)
