"""What a cached route does with each request (RFC 9111 shared-cache semantics; fastgw/policies/cache/rules.py
has the rules, store.py the storage):

  GET/HEAD  on_request looks the key up: a fresh entry is the answer (a Respond built when the entry was
            stored, reused by every hit; HEAD is answered from the GET entry; the plain fresh hit is
            answered in C by fastgw/_core/gates.pyx CacheGate, the rest comes to slow_request here); a stale one within its
            stale-while-revalidate window is the answer while one background conditional request refreshes
            it; otherwise the request goes upstream, with the entry's validators when it has some (a 304
            refreshes the entry and the client gets the entry). A GET miss is single-flight: the first
            request of a key goes upstream, the others of this worker wait for it (at most lock_timeout,
            then go themselves) and are answered from what it stored. A response that may be stored
            (rules.judge) is captured while it streams to the client (on_response_body) and stored at its
            end, unless it grows past max_object (then it only passes through).
  errors    a 5xx from the upstream, or the gateway's own 502/503/504, is replaced by the stale entry
            within its stale-if-error window.
  unsafe    POST, PUT, PATCH, DELETE that succeed (status < 400) drop the URL's entries (RFC 9111 4.4).

With `shared = true` a pod's first miss asks Redis before the upstream, and what is stored is also written
there (fastgw/policies/cache/shared.py).

Every response of the route carries Cache-Status (RFC 9211); every answer from the cache carries Age.
Single-flight spans the pod: within a worker the others wait on the first in memory; across workers the
first worker claims the key in a shared-memory table and hands what it stored to the others' waiters
(fastgw/policies/cache/flights.py), which keep a copy in their own stores.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from math import floor
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import CacheGate
from fastgw._core.phases import Respond
from fastgw.config.upstreams import address
from fastgw.fetch import http_request
from fastgw.policies.cache import flights as pod
from fastgw.policies.cache import rules, stats
from fastgw.policies.cache.rules import Verdict, fields, judge, normal, query_key
from fastgw.policies.cache.shared import Shared
from fastgw.policies.cache.store import OVERHEAD, Entry, Primary, Store

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.process.shm import Section, SharedMemory

UNSAFE = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
# Fields a 304 answer to a client's own validator carries (RFC 9110 15.4.5).
NOT_MODIFIED_FIELDS = frozenset({b"cache-control", b"content-location", b"etag", b"expires", b"vary"})
REVALIDATE_TIMEOUT = 10.0          # the background conditional request's whole time
GATEWAY_ANSWER = b"Cache-Status: fastgw; fwd=bypass; detail=gateway-answer\r\n"
METHOD = b"Cache-Status: fastgw; fwd=method\r\n"


class Flight:
    """A key's GET in flight in this worker: the others of the key wait on `done` (set when it ends);
    `pass_through` says its response could not be stored, so they all go upstream at once."""

    __slots__ = ("done", "pass_through")

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.pass_through = False


class State:
    """The request's cache state (Gate.state): what on_request decided, read by the later phases."""

    __slots__ = ("outcome", "status_line", "primary", "values", "entry", "fwd", "leader", "capture", "size",
                 "verdict", "conditional", "coalesced", "shared")

    def __init__(self, outcome: int, primary: Primary | None = None) -> None:
        self.outcome = outcome
        self.status_line: bytes | None = None       # the Cache-Status (and Age) lines, when decided early
        self.primary = primary
        self.values: tuple[bytes | None, ...] = ()
        self.entry: Entry | None = None             # the stale entry behind a forwarded request
        self.fwd = b"uri-miss"
        self.leader: Flight | None = None
        self.capture: list[bytes] | None = None
        self.size = 0
        self.verdict: Any = None
        self.conditional = False                    # we added the entry's validators upstream
        self.coalesced = False
        self.shared: tuple[int, int] | None = None   # (slot, key hash) this request leads in the pod's table


def _hit_lines(e: Entry, now: float, detail: bytes = b"", coalesced: bool = False) -> bytes:
    return b"Age: %d\r\nCache-Status: fastgw; %s; ttl=%d%s\r\n" % (
        int(e.current_age(now)), b"fwd=uri-miss; collapsed" if coalesced else b"hit", floor(e.ttl(now)), detail)


