#!/usr/bin/env python3
"""WebSocket benchmark: fastgw vs nginx relaying WebSocket tunnels, 1 KiB echo over 64 connections.

Same method as bench/run.py (docs/benchmarks.md "Method"): the proxy under test (1 worker) on core 0, the
origin and the load on core 1, both proxies measured in the same run with rounds interleaved; medians and
the ratio fastgw / nginx. Each connection does a real RFC 6455 handshake through the proxy, then sends a
masked 1 KiB binary frame and waits for its echo, again and again, for --seconds. The origin answers the
handshake (Sec-WebSocket-Accept computed) and then echoes the bytes it receives: after the 101 both
proxies only relay bytes, so what is measured is the relay, not a WebSocket library. nginx is configured
as its documentation says (proxy_http_version 1.1, the Upgrade and Connection headers passed on).

Usage:  python3 bench/websocket.py [--rounds 3] [--seconds 10] [--conns 64] [--size 1024]
Prints the table and writes bench/results/websocket-<timestamp>.md.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as _dt
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as base  # noqa: E402  (bench/run.py: process management, CPU accounting)
from progress import Progress  # noqa: E402

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

ORIGIN = textwrap.dedent('''
    import asyncio, base64, hashlib, sys, uvloop
    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t, self.buf, self.open = t, b"", False
        def data_received(self, data):
            if self.open:
                self.t.write(data)
                return
            self.buf += data
            if b"\\r\\n\\r\\n" not in self.buf:
                return
            head, _, rest = self.buf.partition(b"\\r\\n\\r\\n")
            key = [l.split(b":", 1)[1].strip() for l in head.split(b"\\r\\n")
                   if l.lower().startswith(b"sec-websocket-key:")][0]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.t.write(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\n"
                         b"Connection: Upgrade\\r\\nSec-WebSocket-Accept: " + accept + b"\\r\\n\\r\\n")
            self.open = True
            if rest:
                self.t.write(rest)

    async def main():
        srv = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
        await asyncio.Event().wait()

    uvloop.run(main())
''')

NGINX = """
worker_processes 1;
daemon off;
pid @DIR@/ws-proxy.pid;
error_log @DIR@/ws-proxy-error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    server {
        listen 127.0.0.1:@PORT@ backlog=4096;
        location / {
            proxy_pass http://127.0.0.1:@ORIGIN_PORT@;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 300s;
        }
    }
}
"""

FASTGW = """
[server]
listen = ["127.0.0.1:{port}"]
[admin]
listen = "127.0.0.1:{admin}"
[upstreams.origin]
targets = ["127.0.0.1:{origin}"]
[[routes]]
name = "ws"
path = "/*"
upstream = "origin"
websocket = true
"""


def frame(payload: bytes) -> bytes:
    """A masked binary frame (client to server), mask 0 (valid; the proxies do not look inside)."""
    n = len(payload)
    head = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big") if n >= 126 else bytes((0x82, 0x80 | n))
    return head + b"\0\0\0\0" + payload


async def client(port: int, msg: bytes, stop: float, counts: list[int]) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    w.write(b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    head = await r.readuntil(b"\r\n\r\n")
    want = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if not head.startswith(b"HTTP/1.1 101") or want not in head:
        raise RuntimeError(f"handshake failed: {head[:200]!r}")
    n = 0
    while time.monotonic() < stop:
        w.write(msg)
        await r.readexactly(len(msg))
        n += 1
    counts.append(n)
    w.close()


async def load(port: int, conns: int, size: int, seconds: float) -> float:
    msg = frame(os.urandom(size))
    counts: list[int] = []
    t0 = time.monotonic()
    await asyncio.gather(*(client(port, msg, t0 + seconds, counts) for _ in range(conns)))
    return sum(counts) / (time.monotonic() - t0)


def measure(port: int, proc_pid: int, conns: int, size: int, seconds: float) -> tuple[float, float]:
    """(messages/s, proxy CPU seconds per 1,000 messages)"""
    import uvloop
    cpu0 = base.tree_cpu_seconds(proc_pid)
    rate = uvloop.run(load(port, conns, size, seconds))
    cpu = base.tree_cpu_seconds(proc_pid) - cpu0
    return rate, cpu / (rate * seconds) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args(argv)
    for tool in ("nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool}")
    tmp = tempfile.mkdtemp(prefix="fastgw-wsbench-")
    os.chmod(tmp, 0o755)
    env = base.Env(tmp, base.Procs())
    try:
        oport = base.free_port()
        env.procs.spawn("origin", ["taskset", "-c", base.LOAD_CORE, sys.executable, "-c", ORIGIN, str(oport)],
                        os.path.join(tmp, "origin.log"))
        nport = base.free_port()
        conf = os.path.join(tmp, "ws-proxy.conf")
        with open(conf, "w") as f:
            f.write(NGINX.replace("@DIR@", tmp).replace("@PORT@", str(nport)).replace("@ORIGIN_PORT@", str(oport)))
        nginx = env.procs.spawn("nginx", ["taskset", "-c", base.PROXY_CORE, "nginx", "-p", tmp, "-e",
                                          os.path.join(tmp, "ws-proxy-error.log"), "-c", conf],
                                os.path.join(tmp, "ws-proxy.log"))
        gport = base.free_port()
        cfg = os.path.join(tmp, "fastgw.toml")
        with open(cfg, "w") as f:
            f.write(FASTGW.format(port=gport, admin=base.free_port(), origin=oport))
        child_env = {**os.environ, "PYTHONPATH": base.REPO_DIR}
        gw = env.procs.spawn("fastgw", base.gateway_argv(base.DEFAULT_GATEWAY_CMD, cfg),
                             os.path.join(tmp, "fastgw.log"), env=child_env, cwd=base.REPO_DIR)
        time.sleep(3.0)
        for p in (nginx, gw):
            if p.poll() is not None:
                sys.exit(f"a proxy exited: see {p.log_path}")   # type: ignore[attr-defined]
        rows: dict[str, list[tuple[float, float]]] = {"fastgw": [], "nginx": []}
        progress = Progress("websocket", 2 * args.rounds, per_step=args.seconds)
        for rnd in range(args.rounds):
            for name, port, p in (("fastgw", gport, gw), ("nginx", nport, nginx)):
                progress.step(f"c{args.conns} {args.size}B round {rnd + 1}/{args.rounds} {name}", args.seconds)
                rate, cpu = measure(port, p.pid, args.conns, args.size, args.seconds)
                rows[name].append((rate, cpu))
                progress.note(f"{name}: {rate:,.0f} msgs/s, {cpu:.3f} CPU s per 1k msgs")
        progress.finish()
    finally:
        env.procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {n: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for n, v in rows.items()}
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = [f"# WebSocket echo, {args.conns} connections, {args.size}-byte messages ({stamp})", "",
           f"{args.rounds} rounds of {args.seconds:g} s, interleaved; medians. Proxies on core {base.PROXY_CORE}, "
           f"origin and load on core {base.LOAD_CORE}.", "",
           "| proxy | messages/s | proxy CPU s per 1,000 messages |", "|---|---|---|"]
    for n in ("fastgw", "nginx"):
        out.append(f"| {n} | {med[n][0]:,.0f} | {med[n][1]:.3f} |")
    out += ["", f"fastgw / nginx: {med['fastgw'][0] / med['nginx'][0]:.2f}x messages/s, "
            f"{med['fastgw'][1] / med['nginx'][1]:.2f}x CPU per message", ""]
    text = "\n".join(out)
    print(text)
    os.makedirs(base.RESULTS_DIR, exist_ok=True)
    with open(os.path.join(base.RESULTS_DIR, f"websocket-{stamp}.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
