"""A route's phases: its policies, built once per config load by each registered policy's `build`
(fastgw/policies/__init__.py), in the registry's order, compiled into one entry per phase on the route
(RouteRT): `gate` (on_request: the chain, the first answer wins), and the tuples `on_upstream_request`,
`on_response`, `on_response_body`, `on_log` of the methods of the policies that define them. A phase no
policy of the route defines is None, so a route pays only for the phases its policies use (a route
without policies: nothing).

``services`` holds the worker's long-lived resources (shared memory, store clients, "metrics_words": the
worker's metrics region), or is empty when compiling for ``fastgw check``; ``mslot`` is the route's
metrics slot (-1: none).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Chain, Gate
from fastgw._core.phases import Respond
from fastgw.policies import POLICIES, runtime
from fastgw.policies.contract import PHASES, Rejection, Result

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route

# A policy derives from fastgw._core.gates.Gate (its `on_request` is called from C by the Chain).
Policy = Gate


def build_route_policies(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> list[Policy]:
    out = []
    for reg in POLICIES:
        p = runtime(reg).build(cfg, route, services, mslot)
        if p is not None:
            out.append(p)
    return out


def method(policy: Policy, name: str) -> Callable[[Any], Any] | None:
    """The policy's phase method `name`, bound, when its class defines it; else None (Gate's own
    on_request, which passes, does not count)."""
    for klass in type(policy).__mro__:
        if name in klass.__dict__:
            return None if klass is Gate else klass.__dict__[name].__get__(policy, type(policy))
    return None


def phase(policies: Sequence[Policy], name: str) -> tuple[Callable[[Any], Any], ...] | None:
    """The methods `name` of the policies that define it, in order; None when none does."""
    return tuple(m for m in (method(p, name) for p in policies) if m is not None) or None


def install_phases(rt: Any, policies: Sequence[Policy]) -> None:
    """Set the route's phase entries (RouteRT: gate, on_upstream_request, on_response, on_response_body,
    on_log) from its
    policies, in their order. With an on_response phase, the route's response_headers.add lines move into
    it (phase_resp_add), so the policies see and may change them."""
    for i, p in enumerate(policies):        # each policy's state slot (Gate.state): its index here
        p.slot, p.nslots = i, len(policies)
    rt.gate = chain([p for p in policies if method(p, "on_request") is not None])
    rt.line_gates = tuple(p for p in policies if p.has_lines) or None
    rt.on_upstream_request, rt.on_response, rt.on_response_body, rt.on_log = (phase(policies, name)
                                                                              for name in PHASES[1:])
    if rt.on_response is not None and rt.resp_add:
        rt.phase_resp_add, rt.resp_add = rt.resp_add, b""


def chain(policies: Sequence[Policy]) -> Callable[[Any], Result] | None:
    """The on_request phase of the route: the policies in order; the first rejection or Respond wins.
    Synchronous until a policy returns an awaitable; from there the rest of the chain runs in that
    coroutine (`_finish`). Policies derive from fastgw._core.gates.Gate, so the compiled Chain calls them
    from C."""
    if not policies:
        return None
    if len(policies) == 1:
        return policies[0].on_request
    return Chain(policies, _finish)


async def _finish(ex: Any, pending: Awaitable[Rejection | Respond | None],
                  rest: Sequence[Policy]) -> Rejection | Respond | None:
    r = await pending
    if r is not None:
        return r
    for p in rest:
        res = p.on_request(ex)
        if res is None:
            continue
        if type(res) is not tuple and type(res) is not Respond:
            res = await res  # type: ignore[misc]
        if res is not None:
            return res  # type: ignore[return-value]
    return None