def _replacement(ex: Any, e: Entry, status_value: bytes, now: float) -> Respond:
    """The entry in place of the upstream's response (a 304 to our validators, a 5xx within stale-if-error):
    its fields, the fields the route's earlier policies added to this response (CORS, lifecycle: what follows
    the response's own fields in the view), Age and Cache-Status."""
    own = len(fields(ex.response_lines or b""))
    added = list(ex.response_headers or ())[own:]
    return Respond(e.respond.status, [*e.respond.headers, *added, (b"Age", b"%d" % int(e.current_age(now))),
                                      (b"Cache-Status", status_value)], e.respond.body)


def _etag_matches(tags: bytes, etag: bytes | None) -> bool:
    """If-None-Match against the entry's ETag (weak comparison, RFC 9110 13.1.2)."""
    if etag is None:
        return False
    if tags.strip() == b"*":
        return True
    want = etag[2:] if etag.startswith(b"W/") else etag
    return any((t.strip()[2:] if t.strip().startswith(b"W/") else t.strip()) == want for t in tags.split(b","))


class CachePolicy(CacheGate):
    """The route's cache. A fresh hit is answered by the compiled CacheGate (fastgw/_core/gates.pyx);
    every other request comes here (slow_request, slow_response, slow_log)."""

    def __init__(self, pol: Any, store: Store, route: Route, words: Any, at: int | None,
                 store_at: int | None, origin: Any, flights: pod.Flights | None, l2: Shared | None) -> None:
        self.pol = pol
        self.flights = flights
        self.l2 = l2
        self.store = store
        self.route = route.name
        self.entries = store.entries                  # the compiled fast path reads the store's dicts
        self.vary = store.vary
        self.allowed = frozenset(q.encode() for q in pol.query) or None
        self.query_key = query_key
        self.normal = rules.normal
        self.per_consumer = pol.per_consumer
        self.lock_timeout = pol.lock_timeout
        self.words = words
        self.hit_word = at + 1 + stats.HIT if at is not None else -1
        self.at = at
        self.store_at = store_at
        self.origin = origin                 # (url base, request lines) for background revalidation, or None

    # -- on_request -------------------------------------------------------------------------------------
    def primary(self, ex: Any) -> Primary:
        ident = ex.identity
        consumer = ident.consumer if (self.per_consumer and ident is not None) else ""
        host = ex.host
        return (self.route, host.lower() if host else b"", ex.path,
                query_key(ex.query, self.allowed) if self.allowed else b"", consumer)

    def slow_request(self, ex: Any) -> Any:
        m = ex.method
        if m == b"GET" or m == b"HEAD":
            primary = self.primary(ex)
            r = self.lookup(ex, primary, time.monotonic())
            if r is not None or m == b"HEAD":
                return r
            flight = self.store.flights.get(primary)
            if flight is not None:
                return self.wait(ex, primary, flight)
            self.state(ex).leader = self.store.flights[primary] = Flight()
            if self.flights is not None:                   # the pod's table (flights.py)
                h = pod.key_hash(primary)
                claim = self.flights.claim(h, self.lock_timeout)
                if claim is not None and claim[0] == "wait":
                    return self.wait_shared(ex, primary, claim[1], h)
                if claim is not None:
                    self.state(ex).shared = (claim[1], h)
            if self.l2 is not None:                        # the fleet's second level, before the upstream
                return self.from_l2(ex, primary)
            return None
        if m in UNSAFE:
            st = State(stats.BYPASS, self.primary(ex))
        else:
            st = State(stats.BYPASS)
        st.status_line = METHOD
        self.set_state(ex, st)
        return None

    def lookup(self, ex: Any, primary: Primary, now: float) -> Respond | None:
        """The answer from the store, or None (the state then says why the request goes upstream)."""
        store = self.store
        names = store.vary.get(primary)
        st = State(stats.MISS, primary)
        self.set_state(ex, st)
        if names is None:
            return None
        values = st.values = tuple(normal(ex.header(n)) for n in names)
        e = store.get((primary, values))
        if e is None:
            st.fwd = b"vary-miss"
            return None
        ttl = e.ttl(now)
        if ttl > 0 or (-ttl <= e.swr and self.revalidate(ex, e)):
            st.outcome = stats.HIT if ttl > 0 else stats.STALE
            st.status_line = _hit_lines(e, now, b"" if ttl > 0 else b"; detail=stale-while-revalidate")
            tags = ex.header(b"if-none-match")
            if tags is not None and _etag_matches(tags, e.etag):
                return Respond(304, [(n, v) for n, v in e.respond.headers if n.lower() in NOT_MODIFIED_FIELDS])
            return e.respond
        st.entry = e                          # stale: forwarded, maybe revalidated, maybe served on error
        st.fwd = b"stale"
        if ex.header(b"if-none-match") is None and ex.header(b"if-modified-since") is None:
            if e.etag is not None:
                ex.add_upstream_header(b"If-None-Match", e.etag)
                st.conditional = True
            if e.last_modified is not None:
                ex.add_upstream_header(b"If-Modified-Since", e.last_modified)
                st.conditional = True
        return None

    async def wait(self, ex: Any, primary: Primary, flight: Flight) -> Respond | None:
        """A miss while the key's GET is in flight: wait for it (bounded), then answer from what it
        stored; when it stored nothing the next waiter leads, unless its response could not be stored."""
        deadline = time.monotonic() + self.lock_timeout
        self.state(ex).coalesced = True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None                    # waited long enough: go upstream alone
            try:
                await asyncio.wait_for(asyncio.shield(flight.done), left)
            except TimeoutError:
                return None
            r = self.lookup(ex, primary, time.monotonic())
            st = self.state(ex)
            st.coalesced = True
            if r is not None:
                e = self.store.get((primary, st.values))
                if e is not None and st.outcome == stats.HIT:
                    st.status_line = _hit_lines(e, time.monotonic(), coalesced=True)
                return r
            if flight.pass_through:
                return None
            nxt = self.store.flights.get(primary)
            if nxt is None:
                self.state(ex).leader = self.store.flights[primary] = Flight()
                return None
            flight = nxt

    async def wait_shared(self, ex: Any, primary: Primary, i: int, h: int) -> Respond | None:
        """This worker's first miss of a key another worker is fetching: wait for the answer it publishes
        (bounded), store it here and answer from it; else go upstream (still this worker's leader)."""
        leader = self.state(ex).leader
        assert self.flights is not None                # a claim came from it
        answer = await self.flights.wait(i, h, self.lock_timeout)
        r = None
        if answer is not None:
            status, kept, body, lifetime, age, swr, sie, etag, lm, vary, values = answer
            v = Verdict(None)
            v.lifetime, v.age, v.swr, v.sie, v.etag, v.last_modified = lifetime, age, swr, sie, etag, lm
            v.vary = tuple(vary)
            v.kept = [(n, val) for n, val in kept]
            self.put(primary, tuple(values), status, v, body, time.monotonic())
            r = self.lookup(ex, primary, time.monotonic())
            if r is not None:
                st = self.state(ex)
                e = self.store.get((primary, st.values))
                if e is not None and st.outcome == stats.HIT:
                    st.status_line = _hit_lines(e, time.monotonic(), coalesced=True)
                st.coalesced = True
        self.state(ex).leader = leader
        return r

    async def from_l2(self, ex: Any, primary: Primary) -> Respond | None:
        """This pod's first miss of a key: the answer another instance kept in Redis, if any (then also
        handed to this pod's waiting workers); else None: the upstream (still the leader)."""
        st = self.state(ex)
        leader, slot = st.leader, st.shared
        assert self.l2 is not None
        got = await self.l2.read(primary)
        r = None
        if got is not None:
            status, v, body = got
            now = time.monotonic()
            self.put(primary, (), status, v, body, now)
            r = self.lookup(ex, primary, now)
            if r is not None:
                e = self.store.get((primary, ()))
                st = self.state(ex)
                if e is not None and st.outcome == stats.HIT:
                    st.status_line = _hit_lines(e, now, b"; detail=shared")
                if slot is not None and self.flights is not None:
                    i, h = slot
                    self.flights.publish(i, h, [status, v.kept, body, v.lifetime, v.age, v.swr, v.sie, v.etag,
                                                v.last_modified, [], []])
                    slot = None
        st = self.state(ex)
        st.leader, st.shared = leader, slot
        return r

    def revalidate(self, ex: Any, e: Entry) -> bool:
        """Start the entry's background conditional request (one at a time); False when this route cannot
        make one (its upstream is not HTTP/1.1, or the request is authenticated: the background request
        carries no credentials), so the stale entry is not served."""
        if self.origin is None or ex.identity is not None or ex.header(b"authorization") is not None:
            return False
        if not e.revalidating:
            e.revalidating = True
            lines = b"".join(b"%s: %s\r\n" % (n, v) for n in e.vary
                             if (v := ex.header(n)) is not None)
            asyncio.get_running_loop().create_task(self.refresh(e, ex.host, ex.path + ex.query, lines))
        return True

    async def refresh(self, e: Entry, host: bytes | None, target: bytes, lines: bytes) -> None:
        base, extra = self.origin
        if e.etag is not None:
            lines += b"If-None-Match: " + e.etag + b"\r\n"
        if e.last_modified is not None:
            lines += b"If-Modified-Since: " + e.last_modified + b"\r\n"
        try:
            status, pairs, body = await http_request(
                next(base) + target.decode("latin-1"), REVALIDATE_TIMEOUT, self.pol.max_object, extra + lines,
                host.decode("latin-1") if host else None)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status = 0
        e.revalidating = False
        if status == 0 or e.key is None or self.store.entries.get(e.key) is not e:
            return
        now = time.monotonic()
        got = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]
        if status == 304:
            self.refreshed(e, got, now)
            self.count(stats.REVALIDATED)
            return
        v = judge(status, got, False, self.per_consumer, self.pol.stale_while_revalidate,
                  self.pol.stale_if_error, time.time())
        if v.reason is None:
            self.put(e.key[0], e.key[1], status, v, body, now)
        elif status < 500:
            self.store.remove(e.key)

    def refreshed(self, e: Entry, got: list[tuple[bytes, bytes]], now: float) -> None:
        """A 304 freshens the entry: its freshness from the 304's fields, or as it was (RFC 9111 4.3.4)."""
        headers = dict((n.lower(), v) for n, v in e.respond.headers)
        headers.update((n.lower(), v) for n, v in got)
        v = judge(e.respond.status, [(n, val) for n, val in headers.items() if n not in (b"set-cookie",)],
                  False, True, self.pol.stale_while_revalidate, self.pol.stale_if_error, time.time())
        e.stored = now
        if v.reason is None:
            e.lifetime, e.age, e.swr, e.sie = v.lifetime, v.age, v.swr, v.sie

    # -- on_response ------------------------------------------------------------------------------------
    def slow_response(self, ex: Any) -> Respond | None:
        st = self.state(ex)
        if type(st) is not State:
            ex.add_response_lines(GATEWAY_ANSWER)
            return None
        if st.status_line is not None:
            ex.add_response_lines(st.status_line)
            if st.outcome == stats.BYPASS and st.primary is not None and ex.response_status < 400:
                self.invalidate(st.primary)               # an unsafe method succeeded (RFC 9111 4.4)
            return None
        status = ex.response_status
        e = st.entry
        now = time.monotonic()
        if e is not None:
            if status == 304 and st.conditional:
                self.refreshed(e, fields(ex.response_lines or b""), now)
                st.outcome = stats.REVALIDATED
                return _replacement(ex, e, b"fastgw; fwd=stale; fwd-status=304; ttl=%d" % floor(e.ttl(now)), now)
            if status >= 500 and -e.ttl(now) <= e.sie:
                st.outcome = stats.STALE
                return _replacement(ex, e, b"fastgw; fwd=stale; fwd-status=%d; ttl=%d; detail=stale-if-error"
                                    % (status, floor(e.ttl(now))), now)
        lines = ex.response_lines
        reason: bytes | None
        if ex.method != b"GET" or lines is None:
            reason = b"head" if ex.method == b"HEAD" else b"gateway-answer"
        else:
            authorized = ex.identity is not None or ex.header(b"authorization") is not None
            v = judge(status, fields(lines), authorized, self.per_consumer,
                      self.pol.stale_while_revalidate, self.pol.stale_if_error, time.time())
            reason = v.reason.encode() if v.reason is not None else None
            if reason is None:
                st.verdict = v
                st.capture = []
                ex.add_response_lines(b"Cache-Status: fastgw; fwd=%s; fwd-status=%d; stored\r\n" % (st.fwd, status))
                return None
        if st.leader is not None and reason != b"gateway-answer":
            st.leader.pass_through = True
        if st.shared is not None and self.flights is not None:
            self.flights.release(*st.shared)
        ex.add_response_lines(b"Cache-Status: fastgw; fwd=%s; fwd-status=%d; detail=%s\r\n" % (st.fwd, status, reason))
        st.outcome = stats.BYPASS if reason != b"gateway-answer" else stats.MISS
        return None

    # -- on_response_body -------------------------------------------------------------------------------
    def on_response_body(self, ex: Any, chunk: bytes, end: bool) -> None:
        st = self.state(ex)
        if type(st) is not State or st.capture is None:
            return
        if not end:
            st.size += len(chunk)
            if st.size > self.pol.max_object:
                st.capture = None              # too large: passes through, never stored
                if st.leader is not None:
                    st.leader.pass_through = True
            else:
                st.capture.append(chunk)
            return
        body = b"".join(st.capture)
        st.capture = None
        v = st.verdict
        values = tuple(normal(ex.header(n)) for n in v.vary)
        assert st.primary is not None                  # a GET's state always has its key
        self.put(st.primary, values, ex.response_status, v, body, time.monotonic())
        if self.l2 is not None:                        # and to every instance
            self.l2.write(st.primary, ex.response_status, v, body)
        if st.shared is not None and self.flights is not None:     # hand it to the other workers' waiters
            self.flights.publish(*st.shared, [ex.response_status, v.kept, body, v.lifetime, v.age, v.swr, v.sie,
                                              v.etag, v.last_modified, list(v.vary), list(values)])
            st.shared = None

    def put(self, primary: Primary, values: tuple[bytes | None, ...], status: int, v: Any, body: bytes,
            now: float) -> None:
        size = len(body) + sum(len(n) + len(val) + 4 for n, val in v.kept) + OVERHEAD
        e = Entry(Respond(status, v.kept, body), now, v, size)
        self.store.put(primary, values, e)
        self.publish()

    def invalidate(self, primary: Primary) -> None:
        if self.l2 is not None:
            self.l2.drop(primary)
        if self.store.invalidate(primary[1], primary[2], primary[3]):
            self.publish()

    def publish(self) -> None:
        if self.store_at is not None:
            w, at = self.words, self.store_at
            w[at + stats.BYTES] = self.store.bytes
            w[at + stats.COUNT] = len(self.store)
            w[at + stats.EVICTIONS] = self.store.evictions

    # -- on_log -----------------------------------------------------------------------------------------
    def slow_log(self, ex: Any) -> None:
        st = self.state(ex)
        if type(st) is not State:
            return
        if st.shared is not None and self.flights is not None:
            self.flights.release(*st.shared)           # no answer to hand over (cut, failed, too large)
        if st.leader is not None and st.primary is not None:
            if self.store.flights.get(st.primary) is st.leader:
                del self.store.flights[st.primary]
            if not st.leader.done.done():
                st.leader.done.set_result(None)
        self.count(st.outcome)
        if st.coalesced and self.at is not None:
            self.words[self.at + stats.COALESCED] += 1

    def count(self, outcome: int) -> None:
        if self.at is not None:
            self.words[self.at + 1 + outcome] += 1


