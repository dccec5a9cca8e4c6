#!/usr/bin/env python3
"""Nanoseconds per pick() of each balancing algorithm over 10 targets (the issue's bar: 150 ns).

Each figure is the best of 5 rounds of 200,000 calls of the compiled pick through its Python entry
(fastgw._core.balancer.pick_target), minus the same loop on a one-target group (whose pick returns at
once): what is left is the algorithm's own work. least_request also counts each pick's end (finish_target, one more call), as a request does. hash uses a 20-byte
header key read through a stand-in for the exchange's header() (a Python method call, as in the gateway).

    python3 bench/pick.py
"""
from __future__ import annotations

import os
import sys
import time

# This checkout's fastgw, not one installed elsewhere (the script's own folder is first on sys.path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastgw._core.balancer import Target, UpstreamGroup, finish_target, pick_target  # noqa: E402

sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from progress import Progress  # noqa: E402  (bench/progress.py: steps and time left on stderr)

N = 200_000
ROUNDS = 5


class Req:
    def __init__(self, key: bytes) -> None:
        self.key = key

    def header(self, name: bytes) -> bytes:
        return self.key


def group(balance: str, weights: list[int]) -> UpstreamGroup:
    g = UpstreamGroup()
    g.name = "bench"
    g.targets = [Target(f"10.0.0.{i + 1}", 8000, 0, g, w) for i, w in enumerate(weights)]
    g.setup(balance, "header:x-account" if balance == "hash" else None, 0.0, 1)
    return g


def per_call(fn, g: UpstreamGroup, ex: object, finish: bool) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter_ns()
        if finish:
            for _ in range(N):
                finish_target(fn(g, ex))
        else:
            for _ in range(N):
                fn(g, ex)
        best = min(best, (time.perf_counter_ns() - t0) / N)
    return best


def main() -> None:
    ex = Req(b"account-000000000042")
    base = per_call(pick_target, group("round_robin", [1]), ex, False)
    rows = []
    progress = Progress("pick", 5, heartbeat=0)
    for name, balance, weights in (("round_robin (equal weights)", "round_robin", [1] * 10),
                                   ("round_robin (weights 1..10)", "round_robin", list(range(1, 11))),
                                   ("least_request (equal weights)", "least_request", [1] * 10),
                                   ("least_request (weights 1..10)", "least_request", list(range(1, 11))),
                                   ("hash (header key)", "hash", [1] * 10)):
        progress.step(name)
        g = group(balance, weights)
        fin = balance == "least_request"
        t = per_call(pick_target, g, ex, fin) - base
        rows.append((name, t))
    print(f"| algorithm (10 targets) | ns per pick (above the {base:.0f} ns of a one-target call) |\n|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.0f} |")


if __name__ == "__main__":
    main()
