from typing import Any


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