def _origin(cfg: Config, route: Route) -> Any:
    """Where the background revalidation of a route's entries goes: its HTTP/1.1 upstream's targets in
    turn, with the route's request_headers.add; None for an HTTP/2 or gRPC upstream."""
    up = cfg.upstreams[route.upstream]
    if up.protocol != "http1":
        return None
    scheme = "https" if up.tls is not None else "http"
    strip = route.path[:-2] if (route.strip_prefix and route.path.endswith("/*")) else ""
    if strip:
        return None                           # the path sent upstream differs: left to the request path
    bases = itertools.cycle([f"{scheme}://{address(t)}" for t in up.targets])
    extra = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in route.request_headers.add.items())
    return bases, extra


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> CachePolicy | None:
    if route.cache is None:
        return None
    pol = cfg.cache[route.cache]
    stores = services.setdefault("cache_stores", {})
    store = stores.get(route.cache)
    if store is None:
        store = stores[route.cache] = Store(pol.max_memory, pol.max_object)
    store.max_memory, store.max_object = pol.max_memory, pol.max_object
    words = services.get("cache_words")
    at = stats.row(words, "r", route.name) if words is not None else None
    store_at = stats.row(words, "c", route.cache) if words is not None else None
    l2 = None
    if pol.shared and cfg.redis is not None and "loop" in services:
        client = services.get("cache_redis")
        if client is None:
            from fastgw.store.redis import connect

            client = services["cache_redis"] = connect(cfg.redis, [], services["loop"])
        l2 = Shared(client)
    gate = CachePolicy(pol, store, route, words, at, store_at, _origin(cfg, route), services.get("cache_flights"), l2)
    services.setdefault("cache_gates", {})[route.name] = gate      # the purge finds the route's store here
    return gate


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    # The flight table too (8 MiB of the shared file, its pages touched only when used): a reload may add
    # the first cached route.
    return stats.shm_sections(cfg, workers) + ([pod.section()] if workers > 1 else [])


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    services["cache_slot"] = slot
    if shm is not None and stats.SECTION in shm.layout.sections:
        services["cache_words"] = stats.region(shm, slot)
    if shm is not None and pod.SECTION in shm.layout.sections:
        services["cache_flights"] = pod.Flights(shm.section(pod.SECTION), slot)


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    return stats.metrics(shm, workers, live, cfg)


