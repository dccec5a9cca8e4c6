"""Process-model benchmarks (issue 3), built on bench/run.py's harness (same nginx origin, same wrk).

Three comparisons, each interleaved round by round (A B A B ...) and reported as medians:
  workers   fastgw with 1 worker (pinned to core 0, as in run.py) vs 2 workers (cores 0 and 1).
            On a 2-core machine the second worker shares core 1 with wrk and the origin, so this measures
            how much headroom the load side leaves, not how fastgw scales: read it as a smoke test of the
            multi-worker path (SO_REUSEPORT spreading, no errors), not as a scaling figure.
  metrics   1 worker, admin.metrics = true vs false: the cost of the per-request counters (target <= 3%).
  accesslog 1 worker, server.access_log = false vs true (written to a file): the cost of the access log.

    python3 bench/workers.py [--rounds 5] [--duration 5] [--only workers,metrics,accesslog]

Writes bench/results/<timestamp>-workers.md and latest-workers.md unless --no-save.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: the shared harness)
from progress import Progress  # noqa: E402
from rounds import table as rounds_table  # noqa: E402  (bench/rounds.py: the per-round table)

PLAIN = "{python} -m fastgw run -c {config} --workers 1"
TWO = "{python} -m fastgw run -c {config} --workers 2"

CASES = {
    "workers": [("1 worker (core 0)", PLAIN, "", "0"), ("2 workers (cores 0,1)", TWO, "", "0,1")],
    "metrics": [("metrics on", PLAIN, "", "0"), ("metrics off", PLAIN, "", "0")],
    "accesslog": [("access log off", PLAIN, "", "0"), ("access log on", PLAIN, "access_log = true\n", "0")],
}


def measure(env: run.Env, label: str, cmd: str, extra: str, cores: str, conns: int,
            duration: int) -> run.WrkResult:
    run.PROXY_CORE = cores
    port, proc, _ = run.start_fastgw(env, cmd, extra_server=extra,
                                     extra_admin="metrics = false" if label == "metrics off" else "")
    try:
        argv = run.wrk_argv(port, "3b", conns, "2s", None)
        run.run_wrk(argv, 30)                             # warm-up (pools, caches)
        cpu0 = run.tree_cpu_seconds(proc.pid)
        t0 = time.monotonic()
        out = run.run_wrk(run.wrk_argv(port, "3b", conns, f"{duration}s", None), duration + 30)
        res = run.parse_wrk(out)
        res.wall_s = time.monotonic() - t0
        res.cpu_s = run.tree_cpu_seconds(proc.pid) - cpu0
        return res
    finally:
        env.procs.stop(proc)
        run.PROXY_CORE = "0"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    run.preflight()
    lines = [f"# fastgw process-model benchmark ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})", ""]
    info = run.machine_info()
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", f"wrk -t1 -c{args.conns} -d{args.duration}s on core 1 against `/3b` (nginx origin on core 1); "
              f"{args.rounds} interleaved rounds; medians. CPU = gateway process tree (supervisor + workers).", ""]
    every: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fastgw-bench-") as tmp:
        env = run.Env(tmp=tmp, procs=run.Procs())
        try:
            run.start_origin(env)
            names = args.only.split(",")
            progress = Progress("workers", sum(len(CASES[n]) for n in names) * args.rounds,
                                per_step=args.duration + 4)
            for name in names:
                cases = CASES[name]
                results: dict[str, list[run.WrkResult]] = {label: [] for label, *_ in cases}
                for rnd in range(args.rounds):
                    for label, cmd, extra, cores in cases:
                        progress.step(f"{name} round {rnd + 1}/{args.rounds} {label}", args.duration + 2)
                        r = measure(env, label, cmd, extra, cores, args.conns, args.duration)
                        results[label].append(r)
                        every.append({"group": name, "system": label, "round": rnd, "rps": r.rps,
                                      "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "cpu_per_100k": r.cpu_per_100k,
                                      "errors": r.non2xx + r.socket_errors})
                lines += [f"## {name}", "", "| variant | req/s | p50 ms | p99 ms | CPU s / 100k req | errors |",
                          "|---|---|---|---|---|---|"]
                base = None
                for label, *_ in cases:
                    rs = results[label]
                    rps = statistics.median(r.rps for r in rs)
                    base = base or rps
                    lines.append(
                        f"| {label} | {rps:,.0f} ({rps / base:.3f}x) | {statistics.median(r.p50_ms for r in rs):.2f} | "
                        f"{statistics.median(r.p99_ms for r in rs):.2f} | "
                        f"{statistics.median(r.cpu_per_100k for r in rs):.2f} | "
                        f"{sum(r.non2xx + r.socket_errors for r in rs)} |")
                lines.append("")
                print("\n".join(lines[-(len(cases) + 4):]), flush=True)
            progress.finish()
        finally:
            env.procs.stop_all()
    lines += rounds_table(every)
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.no_save:
        run.save_report(report, "workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
