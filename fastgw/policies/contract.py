"""What a route policy answers and provides: the types every policy, the chain and the registry share
(declared once here).

A policy's ``check(exchange)`` returns None (go on), a `Rejection` ``(status, slug, detail bytes | None,
extra header lines bytes | None)``, or an awaitable resolving to one of those; the exchange's interface is
in fastgw/_core/exchange.pyx ("policy interface"). A policy derives from fastgw._core.gates.Gate, so the
compiled Chain calls its `check` from C.

A policy's runtime module (the registry names it: fastgw/policies/__init__.py) provides the hooks of
`Runtime`; the gateway's processes call them through the registry, never by the policy's name.
"""
from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from fastgw._core.gates import Gate
    from fastgw.process.shm import Section, SharedMemory

Rejection = tuple[int, str, bytes | None, bytes | None]
Result = Rejection | Awaitable[Rejection | None] | None


class RequestHeaders(NamedTuple):
    """Request headers a policy's config gives a role on the wire (fastgw/headers.py, compile.header_table):
    `identity` the policy sets from verified credentials (the client's copies are dropped); `credentials`
    it reads a credential from (forwarded once, never twice); `strip` the upstream must not receive."""

    identity: list[str]
    credentials: list[str]
    strip: list[str]


class Runtime(Protocol):
    """The hooks of a policy's runtime module (it may import compiled code; its config module may not)."""

    def build(self, cfg: Any, route: Any, services: dict[str, Any], mslot: int) -> Gate | None:
        """The route's policy, or None when the route does not use it (then it pays nothing).
        `services` holds the worker's long-lived resources (empty when compiling for `fastgw check`);
        `mslot` is the route's metrics slot (-1: none)."""

    def shm_sections(self, cfg: Any, workers: int) -> list[Section]:
        """Shared-memory sections the policy owns (created and formatted by the supervisor)."""

    def attach(self, shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
        """Worker side: put the policy's long-lived resources (its sections mapped, ...) in `services`."""

    def metrics(self, shm: SharedMemory, workers: int, live: list[int], cfg: Any) -> list[str]:
        """The policy's Prometheus families (text format lines), at scrape time; `live` are the slots of
        the workers running now (gauges come from them only)."""
