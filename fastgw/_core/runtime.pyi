from collections.abc import Callable
from typing import Any

from fastgw._core.balancer import UpstreamGroup
from fastgw._core.wire import HeaderTable
from fastgw._core.worker import Exchange, GateResult

def json_bytes(raw: bytes) -> bytes: ...

class Problem:
    status: int
    head: bytes
    body_a: bytes
    detail: bytes
    body_b: bytes
    body_c: bytes
    body_d: bytes
    extra: bytes
    def render(self, instance: bytes, rid: bytes, date: bytes, detail: bytes | None = ...,
               extra: bytes = ..., close: bool = ...) -> bytes: ...

class RouteRT:
    gate: Callable[[Exchange], GateResult] | None
    name: str
    group: UpstreamGroup
    max_body: int
    strip: int
    req_add: bytes
    req_remove: frozenset[bytes] | None
    resp_add: bytes
    err_add: bytes
    resp_remove: frozenset[bytes] | None
    mslot: int
    on_upstream_request: tuple[Callable[[Exchange], None], ...] | None
    on_response: tuple[Callable[[Exchange], Any], ...] | None
    on_log: tuple[Callable[[Exchange], None], ...] | None
    phase_resp_add: bytes | None
    grpc: bool
    h2up: bool
    deadline: float
    try_timeout: float
    upstream: Any              # the upstream driver (fastgw._core.worker.upstream_for), None: HTTP/1.1

class Runtime:
    router: Any
    problems: dict[str, Problem]
    headers: HeaderTable
    max_body: int
    header_timeout: float
    idle_timeout: float
    body_timeout: float
    min_body_rate: float
    send_timeout: float
    max_requests: int
    max_pipelined: int
    max_line: int
    max_hbytes: int
    max_headers: int
    version: str
    h2: H2Limits | None
    unrouted_response: tuple[Callable[[Exchange], Any], ...] | None
    unrouted_log: tuple[Callable[[Exchange], None], ...] | None
    tunnel_routes: frozenset[str] | None

class H2Limits:
    max_streams: int
    stream_window: int
    conn_window: int
    stall_timeout: float
    def __init__(self, max_streams: int = 100, stream_window: int = 65535, conn_window: int = 1048576,
                 stall_timeout: float = 30.0) -> None: ...
