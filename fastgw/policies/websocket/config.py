"""The WebSocket policy's config: routes[].websocket and [websocket] (timers and connection caps); their
schema, checks and `fastgw check` summary (no compiled code).

A tunnel is a byte relay to an HTTP/1.1 origin (RFC 6455 over HTTP/1.1 Upgrade), so a websocket route's
upstream speaks HTTP/1.1. The Origin allow-list is the route's CORS policy: a browser sends Origin on every
handshake and the same list that lets a site read the API lets it open the socket; without one, any site
could open a socket with its visitors' cookies (cross-site WebSocket hijacking), so it is a warning.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fastgw.config.checks import ConfigWarning
from fastgw.config.schema import Duration

if TYPE_CHECKING:
    from fastgw.config.root import Config


class WebSocket(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[websocket]: what every websocket route's tunnels get. Caps count open tunnels across the pod's
    workers; 0 is no cap."""

    handshake_timeout: Duration = 10.0      # the origin's 101 within this (else 504) [Envoy PR #41075]
    idle_timeout: Duration = 300.0          # no byte either way: close 1001 [Envoy stream_idle_timeout 5 min]
    ping_every: Duration = 0.0              # gateway pings to the client (0: none) [NAT/LB idle 350 s on AWS NLB]
    max_connections: int = 0                # open tunnels per pod; beyond: 503 before the upgrade
    max_per_route: int = 0                  # per route per pod; beyond: 429
    max_per_consumer: int = 0               # per authenticated consumer per pod; beyond: 429
    removed_route_grace: Duration = 30.0    # a reload that removes a route closes its tunnels (1001) after this


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    websocket: bool = False                 # true: Upgrade: websocket opens a tunnel after the route's checks


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    websocket: WebSocket = msgspec.field(default_factory=WebSocket)


def check(cfg: Config, errors: list[str]) -> None:
    ws = cfg.websocket
    for key, cap in (("max_connections", ws.max_connections), ("max_per_route", ws.max_per_route),
                     ("max_per_consumer", ws.max_per_consumer)):
        if cap < 0:
            errors.append(f"websocket.{key}: must be 0 (no cap) or more")
    if ws.ping_every and ws.idle_timeout and ws.ping_every >= ws.idle_timeout:
        errors.append("websocket.ping_every: must be shorter than websocket.idle_timeout (or 0)")
    for i, r in enumerate(cfg.routes):
        if not r.websocket:
            continue
        up = cfg.upstreams.get(r.upstream)
        if r.protocol == "grpc" or (up is not None and up.protocol != "http1"):
            errors.append(f"routes[{i}].websocket: a tunnel needs an HTTP/1.1 upstream "
                          f"(upstream \"{r.upstream}\" has protocol \"{up.protocol if up else '?'}\")")
        if r.cors is None:
            errors.append(ConfigWarning(
                f"routes[{i}].websocket: no cors policy on the route: a handshake from any Origin is "
                "accepted (cross-site WebSocket hijacking); name a [cors.NAME] listing the sites allowed"))


def summary(cfg: Config, workers: int) -> list[str]:
    names = [r.name for r in cfg.routes if r.websocket]
    if not names:
        return []
    return [f"websocket routes: {', '.join(names)} (idle {cfg.websocket.idle_timeout:g}s)"]
