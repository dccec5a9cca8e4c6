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
    h2pool: Any                      # fastgw._core.upstream_h2.H2Pool, for targets of HTTP/2 upstreams
    def __init__(self, host: str, port: int, keepalive: int, group: UpstreamGroup) -> None: ...
    def close_idle(self) -> None: ...
