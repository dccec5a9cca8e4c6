"""One worker process: a uvloop event loop serving the listening sockets its supervisor handed it.

The supervisor (fastgw/supervisor.py) spawns `python -m fastgw.worker` with inherited descriptors: the
listening sockets of its slot, one end of a control socket pair, and the shared-memory file. Over the
control socket it sends JSON lines:

  {"op": "config", "gen": N, "hash": H, "toml": TEXT, "slots": {route: metrics slot}, "workers": N}
      the first one starts serving; later ones are reloads: the worker compiles the new config and swaps
      one reference (Worker.rt). Each request keeps the Runtime it started with, so requests in flight
      finish on the old config. Upstream groups whose settings did not change are carried over with their
      warm keep-alive pools; pools of replaced groups are closed as their connections come back idle.
  {"op": "drain", "accept": S, "timeout": T}
      SIGTERM semantics (DESIGN.md §2): keep accepting for S seconds with keep-alive off, then close the
      listeners, give requests in flight up to T seconds, exit 0.

and the worker answers {"ev": "ready" | "applied" | "rejected", "gen": N, ...}. The supervisor validated
the text before sending it, and the text travels with the message, so every worker compiles exactly the
bytes the supervisor checked (not whatever the file holds by then).

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
import sys
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any

import uvloop

from fastgw import __version__, proxyproto
from fastgw._core.proxy import UpstreamGroup, Worker
from fastgw.admission import HANDSHAKE_TIMEOUT, Listener, max_connections, raise_nofile
from fastgw.clientaddr import nets
from fastgw.compile import build_groups, compile_config, split_hostport
from fastgw.config import Config, loads
from fastgw.metrics import H_CONN_LIMIT, H_CONNS, H_GEN, H_PID, ROUTE_SLOTS, Layout, SharedMemory
from fastgw.observe import AccessLog, log, log_dropped_headers, set_context, set_level
from fastgw.policies import authfail, ratelimit

SWEEP_SECONDS = 0.25      # resolution of every timeout (header, idle, body, upstream, connect)
BACKLOG = 4096            # listen(2) backlog; the kernel caps it at net.core.somaxconn
MSG_LIMIT = 64 * 1024 * 1024
RETIRE_SECONDS = 300.0    # how long the idle pools of a replaced upstream group are still swept
FRESH_IDLE = 1.0          # after the listeners close, a connection silent this long since it opened is closed


def bind(addr: str, reuse_port: bool = True, backlog: int = BACKLOG) -> socket.socket:
    host, port = split_hostport(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def date_header(now: float) -> bytes:
    return b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"


async def send_msg(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(json.dumps(msg).encode() + b"\n")
    await writer.drain()


async def read_msg(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    msg = json.loads(line)
    assert isinstance(msg, dict)
    return msg



def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


PROXY_TLS_PEEK = proxyproto.V2_MAX     # the longest PROXY header we accept (v1 is shorter)
PROXY_TLS_PENDING = 4096               # connections waiting for their PROXY header or TLS handshake, per worker


class ProxiedTLS:
    """A TLS listener behind PROXY protocol (server.proxy_protocol with [[server.tls]]): the balancer's
    header comes before the TLS handshake, so connections are accepted here, the header is read without
    reading past it (MSG_PEEK shows what is there; bytes of an incomplete header are consumed, since they
    can only be header; the complete header is consumed to its exact length, so a ClientHello sent in the
    same segment stays in the kernel buffer), and the socket is handed to the TLS server machinery
    (loop.connect_accepted_socket) with the client address from the header. A connection without a valid
    header within server.limits.header_timeout is closed, as on plain listeners; at most PROXY_TLS_PENDING
    connections may be waiting for their header or handshake at once (more are closed at accept).
    Each counts against server.limits.max_connections from its accept: at the cap the loop waits
    (pause/resume) and the kernel backlog holds new connections."""

    def __init__(self, wp: WorkerProcess, sock: socket.socket, n: int) -> None:
        self.wp = wp
        self.sock = sock
        self.n = n
        self.ctx = wp.tls_contexts_now[n]        # kept if a reload removes this [[server.tls]] table
        self.sock.setblocking(False)
        self.pending: set[asyncio.Task[None]] = set()
        self.open = asyncio.Event()
        self.open.set()
        self.waiter: asyncio.Task[tuple[socket.socket, Any]] | None = None
        self.task = asyncio.get_running_loop().create_task(self.accept())
        self.task.add_done_callback(lambda _t: self.sock.close())

    def close(self) -> None:
        self.task.cancel()                       # the listening socket closes once the accept loop ends

    def pause(self) -> None:
        self.open.clear()
        if self.waiter is not None:
            self.waiter.cancel()                 # an accept not yet made is not made
            self.waiter = None

    def resume(self) -> None:
        self.open.set()

    async def accept(self) -> None:
        loop = asyncio.get_running_loop()
        w = self.wp.w
        me = asyncio.current_task()
        assert w is not None and me is not None
        while True:
            await self.open.wait()
            self.waiter = loop.create_task(loop.sock_accept(self.sock))
            try:
                conn, _ = await self.waiter
            except asyncio.CancelledError:
                if me.cancelling():
                    raise                         # close()
                continue                          # pause()
            except OSError as e:                  # EMFILE and the like: back off, keep the listener
                log("accept_failed", level="warning", error=str(e))
                await asyncio.sleep(0.1)
                continue
            if len(self.pending) >= PROXY_TLS_PENDING:
                conn.close()
                continue
            w.admit()
            t = loop.create_task(self.serve(conn))
            self.pending.add(t)
            t.add_done_callback(self.pending.discard)

    async def serve(self, conn: socket.socket) -> None:
        """Serve one accepted connection, admitted (Worker.admit) by the accept loop: until the
        protocol is made (and counts itself), every way out gives the place back."""
        made = False
        try:
            made = await self.hand_over(conn)
        finally:
            if not made and self.wp.w is not None:
                self.wp.w.release()

    async def hand_over(self, conn: socket.socket) -> bool:
        loop = asyncio.get_running_loop()
        cfg, w = self.wp.cfg, self.wp.w
        assert cfg is not None and w is not None
        conn.setblocking(False)
        try:
            hdr = await asyncio.wait_for(self.read_header(conn), cfg.server.limits.header_timeout)
        except (TimeoutError, proxyproto.ProxyProtocolError, OSError):
            conn.close()
            return False
        source = hdr.source.encode() if hdr.source is not None else None
        contexts = self.wp.tls_contexts_now
        if self.n < len(contexts):
            self.ctx = contexts[self.n]

        made = False

        def make() -> Any:
            nonlocal made
            h = w.tls_protocol(True)             # counted at accept already; from here it counts itself
            made = True
            h.proxied_peer = source
            return h
        try:
            await loop.connect_accepted_socket(make, conn, ssl=self.ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError):          # a failed or slow handshake (ssl.SSLError is an OSError)
            conn.close()
        except Exception as e:                   # not the client's doing: say so, keep serving
            log("tls_handover_failed", level="error", error=f"{type(e).__name__}: {e}")
            conn.close()
        return made

    @staticmethod
    async def read_header(conn: socket.socket) -> proxyproto.Header:
        loop = asyncio.get_running_loop()
        fd = conn.fileno()
        got = b""                                # bytes of the header consumed so far
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            data = conn.recv(PROXY_TLS_PEEK - len(got), socket.MSG_PEEK)
            if not data:
                raise OSError("connection closed before the PROXY header")
            res = proxyproto.parse(got + data)
            if res is not None:
                if res.consumed > len(got):
                    conn.recv(res.consumed - len(got))   # exactly the rest of the header
                return res
            # Incomplete: everything seen so far can only be header (v1: no CRLF yet; v2: fewer bytes
            # than its length field says), so consume it: the socket is readable again only when more
            # arrives (no wake-up loop on a client that stops mid-header).
            got += conn.recv(len(data))
            if len(got) >= PROXY_TLS_PEEK:
                raise proxyproto.ProxyProtocolError("PROXY header too long")


class WorkerProcess:
    def __init__(self, slot: int, socks: list[socket.socket], ctl: socket.socket,
                 shm: SharedMemory | None) -> None:
        self.slot = slot
        self.socks = socks
        self.ctl = ctl
        self.shm = shm
        self.words: memoryview | None = shm.words(slot) if shm is not None else None
        self.cfg: Config | None = None
        self.groups: dict[str, UpstreamGroup] = {}
        self.retired: list[tuple[float, UpstreamGroup]] = []
        self.w: Worker | None = None
        self.servers: list[Any] = []               # Listeners and ProxiedTLS loops (close, pause, resume)
        self.access: AccessLog | None = None
        self.gen = 0
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.exit_reason = ""
        self.drain_task: asyncio.Task[None] | None = None
        self.kinds: list[str] = ["plain"] * len(socks)     # per socket: "plain" or "tls:<server.tls index>"
        self.tls_servers: dict[int, Listener] = {}
        self.tls_contexts_now: list[Any] = []         # current [[server.tls]] contexts (ProxiedTLS reads them)
        self.services: dict[str, Any] | None = None    # long-lived resources of policies (compile_config)

    # -- config ----------------------------------------------------------------------------------------
    def apply(self, msg: dict[str, Any]) -> None:
        """Compile the config in `msg` and make it current (raises on a config the worker cannot use)."""
        loop = asyncio.get_running_loop()
        cfg = loads(msg["toml"], source=f"config generation {msg['gen']}")
        groups = build_groups(cfg, self.cfg, self.groups)
        if self.services is None:
            self.services = ratelimit.worker_services(self.shm, self.slot, loop)
            authfail.attach(self.shm, self.services)
            if self.shm is not None:
                self.services["metrics_words"] = self.shm.words(self.slot, ROUTE_SLOTS)
        rt = compile_config(cfg, groups, {k: int(v) for k, v in msg["slots"].items()}, self.services)
        if self.w is None:
            self.w = Worker(rt, loop, os.urandom(5).hex().encode() + b"%x-" % self.slot)
            self.w.sweep(loop.time(), date_header(time.time()))
            if self.shm is not None and cfg.admin.metrics:
                self.w.attach_metrics(self.shm.region(self.slot), ROUTE_SLOTS)
            self.w.on_full = self.pause_accepting
            self.w.on_room = self.resume_accepting
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
        self.set_access_log(cfg)
        set_level(cfg.server.log_level)
        self.w.debug_log = log_dropped_headers if cfg.server.log_level == "debug" else None
        if self.tls_contexts_now:
            loop.create_task(self.reload_tls())
        if self.words is not None:
            self.words[H_GEN] = self.gen
            self.words[H_CONN_LIMIT] = self.w.max_conns

    # -- listeners (issue 5: PROXY protocol, TLS) -------------------------------------------------------
    def protocol_factory(self) -> Any:
        """Plain listeners: ClientConn, which first reads a PROXY header when server.proxy_protocol."""
        w = self.w
        assert w is not None and self.cfg is not None
        if not self.cfg.server.proxy_protocol:
            return w.protocol

        def make() -> Any:
            c = w.protocol()
            c.want_proxy = True
            return c
        return make

    async def serve_listeners(self) -> None:
        assert self.w is not None and self.cfg is not None
        contexts = self.tls_contexts_now = self.tls_contexts()
        for i, (s, kind) in enumerate(zip(self.socks, self.kinds, strict=True)):
            if kind == "plain":
                srv = Listener(s, self.protocol_factory(), BACKLOG)
            elif self.cfg.server.proxy_protocol:
                self.servers.append(ProxiedTLS(self, s.dup(), int(kind[4:])))
                continue
            else:
                srv = Listener(s, self.w.tls_protocol, BACKLOG, ssl=contexts[int(kind[4:])])
                self.tls_servers[i] = srv
            await srv.start()
            self.servers.append(srv)
        if self.w.full:
            self.pause_accepting()

    def pause_accepting(self) -> None:
        """The worker holds server.limits.max_connections connections (Worker.admit): stop accepting."""
        if self.w is not None and self.w.full:
            for srv in self.servers:
                srv.pause()

    def resume_accepting(self) -> None:
        for srv in self.servers:
            srv.resume()

    def tls_contexts(self) -> list[Any]:
        assert self.cfg is not None
        if not self.cfg.server.tls:
            return []
        from fastgw.tls import build_context  # (cryptography is a slow import: only when TLS is used)
        return [build_context(t) for t in self.cfg.server.tls]

    async def reload_tls(self) -> None:
        """Certificates are read again on every reload: new TLS connections get the new contexts (a new
        server on the same socket replaces the old one); established connections are not touched."""
        if not self.tls_contexts_now or self.drain_task is not None:
            return
        assert self.w is not None
        try:
            contexts = self.tls_contexts()
        except Exception as e:
            log("tls_reload_failed", level="error", error=f"{type(e).__name__}: {e}")
            return
        self.tls_contexts_now = contexts             # ProxiedTLS listeners use them from the next connection
        for i, srv in list(self.tls_servers.items()):
            n = int(self.kinds[i][4:])
            if n >= len(contexts):      # [[server.tls]] tables removed: that takes a restart (logged)
                continue
            await srv.set_ssl(contexts[n])
        log("tls_reloaded", listeners=len(contexts))

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

    def start_drain(self, accept: float, timeout: float) -> None:
        if self.drain_task is None:
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
        for srv in self.servers:
            srv.close()
        self.servers = []
        for sock in self.socks:       # the servers listened on duplicates: this closes the sockets
            sock.close()
        log("listeners_closed", open_connections=len(w.conns))
        end = loop.time() + timeout
        while w.conns and loop.time() < end:
            w.drain(FRESH_IDLE)
            await asyncio.sleep(0.05)
        left = len(w.conns)
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
        reader, writer = await asyncio.open_connection(sock=self.ctl, limit=MSG_LIMIT)
        first = await read_msg(reader)
        if first is None or first.get("op") != "config":
            log("worker_exit", level="error", reason="no config from the supervisor")
            return 1
        self.apply(first)
        assert self.w is not None
        await self.serve_listeners()
        if self.words is not None:
            self.words[H_PID] = os.getpid()
        sweeper = loop.create_task(self.sweeper())
        ctl_task = loop.create_task(self.control(reader, writer))
        log("worker_ready", gen=self.gen, version=__version__,
            listen=[_addr(s) for s in self.socks], max_connections=self.w.max_conns)
        await send_msg(writer, {"ev": "ready", "gen": self.gen})
        await self.stop.wait()
        for srv in self.servers:
            srv.close()
        sweeper.cancel()
        ctl_task.cancel()
        if self.drain_task is not None:
            self.drain_task.cancel()
        self.flush_access_log()
        if self.access is not None:
            self.access.close()
            self.access.publish(loop.time(), final=True)
        if self.words is not None:
            self.words[H_CONNS] = 0
        log("worker_exit", code=self.exit_code, reason=self.exit_reason)
        writer.close()
        return self.exit_code

    def on_sigterm(self) -> None:
        d = self.cfg.server.drain if self.cfg is not None else None
        self.start_drain(d.accept_seconds if d else 0.0, d.timeout_seconds if d else 0.0)


def _addr(s: socket.socket) -> str:
    host, port = s.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fastgw.worker", description="internal: one fastgw worker process")
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
            proc.kinds = args.listen_kinds.split(",")
        return uvloop.run(proc.run())
    except Exception as e:
        log("worker_exit", level="error", code=1, reason=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
