from collections.abc import Iterable, Sequence

class Router:
    """Immutable route table; see fastgw/_core/router.pyx for the matching rule."""

    def __init__(self, routes: Iterable[tuple[str | None, str, Sequence[str] | None, object]]) -> None: ...
    def match(
        self, method: bytes, host: bytes | None, path: bytes
    ) -> tuple[int, object, dict[str, str] | None]:
        """(0, value, params) | (404, None, None) | (405, allow: bytes, None)."""
        ...
