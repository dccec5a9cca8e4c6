"""The Idempotency-Key policy's config: routes[].idempotency; its schema and checks (no compiled code).

The records live in the shared store ([redis]) when the config has one: every worker of every pod sees
them. Without [redis] they live in the per-host store (hoststore.py, [idempotency] below): every worker of
one host sees them, so a retry that lands on another worker is still caught, but one that reaches another
pod runs again. That mode serves a single pod; `fastgw check` says so.
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


# [idempotency] bounds: the per-host store lives in memory (/dev/shm) by default.
MAX_RECORDS_CAP = 10_000_000
MAX_BYTES_CAP = 16 * 2**30


class HostStore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[idempotency]: the per-host store of the records, used when there is no [redis]."""

    path: str = "/dev/shm/fastgw-idempotency.db"   # an SQLite file every worker of the host opens
    max_records: int = 100_000             # records kept (locks and stored responses, expired ones included)
    max_bytes: Size = 256 * 2**20          # bytes of stored values


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    idempotency: Idempotency | None = None


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    idempotency: HostStore | None = None


def host_store(cfg: Config) -> HostStore | None:
    """The per-host store's settings when the records live there (no [redis]), else None."""
    if cfg.redis is not None:
        return None
    return cfg.idempotency if cfg.idempotency is not None else HostStore()


def check(cfg: Config, errors: list[str]) -> None:
    hs = cfg.idempotency
    if hs is not None:
        if cfg.redis is not None:
            errors.append("idempotency: the per-host store is used only without [redis] (the records are in "
                          "Redis); remove [idempotency]")
        if not hs.path.startswith("/") or "\0" in hs.path:
            errors.append("idempotency.path: an absolute file path")
        if not 1 <= hs.max_records <= MAX_RECORDS_CAP:
            errors.append(f"idempotency.max_records: between 1 and {MAX_RECORDS_CAP}")
        if not 2**20 <= hs.max_bytes <= MAX_BYTES_CAP:
            errors.append("idempotency.max_bytes: between 1MiB and 16GiB")
    for p, idem, r in route_settings(cfg.routes, "idempotency", lambda r: r.idempotency):
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


def summary(cfg: Config, workers: int) -> list[str]:
    hs = host_store(cfg)
    if hs is None or not any(r.idempotency is not None for r in cfg.routes):
        return []
    return ["", f"idempotency: records in the per-host store {hs.path} (no [redis]): shared by this host's "
            f"workers only, so a retry that reaches another pod runs again; at most {hs.max_records} records, "
            f"{hs.max_bytes} bytes"]
