"""One worker process: a uvloop event loop serving the listening sockets its supervisor handed it.

The supervisor (fastgw/process/supervisor.py) spawns it with inherited descriptors: the listening sockets
of its slot (fastgw/process/listeners.py), one end of a control socket pair (fastgw/process/control.py:
the config to serve, reloads, drain), and the shared-memory file (fastgw/process/shm.py).

A worker stops at once on SIGINT, drains on SIGTERM with its config's drain settings (the supervisor
normally sends "drain" instead), and exits when the control socket closes (its supervisor is gone).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any

import uvloop

from fastgw import __version__
from fastgw._core import tracecontext
from fastgw._core.balancer import UpstreamGroup
from fastgw._core.worker import Worker
from fastgw.clientaddr import nets
from fastgw.compile import build_groups, compile_config
from fastgw.config.root import Config, loads
from fastgw.observe import metrics
from fastgw.observe.access import AccessLog
from fastgw.observe.log import log, log_dropped_headers, set_context, set_level
from fastgw.observe.metrics import H_CONN_LIMIT, H_CONNS, H_GEN, H_PID, ROUTE_SLOTS
from fastgw.observe.tracing import SpanExporter
from fastgw.policies import POLICIES, admin_runtime, runtime
from fastgw.process.admission import max_connections, raise_nofile
from fastgw.process.control import MSG_LIMIT, read_msg, send_msg
from fastgw.process.listeners import Listeners
from fastgw.process.sections import attach_owners
from fastgw.process.shm import Layout, SharedMemory
from fastgw.upstream.discovery import Discovery

SWEEP_SECONDS = 0.25      # resolution of every timeout (header, idle, body, upstream, connect)
RETIRE_SECONDS = 300.0    # how long the idle pools of a replaced upstream group are still swept
AT_STOP = 2.0             # seconds each policy's stop hook (services["at_stop"]) may take
FRESH_IDLE = 1.0          # after the listeners close, a connection silent this long since it opened is closed
TUNNEL_SPREAD = 0.8       # the share of the drain timeout over which open tunnels get their 1012 close


def date_header(now: float) -> bytes:
    return b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"


class WorkerProcess:
    def __init__(self, slot: int, socks: list[socket.socket], ctl: socket.socket,
                 shm: SharedMemory | None) -> None:
        self.slot = slot
        self.socks = socks
        self.ctl = ctl
        self.shm = shm
        self.words: memoryview | None = metrics.words(shm, slot) if shm is not None else None
        self.cfg: Config | None = None
        self.groups: dict[str, UpstreamGroup] = {}
        self.retired: list[tuple[float, UpstreamGroup]] = []
        self.w: Worker | None = None
        self.listeners = Listeners(socks, ["plain"] * len(socks))
        self.access: AccessLog | None = None
        self.exporter: SpanExporter | None = None      # started with the first config that exports spans
        self.gen = 0
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.exit_reason = ""
        self.drain_task: asyncio.Task[None] | None = None
        self.services: dict[str, Any] | None = None    # long-lived resources of policies (compile_config)
        self.discovery: Discovery | None = None         # host-name targets' resolvers

    # -- config ----------------------------------------------------------------------------------------
    def apply(self, msg: dict[str, Any]) -> None:
        """Compile the config in `msg` and make it current (raises on a config the worker cannot use)."""
        loop = asyncio.get_running_loop()
        cfg = loads(msg["toml"], source=f"config generation {msg['gen']}", base=msg.get("base"))
        if self.services is None:
            self.services = {"loop": loop}
            for p in POLICIES:
                runtime(p).attach(self.shm, self.slot, self.services)
            attach_owners(self.shm, self.slot, self.services)
            if self.shm is not None:
                self.services["metrics_words"] = metrics.words(self.shm, self.slot)
        groups = build_groups(cfg, self.cfg, self.groups, self.services.get("upstream_table"))
        rt = compile_config(cfg, groups, {k: int(v) for k, v in msg["slots"].items()}, self.services)
        if self.w is None:
            self.w = Worker(rt, loop, os.urandom(5).hex().encode() + b"%x-" % self.slot)
            self.w.sweep(loop.time(), date_header(time.time()))
            if self.shm is not None and cfg.admin.metrics:
                self.w.attach_metrics(metrics.region(self.shm, self.slot), ROUTE_SLOTS)
            self.w.on_full = self.listeners.pause
            self.w.on_room = self.listeners.resume
        else:
            self.w.rt = rt          # the swap: new requests read the new Runtime from here on
        self.w.max_conns = max_connections(cfg.server.limits.max_connections, int(msg.get("workers", 1)))
        kept = {id(g) for g in groups.values()}
        for g in self.groups.values():
            if id(g) not in kept:   # replaced or removed upstream: close its pools as they go idle
                self.retired.append((loop.time() + RETIRE_SECONDS, g))
                for t in g.targets:
                    t.close_idle()
        self.cfg, self.groups, self.gen = cfg, groups, int(msg["gen"])
        if self.discovery is None:
            self.discovery = Discovery(self.services.get("upstream_table"))
        self.discovery.apply(cfg, groups)
        self.set_access_log(cfg)
        self.set_tracing(cfg)
        set_level(cfg.server.log_level)
        self.w.debug_log = log_dropped_headers if cfg.server.log_level == "debug" else None
        self.listeners.cfg = cfg
        if self.listeners.contexts:
            loop.create_task(self.listeners.reload_tls())
        if self.words is not None:
            self.words[H_GEN] = self.gen
            self.words[H_CONN_LIMIT] = self.w.max_conns

    def set_access_log(self, cfg: Config) -> None:
        assert self.w is not None
        on = cfg.server.access_log
        if on and self.access is None:
            self.access = AccessLog(self.slot, words=self.words)
        if self.access is not None:
            self.access.set_trusted(nets(cfg.server.trusted_proxies))
        if on and self.w.access_log is None:
            self.w.access_log = []
        elif not on and self.w.access_log is not None:
            self.flush_access_log()
            self.w.access_log = None

    def set_tracing(self, cfg: Config) -> None:
        """Span export ([tracing]): the exporter thread starts here, in the worker process, with the first
        config that names an endpoint (fastgw/observe/tracing.py); without one the buffer is detached."""
        assert self.w is not None
        if cfg.tracing.otlp_endpoint:
            if self.exporter is None:
                self.exporter = SpanExporter(self.words)
            self.w.spans = self.exporter.configure(cfg.tracing, {r.name: r.path for r in cfg.routes})
        else:
            self.w.spans = None

    def flush_access_log(self) -> None:
        if self.w is not None and self.w.access_log and self.access is not None:
            batch, self.w.access_log = self.w.access_log, []
            self.access.submit(batch)

    # -- periodic work ---------------------------------------------------------------------------------
    async def sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        w = self.w
        assert w is not None
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = loop.time()
            w.sweep(now, date_header(time.time()))
            if self.words is not None:
                self.words[H_CONNS] = w.nconns
            self.flush_access_log()
            if self.access is not None:
                self.access.publish(now)
            if self.retired:
                self.retired = [(t, g) for t, g in self.retired if t > now]
                for _, g in self.retired:
                    for target in g.targets:
                        target.close_idle()

    # -- control channel -------------------------------------------------------------------------------
    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            msg = await read_msg(reader)
            if msg is None:
                self.finish(1, "supervisor gone (control socket closed)")
                return
            op = msg.get("op")
            if op == "config":
                try:
                    self.apply(msg)
                except Exception as e:  # keep serving the previous config
                    log("config_rejected", level="error", gen=msg.get("gen"), error=str(e))
                    await send_msg(writer, {"ev": "rejected", "gen": msg.get("gen"), "error": str(e)})
                else:
                    log("config_applied", gen=self.gen, hash=msg.get("hash"))
                    await send_msg(writer, {"ev": "applied", "gen": self.gen})
            elif op == "drain":
                self.start_drain(float(msg["accept"]), float(msg["timeout"]))
            elif op == "stop":
                self.finish(0, "stop requested")
            elif op == "policy":                 # a policy's admin action (fastgw/policies: Registration.admin)
                reg = next((p for p in POLICIES if p.name == msg.get("policy") and p.admin), None)
                if reg is not None and self.services is not None:
                    log("policy_control", policy=reg.name, **admin_runtime(reg).control(msg, self.services))

    def start_drain(self, accept: float, timeout: float) -> None:
        if self.drain_task is None:
            self.listeners.draining = True
            self.drain_task = asyncio.get_running_loop().create_task(self.drain(accept, timeout))

    async def drain(self, accept: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        w = self.w
        assert w is not None
        log("draining", accept_seconds=accept, timeout_seconds=timeout, open_connections=len(w.conns))
        w.drain()
        end_accept = loop.time() + accept
        while loop.time() < end_accept:
            await asyncio.sleep(min(SWEEP_SECONDS, max(0.0, end_accept - loop.time())))
            w.drain()
        self.listeners.close()
        log("listeners_closed", open_connections=len(w.conns), open_tunnels=w.open_tunnels)
        # Tunnels (WebSocket) end with a close frame each, spread over most of the window so that their
        # clients reconnect elsewhere over time, not all at once; the rest of the window is their close.
        w.drain_tunnels(timeout * TUNNEL_SPREAD)
        end = loop.time() + timeout
        while (w.conns or w.open_tunnels) and loop.time() < end:
            w.drain(FRESH_IDLE)
            await asyncio.sleep(0.05)
        left = len(w.conns) + w.open_tunnels
        self.finish(0, "drained" if not left else f"drain timeout with {left} connections open")

    def finish(self, code: int, reason: str) -> None:
        if not self.stop.is_set():
            self.exit_code, self.exit_reason = code, reason
            self.stop.set()

    # -- main ------------------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.finish, 0, "SIGINT (fast stop)")
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)   # reloads come from the supervisor
        tracecontext.seed()       # this process's own sequence of trace and span ids
        reader, writer = await asyncio.open_connection(sock=self.ctl, limit=MSG_LIMIT)
        first = await read_msg(reader)
        if first is None or first.get("op") != "config":
            log("worker_exit", level="error", reason="no config from the supervisor")
            return 1
        self.apply(first)
        assert self.w is not None and self.cfg is not None
        await self.listeners.serve(self.w, self.cfg)
        if self.words is not None:
            self.words[H_PID] = os.getpid()
        sweeper = loop.create_task(self.sweeper())
        ctl_task = loop.create_task(self.control(reader, writer))
        log("worker_ready", gen=self.gen, version=__version__,
            listen=[_addr(s) for s in self.socks], max_connections=self.w.max_conns)
        await send_msg(writer, {"ev": "ready", "gen": self.gen})
        await self.stop.wait()
        self.listeners.stop()
        sweeper.cancel()
        ctl_task.cancel()
        if self.drain_task is not None:
            self.drain_task.cancel()
        self.flush_access_log()
        await self.run_at_stop()
        if self.exporter is not None:
            self.exporter.close()
        if self.access is not None:
            self.access.close()
            self.access.publish(loop.time(), final=True)
        if self.words is not None:
            self.words[H_CONNS] = 0
        log("worker_exit", code=self.exit_code, reason=self.exit_reason)
        writer.close()
        return self.exit_code

    async def run_at_stop(self) -> None:
        """The policies' last words (services["at_stop"]: coroutine functions; metering's final flush),
        each within AT_STOP seconds: a store that does not answer must not keep a stopping worker."""
        for fn in (self.services or {}).get("at_stop", ()):
            try:
                await asyncio.wait_for(fn(), AT_STOP)
            except Exception as e:          # noqa: BLE001 - a policy's failure must not stop the exit
                log("at_stop_failed", level="error", error=f"{type(e).__name__}: {e}")

    def on_sigterm(self) -> None:
        d = self.cfg.server.drain if self.cfg is not None else None
        self.start_drain(d.accept_seconds if d else 0.0, d.timeout_seconds if d else 0.0)


def _addr(s: socket.socket) -> str:
    host, port = s.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fastgw.process.worker", description="internal: one fastgw worker process")
    ap.add_argument("--slot", type=int, required=True)
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--listen-fds", required=True, help="comma-separated inherited listening sockets")
    ap.add_argument("--listen-kinds", default="", help='per socket "plain" or "tls:N" (server.tls[N])')
    ap.add_argument("--shm-fd", type=int, default=-1)
    ap.add_argument("--shm-layout", default="")
    args = ap.parse_args(argv)
    set_context(role="worker", worker=args.slot)
    raise_nofile()
    socks = [socket.socket(fileno=int(fd)) for fd in args.listen_fds.split(",") if fd]
    for s in socks:
        s.setblocking(False)
    ctl = socket.socket(fileno=args.ctl_fd)
    shm = (SharedMemory.attach(args.shm_fd, Layout.from_json(json.loads(args.shm_layout)))
           if args.shm_fd >= 0 else None)
    try:
        proc = WorkerProcess(args.slot, socks, ctl, shm)
        if args.listen_kinds:
            proc.listeners.kinds = args.listen_kinds.split(",")
        return uvloop.run(proc.run())
    except Exception as e:
        log("worker_exit", level="error", code=1, reason=f"{type(e).__name__}: {e}")
        return 1
