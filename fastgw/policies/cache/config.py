"""The response cache's config: [cache.NAME] and routes[].cache; their schema, checks and the `fastgw
check` summary (each cached route's key definition). No compiled code.

What may be stored and for how long is the origin's to say (RFC 9111: Cache-Control, Expires, Vary); the
config only bounds it: memory per worker, the largest object, which query parameters make two URLs
different, whether authenticated answers are kept per consumer, and the longest stale windows a response
may ask for (RFC 5861). There is no heuristic freshness and no TTL override: a response without explicit
freshness is not stored (docs/caching.md).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from fastgw.config.checks import NAME, check_reference
from fastgw.config.schema import Duration, Size, keypath

if TYPE_CHECKING:
    from fastgw.config.root import Config

# A query parameter name as the key reads it (before percent-decoding; compared exactly).
_PARAM = re.compile(r"[A-Za-z0-9._~\-\[\]]+")
# Bounds: an object is at most a sixteenth of the memory it lives in (one object must never empty the
# cache), and the waits and windows have ceilings that keep an entry's life explainable.
MAX_STALE = 86400.0
MAX_LOCK = 60.0


class CachePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[cache.NAME]: where a route's cacheable answers are kept and the bounds on them. See docs/caching.md."""

    max_memory: Size = 64 * 1024 * 1024        # per worker: header and body bytes of the stored answers
    max_object: Size = 1024 * 1024             # larger answers pass through, never stored
    query: list[str] = msgspec.field(default_factory=list)   # the query parameters that are part of the key
    per_consumer: bool = False                 # the consumer is part of the key (authenticated routes)
    stale_while_revalidate: Duration = 0.0     # the longest stale-while-revalidate a response may ask for
    stale_if_error: Duration = 0.0             # the longest stale-if-error a response may ask for
    lock_timeout: Duration = 5.0               # how long a miss waits for the same key's request in flight
    shared: bool = False                       # Redis as a second level for every instance ([redis])


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cache: dict[str, CachePolicy] = msgspec.field(default_factory=dict)


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cache: str | None = None                   # a [cache.NAME] policy


def check(cfg: Config, errors: list[str]) -> None:
    for name, pol in cfg.cache.items():
        p = keypath("cache", name)
        if not NAME.fullmatch(name):
            errors.append(f"{p}: invalid name")
        if pol.max_memory < 64 * 1024:
            errors.append(f"{p}.max_memory: at least 64KiB")
        if pol.max_object < 1 or pol.max_object * 16 > pol.max_memory:
            errors.append(f"{p}.max_object: between 1 byte and a sixteenth of max_memory "
                          f"({pol.max_memory // 16} bytes), so one object cannot empty the cache")
        for i, q in enumerate(pol.query):
            if not _PARAM.fullmatch(q):
                errors.append(f"{p}.query[{i}]: {q!r}: a query parameter name (letters, digits, ._~-[])")
        if len(set(pol.query)) != len(pol.query):
            errors.append(f"{p}.query: a parameter is listed twice")
        for key, v in (("stale_while_revalidate", pol.stale_while_revalidate),
                       ("stale_if_error", pol.stale_if_error)):
            if not 0 <= v <= MAX_STALE:
                errors.append(f"{p}.{key}: between 0s and {int(MAX_STALE)}s")
        if not 0 < pol.lock_timeout <= MAX_LOCK:
            errors.append(f"{p}.lock_timeout: more than 0s, at most {int(MAX_LOCK)}s")
        if pol.shared and cfg.redis is None:
            errors.append(f"{p}.shared: the Redis second level needs a [redis] section")
    for i, r in enumerate(cfg.routes):
        if r.cache is None:
            continue
        if not check_reference(r.cache, cfg.cache, f"routes[{i}].cache", "cache", errors):
            continue
        if r.methods is not None and "GET" not in r.methods:
            errors.append(f"routes[{i}].methods: a cached route serves GET (and HEAD from its entries): add \"GET\"")


def key_definition(pol: CachePolicy) -> str:
    """The key of a route's entries, as `fastgw check` shows it (docs/caching.md "The key")."""
    parts = ["method", "host", "path"]
    parts.append(f"query[{', '.join(sorted(pol.query))}]" if pol.query else "no query")
    parts.append("Vary values")
    if pol.per_consumer:
        parts.append("consumer")
    return " + ".join(parts) + ("; second level in Redis" if pol.shared else "")


def summary(cfg: Config, workers: int) -> list[str]:
    routes = [r for r in cfg.routes if r.cache is not None and r.cache in cfg.cache]
    if not routes:
        return []
    out = ["", f"cached routes ({len(routes)}):"]
    for r in routes:
        pol = cfg.cache[r.cache]                                    # type: ignore[index]
        out.append(f"  {r.name}: cache {r.cache}, key = {key_definition(pol)}; "
                   f"max_memory {pol.max_memory} bytes per worker x {workers}, max_object {pol.max_object}")
    return out
