import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastgw._core.http1 import RequestReader
from fastgw._core.wire import HeaderTable

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

class UpstreamGroup:
    name: str
    targets: list[Target]
    ssl: Any
    server_name: str | None
    rr: int
    connect_timeout: float
    timeout: float
    idle_timeout: float

class Target:
    host: str
    port: int
    keepalive: int
    idle: list[Any]
    group: UpstreamGroup
    hostport: bytes
    h2pool: Any                      # fastgw.grpc_upstream.Pool, for targets of grpc routes
    def __init__(self, host: str, port: int, keepalive: int, group: UpstreamGroup) -> None: ...
    def close_idle(self) -> None: ...

Rejection = tuple[int, str, bytes | None, bytes | None]   # (status, slug, detail, extra header lines)
GateResult = Rejection | Awaitable[Rejection | None] | None

class Exchange:
    """What a policy (route.gate) may read and add; see proxy.pyx "policy interface"."""
    identity: Any
    @property
    def method(self) -> bytes: ...
    @property
    def path(self) -> bytes: ...
    @property
    def query(self) -> bytes: ...
    @property
    def host(self) -> bytes: ...
    @property
    def peer(self) -> bytes: ...
    @property
    def xff(self) -> bytes | None: ...
    @property
    def peercert(self) -> dict[str, Any] | None: ...
    @property
    def request_id(self) -> bytes: ...
    @property
    def route_name(self) -> str | None: ...
    @property
    def route_params(self) -> dict[str, str] | None: ...
    def header(self, lname: bytes) -> bytes | None: ...
    def add_upstream_header(self, name: bytes, value: bytes) -> None: ...
    def add_response_header(self, name: bytes, value: bytes) -> None: ...
    def set_query(self, query: bytes) -> None: ...
    def add_upstream_lines(self, lines: bytes) -> None: ...
    def add_response_lines(self, lines: bytes) -> None: ...
    def on_complete(self, fn: Callable[[Exchange], object]) -> None: ...

class RouteRT:
    gate: Callable[[Exchange], GateResult] | None
    name: str
    group: UpstreamGroup
    max_body: int
    strip: int
    req_add: bytes
    req_remove: frozenset[bytes] | None
    resp_add: bytes
    resp_remove: frozenset[bytes] | None
    mslot: int
    grpc: bool

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

class H2Encoder:
    header_table_size: int
    def encode(self, headers: list[tuple[bytes, bytes]], huffman: bool = True) -> bytes: ...

class H2Limits:
    max_streams: int
    stream_window: int
    conn_window: int
    stall_timeout: float
    def __init__(self, max_streams: int = 100, stream_window: int = 65535, conn_window: int = 1048576,
                 stall_timeout: float = 30.0) -> None: ...

class ClientConn(RequestReader, asyncio.Protocol):
    transport: Any
    closed: bool
    batching: bool
    draining: bool
    want_proxy: bool
    proxied_peer: bytes | None
    proto: bytes
    def __init__(self, w: Worker) -> None: ...
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def start_h2(self, data: bytes) -> None: ...

class Clock:
    now: float
    date: bytes

class Worker:
    rt: Runtime
    loop: asyncio.AbstractEventLoop
    clock: Clock
    conns: set[ClientConn]
    draining: bool
    access_log: list[tuple[Any, ...]] | None
    debug_log: Callable[[bytes, bytes, list[tuple[str, bytes]]], None] | None
    max_conns: int
    nconns: int
    full: bool
    on_full: Callable[[], None] | None
    on_room: Callable[[], None] | None
    def __init__(self, rt: Runtime, loop: asyncio.AbstractEventLoop, id_prefix: bytes) -> None: ...
    def attach_metrics(self, buf: Any, routes: int) -> None: ...
    def protocol(self, reserved: bool = False) -> ClientConn: ...
    def tls_protocol(self, reserved: bool = False) -> ClientConn: ...
    def admit(self) -> None: ...
    def release(self) -> None: ...
    def sweep(self, now: float, date: bytes) -> None: ...
    def drain(self, fresh_idle: float = ...) -> None: ...

def grpc_pct(msg: bytes) -> bytes: ...