# -- the admin path: PURGE or DELETE /cache?route=NAME[&key=/path?query | &prefix=/path] ------------------
methods = frozenset({"PURGE", "DELETE"})


def admin_action(cfg: Config, method: str, query: str) -> tuple[int, str, dict[str, Any] | None]:
    """Purge a route's entries in every worker: `route` (required: a cached route's name), and `key` (one
    URL: its path and allow-listed query, any host and consumer) or `prefix` (every URL starting with it),
    or neither (the whole route). Answered 202: the workers purge as the message reaches them."""
    try:
        q = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=8)
    except ValueError:
        return 400, "query: route=NAME[&key=/path | &prefix=/path]\n", None
    if any(len(v) != 1 for v in q.values()) or set(q) - {"route", "key", "prefix"}:
        return 400, "arguments: route (once), key or prefix (once)\n", None
    route = q.get("route", [None])[0]
    cached = [r.name for r in cfg.routes if r.cache is not None]
    if route not in cached:
        return 400, f"route: one of the cached routes ({', '.join(cached) or 'none'})\n", None
    key, prefix = q.get("key", [None])[0], q.get("prefix", [None])[0]
    if key is not None and prefix is not None:
        return 400, "key or prefix, not both\n", None
    for name, v in (("key", key), ("prefix", prefix)):
        if v is not None and not v.startswith("/"):
            return 400, f"{name}: a path, starting with /\n", None
    msg = {"route": route, "key": key, "prefix": prefix}
    return 202, json.dumps({"purge": msg, "workers": "each purges on receipt"}) + "\n", msg


