"""Traffic-policy benchmarks (issue 4), with the harness of bench/run.py (same cores, same origin, nginx as
the reference proxy measured in the same run, rounds interleaved, medians).

Scenarios:
  plain    fastgw without auth or limits (the baseline the policy costs are added to).
  gateway  fastgw with an API key (auth) and a local rate limit that is never exceeded, vs nginx as a
           plain reverse proxy: req/s and the proxy's CPU seconds per 100k requests (ratio to nginx).
  lease    the same with the limit kept in Redis (sync = "lease"), plus Redis commands per request at
           steady state, from INFO commandstats (a private redis-server on a free port).
  lease-cluster  the same against a 3-primary Redis Cluster (redis.mode = "cluster"): what Cluster mode
           adds per request.
  micro    buckets.Plan.check on one key, ns per call (the bar: 0.3 us).

Usage: python3 bench/ratelimit.py [--rounds N] [--duration S] [--conns 64] [--no-save]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import plots  # noqa: E402  (bench/plots.py: the PNG beside the result)
import run  # noqa: E402  (bench/run.py: the shared harness)
from progress import Progress  # noqa: E402
from rounds import table as rounds_table  # noqa: E402  (bench/rounds.py: the per-round table)

API_KEY = "bench-key-0123456789"
TEMPLATE = """# Written by bench/ratelimit.py: one worker, API key + a rate limit that is never exceeded.
[server]
listen = ["127.0.0.1:{port}"]
workers = 1
{extra_server}
[admin]
listen = "127.0.0.1:{admin_port}"
{extra_admin}

[upstreams.origin]
targets = ["127.0.0.1:{origin_port}"]
keepalive = 128

[consumers.bench]
api_keys_sha256 = ["@KEYHASH@"]
plan = "bench"

