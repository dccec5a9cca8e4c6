"""Resilience benchmark (issue 13): one of three targets killed under load, fastgw beside nginx.

Three nginx origins behind the proxy under test, wrk loading it; at a fixed time one origin is killed
(SIGKILL: its pooled connections die, new ones are refused). Beside wrk, a prober sends one GET every 5 ms
on its own keep-alive connection and notes when requests failed. Both proxies run at their defaults:

  fastgw  [upstreams] with the 3 targets: outlier detection (5 failures in a row eject for 30 s) and
          retries (connect-failure, reset-before-response for idempotent requests, one retry on another
          target, inside the budget) as shipped.
  nginx   upstream with the 3 servers, max_fails=1 fail_timeout=10s (nginx's defaults, written out) and
          proxy_next_upstream error timeout (its default: a GET is passed to the next server).

Reported per system (medians over the rounds, and every round): requests per second, failed requests
(wrk's non-2xx and socket errors plus the prober's failures) and the recovery time: from the kill to the
prober's last failed request (0 when it saw none).

    python3 bench/resilience.py [--rounds 3] [--duration 8] [--kill-at 3] [--conns 32]

Writes bench/results/<timestamp>-resilience.md and latest-resilience.md (and their PNG) unless --no-save.
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: the shared harness)
from progress import Progress  # noqa: E402

NGINX = """worker_processes 1;
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/proxy-body;
    proxy_temp_path {dir}/proxy-proxy;
    fastcgi_temp_path {dir}/proxy-fastcgi;
    uwsgi_temp_path {dir}/proxy-uwsgi;
    scgi_temp_path {dir}/proxy-scgi;
    upstream origin {{
{servers}
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""

FASTGW = """[server]
listen = ["127.0.0.1:{port}"]
workers = 1
[admin]
listen = "127.0.0.1:{admin_port}"
[upstreams.origin]
targets = [{targets}]
keepalive = 128
[[routes]]
name = "all"
path = "/*"
upstream = "origin"
"""

SYSTEMS = ("nginx", "fastgw")


class Prober(threading.Thread):
    """One GET every `every` seconds on a keep-alive connection (a new one after a failure); the times
    (monotonic) of the failed ones."""

    def __init__(self, port: int, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.failures: list[float] = []
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop.is_set():
            t = time.monotonic()
            self.sent += 1
            try:
                conn.request("GET", "/3b")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            if not ok:
                self.failures.append(t)
            self.stop.wait(max(0.0, self.every - (time.monotonic() - t)))
        conn.close()


def start_origins(tmp: str, procs: run.Procs) -> list[tuple[int, run.subprocess.Popen]]:
    out = []
    for i in range(3):
        d = os.path.join(tmp, f"origin{i}")
        os.makedirs(d, exist_ok=True)
        env = run.Env(tmp=d, procs=procs)
        port = run.start_origin(env)
        assert env.origin is not None
        out.append((port, env.origin))
    return out


def start_proxy(system: str, tmp: str, procs: run.Procs, ports: list[int]) -> tuple[int, run.subprocess.Popen]:
    port = run.free_port()
    d = os.path.join(tmp, system)
    os.makedirs(d, exist_ok=True)
    if system == "nginx":
        conf = os.path.join(d, "proxy.conf")
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in ports)
        with open(conf, "w") as f:
            f.write(NGINX.format(dir=d, port=port, servers=servers))
        argv = ["taskset", "-c", run.PROXY_CORE, "nginx", "-p", d, "-e", os.path.join(d, "proxy-error.log"),
                "-c", conf]
        p = procs.spawn("nginx", argv, os.path.join(d, "proxy.log"))
        log = os.path.join(d, "proxy-error.log")
    else:
        conf = os.path.join(d, "fastgw.toml")
        with open(conf, "w") as f:
            f.write(FASTGW.format(port=port, admin_port=run.free_port(),
                                  targets=", ".join(f'"127.0.0.1:{p}"' for p in ports)))
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = run.REPO_DIR + os.pathsep + child_env.get("PYTHONPATH", "")
        log = os.path.join(d, "fastgw.log")
        p = procs.spawn("fastgw", run.gateway_argv(run.DEFAULT_GATEWAY_CMD, conf), log, env=child_env,
                        cwd=run.REPO_DIR)
    run.wait_ready(port, p, log, system)
    return port, p


def one_round(system: str, args: argparse.Namespace) -> dict:
    procs = run.Procs()
    with tempfile.TemporaryDirectory(prefix="fastgw-resilience-") as tmp:
        try:
            origins = start_origins(tmp, procs)
            port, _ = start_proxy(system, tmp, procs, [p for p, _ in origins])
            run.run_wrk(run.wrk_argv(port, "3b", args.conns, "1s", None), 30)      # warm-up: pools open
            prober = Prober(port)
            victim = origins[1][1]
            killed: list[float] = []

            def kill() -> None:
                killed.append(time.monotonic())
                os.killpg(victim.pid, signal.SIGKILL)

            timer = threading.Timer(args.kill_at, kill)
            prober.start()
            timer.start()
            out = run.run_wrk(run.wrk_argv(port, "3b", args.conns, f"{args.duration}s", None), args.duration + 30)
            timer.join()
            prober.stop.set()
            prober.join()
            res = run.parse_wrk(out)
            after = [t - killed[0] for t in prober.failures if t >= killed[0]]
            return {"system": system, "rps": res.rps, "wrk_failed": res.non2xx + res.socket_errors,
                    "requests": res.requests, "probe_failed": len(prober.failures), "probes": prober.sent,
                    "recovery_ms": max(after) * 1000 if after else 0.0}
        finally:
            procs.stop_all()


def report(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"# fastgw resilience: one of 3 targets killed under load "
             f"({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})", ""]
    lines += [f"- {k}: {v}" for k, v in run.machine_info().items()]
    lines += ["", f"wrk -t1 -c{args.conns} -d{args.duration}s against `/3b` through the proxy (3 nginx origins); "
              f"one origin SIGKILLed {args.kill_at:g} s in; a prober GETs every 5 ms beside wrk. "
              f"{args.rounds} interleaved rounds; medians. Failed = non-2xx + socket errors (wrk) + the "
              "prober's failures; recovery = kill to the prober's last failure. Both proxies at their "
              "defaults (fastgw: outlier detection + one retry on another target; nginx: max_fails=1 "
              "fail_timeout=10s, proxy_next_upstream error timeout).", "",
              "| system | req/s | failed requests | of requests | recovery ms |", "|---|---|---|---|---|"]
    for system in SYSTEMS:
        rs = [r for r in rows if r["system"] == system]
        failed = statistics.median(r["wrk_failed"] + r["probe_failed"] for r in rs)
        total = statistics.median(r["requests"] + r["probes"] for r in rs)
        lines.append(f"| {system} | {statistics.median(r['rps'] for r in rs):,.0f} | {failed:g} | "
                     f"{failed / total:.4%} | {statistics.median(r['recovery_ms'] for r in rs):.0f} |")
    lines += ["", "## Every round", "",
              "| system | round | req/s | failed requests | wrk failed | prober failed | recovery ms |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['round']} | {r['rps']:.0f} | {r['wrk_failed'] + r['probe_failed']} | "
                     f"{r['wrk_failed']} | {r['probe_failed']} | {r['recovery_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--kill-at", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    run.preflight()
    progress = Progress("resilience", args.rounds * len(SYSTEMS), per_step=args.duration + 6)
    rows = []
    try:
        for rnd in range(args.rounds):
            for system in SYSTEMS:
                progress.step(f"round {rnd + 1}/{args.rounds} {system}", args.duration + 6)
                row = one_round(system, args)
                row["round"] = rnd + 1
                rows.append(row)
    finally:
        progress.finish()
    text = report(rows, args)
    print(text)
    if not args.no_save:
        run.save_report(text, "resilience")
    return 0


if __name__ == "__main__":
    sys.exit(main())
