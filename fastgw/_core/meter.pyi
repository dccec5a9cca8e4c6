from typing import Any

from fastgw._core.gates import Gate

class MeterGate(Gate):
    def __init__(self, route: str, tally: Any, sink: Any, known: frozenset[str], lo: int, hi: int,
                 deprecated_from: int) -> None: ...
    def on_log(self, ex: Any) -> None: ...
