SOURCES: tuple[str, ...]

class GatewayError:
    status: int
    slug: str
    source: int
    retryable: bool
    detail: bytes | None
    kind: str | None
    cond: int
    def __init__(self, status: int, slug: str, source: int, retryable: bool = False, detail: bytes | None = None,
                 kind: str | None = None) -> None: ...
    @property
    def source_name(self) -> str: ...
