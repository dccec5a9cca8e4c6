#!/usr/bin/env python3
"""Cache hits side by side: fastgw's response cache against nginx's proxy_cache kept on a tmpfs (memory
backed), same origin, same core, same load, rounds interleaved.

Both proxies run one worker pinned to core 0 (taskset), in front of bench/run.py's nginx origin; wrk
(-t1, core 1) asks for one URL that each proxy has already stored: a 1 KiB and a 64 KiB response. The origin
sends no Cache-Control, so each proxy is told the freshness the same way: nginx `proxy_cache_valid 200
1d`, fastgw the route's `response_headers.add = { "Cache-Control" = "max-age=86400" }`. Per round and
proxy: req/s, p50/p99, CPU per request (user+system of the proxy's processes, /proc), and the origin's
request count (must not move during a round: every request a hit). Medians over rounds; ratios to nginx.

    python3 bench/cache.py [--rounds 3] [--duration 5] [--conns 64]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: the shared harness)
from progress import Progress  # noqa: E402

SIZES = {"1k": 1024, "64k": 65536}
CLEANUP: list[str] = []           # the tmpfs cache directories to remove at the end

NGINX_CACHE = """# nginx proxy_cache on a tmpfs (written by bench/cache.py)
worker_processes 1;
daemon off;
pid @DIR@/cache-proxy.pid;
error_log @DIR@/cache-proxy-error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    proxy_temp_path @CACHE@/temp;
    client_body_temp_path @DIR@/cache-body;
    proxy_cache_path @CACHE@/zone levels=1:2 keys_zone=bench:10m max_size=256m inactive=1d use_temp_path=off;
    upstream origin { server 127.0.0.1:@ORIGIN_PORT@; keepalive 128; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_set_header X-Request-ID $request_id;
            add_header X-Request-ID $request_id always;
            add_header X-Cache-Status $upstream_cache_status always;
        }
    }
}
"""

FASTGW_EXTRA = '[cache.bench]\nmax_memory = "64MiB"\n'
FASTGW_ROUTE = 'cache = "bench"\n[routes.response_headers]\nadd = { "Cache-Control" = "max-age=86400" }\n'


def start_nginx_cache(env: run.Env) -> tuple[int, object]:
    port = run.free_port()
    cache = tempfile.mkdtemp(prefix="fastgw-nginx-cache-", dir="/dev/shm")
    CLEANUP.append(cache)
    os.chmod(cache, 0o777)          # nginx's worker (nobody, when started as root) writes the entries
    conf = os.path.join(env.tmp, "cache-proxy.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CACHE.replace("@DIR@", env.tmp).replace("@CACHE@", cache)
                .replace("@ORIGIN_PORT@", str(env.origin_port)).replace("@PORT@", str(port)))
    err = os.path.join(env.tmp, "cache-proxy-error.log")
    p = env.procs.spawn("nginx-cache", ["taskset", "-c", run.PROXY_CORE, "nginx", "-p", env.tmp, "-e", err, "-c", conf],
                        os.path.join(env.tmp, "cache-proxy.log"))
    run.wait_ready(port, p, err, "nginx-cache")
    return port, p


def start_fastgw(env: run.Env) -> tuple[int, object]:
    """bench/run.py's gateway (one worker, one catch-all route to the origin), the route cached."""
    port = run.free_port()
    cfg = os.path.join(env.tmp, "fastgw-cache.toml")
    with open(cfg, "w") as f:
        f.write(run.FASTGW_TOML.format(port=port, origin_port=env.origin_port, extra_server="",
                                       admin_port=run.free_port(), extra_admin=FASTGW_EXTRA) + FASTGW_ROUTE)
    log = os.path.join(env.tmp, "fastgw-cache.log")
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDEVMODE", "PYTHONASYNCIODEBUG")}
    child_env["PYTHONPATH"] = run.REPO_DIR
    p = env.procs.spawn("fastgw", run.gateway_argv(run.DEFAULT_GATEWAY_CMD, cfg), log, env=child_env, cwd=run.REPO_DIR)
    run.wait_ready(port, p, log, "fastgw")
    return port, p


def one(port: int, proc: object, path: str, conns: int, duration: int) -> run.WrkResult:
    before = run.tree_cpu_seconds(proc.pid)   # type: ignore[attr-defined]
    out = run.run_wrk(["taskset", "-c", run.LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
                       f"http://127.0.0.1:{port}{path}"], duration + 30)
    r = run.parse_wrk(out)
    r.cpu_s = run.tree_cpu_seconds(proc.pid) - before   # type: ignore[attr-defined]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    a = ap.parse_args()
    env = run.Env(tmp=tempfile.mkdtemp(prefix="fastgw-bench-cache-"), procs=run.Procs())
    os.chmod(env.tmp, 0o755)        # nginx workers run as nobody when we are root: they must read www/
    try:
        run.start_origin(env)
        for name, size in SIZES.items():
            with open(os.path.join(env.tmp, "www", name), "wb") as f:
                f.write(b"c" * (size - 1) + b"\n")
        proxies = {"nginx": start_nginx_cache(env), "fastgw": start_fastgw(env)}
        for name, (port, _) in proxies.items():
            for size in SIZES:
                for _ in range(3):                      # store, then hit
                    status, body = run.http_get(port, f"/{size}")
                    assert status == 200 and len(body) == SIZES[size], (name, size, status, len(body))
        results: dict[tuple[str, str], list[run.WrkResult]] = {}
        progress = Progress("cache", a.rounds * len(SIZES) * len(proxies), per_step=a.duration)
        for rnd in range(a.rounds):
            for size in SIZES:
                for name, (port, proc) in proxies.items():
                    progress.step(f"{size} hit round {rnd + 1}/{a.rounds} {name}", a.duration)
                    origin_before = run.tree_cpu_seconds(env.origin.pid)   # type: ignore[union-attr]
                    r = one(port, proc, f"/{size}", a.conns, a.duration)
                    origin_cpu = run.tree_cpu_seconds(env.origin.pid) - origin_before   # type: ignore[union-attr]
                    assert r.non2xx == 0 and r.socket_errors == 0, r.raw
                    print(f"round {rnd + 1} {size:>3} {name:>6}: {r.rps:10.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                          f"p99 {r.p99_ms:6.2f} ms  CPU {r.cpu_s / r.requests * 1e6:6.1f} us/req  "
                          f"origin CPU {origin_cpu:.2f} s", flush=True)
                    results.setdefault((size, name), []).append(r)
        progress.finish()
        print("\n| response | proxy | req/s | p50 ms | p99 ms | CPU us/req | req/s vs nginx | CPU vs nginx |")
        print("|---|---|---|---|---|---|---|---|")
        for size in SIZES:
            med = {}
            for name in proxies:
                rs = results[(size, name)]
                med[name] = (statistics.median(r.rps for r in rs), statistics.median(r.p50_ms for r in rs),
                             statistics.median(r.p99_ms for r in rs),
                             statistics.median(r.cpu_s / r.requests * 1e6 for r in rs))
            for name in proxies:
                rps, p50, p99, cpu = med[name]
                print(f"| {size} hit | {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | "
                      f"{rps / med['nginx'][0]:.2f}x | {cpu / med['nginx'][3]:.2f}x |")
        return 0
    finally:
        env.procs.stop_all()
        for d in CLEANUP:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
