"""Access-log cost when stdout is a pipe shared by the workers (how containers capture stdout).

Two measurements (docs/logs-and-metrics.md "Logs" quotes them):

wrk (default): for each checkout given (--trees; default: this one), interleaved round by round: fastgw
  with --workers 2 and server.access_log = true, stdout a pipe drained by a thread of this script (a log
  shipper that keeps up); bench/run.py's nginx origin and wrk (-t1, core 1) against `/3b`. Per run:
    CPU us/req   user+system CPU of the gateway's processes (supervisor, workers, all threads) / requests
    writes/1k    write(2) calls of the gateway's processes (/proc/PID/io syscw) per 1000 requests
    bad lines    captured lines that are not JSON (spliced by interleaved writes)
  Medians over rounds; variant "off" (access_log = false) is the reference. Wall-clock CPU is noisy on a
  shared machine: read it with the other two.

--writers: CPU (user + system, getrusage) per 1000 access lines written to a pipe drained by `cat`, for
  the ways of getting lines onto a shared pipe: one write per 52 KB batch (splices), whole-line writes of
  at most PIPE_BUF from C (fastgw._core.accesslog.write_lines) or from a Python loop, and a relay process
  (the "supervisor collects the lines" design: the worker writes to its own pipe, the relay copies whole
  lines on).

Instructions per request with the access log on: bench/callgrind.py, scenario access_log.

    python3 bench/access_log.py [--trees PATH,PATH] [--rounds 5] [--duration 5] [--conns 64]
    python3 bench/access_log.py --writers
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: the shared harness)
from progress import Progress  # noqa: E402


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


# ---------------------------------------------------------------------------------------------------
# --writers

LINE = (b'{"ts":1796323538.265240,"type":"access","request_id":"8bcafc27990-000000003d9e","client":"127.0.0.1",'
        b'"peer":"127.0.0.1","method":"GET","host":"127.0.0.1:43617","path":"/hello","route":"hello",'
        b'"upstream":"origin","target":"127.0.0.1:8080","status":200,"duration_ms":0.418,"worker":0}\n')
BATCH = LINE * 256           # one formatted chunk (observe.AccessLog.CHUNK lines)
RELAY = r"""
import os, resource, sys
buf = b""
while True:
    d = os.read(0, 1 << 16)
    if not d:
        break
    buf += d
    k = buf.rfind(b"\n") + 1
    if k:
        v = memoryview(buf)[:k]
        while v:
            v = v[os.write(1, v):]
        buf = buf[k:]
u = resource.getrusage(resource.RUSAGE_SELF)
sys.stderr.write(f"{u.ru_utime + u.ru_stime}\n")
"""


def _one_write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _python_lines(fd: int, data: bytes) -> None:
    n, pos, view = len(data), 0, memoryview(data)
    while pos < n:
        end = n if n - pos <= select.PIPE_BUF else data.rfind(b"\n", pos, pos + select.PIPE_BUF) + 1
        while pos < end:
            pos += os.write(fd, view[pos:end])


def writers(batches: int = 3000, rounds: int = 3) -> None:
    sys.path.insert(0, run.REPO_DIR)
    from fastgw._core.accesslog import write_lines

    ways = {"one write per batch (splices)": _one_write,
            "C, whole lines <= PIPE_BUF": lambda fd, d: write_lines(fd, d, select.PIPE_BUF),
            "Python, whole lines <= PIPE_BUF": _python_lines,
            "relay process (supervisor design)": None}
    res: dict[str, list[float]] = {k: [] for k in ways}
    k = batches * BATCH.count(b"\n") / 1000
    progress = Progress("access-log writers", rounds * len(ways), heartbeat=0)
    for rnd in range(rounds):
        for name, fn in ways.items():
            progress.step(f"round {rnd + 1}/{rounds} {name}")
            r, w = os.pipe()
            cat = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.DEVNULL)
            os.close(r)
            relay = None
            out = w
            if fn is None:                   # the worker writes batches to the relay's pipe
                r2, out = os.pipe()
                relay = subprocess.Popen([sys.executable, "-c", RELAY], stdin=r2, stdout=w, stderr=subprocess.PIPE)
                os.close(r2)
                os.close(w)
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(batches):
                (fn or _one_write)(out, BATCH)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            os.close(out)
            cpu = u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime
            if relay is not None:
                cpu += float(relay.communicate()[1])      # (includes its interpreter start, ~20 ms)
            cat.wait()
            res[name].append(cpu / k * 1e6)
    progress.finish()
    print(f"\nCPU per 1000 access lines ({len(LINE)} B) to a pipe drained by cat; {batches} batches of "
          f"{len(BATCH)} B; median of {rounds}\n")
    print("| writer | CPU us / 1000 lines |\n|---|---|")
    for name, xs in res.items():
        print(f"| {name} | {statistics.median(xs):.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=run.REPO_DIR, help="comma-separated checkouts (built) to compare")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--writers", action="store_true", help="the write-cost comparison only")
    args = ap.parse_args(argv)
    trees = args.trees.split(",")
    if args.writers:
        writers()
        return 0
    run.preflight()
    variants = [(trees[0], False)] + [(t, True) for t in trees]
    results: dict[tuple[str, bool], list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="fastgw-bench-") as tmp:
        env = run.Env(tmp=tmp, procs=run.Procs())
        try:
            run.start_origin(env)
            progress = Progress("access-log", args.rounds * len(variants), per_step=args.duration + 4)
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else variants[::-1]
                for v in order:
                    progress.step(f"/3b c{args.conns} round {rnd + 1}/{args.rounds} {v[0]} "
                                  f"access log {'on' if v[1] else 'off'}", args.duration + 2)
                    results[v].append(one_run(env, v[0], v[1], args.conns, args.duration))
                    print(v, results[v][-1], flush=True)
            progress.finish()
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
