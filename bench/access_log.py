"""Access-log cost when stdout is a pipe shared by the workers (how containers capture stdout).

For each checkout given (--trees; default: this one), interleaved round by round: fastgw with --workers 2
and server.access_log = true, stdout a pipe drained by a thread of this script (a log shipper that keeps
up); bench/run.py's nginx origin and wrk (-t1, core 1) against `/3b`. Per run:
  CPU us/req   user+system CPU of the gateway's processes (supervisor, workers, all threads) / requests
  writes/1k    write(2) calls of the gateway's processes (/proc/PID/io syscw) per 1000 requests
  bad lines    captured lines that are not JSON (spliced by interleaved writes)
Medians over rounds. Variant "off" (access_log = false) is the reference.

    python3 bench/access_log.py [--trees PATH,PATH] [--rounds 5] [--duration 5] [--conns 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: the shared harness)


def syscw(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("syscw:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def one_run(env: run.Env, tree: str, access_log: bool, conns: int, duration: int) -> dict[str, float]:
    port = run.free_port()
    cfg = os.path.join(env.tmp, "gw.toml")
    with open(cfg, "w") as f:
        # run.py's config (one catch-all route to its origin); --workers 2 overrides its `workers = 1`
        f.write(run.FASTGW_TOML.format(port=port, origin_port=env.origin_port, admin_port=run.free_port(),
                                       extra_server=f"access_log = {'true' if access_log else 'false'}",
                                       extra_admin=""))
    r, w = os.pipe()
    child_env = {**os.environ, "PYTHONPATH": tree}
    p = subprocess.Popen([sys.executable, "-m", "fastgw", "run", "-c", cfg, "--workers", "2"], cwd=tree,
                         stdout=w, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=child_env,
                         start_new_session=True)
    os.close(w)
    chunks: list[bytes] = []

    def drain() -> None:
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        run.wait_ready(port, p, "/dev/null", "fastgw")
        run.run_wrk(run.wrk_argv(port, "3b", conns, "2s", None), 30)          # warm-up
        time.sleep(0.5)
        pids = run.process_tree(p.pid)
        cpu0, w0 = run.tree_cpu_seconds(p.pid), sum(syscw(x) for x in pids)
        res = run.parse_wrk(run.run_wrk(run.wrk_argv(port, "3b", conns, f"{duration}s", None), duration + 30))
        time.sleep(0.6)                                                      # the last batches
        cpu, writes = run.tree_cpu_seconds(p.pid) - cpu0, sum(syscw(x) for x in pids) - w0
    finally:
        p.terminate()
        p.wait(30)
        reader.join(10)
        os.close(r)
    n = res.requests
    bad = 0
    for line in b"".join(chunks).split(b"\n")[:-1]:
        try:
            json.loads(line)
        except ValueError:
            bad += 1
    return {"rps": res.rps, "cpu_us": cpu / n * 1e6, "writes_1k": writes / n * 1000, "bad": bad}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=run.REPO_DIR, help="comma-separated checkouts (built) to compare")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args(argv)
    run.preflight()
    trees = args.trees.split(",")
    variants = [(trees[0], False)] + [(t, True) for t in trees]
    results: dict[tuple[str, bool], list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="fastgw-bench-") as tmp:
        env = run.Env(tmp=tmp, procs=run.Procs())
        try:
            run.start_origin(env)
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else variants[::-1]
                for v in order:
                    results[v].append(one_run(env, v[0], v[1], args.conns, args.duration))
                    print(v, results[v][-1], flush=True)
        finally:
            env.procs.stop_all()
    print(f"\nwrk -t1 -c{args.conns} -d{args.duration}s /3b, fastgw --workers 2, stdout a pipe; "
          f"{args.rounds} interleaved rounds, medians\n")
    print("| tree | access log | req/s | CPU us/req | writes/1k req | bad lines (all rounds) |")
    print("|---|---|---|---|---|---|")
    for (tree, on), rs in results.items():
        print(f"| {tree} | {'on' if on else 'off'} | {statistics.median(x['rps'] for x in rs):,.0f} | "
              f"{statistics.median(x['cpu_us'] for x in rs):.1f} | "
              f"{statistics.median(x['writes_1k'] for x in rs):.2f} | {sum(int(x['bad']) for x in rs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
