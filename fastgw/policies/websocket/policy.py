"""The WebSocket handshake on a route with `websocket = true`, and the session of the tunnel it opens.

The handshake is a request first: the route's earlier policies (CORS, lifecycle, authentication, the rate
limits: the upgrade counts as one request) have passed when this policy runs, last. It checks what makes
the request a valid WebSocket opening handshake (RFC 6455 4.2.1: GET, no body, Sec-WebSocket-Version 13,
a key of 16 bytes in base64), the Origin against the route's CORS origins, and the caps on open tunnels
(per pod 503, per route and per consumer 429), before anything is sent upstream. It then asks the
upstream for the upgrade; only the origin's 101 opens the tunnel (fastgw/_core/tunnel.pyx), and any other
answer is relayed as a normal response. A request without Upgrade on the route is a plain request.

The session carries what the tunnel needs (idle timeout, pings, the credential's expiry, the grace of a
removed route) and counts the tunnel in shared memory until it ends (fastgw/policies/websocket/counts.py).
"""
from __future__ import annotations

import binascii
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Gate
from fastgw.policies.cors.policy import Cors
from fastgw.policies.websocket import counts
from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.contract import Rejection
    from fastgw.process.shm import SharedMemory

UPGRADE_LINES = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
FAMILY_OPEN = "fastgw_websocket_connections"
FAMILY_CLOSES = "fastgw_websocket_closes_total"
FAMILY_BYTES = "fastgw_websocket_bytes_total"
FAMILY_DURATION = "fastgw_websocket_duration_seconds"


def key_ok(key: bytes | None) -> bool:
    """RFC 6455 4.1: Sec-WebSocket-Key is 16 random bytes in base64 (24 characters)."""
    if key is None or len(key.strip()) != 24:
        return False
    try:
        return len(binascii.a2b_base64(key.strip())) == 16
    except binascii.Error:
        return False


class Session:
    """One tunnel's settings (read by the tunnel at the 101) and its place in the counts."""

    __slots__ = ("route", "idle", "ping", "grace", "expires", "words", "keys", "held", "handshake")

    def __init__(self, route: str, ws: Any, expires: float, words: Any, keys: tuple[int, ...],
                 upstream_timeout: float) -> None:
        self.route = route
        self.handshake = min(ws.handshake_timeout, upstream_timeout)     # the wait for the origin's 101
        self.idle = ws.idle_timeout
        self.ping = ws.ping_every
        self.grace = ws.removed_route_grace
        self.expires = expires
        self.words = words
        self.keys = keys
        self.held = True

    def handshake_done(self, ex: Any) -> None:
        """The handshake's exchange ended: without a 101 no tunnel holds the place it was counted in."""
        if ex.response_status != 101:
            self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            if self.words is not None:
                counts.add_open(self.words, self.keys, -1)

    def closed(self, secs: float, up: int, down: int, code: int) -> None:
        """The tunnel ended (fastgw/_core/tunnel.pyx)."""
        self.release()
        if self.words is not None:
            counts.closed(self.words, self.keys[0], secs, up, down, code)