def _key_url(key: str, pol: Any) -> bytes:
    """A purge key as the store holds URLs: the path, then the allow-listed query parameters sorted."""
    path, _, qs = key.partition("?")
    kept = query_key(b"?" + qs.encode(), frozenset(q.encode() for q in pol.query)) if qs else b""
    return path.encode() + (b"?" + kept if kept else b"")


def control(msg: dict[str, Any], services: dict[str, Any]) -> dict[str, Any]:
    """A worker applies a purge to the route's store."""
    route = msg["route"]
    for gate in services.get("cache_gates", {}).values():
        if gate.route == route:
            key = _key_url(msg["key"], gate.pol) if msg.get("key") else None
            prefix = msg["prefix"].encode() if msg.get("prefix") else None
            n = gate.store.purge(route, key, prefix)
            gate.publish()
            if gate.l2 is not None and services.get("cache_slot") == 0:      # Redis: once per pod
                asyncio.get_running_loop().create_task(_purge_l2(gate.l2, route, key, prefix))
            return {"route": route, "purged": n}
    return {"route": route, "purged": 0}


async def _purge_l2(l2: Shared, route: str, key: bytes | None, prefix: bytes | None) -> None:
    from fastgw.observe.log import log

    try:
        log("cache_shared_purged", route=route, purged=await l2.purge(route, key, prefix))
    except Exception as exc:                       # Redis down: its keys expire with their TTLs
        log("cache_shared_purge_failed", level="warning", route=route, error=str(exc))
