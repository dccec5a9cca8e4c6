"""The lifecycle policy's config: routes[].lifecycle; its schema, checks and `fastgw check` summary (no
compiled code).

Instants are RFC 3339 in UTC with a `Z` ("2027-03-15T00:00:00Z"): an offset is refused rather than
converted, so what the file says is what clients are told (Sunset is an HTTP-date, which is always GMT).
RFC 9745 §4: a Sunset is never earlier than the Deprecation. A sunset needs a link (RFC 8594 rel="sunset"):
a date alone tells a caller that something ends, not what to do about it.
"""
from __future__ import annotations

import re
import time
from calendar import timegm
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from fastgw.config.root import Config

_UTC = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z")
# `fastgw check` lists the routes whose sunset is closer than this.
SOON = 30 * 86400


class Lifecycle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """routes[].lifecycle: when the route was (or will be) deprecated and when it goes away."""

    deprecated: str | None = None       # RFC 3339 UTC instant: Deprecation: @<epoch> (RFC 9745)
    sunset: str | None = None           # RFC 3339 UTC instant: Sunset: <HTTP-date> (RFC 8594)
    link: str | None = None             # migration docs: Link rel="deprecation" and rel="sunset"
    successor: str | None = None        # the replacement: Link rel="successor-version", named in the 410
    after_sunset: Literal["410", "passthrough"] = "410"


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    lifecycle: Lifecycle | None = None


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """No top-level keys."""


def instant(text: str) -> int | None:
    """Seconds since the epoch of an RFC 3339 UTC instant ending in Z, or None when it is not one."""
    m = _UTC.fullmatch(text)
    if m is None:
        return None
    try:
        return timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None


def _checked_instant(text: str | None, path: str, errors: list[str]) -> int | None:
    at = None if text is None else instant(text)
    if text is not None and at is None:
        errors.append(f"{path}: {text!r}: an RFC 3339 instant in UTC, ending in Z (\"2027-03-15T00:00:00Z\")")
    return at


def check(cfg: Config, errors: list[str]) -> None:
    for i, r in enumerate(cfg.routes):
        lc = r.lifecycle
        if lc is None:
            continue
        p = f"routes[{i}].lifecycle"
        dep, sun = (_checked_instant(text, f"{p}.{key}", errors)
                    for key, text in (("deprecated", lc.deprecated), ("sunset", lc.sunset)))
        if lc.deprecated is None and lc.sunset is None:
            errors.append(f"{p}: give deprecated, sunset or both")
        if dep is not None and sun is not None and sun < dep:
            errors.append(f"{p}.sunset: before deprecated (RFC 9745: a sunset never precedes the deprecation)")
        if lc.sunset is not None and lc.link is None:
            errors.append(f"{p}.link: a sunset needs a link telling callers how to migrate")
        for key, v in (("link", lc.link), ("successor", lc.successor)):
            if v is not None and (not v or any(c in v for c in '<>" \r\n\0')):
                errors.append(f"{p}.{key}: {v!r}: a URI reference without spaces, quotes or angle brackets")


def summary(cfg: Config, workers: int) -> list[str]:
    """Routes whose sunset is within 30 days (or past)."""
    now = time.time()
    out = []
    for r in cfg.routes:
        if r.lifecycle is not None and r.lifecycle.sunset is not None:
            sun = instant(r.lifecycle.sunset)
            if sun is not None and sun - now < SOON:
                state = "sunset passed" if sun <= now else f"sunsets in {int((sun - now) // 86400)} days"
                out.append(f"  route {r.name}: {state} ({r.lifecycle.sunset}; after it: {r.lifecycle.after_sunset})")
    return (["lifecycle: routes sunsetting within 30 days:"] + out) if out else []
