"""One serving process: a uvloop event loop, the listening sockets, the Worker state and its sweep.

Issue 2 serves from a single process; the supervisor with SO_REUSEPORT workers builds on `serve_sockets`.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from email.utils import formatdate

import uvloop

from fastgw import __version__
from fastgw._core.proxy import Worker
from fastgw.compile import compile_config, split_hostport
from fastgw.config import Config

SWEEP_SECONDS = 0.25   # resolution of every timeout (header, idle, body, upstream, connect)


def log(event: str, **fields: object) -> None:
    """Lifecycle events as JSON lines on stdout."""
    fields = {"ts": round(time.time(), 3), "event": event, "pid": os.getpid(), **fields}
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def bind(addr: str, reuse_port: bool = True, backlog: int = 4096) -> socket.socket:
    host, port = split_hostport(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _date_header(now: float) -> bytes:
    return b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"


async def serve_sockets(cfg: Config, socks: list[socket.socket], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    w = Worker(compile_config(cfg), loop, os.urandom(6).hex().encode())
    w.sweep(loop.time(), _date_header(time.time()))
    servers = [await loop.create_server(w.protocol, sock=s) for s in socks]

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            w.sweep(loop.time(), _date_header(time.time()))

    task = loop.create_task(sweeper())
    log("listening", listen=[f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in socks],
        version=__version__)
    try:
        await stop.wait()
    finally:
        for srv in servers:
            srv.close()
        w.drain()
        task.cancel()


def serve(cfg: Config, config_path: str | None = None, workers: int | None = None) -> int:
    """`fastgw run`: serve `cfg` in this process until SIGTERM/SIGINT."""
    socks = [bind(a) for a in cfg.server.listen]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_sockets(cfg, socks, stop)

    uvloop.run(main())
    log("stopped")
    return 0
