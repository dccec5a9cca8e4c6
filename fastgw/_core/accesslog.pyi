from collections.abc import Callable
from typing import Any

LINE_MAX: int

def format_lines(batch: list[tuple[Any, ...]], mono_ns: int, wall: float, worker: int,
                 client_text: Callable[[bytes, bytes], str] | None) -> bytes:
    """The access lines of `batch` (tuples from Worker.observe) as JSON lines, each <= LINE_MAX bytes."""
    ...

def write_lines(fd: int, data: bytes, atomic: int) -> tuple[int, int]:
    """Write whole lines in writes of at most `atomic` bytes (0: one write); (bytes written, errno)."""
    ...