[[routes]]
name = "all"
path = "/*"
upstream = "origin"
auth = ["api_key"]
""".replace("@KEYHASH@", hashlib.sha256(API_KEY.encode()).hexdigest())

PLAN_LOCAL = '[plans.bench]\nlimits = [{ rate = "1000000/s", burst = 1000000 }]\nsync = "local"\n'
PLAN_LEASE = '[plans.bench]\nlimits = [{ rate = "1000000/s", burst = 1000000 }]\nsync = "lease"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = subprocess.Popen(["taskset", "-c", run.LOAD_CORE, shutil.which("redis-server") or "redis-server",
                          "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return p, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_cluster(tmp: str) -> tuple[list[subprocess.Popen], list[int]]:
    """3 primaries, no replicas, made with redis-cli --cluster create."""
    procs, ports = [], []
    for i in range(3):
        d = os.path.join(tmp, f"cluster{i}")
        os.makedirs(d)
        port = free_port()
        while port + 10000 > 65535:
            port = free_port()
        procs.append(subprocess.Popen(["taskset", "-c", run.LOAD_CORE, shutil.which("redis-server") or "redis-server",
                                       "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                       "--dir", d, "--cluster-enabled", "yes", "--cluster-config-file", "n.conf"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports.append(port)
    for port in ports:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2):
                    break
            except OSError:
                time.sleep(0.05)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    for _ in range(200):
        if all("cluster_state:ok" in redis_cmd(p, "CLUSTER INFO") for p in ports):
            break
        time.sleep(0.05)
    return procs, ports


def redis_cmd(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(line.encode() + b"\r\n")
        time.sleep(0.1)
        return s.recv(1 << 20).decode()


def script_calls(port: int) -> int:
    total = 0
    for row in redis_cmd(port, "INFO commandstats").splitlines():
        if row.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            total += int(row.split("calls=")[1].split(",")[0])
    return total


def wrk(port: int, conns: int, duration: float, key: bool) -> tuple[run.WrkResult, float]:
    argv = run.wrk_argv(port, "3b", conns, run.dur(duration), None)
    if key:
        argv = argv[:-1] + ["-H", f"X-API-Key: {API_KEY}", argv[-1]]
    return run.parse_wrk(run.run_wrk(argv, duration + 30)), duration


def measure(env: run.Env, port: int, pid: int, conns: int, duration: float, key: bool) -> dict:
    cpu0 = run.tree_cpu_seconds(pid)
    res, _ = wrk(port, conns, duration, key)
    cpu = run.tree_cpu_seconds(pid) - cpu0
    return {"rps": res.rps, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "requests": res.requests,
            "errors": res.non2xx + res.socket_errors, "cpu_per_100k": cpu / max(1, res.requests) * 1e5}


def wait_ready_with_key(port: int, proc: subprocess.Popen, log_path: str, name: str, timeout: float = 20.0) -> None:
    """run.wait_ready, with the API key (the benchmark route requires one)."""
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; log tail:\n{run.tail(log_path)}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            c.request("GET", "/3b", headers={"X-API-Key": API_KEY})
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200 and body == b"ok\n" and r.getheader("RateLimit"):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready on port {port}; log tail:\n{run.tail(log_path)}")


def micro() -> float:
    from fastgw._core import buckets as B

    t = B.Table(bytearray(B.table_bytes(1 << 14)))
    plan = B.Plan(t, [(B.RATE, 1000, 10**9, True, 7, 0)])
    keys = (12345,)
    n = 1_000_000
    best = float("inf")
    for _ in range(5):
        now = time.monotonic_ns()
        t0 = time.perf_counter_ns()
        for i in range(n):
            plan.check(keys, now + i, 0)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args(argv)
    run.preflight()
    tmp = tempfile.mkdtemp(prefix="fastgw-rl-bench-")
    env = run.Env(tmp=tmp, procs=run.Procs())
    rows: dict[str, list[dict]] = {"nginx": [], "plain": [], "gateway": [], "lease": [], "lease-cluster": []}
    lease_cmds: list[float] = []
    every: list[dict] = []
    cluster_cmds: list[float] = []
    redis = None
    cluster: list[subprocess.Popen] = []
    try:
        env.origin_port = run.start_origin(env)
        nginx_port, nginx = run.start_nginx_proxy(env)
        redis, redis_port = start_redis(tmp)
        os.makedirs(os.path.join(tmp, "plain"))
        plain_port, plain, _ = run.start_fastgw(run.Env(tmp=os.path.join(tmp, "plain"), procs=env.procs,
                                                        origin_port=env.origin_port))
        run.FASTGW_TOML = TEMPLATE     # the harness's config template, with auth and a plan
        run.wait_ready = wait_ready_with_key
        gw_port, gw, _ = run.start_fastgw(env, extra_admin=PLAN_LOCAL)
        # A second gateway for lease mode (its own config file).
        env2 = run.Env(tmp=os.path.join(tmp, "lease"), procs=env.procs, origin_port=env.origin_port)
        os.makedirs(env2.tmp)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        lease_port, lease, _ = run.start_fastgw(env2, extra_admin=PLAN_LEASE + f'\n[redis]\nurl = "{redis_url}"\n')
        cluster, cports = start_cluster(tmp)
        env3 = run.Env(tmp=os.path.join(tmp, "lease-cluster"), procs=env.procs, origin_port=env.origin_port)
        os.makedirs(env3.tmp)
        seeds = ", ".join(f'"127.0.0.1:{p}"' for p in cports)
        lc_port, lc, _ = run.start_fastgw(env3, extra_admin=PLAN_LEASE + f'\n[redis]\nmode = "cluster"\nnodes = [{seeds}]\n')
        order = [("nginx", nginx_port, nginx.pid, False), ("plain", plain_port, plain.pid, False),
                 ("gateway", gw_port, gw.pid, True),
                 ("lease", lease_port, lease.pid, True), ("lease-cluster", lc_port, lc.pid, True)]
        progress = Progress("ratelimit", a.rounds * len(order) + 2, per_step=a.duration + 0.5)
        progress.step("warm-up gateway and lease", 2)
        wrk(gw_port, a.conns, 1.0, True)          # warm-up (pools, lease sizes)
        wrk(lease_port, a.conns, 1.0, True)
        wrk(lc_port, a.conns, 1.0, True)
        for r in range(a.rounds):
            seq = order if r % 2 == 0 else list(reversed(order))
            for name, port, pid, key in seq:
                progress.step(f"/3b c{a.conns} round {r + 1}/{a.rounds} {name}", a.duration)
                before = script_calls(redis_port) if name == "lease" else 0
                cbefore = sum(script_calls(p) for p in cports) if name == "lease-cluster" else 0
                m = measure(env, port, pid, a.conns, a.duration, key)
                if name == "lease":
                    lease_cmds.append((script_calls(redis_port) - before) / max(1, m["requests"]))
                if name == "lease-cluster":
                    cluster_cmds.append((sum(script_calls(p) for p in cports) - cbefore) / max(1, m["requests"]))
                rows[name].append(m)
                every.append({"group": f"c{a.conns}", "system": name, "round": r, **m})
                print(f"round {r} {name}: {m['rps']:.0f} req/s, CPU {m['cpu_per_100k']:.2f} s/100k, "
                      f"errors {m['errors']}", flush=True)
        progress.step("bucket check micro-benchmark (5 x 1M calls)")
    finally:
        env.procs.stop_all()
        if redis is not None:
            redis.kill()
        for p in cluster:
            p.kill()
    ns = micro()
    progress.finish()
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("rps", "cpu_per_100k", "p50_ms", "p99_ms")}
           for k, v in rows.items()}
    lines = [f"# Traffic policy bench ({_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')})", "",
             f"{a.rounds} rounds x {a.duration:g} s, wrk -t1 -c{a.conns}, path /3b; proxies 1 worker on core "
             f"{run.PROXY_CORE}; origin, wrk and redis on core {run.LOAD_CORE}. Medians.", "",
             "| system | req/s | p50 ms | p99 ms | CPU s/100k | CPU ratio to nginx |", "|---|---|---|---|---|---|"]
    for k in ("nginx", "plain", "gateway", "lease", "lease-cluster"):
        m = med[k]
        lines.append(f"| {k} | {m['rps']:.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | {m['cpu_per_100k']:.2f} "
                     f"| {m['cpu_per_100k'] / med['nginx']['cpu_per_100k']:.2f} |")
    lines += ["", f"lease mode: Redis scripts per request (INFO commandstats): "
              f"{statistics.median(lease_cmds):.4f} (rounds: {', '.join(f'{x:.4f}' for x in lease_cmds)}); "
              f"against the cluster {statistics.median(cluster_cmds):.4f}",
              f"lease-cluster vs lease, CPU per request: "
              f"{med['lease-cluster']['cpu_per_100k'] / med['lease']['cpu_per_100k'] - 1:+.1%}",
              f"bucket check (buckets.Plan.check, one rate limit, best of 5 x 1M): {ns:.0f} ns", "",
              *rounds_table(every), ""]
    report = "\n".join(lines)
    print(report)
    if not a.no_save:
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        for name in (f"{stamp}-ratelimit.md", "latest-ratelimit.md"):
            with open(os.path.join(run.RESULTS_DIR, name), "w") as f:
                f.write(report)
        plots.after_run(os.path.join(run.RESULTS_DIR, "latest-ratelimit.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
