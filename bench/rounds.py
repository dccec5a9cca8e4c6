"""The per-round table of a timed benchmark: every run's figures, not only the medians, so a reader (and
bench/plots.py, which draws the spread from it) can see how far the rounds were apart.

    ## Every round

    | group | system | round | req/s | p50 ms | p99 ms | CPU s/100k | errors |

`group` is what the systems are compared within (a connection count, a scenario); `system` is what is
measured (nginx, fastgw, a variant). Stdlib only.
"""
from __future__ import annotations

from typing import Any

HEADING = "## Every round"
COLUMNS = ("group", "system", "round", "req/s", "p50 ms", "p99 ms", "CPU s/100k", "errors")


def table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for `runs`: dicts with group, system, round, rps, p50_ms, p99_ms, cpu_per_100k and
    errors (rps and the CPU figure may be None where a run did not measure them)."""

    def num(v: float | None, digits: int) -> str:
        return "" if v is None else f"{v:,.{digits}f}"

    out = [HEADING, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in runs:
        out.append(f"| {r['group']} | {r['system']} | {r['round']} | {num(r.get('rps'), 0)} "
                   f"| {num(r.get('p50_ms'), 3)} | {num(r.get('p99_ms'), 3)} | {num(r.get('cpu_per_100k'), 3)} "
                   f"| {r.get('errors', 0)} |")
    return out
