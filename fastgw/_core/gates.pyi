from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastgw._core.buckets import Plan, Table
from fastgw._core.phases import Respond

Rejection = tuple[int, str, bytes | None, bytes | None]
Result = Rejection | Respond | Awaitable[Rejection | Respond | None] | None

INSUFFICIENT_SCOPE: bytes

class Identity:
    consumer: str
    method: str
    plan: str | None
    claims: dict[str, Any] | None
    scopes: frozenset[str]
    roles: frozenset[str]
    headers: list[tuple[bytes, bytes]]
    def __init__(self, consumer: str, method: str, plan: str | None = ..., claims: dict[str, Any] | None = ...,
                 scopes: frozenset[str] = ..., roles: frozenset[str] = ...) -> None: ...

class PolicyExchange:
    """The exchange's part the compiled gates use in C (the worker's Exchange derives from it)."""
    identity: Identity | None
    def header(self, lname: bytes) -> bytes | None: ...
    def add_upstream_lines(self, lines: bytes) -> None: ...
    def add_response_lines(self, lines: bytes) -> None: ...

class Gate:
    has_lines: bool
    slot: int
    nslots: int
    def on_request(self, ex: Any) -> Result: ...
    def state(self, ex: Any) -> Any: ...
    def set_state(self, ex: Any, value: Any) -> None: ...
    def check(self, ex: Any) -> Result: ...

class Chain:
    def __init__(self, pols: Sequence[Gate], finish: Callable[[Any, Awaitable[Rejection | Respond | None], Sequence[Gate]],
                                                               Awaitable[Rejection | Respond | None]]) -> None: ...
    def __call__(self, ex: Any) -> Result: ...

class FailGate:
    table: Any                             # fastgw._core.buckets.Table
    interval: int
    burst: int
    reason: int
    by_xff: bool
    keys: dict[Any, int]
    def key(self, ex: Any) -> int: ...
    def address_key(self, ex: Any) -> int: ...
    def check(self, ex: Any) -> Rejection | None: ...

class AuthGate(Gate):
    ip_rules: bool
    first: int
    key_header: bytes
    key_cache: dict[bytes, Identity]
    issuer: Any
    scopes: frozenset[str]
    scope_challenge: bytes | None
    roles: frozenset[str]
    strip_query: bytes | None
    failures: FailGate | None
    def slow(self, ex: Any) -> Result: ...
    def throttled(self, ex: Any) -> Rejection | None: ...
    def count_failures(self, words: Any, base: int) -> None: ...
    def fail(self, reason: int) -> None: ...
    def admit(self, ex: Any, ident: Identity) -> Rejection | None: ...
    def key_verified(self, raw: bytes) -> None: ...

class Keys:
    def __init__(self, specs: Sequence[Sequence[str]]) -> None: ...
    def of(self, ex: Any, consumer: str | None) -> tuple[int, ...]: ...

class Headers:
    def __init__(self, policy: bytes | None, prefix: Sequence[bytes]) -> None: ...
    def lines(self, tight: int, remaining: int, reset_s: int, degraded: bytes | None) -> bytes: ...

class Counter:
    def __init__(self, words: Any, base: int) -> None: ...
    def count(self, decision: int) -> None: ...

class PlanGate:
    rt: Any
    bp: Plan | None
    keys: Keys
    headers: Headers
    has_quota: bool
    has_conc: bool
    name: str
    lease: Table | None
    lease_fast: bool
    lease_seed: int
    lease_state: dict[int, list[float]]
    inflight: dict[int, Any]
    client: Any
    def __init__(self, rt: Any, bp: Plan | None, keys: Keys, headers: Headers, has_quota: bool, has_conc: bool,
                 limits: Sequence[Any]) -> None: ...

class RateGate(Gate):
    default: PlanGate | None
    by_name: dict[str, PlanGate]
    counters: dict[str, Counter]
    def shared(self, ex: Any, rt: Any, keys: tuple[int, ...]) -> Result: ...
    def shadow(self, ex: Any, rt: Any) -> None: ...
    def prefetch(self, rt: Any, tag: int, keys: tuple[int, ...], mono: int) -> None: ...
    def spend_lease(self, ex: Any, pg: PlanGate, tag: int, keys: tuple[int, ...]) -> bool: ...
    def lease_headers(self, ex: Any, pg: PlanGate, st: list[float], mono: int) -> None: ...
    def count(self, plan_name: str, decision: int) -> None: ...
    def local(self, ex: Any, pg: PlanGate, bp: Plan, keys: tuple[int, ...], degraded: bytes | None) -> Rejection | None: ...
    def reject(self, ex: Any, pg: PlanGate, idx: int, reset_s: int, retry_s: int, degraded: bytes | None) -> Rejection: ...

CACHE_HIT: object

class CacheEntry:
    respond: Respond
    stored: float
    age: float
    lifetime: float
    swr: float
    sie: float
    etag: bytes | None
    last_modified: bytes | None
    vary: tuple[bytes, ...]
    size: int
    key: Any
    revalidating: bool
    used: bool
    def current_age(self, now: float) -> float: ...
    def ttl(self, now: float) -> float: ...

class CacheGate(Gate):
    route: str
    entries: dict[Any, Any]            # the store's (fastgw/policies/cache/store.py)
    vary: dict[Any, Any]
    allowed: frozenset[bytes] | None
    query_key: Callable[[bytes, frozenset[bytes]], bytes]
    normal: Callable[[bytes | None], bytes | None]
    per_consumer: bool
    words: Any
    hit_word: int
    def on_response(self, ex: Any) -> Respond | None: ...
    def on_log(self, ex: Any) -> None: ...

def shm_cas(words: Any, i: int, expect: int, value: int) -> bool: ...
def shm_load(words: Any, i: int) -> int: ...
def shm_store(words: Any, i: int, value: int) -> None: ...

class CorsGate(Gate):
    granted: tuple[tuple[bytes, bytes], ...]
    more: bool
    tail: bytes
    def allowed(self, origin: bytes) -> bool: ...
    def preflight(self, granted: bool) -> Respond: ...

class LifecycleGate(Gate):
    lines: bytes
    counting_from: int
    gone_from: int
    detail: bytes
    def count_in(self, words: Any, at: int) -> None: ...
