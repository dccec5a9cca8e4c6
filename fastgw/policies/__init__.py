"""Route policies: what runs between routing and the upstream (DESIGN.md §3, principle 3).

A policy is an object with ``check(exchange)`` returning None (go on), a rejection tuple
``(status, slug, detail bytes | None, extra header lines bytes | None)``, or an awaitable resolving to one
of those; the exchange's interface is in fastgw/_core/proxy.pyx ("policy interface"). Policies are
built once per config load by the builders in STAGES, in stage order (auth, then quota, then transform),
and chained into the route's single ``gate`` callable. A route without policies has ``gate = None`` and
pays nothing.

A stage module exposes ``build(cfg, route, services, mslot) -> Policy | None``; ``services`` holds the
worker's long-lived resources (shared memory, store clients, "metrics_words": the worker's metrics region),
or is empty when compiling for ``fastgw check``; ``mslot`` is the route's metrics slot (-1: none).
"""
from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastgw._core.gates import Chain, Gate
from fastgw.config import Config, Route

Rejection = tuple[int, str, bytes | None, bytes | None]
Result = Rejection | Awaitable[Rejection | None] | None

# Stage modules, in the order their policies run on a route.
STAGES: tuple[str, ...] = ("fastgw.policies.auth", "fastgw.policies.ratelimit")


# A stage policy derives from fastgw._core.gates.Gate (its `check` is called from C by the Chain).
Policy = Gate


def build_route_policies(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> list[Policy]:
    out = []
    for name in STAGES:
        p = importlib.import_module(name).build(cfg, route, services, mslot)
        if p is not None:
            out.append(p)
    return out


def chain(policies: Sequence[Policy]) -> Callable[[Any], Result] | None:
    """One gate for the route: the policies in order; the first rejection wins. Synchronous until a
    policy returns an awaitable; from there the rest of the chain runs in that coroutine (`_finish`).
    Stage policies derive from fastgw._core.gates.Gate, so the compiled Chain calls them from C."""
    if not policies:
        return None
    if len(policies) == 1:
        return policies[0].check
    return Chain(policies, _finish)


async def _finish(ex: Any, pending: Awaitable[Rejection | None], rest: Sequence[Policy]) -> Rejection | None:
    r = await pending
    if r is not None:
        return r
    for p in rest:
        res = p.check(ex)
        if res is None:
            continue
        if type(res) is not tuple:
            res = await res  # type: ignore[misc]
        if res is not None:
            return res  # type: ignore[return-value]
    return None
