"""The store client's cost per call in each Redis mode, on real redis-server processes: a standalone
Redis and a 3-primary Redis Cluster (made with `redis-cli --cluster create`), the same client code
(fastgw/store/redis.py) and the traffic policy's TAKE script on keys spread over every slot.

Per mode: bursts of 100 TAKE calls issued in one event-loop iteration (as 100 concurrent strict requests
would), awaited together. Reported: the client's CPU per call (process CPU time of this process, Redis
runs in its own processes), the wall time of a burst (round trips: a cluster burst is one write per
primary, in parallel), and Redis' own time per call (INFO commandstats, usec_per_call) — the per-node
command cost that bench/scale_sim.py is calibrated with.

Lease mode touches the client once per refill (a batch of tokens), so its CPU per request in cluster
mode differs from standalone by (cluster - standalone CPU per call) x refills per request.

usage: python3 bench/redis_modes.py [--bursts 300] [--save]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from progress import Progress  # noqa: E402  (bench/progress.py)

from fastgw.policies.ratelimit.scripts import SCRIPTS, TAKE, TAKE_KEY  # noqa: E402
from fastgw.store.config import RedisSettings  # noqa: E402
from fastgw.store.redis import connect  # noqa: E402

BURST = 100
# One rate limit (1,000,000/s, never refused), as the traffic policy sends it.
ARGS = [1, 0, 1, 1, 1_000_000, 1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port if port + 10000 <= 65535 else _port()


def _start(directory: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    directory.mkdir(parents=True, exist_ok=True)
    port = _port()
    p = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(directory), *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return p, port
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def _cmd(port: int, *args: str) -> str:
    with socket.create_connection(("127.0.0.1", port), 2) as s:
        s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args))
        time.sleep(0.1)
        return s.recv(1 << 20).decode()


def _usec_per_call(ports: list[int]) -> float:
    calls = usec = 0.0
    for port in ports:
        for row in _cmd(port, "INFO", "commandstats").splitlines():
            if row.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
                fields = dict(kv.split("=") for kv in row.split(":", 1)[1].split(","))
                calls += int(fields["calls"])
                usec += int(fields["usec"])
    return usec / max(1, calls)


async def _measure(rd: RedisSettings, bursts: int) -> dict:
    loop = asyncio.get_running_loop()
    client = connect(rd, SCRIPTS, loop)
    for _ in range(500):
        if client.up and (rd.mode != "cluster" or len(client.primaries) == 3 and all(n.up for n in client.primaries)):
            break
        await asyncio.sleep(0.01)
    keys = [[TAKE_KEY % (b"%x" % (i * 2654435761 % (1 << 32)), b"bench", 0)] for i in range(BURST * 10)]
    walls = []
    cpu0 = time.process_time()
    for b in range(bursts):
        t = time.perf_counter()
        futs = [client.run(TAKE, keys[(b * BURST + i) % len(keys)], ARGS) for i in range(BURST)]
        await asyncio.gather(*futs)
        walls.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    client.close()
    return {"cpu_us_per_call": cpu / (bursts * BURST) * 1e6, "burst_ms_p50": statistics.median(walls) * 1e3,
            "writes_per_burst": len(client.nodes())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bursts", type=int, default=300)
    ap.add_argument("--save", action="store_true", help="write bench/results/redis-modes.json")
    a = ap.parse_args(argv)
    procs: list[subprocess.Popen] = []
    out: dict = {}
    progress = Progress("redis_modes", 7)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            progress.step("starting a standalone Redis and a 3-primary cluster")
            p, port = _start(Path(tmp) / "single", [])
            procs.append(p)
            nodes = []
            for i in range(3):
                p, cport = _start(Path(tmp) / f"c{i}", ["--cluster-enabled", "yes", "--cluster-config-file", "n.conf"])
                procs.append(p)
                nodes.append(cport)
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n}" for n in nodes], "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            for _ in range(200):
                if all("cluster_state:ok" in _cmd(n, "CLUSTER", "INFO") for n in nodes):
                    break
                time.sleep(0.05)
            for mode, rd, ports in (
                    ("standalone", RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout=1.0), [port]),
                    ("cluster", RedisSettings(mode="cluster", nodes=[f"127.0.0.1:{n}" for n in nodes], timeout=1.0),
                     nodes)):
                rounds = []
                for r in range(3):
                    progress.step(f"{mode} round {r + 1}/3 ({a.bursts} bursts)")
                    rounds.append(asyncio.run(_measure(rd, a.bursts)))
                best = min(rounds, key=lambda r: r["cpu_us_per_call"])
                best["redis_usec_per_call"] = _usec_per_call(ports)
                out[mode] = best
                print(f"{mode:>10}: client CPU {best['cpu_us_per_call']:.2f} us/call, burst of {BURST} "
                      f"{best['burst_ms_p50']:.2f} ms (p50, {best['writes_per_burst']} node(s) in parallel), Redis "
                      f"{best['redis_usec_per_call']:.2f} us/call")
        finally:
            for p in procs:
                p.kill()
                p.wait()
    progress.finish()
    extra = out["cluster"]["cpu_us_per_call"] / out["standalone"]["cpu_us_per_call"] - 1
    print(f"cluster vs standalone: client CPU per call {extra:+.1%}")
    if a.save:
        (ROOT / "bench" / "results" / "redis-modes.json").write_text(json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "burst": BURST, **out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
