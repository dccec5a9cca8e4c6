"""What a route policy is: its phases, what each may return, and what it provides (the types every
policy, the chain and the registry share, declared once here).

A policy is an object deriving from fastgw._core.gates.Gate. It implements a phase by defining the method
of that name; the route runs each phase over the policies that define it, in the registry's order
(fastgw/policies/__init__.py), and a phase none of them defines costs the route nothing (compiled per
route at config load: fastgw/policies/chain.py). The exchange (`ex`) a phase receives is the policy
interface of fastgw/_core/exchange.pyx ("policy interface").

Request state, carried from on_request to on_log: `self.state(ex)` / `self.set_state(ex, value)` (Gate) keep
this policy's own (None until set): each policy of a route has its slot, so two of them (the cache and the
Idempotency-Key) never overwrite each other's; a route whose policies keep none pays nothing (the list is
made on first use). `ex.ctx` is the older single slot per request, still there for a policy that is alone
on its routes.

  on_request(ex)           before any upstream work. Returns None (go on), a `Rejection` (a problem+json
                           answer), a `Respond` (fastgw._core.phases.Respond(status, headers, body): the
                           policy answers itself; the upstream is never contacted), or an awaitable of one of
                           those (only to wait for I/O: Redis, a JWKS fetch). The first answer wins: later
                           policies do not run. May read the request, add upstream and response headers
                           (ex.add_upstream_header, ex.add_response_header), set ex.identity and ex.ctx,
                           register ex.on_complete callbacks. `await ex.read_body(limit)` gives the
                           whole request body (or None past `limit`: answer 413) before going on; it is
                           still sent upstream as it came.
  on_upstream_request(ex)  the request passed on_request and goes upstream now: add or remove request
                           headers (ex.add_upstream_header, ex.remove_upstream_header). Returns None;
                           never awaits.
  on_response(ex)          a response head is in hand and nothing of it was sent: read ex.response_status,
                           ex.response_headers (the (name, value) pairs, a tuple), ex.response_header;
                           edit with set_response_header / remove_response_header / add_response_header
                           (checked). Returns None, or a `Respond` that replaces the response (the later
                           policies see the replacement). Never awaits. Framing, hop-by-hop fields and
                           X-Request-ID are the gateway's: not in the list, refused by the setters. The
                           header list is built only when a policy reads or edits it (adding is cheap).
                           ex.response_lines: the lines the response came with, before any policy's.
  on_response_body(ex, chunk, end)
                           each chunk of the upstream's response body (bytes), after it went to the client,
                           then once with (b"", True) at its end; a response cut before its end never gets
                           the end (on_log still runs); never for an answer the gateway makes itself (a problem, a Respond: its
                           body is known in on_response). Read only: the chunk is already sent. Returns None;
                           never awaits; a policy that raises is reported and the response goes on. A route without it pays one pointer check per chunk.
  on_log(ex)               the exchange ended, whatever the outcome (with the on_complete callbacks):
                           ex.response_status is what the client got (499: it went away first).

What runs for an answer the gateway makes itself:
  - a problem (401/403/429 from a policy, 413, 408, 502/503/504 from the upstream, 500): the route's
    on_response over the problem's extra header lines (the problem body stays; a Respond replaces it),
    then on_log. Before a route is chosen (400, 404, 405, 431...) the runtime's unrouted phases run
    (Runtime.unrouted_response / unrouted_log; no registered policy fills them yet).
  - a Respond from on_request: on_response (every policy of the phase, the answering one too), on_log.
  - the response phase runs at most once per exchange: an answer made after it (a Respond from
    on_response, the 500 after a policy raised) goes out as it is.
  - a response cut after its head was sent: on_log only.
A policy that raises is reported on stderr and the client gets a 500 problem (on_log: nothing changes).

Compiled response lines: a policy deriving from a compiled gate that sets `has_lines` (fastgw/_core/gates.pyx:
CORS, the lifecycle) gives the response lines a request gets, known from its head alone, in C when the
route is chosen; they go on every answer of the exchange (a 413 before on_request too, and the 500 after
a policy raised: it drops what the policies added, not these), without any response phase. Its request
phase, when the head alone decides it (a CORS preflight, the lifecycle's counter and 410), is its
`head_request`, also in C and before every on_request (these policies come first in the registry); such a
policy defines no on_request, so a route with only them runs no request phase call.

A policy's runtime module (the registry names it) provides the hooks of `Runtime`; the gateway's processes
call them through the registry, never by the policy's name.
"""
from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Union

if TYPE_CHECKING:
    from fastgw._core.gates import Gate
    from fastgw._core.phases import Respond
    from fastgw.process.shm import Section, SharedMemory

# The phases, in the order a request meets them.
PHASES = ("on_request", "on_upstream_request", "on_response", "on_response_body", "on_log")

# A rejection: (status, problem slug, detail bytes | None, extra header lines bytes | None).
Rejection = tuple[int, str, bytes | None, bytes | None]
Reject = Rejection
# What on_request returns (Respond is compiled code: named here, never imported, so `fastgw check` runs
# before a build).
Result = Union[Rejection, "Respond", Awaitable[Union[Rejection, "Respond", None]], None]


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


class AdminRuntime(Protocol):
    """The hooks of a policy that registers an admin path (Registration.admin)."""

    methods: frozenset[str]

    def admin_action(self, cfg: Any, method: str, query: str) -> tuple[int, str, dict[str, Any] | None]:
        """Supervisor side: (status, body text, message for every worker or None) for a request to the
        policy's admin path; a bad argument is a 400 with the reason, no message."""

    def control(self, msg: dict[str, Any], services: dict[str, Any]) -> dict[str, Any]:
        """Worker side: apply the message; the result is logged by the worker."""
