"""HTTP/2 benchmark: fastgw vs nginx as h2c (prior knowledge) reverse proxies, with h2load.

Same method as bench/run.py (docs/benchmarks.md "Method"): the proxy under test (1 worker) on core 0, the nginx origin
and h2load on core 1, both proxies measured in the same run with rounds interleaved, medians and ratios
fastgw / nginx. Both proxies talk HTTP/1.1 keep-alive to the same origin (GET /3b -> "ok\\n").

Usage:  python3 bench/h2.py [--rounds N] [--requests N] [--clients 16] [--streams 10] [--path /3b]
Writes bench/results/h2-<timestamp>.md and latest-h2.md (and its plot, latest-h2.png) and prints it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import plots  # noqa: E402  (bench/plots.py: the PNG beside the result)
import run as base  # noqa: E402  (bench/run.py: process management, origin, fastgw start)
from progress import Progress  # noqa: E402


def start_nginx_h2c(env: base.Env) -> tuple[int, subprocess.Popen]:
    port = base.free_port()
    conf = os.path.join(env.tmp, "h2proxy.conf")
    base.render("nginx_h2c_proxy", conf, DIR=env.tmp, PORT=port, ORIGIN_PORT=env.origin_port,
                WORKER_CONNECTIONS=4096)
    argv = ["taskset", "-c", base.PROXY_CORE, "nginx", "-p", env.tmp, "-e",
            os.path.join(env.tmp, "h2proxy-error.log"), "-c", conf]
    p = env.procs.spawn("nginx-h2c", argv, os.path.join(env.tmp, "h2proxy.log"))
    wait_h2(port, p)
    return port, p


def h2load(port: int, path: str, n: int, clients: int, streams: int) -> tuple[float, int, str]:
    argv = ["taskset", "-c", base.LOAD_CORE, "h2load", f"-n{n}", f"-c{clients}", f"-m{streams}",
            f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    ok = re.search(r"(\d+) succeeded", out)
    if not m or not ok:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    return float(m.group(1)), int(ok.group(1)), " ".join(argv)


def wait_h2(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy on {port} exited with {proc.returncode}")
        r = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{port}/3b"], capture_output=True, text=True)
        if r.stdout == "200":
            return
        time.sleep(0.1)
    raise RuntimeError(f"proxy on {port} not ready over h2c")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--path", default="/3b")
    args = ap.parse_args(argv)
    for tool in ("nginx", "h2load", "taskset", "curl"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool}")
    tmp = tempfile.mkdtemp(prefix="fastgw-h2bench-")
    os.chmod(tmp, 0o755)
    procs = base.Procs()
    signal.signal(signal.SIGTERM, base._raise_interrupt)
    env = base.Env(tmp=tmp, procs=procs)
    results: dict[str, list[float]] = {"nginx": [], "fastgw": []}
    cmds: dict[str, str] = {}
    try:
        base.start_origin(env)
        nport, _ = start_nginx_h2c(env)
        fport, _, fargv = base.start_fastgw(env)
        wait_h2(fport, procs.children[-1][1])
        ports = {"nginx": nport, "fastgw": fport}
        progress = Progress("h2", len(ports) * (args.rounds + 1))
        for name, port in ports.items():         # warm-up (pools, caches)
            progress.step(f"warm-up {name}")
            h2load(port, args.path, max(2000, args.requests // 10), args.clients, args.streams)
        for r in range(args.rounds):
            order = ["nginx", "fastgw"] if r % 2 == 0 else ["fastgw", "nginx"]
            for name in order:
                progress.step(f"{args.path} -c{args.clients} -m{args.streams} round {r + 1}/{args.rounds} {name}")
                rps, ok, cmd = h2load(ports[name], args.path, args.requests, args.clients, args.streams)
                if ok != args.requests:
                    raise RuntimeError(f"{name}: {args.requests - ok} requests failed")
                results[name].append(rps)
                cmds[name] = cmd
                print(f"round {r + 1} {name}: {rps:.0f} req/s", flush=True)
        progress.finish()
    finally:
        procs.stop_all()
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = med["fastgw"] / med["nginx"]
    lines = [
        f"# HTTP/2 (h2c) proxy benchmark, {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- proxies (1 worker) on core {base.PROXY_CORE}; origin nginx + h2load on core {base.LOAD_CORE}; "
        f"{args.rounds} interleaved rounds, medians",
        f"- load: `{cmds['fastgw'].replace(str(ports['fastgw']), 'PORT')}`",
        f"- fastgw: `{' '.join(fargv)}`",
        "",
        "| proxy | req/s (median) | rounds |",
        "|---|---|---|",
        f"| nginx h2c | {med['nginx']:.0f} | {', '.join(f'{x:.0f}' for x in results['nginx'])} |",
        f"| fastgw h2c | {med['fastgw']:.0f} | {', '.join(f'{x:.0f}' for x in results['fastgw'])} |",
        "",
        f"**fastgw / nginx = {ratio:.2f}**",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(base.RESULTS_DIR, exist_ok=True)
    for name in (f"h2-{_dt.datetime.now():%Y%m%d-%H%M%S}.md", "latest-h2.md"):
        with open(os.path.join(base.RESULTS_DIR, name), "w") as f:
            f.write(text)
    plots.after_run(os.path.join(base.RESULTS_DIR, "latest-h2.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
