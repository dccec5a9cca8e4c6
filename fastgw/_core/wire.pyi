from collections.abc import Iterable

ACTIONS: dict[str, int]
CONNECTION_SPECIFIC: frozenset[bytes]

class HeaderTable:
    allow_underscores: bool
    def __init__(self, identity: Iterable[str] = ..., credentials: Iterable[str] = ...,
                 allow_underscores: bool = ...) -> None: ...
    def action(self, name: bytes) -> int: ...

DEFAULT_TABLE: HeaderTable
