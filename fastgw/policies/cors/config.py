"""The CORS policy's config: [cors.NAME] and routes[].cors; their schema and checks (no compiled code).

An origin is matched exactly ("https://app.bank.example"), by an anchored host pattern whose `*` stands for
one or more whole DNS labels ("https://*.partners.bank.example": scheme and port fixed, never a raw regex,
so a pattern cannot be widened by an unescaped dot), as "null" only when listed (sandboxed frames, file://
pages send it, and anyone can forge it), or by "*" (any origin, never with credentials: the Fetch standard
refuses `Access-Control-Allow-Origin: *` with credentials, and echoing any origin instead would hand every
site the users' cookies, as Kong's `*` + credentials does).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from fastgw.config.checks import NAME, TOKEN, check_reference
from fastgw.config.schema import Duration, keypath

if TYPE_CHECKING:
    from fastgw.config.root import Config

# Browsers cap a preflight's cache: Chromium at 7200 s (Firefox 86400 s); a longer max_age is only a lie.
MAX_AGE_CAP = 7200.0
_ORIGIN = re.compile(r"(https?)://(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*)(:[0-9]{1,5})?")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")


class CorsPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[cors.NAME]: who may call a route from a browser. See docs/api-products.md."""

    origins: list[str]
    methods: list[str] = msgspec.field(default_factory=lambda: ["GET", "HEAD", "POST"])
    headers: list[str] = msgspec.field(default_factory=list)   # request headers a page may send
    expose: list[str] = msgspec.field(default_factory=list)    # response headers beyond the default ones
    credentials: bool = False
    max_age: Duration = 600.0


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cors: dict[str, CorsPolicy] = msgspec.field(default_factory=dict)


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    cors: str | None = None                   # a [cors.NAME] policy


def origin_error(origin: str) -> str | None:
    """Why `origin` is not a valid entry of `origins` (None: it is)."""
    if origin in ("*", "null"):
        return None
    if origin != origin.lower():
        return "an origin is lowercase (browsers send it so)"
    if origin.endswith("/") or _ORIGIN.fullmatch(origin) is None:
        return ("not an origin: scheme://host[:port], exactly, or with '*.' before the host "
                "(one or more labels), \"null\" or \"*\"")
    return None


def check(cfg: Config, errors: list[str]) -> None:
    for name, pol in cfg.cors.items():
        p = keypath("cors", name)
        if not NAME.fullmatch(name):
            errors.append(f"{p}: invalid name")
        if not pol.origins:
            errors.append(f"{p}.origins: at least one origin")
        for i, o in enumerate(pol.origins):
            why = origin_error(o)
            if why:
                errors.append(f"{p}.origins[{i}]: {o!r}: {why}")
        if pol.credentials and "*" in pol.origins:
            errors.append(f"{p}.credentials: \"*\" in origins with credentials would let every site read "
                          "its users' answers; list the origins")
        for i, m in enumerate(pol.methods):
            if not _METHOD.fullmatch(m):
                errors.append(f"{p}.methods[{i}]: {m!r}: an uppercase method token")
        for key, names in (("headers", pol.headers), ("expose", pol.expose)):
            for i, h in enumerate(names):
                if not TOKEN.fullmatch(h):
                    errors.append(f"{p}.{key}[{i}]: {h!r}: not a header name")
        if not 0 <= pol.max_age <= MAX_AGE_CAP:
            errors.append(f"{p}.max_age: between 0s and {int(MAX_AGE_CAP)}s (browsers cap it there)")
    for i, r in enumerate(cfg.routes):
        if r.cors is None:
            continue
        check_reference(r.cors, cfg.cors, f"routes[{i}].cors", "cors", errors)
        if r.methods is not None and "OPTIONS" not in r.methods:
            errors.append(f"routes[{i}].methods: a CORS route answers preflights: add \"OPTIONS\"")
