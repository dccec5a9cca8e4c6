from typing import Any

from fastgw._core.balancer import Target

class H2Pool:
    target: Target
    ssl: Any
    conns: list[Any]
    def __init__(self, target: Target, ssl_ctx: Any) -> None: ...
    def close(self) -> None: ...
