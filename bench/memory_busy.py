"""Busy-connection memory: what one client connection holding a request in flight (and its upstream
connection) costs the worker, in bytes of RSS. The figure behind CONNECTION_BUDGET in fastgw/process/admission.py
(the "auto" server.limits.max_connections).

Starts the test origin (tests/upstreams.py, answering after 30 s) and fastgw with 1 worker, opens 50
warm-up connections, then N more, each sending one request that stays in flight, and reports

    bytes per busy connection = (worker VmRSS with N more - VmRSS before) / N

Kernel socket buffers are not in RSS (they are charged to the cgroup, though).
Usage:  python3 bench/memory_busy.py [-n 1000] [--body BYTES]   (--body: a POST whose body stalls upstream)
"""
from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import GatewayLauncher  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from progress import Progress  # noqa: E402
from upstreams import EchoOrigin  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--body", type=int, default=0, help="POST this many body bytes (of twice as many announced)")
    args = ap.parse_args()
    need = 4 * args.n + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    origin = EchoOrigin().start()
    launcher = GatewayLauncher(Path(tempfile.mkdtemp()))
    gw = launcher.start({"echo": {"targets": [origin.addr], "timeout": "60s", "keepalive": args.n + 100}},
                        [{"name": "all", "path": "/*", "upstream": "echo"}],
                        limits={"header_timeout": "60s", "body_timeout": "60s", "max_connections": args.n + 100})
    socks = []

    def busy(path: bytes) -> None:
        s = socket.create_connection(("127.0.0.1", gw.port))
        if args.body:
            s.sendall(b"POST %s?pause_after=0&pause=30 HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n"
                      % (path, 2 * args.body) + b"x" * args.body)
        else:
            s.sendall(b"GET %s?delay=30 HTTP/1.1\r\nHost: b\r\n\r\n" % path)
        socks.append(s)

    progress = Progress("memory-busy", 2, heartbeat=0)
    try:
        progress.step("50 warm-up connections, then 1 s to settle", 1)
        for _ in range(50):
            busy(b"/warm")
        time.sleep(1)
        before = rss_kib(gw.serving_pid)
        progress.step(f"{args.n:,} busy connections, then 2 s to settle")
        for i in range(args.n):
            if i and i % 500 == 0:
                progress.note(f"{i:,} of {args.n:,} open")
            busy(b"/busy")
        time.sleep(2)
        after = rss_kib(gw.serving_pid)
        progress.finish()
        print(f"{args.n} busy connections (body {args.body} B): "
              f"{(after - before) * 1024 / args.n:,.0f} bytes of worker RSS each")
    finally:
        for s in socks:
            s.close()
        launcher.stop_all()
        origin.stop()


if __name__ == "__main__":
    main()
