"""The Idempotency-Key policy's config: routes[].idempotency; its schema and checks (no compiled code).

The records live in the shared store ([redis]): a record that only one worker or one pod could see would
let a retry that lands elsewhere run twice, the one thing the policy exists to prevent. So a route with
`idempotency` needs [redis] (a per-host store in shared memory is not built).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from fastgw.config.checks import TOKEN, route_settings
from fastgw.config.schema import Duration, Size

if TYPE_CHECKING:
    from fastgw.config.root import Config

# A stored response body larger than this is never kept, whatever max_body says: a record is one Redis
# string read whole on every replay.
MAX_BODY_CAP = 16 * 2**20


class Idempotency(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """routes[].idempotency: requests with these methods carrying an Idempotency-Key run at most once."""

    methods: list[str] = msgspec.field(default_factory=lambda: ["POST", "PATCH"])
    required: bool = False                 # a request of those methods without the header: 400
    ttl: Duration = 86400.0                # how long a completed request's response is replayed
    lock_ttl: Duration = 60.0              # how long a request in flight (or of unknown outcome) holds its key
    max_body: Size = 2**20                 # request bodies larger: 413; response bodies larger: not replayed
    on_store_error: Literal["closed", "open"] = "closed"


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    idempotency: Idempotency | None = None


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """No top-level keys (the records use [redis])."""


def check(cfg: Config, errors: list[str]) -> None:
    for p, idem, r in route_settings(cfg.routes, "idempotency", lambda r: r.idempotency):
        if cfg.redis is None:
            errors.append(f"{p}: needs [redis]: the records must be seen by every worker and every pod, or a "
                          "retry that reaches another one runs twice")
        if not idem.methods:
            errors.append(f"{p}.methods: give at least one method")
        for m in idem.methods:
            if not TOKEN.fullmatch(m) or m != m.upper():
                errors.append(f"{p}.methods: {m!r}: an HTTP method in upper case")
            elif m in ("GET", "HEAD", "OPTIONS", "TRACE"):
                errors.append(f"{p}.methods: {m}: a safe method needs no Idempotency-Key (RFC 9110 §9.2.1)")
        if r.methods and not set(idem.methods) & {m.upper() for m in r.methods}:
            errors.append(f"{p}.methods: none of them is among the route's methods")
        if idem.lock_ttl < 1.0:
            errors.append(f"{p}.lock_ttl: at least 1s (a request in flight must keep its key)")
        if idem.ttl < idem.lock_ttl:
            errors.append(f"{p}.ttl: shorter than lock_ttl")
        if not 0 < idem.max_body <= MAX_BODY_CAP:
            errors.append(f"{p}.max_body: between 1 byte and 16MiB")
