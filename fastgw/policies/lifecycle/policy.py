"""What a route with a lifecycle tells its callers: Deprecation (RFC 9745, `@<epoch>`), Sunset (RFC 8594,
HTTP-date) and Link (rel="deprecation", "sunset", "successor-version") on every response of the route,
added in on_response so the gateway's own answers (401, 429, 5xx, a 304) carry them too; after the sunset
instant, `410 gone` naming the successor (or the request passes, after_sunset = "passthrough"). The 410
comes before authentication: a retired API has nothing left to protect, and a caller whose credentials
went with it still learns why. Requests are counted per route from the deprecation instant on
(fastgw_deprecated_requests_total{route}), so owners can see who still calls.
"""
from __future__ import annotations

import json
import zlib
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import LifecycleGate
from fastgw.config.checks import NAME
from fastgw.policies.lifecycle.config import instant
from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.lifecycle.config import Lifecycle
    from fastgw.process.shm import SharedMemory

# Section "lifecycle": per worker slot, ENTRIES entries of two 64-bit words: [0] crc32(route name) + 1
# (0: unused), [1] deprecated requests. The supervisor sums the slots and names entries from its config.
SECTION = "lifecycle"
ENTRIES = 512
REGION_BYTES = ENTRIES * 2 * 8
FAMILY = "fastgw_deprecated_requests_total"


def _at(text: str) -> int:
    """The epoch seconds of an instant the config check has already accepted (so never None here)."""
    t = instant(text)
    assert t is not None, text
    return t


def header_lines(lc: Lifecycle) -> bytes:
    out = []
    if lc.deprecated is not None:
        out.append(b"Deprecation: @%d\r\n" % _at(lc.deprecated))
    if lc.sunset is not None:
        out.append(b"Sunset: " + formatdate(_at(lc.sunset), usegmt=True).encode() + b"\r\n")
    links = []
    if lc.link is not None:
        if lc.deprecated is not None:
            links.append(f'<{lc.link}>; rel="deprecation"')
        if lc.sunset is not None:
            links.append(f'<{lc.link}>; rel="sunset"')
    if lc.successor is not None:
        links.append(f'<{lc.successor}>; rel="successor-version"')
    if links:
        out.append(b"Link: " + ", ".join(links).encode() + b"\r\n")
    return b"".join(out)


class LifecyclePolicy(LifecycleGate):
    """The request phase is compiled (fastgw._core.gates.LifecycleGate): it adds the lines to every answer
    of the exchange, counts, and answers 410 after the sunset; the route runs no response phase."""

    def __init__(self, lc: Lifecycle, counter: tuple[Any, int] | None) -> None:
        self.lines = header_lines(lc)
        self.counting_from = _at(lc.deprecated) if lc.deprecated is not None else 0
        sun = _at(lc.sunset) if lc.sunset is not None else None
        self.gone_from = sun if sun is not None and lc.after_sunset == "410" else -1
        detail = f"This API was retired at {lc.sunset}."
        if lc.successor is not None:
            detail += f" Its successor is {lc.successor}."
        self.detail = json.dumps(detail)[1:-1].encode()
        if counter is not None:
            self.count_in(*counter)


def _key(route: str) -> int:
    return zlib.crc32(route.encode()) + 1


def counter(words: Any, route: str) -> tuple[Any, int] | None:
    """The word counting `route` in this worker's region (claimed on first use; the worker is its only
    writer), or None when the region is full."""
    key = _key(route)
    for i in range(ENTRIES):
        if words[2 * i] == key or words[2 * i] == 0:
            words[2 * i] = key
            return words, 2 * i + 1
    return None


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> LifecyclePolicy | None:
    if route.lifecycle is None:
        return None
    words = services.get("lifecycle_words")
    return LifecyclePolicy(route.lifecycle, counter(words, route.name) if words is not None else None)


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return [Section(SECTION, workers * REGION_BYTES)]


def _region(shm: SharedMemory, slot: int) -> Any:
    return shm.section(SECTION)[slot * REGION_BYTES:(slot + 1) * REGION_BYTES].cast("Q")


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    if shm is not None and SECTION in shm.layout.sections:
        services["lifecycle_words"] = _region(shm, slot)


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    totals: dict[int, int] = {}
    for slot in range(workers):
        words = _region(shm, slot)
        for i in range(ENTRIES):
            if words[2 * i]:
                totals[words[2 * i]] = totals.get(words[2 * i], 0) + words[2 * i + 1]
    out = [f"# HELP {FAMILY} Requests to a route after its deprecation instant (410s after the sunset included).",
           f"# TYPE {FAMILY} counter"]
    for r in cfg.routes:
        if r.lifecycle is not None and NAME.fullmatch(r.name):
            out.append(f'{FAMILY}{{route="{r.name}"}} {totals.get(_key(r.name), 0)}')
    return out