class WebSocketPolicy(Gate):
    opens_tunnels = True                       # compile.py: the route is in Runtime.tunnel_routes

    def __init__(self, route: str, ws: Any, cors: Cors | None, regions: list[Any] | None,
                 words: Any, upstream_timeout: float) -> None:
        self.route = route
        self.upstream_timeout = upstream_timeout
        self.ws = ws
        self.cors = cors
        self.regions = regions or []
        self.words = words
        self.route_key = counts.key("route", route)

    def on_request(self, ex: Any) -> Rejection | None:
        if ex.upgrade != b"websocket":
            return None                        # a plain request (another Upgrade is dropped, as anywhere)
        if ex.method != b"GET" or ex.with_body:
            return (400, "bad-request", b"a WebSocket handshake is a GET without a body", None)
        version = ex.header(b"sec-websocket-version")
        if version is None or version.strip() != b"13":
            return (426, "websocket-version", None, b"Sec-WebSocket-Version: 13\r\n")
        if not key_ok(ex.header(b"sec-websocket-key")):
            return (400, "bad-request", b"Sec-WebSocket-Key must be 16 bytes in base64", None)
        origin = ex.header(b"origin")
        if origin is not None and self.cors is not None and not self.cors.allowed(origin):
            return (403, "websocket-origin", None, None)
        ws = self.ws
        if ex.draining:
            return (503, "websocket-unavailable", b"the gateway is shutting down", b"Retry-After: 1\r\n")
        if ws.max_connections and counts.open_count(self.regions, counts.POD) >= ws.max_connections:
            return (503, "websocket-unavailable", None, b"Retry-After: 1\r\n")
        if ws.max_per_route and counts.open_count(self.regions, self.route_key) >= ws.max_per_route:
            return (429, "websocket-limit", b"the route's WebSocket connections are at their cap", None)
        ident = ex.identity
        keys: tuple[int, ...] = (self.route_key, counts.POD)
        if ident is not None and ident.consumer:
            ck = counts.key("consumer", ident.consumer)
            if ws.max_per_consumer and counts.open_count(self.regions, ck) >= ws.max_per_consumer:
                return (429, "websocket-limit", b"the consumer's WebSocket connections are at their cap", None)
            keys += (ck,)
        claims = ident.claims if ident is not None else None
        exp = claims.get("exp") if isinstance(claims, dict) else None
        session = Session(self.route, ws, float(exp) if isinstance(exp, (int, float)) else 0.0,
                          self.words, keys, self.upstream_timeout)
        if self.words is not None:
            counts.add_open(self.words, keys, 1)
        ex.tunnel = session
        ex.on_complete(session.handshake_done)
        ex.add_upstream_lines(UPGRADE_LINES)
        return None


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> WebSocketPolicy | None:
    if not route.websocket:
        return None
    cors = Cors(cfg.cors[route.cors]) if route.cors is not None else None
    return WebSocketPolicy(route.name, cfg.websocket, cors, services.get("websocket_regions"),
                           services.get("websocket_words"), cfg.upstreams[route.upstream].timeout)


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return [Section(counts.SECTION, workers * counts.REGION_BYTES)]


def _region(shm: SharedMemory, slot: int) -> Any:
    return shm.section(counts.SECTION)[slot * counts.REGION_BYTES:(slot + 1) * counts.REGION_BYTES].cast("Q")


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    if shm is None or counts.SECTION not in shm.layout.sections:
        return
    n = len(shm.section(counts.SECTION)) // counts.REGION_BYTES
    services["websocket_regions"] = [_region(shm, s) for s in range(n)]
    services["websocket_words"] = words = _region(shm, slot)
    counts.reset_open(words)


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    names = [r.name for r in cfg.routes if r.websocket]
    out = [f"# HELP {FAMILY_OPEN} Open WebSocket tunnels.", f"# TYPE {FAMILY_OPEN} gauge",
           f"# HELP {FAMILY_CLOSES} WebSocket tunnels ended, by close code (1006: no close frame).",
           f"# TYPE {FAMILY_CLOSES} counter",
           f"# HELP {FAMILY_BYTES} Bytes relayed by WebSocket tunnels.", f"# TYPE {FAMILY_BYTES} counter",
           f"# HELP {FAMILY_DURATION} How long WebSocket tunnels stayed open.",
           f"# TYPE {FAMILY_DURATION} histogram"]
    if not names:
        return out
    regions = [_region(shm, s) for s in range(workers)]
    for name in names:
        k = counts.key("route", name)
        tot = [0] * counts.WORDS
        opened = 0
        for slot, words in enumerate(regions):
            at = counts.find(words, k, False)
            if at < 0:
                continue
            if slot in live:
                opened += words[at + counts.OPEN]
            for i in range(counts.OPENED, counts.WORDS):
                tot[i] += words[at + i]
        lab = f'route="{name}"'
        out.append(f"{FAMILY_OPEN}{{{lab}}} {opened}")
        for i, code in enumerate([*map(str, counts.CODES), "other"]):
            out.append(f'{FAMILY_CLOSES}{{{lab},code="{code}"}} {tot[counts.CLOSES + i]}')
        out.append(f'{FAMILY_BYTES}{{{lab},direction="client_to_origin"}} {tot[counts.BYTES_UP]}')
        out.append(f'{FAMILY_BYTES}{{{lab},direction="origin_to_client"}} {tot[counts.BYTES_DOWN]}')
        cum = 0
        for i, le in enumerate([*map(str, counts.BOUNDS), "+Inf"]):
            cum += tot[counts.HIST + i]
            out.append(f'{FAMILY_DURATION}_bucket{{{lab},le="{le}"}} {cum}')
        out.append(f"{FAMILY_DURATION}_sum{{{lab}}} {tot[counts.SUM_MS] / 1000:g}")
        out.append(f"{FAMILY_DURATION}_count{{{lab}}} {tot[counts.OPENED]}")
    return out
