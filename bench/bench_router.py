"""Route-match micro-benchmark: 10,000 routes, time per Router.match() call (issue bar: <= 1 us).

The route set mixes the shapes real gateways carry: per-service prefixes, versioned resources with
{param} segments, exact endpoints, a few host-bound routes and method splits. Lookups cycle through hits
on every shape, a 405 and a 404. Each figure is the median of 7 runs of 200,000 calls, measured from
Python (so it includes the call overhead a request pays too). Stdlib only; pin it with taskset for
stable numbers: `taskset -c 0 python3 bench/bench_router.py`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from progress import Progress

from fastgw._core.router import Router


def build_routes(n: int) -> list[tuple[str | None, str, tuple[str, ...] | None, str]]:
    routes: list[tuple[str | None, str, tuple[str, ...] | None, str]] = []
    i = 0
    while len(routes) < n:
        svc = f"svc{i}"
        routes.append((None, f"/{svc}/*", None, f"{svc}-prefix"))
        routes.append((None, f"/v1/{svc}/{{id}}", ("GET", "PUT", "DELETE"), f"{svc}-item"))
        routes.append((None, f"/v1/{svc}/{{id}}/events/{{eid}}", ("GET",), f"{svc}-event"))
        routes.append((None, f"/v1/{svc}/search", ("POST",), f"{svc}-search"))
        routes.append((None, f"/v2/{svc}/items", ("GET", "POST"), f"{svc}-list"))
        if i % 50 == 0:
            routes.append((f"{svc}.example.com", "/*", None, f"{svc}-host"))
        i += 1
    return routes[:n]


LOOKUPS = [
    (b"GET", b"api.example.com", b"/v1/svc1234/abc123"),
    (b"GET", b"api.example.com", b"/v1/svc17/42/events/7"),
    (b"POST", b"api.example.com", b"/v1/svc999/search"),
    (b"GET", b"api.example.com", b"/v2/svc1500/items"),
    (b"GET", b"api.example.com", b"/svc77/deep/path/below/the/prefix"),
    (b"GET", b"svc100.example.com", b"/anything"),
    (b"PATCH", b"api.example.com", b"/v1/svc5/1"),             # 405
    (b"GET", b"api.example.com", b"/nope/nothing/here"),       # 404
]


def run(router: Router, calls: int) -> float:
    match = router.match
    lookups = LOOKUPS * (calls // len(LOOKUPS))
    t0 = time.perf_counter_ns()
    for m, h, p in lookups:
        match(m, h, p)
    return (time.perf_counter_ns() - t0) / len(lookups)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    progress = Progress("router", args.runs + 2, heartbeat=0)
    progress.step(f"build {args.routes:,} routes")
    routes = build_routes(args.routes)
    t0 = time.perf_counter()
    router = Router(routes)
    build_s = time.perf_counter() - t0
    expect = [0, 0, 0, 0, 0, 0, 405, 404]
    got = [router.match(*lk)[0] for lk in LOOKUPS]
    if got != expect:
        print(f"unexpected match results {got} (expected {expect})", file=sys.stderr)
        return 1
    progress.step("warm-up")
    run(router, args.calls // 4)
    per_call = []
    for i in range(args.runs):
        progress.step(f"run {i + 1}/{args.runs}: {args.calls:,} matches")
        per_call.append(run(router, args.calls))
    progress.finish()
    med = statistics.median(per_call)
    print(f"routes: {len(routes)}  build: {build_s * 1000:.0f} ms")
    print(f"match: median {med:.0f} ns/call over {args.runs} runs of {args.calls} calls "
          f"(min {min(per_call):.0f}, max {max(per_call):.0f}); bar <= 1000 ns: "
          f"{'OK' if med <= 1000 else 'MISSED'}")
    return 0 if med <= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
