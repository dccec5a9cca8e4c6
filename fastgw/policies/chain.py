"""A route's gate: its policies, built once per config load by each registered policy's `build`
(fastgw/policies/__init__.py), chained in the registry's order; the first rejection wins. A route without
policies has ``gate = None`` and pays nothing.

``services`` holds the worker's long-lived resources (shared memory, store clients, "metrics_words": the
worker's metrics region), or is empty when compiling for ``fastgw check``; ``mslot`` is the route's
metrics slot (-1: none).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Chain, Gate
from fastgw.policies import POLICIES, runtime
from fastgw.policies.contract import Rejection, Result

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route

# A stage policy derives from fastgw._core.gates.Gate (its `check` is called from C by the Chain).
Policy = Gate


def build_route_policies(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> list[Policy]:
    out = []
    for reg in POLICIES:
        p = runtime(reg).build(cfg, route, services, mslot)
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
