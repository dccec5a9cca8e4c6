"""The supervisor: owns the listening sockets, spawns and restarts workers, handles signals and reloads,
and serves the admin listener. It never proxies a request.

Sockets (listening sockets outlive workers). For every worker slot the supervisor binds its own SO_REUSEPORT socket
per listen address and keeps it open for its whole life. A worker receives the sockets of its slot as
inherited descriptors; when it dies, its sockets stay open in the supervisor, so connections the kernel
already queued on them wait for the replacement instead of being reset (Linux resets the accept queue of a
reuseport socket when its last descriptor closes). The replacement is spawned with the same sockets.

Workers are spawned (`python -P fastgw/process/entry.py`, by its absolute path: fork + exec through
subprocess), never forked from a running event loop, and run in their own process group: a Ctrl-C on the
terminal reaches the supervisor only, which decides what the workers do. A worker runs the package the
supervisor runs, whatever the working directory holds (fastgw/process/entry.py).

Startup: a worker that exits before it is ready, while the gateway starts, stops the gateway within
seconds: worker_start_failed is logged, the error goes to stderr (after the worker's own, which it writes
there), and `fastgw run` exits 1. Restarting it would only repeat the failure while nothing is served.
Once every worker has been ready, a worker that dies is restarted (below), and a replacement that exits
before it is ready is logged as worker_start_failed and restarted with the same backoff.

Signals:
  SIGHUP   reload: read and validate the file; if invalid, log every error, count result="error" and keep
           serving; if valid, send the validated text to every worker, which swaps it in place.
  SIGTERM  drain: /readyz answers 503 at once; workers keep accepting for server.drain.accept_seconds with
           keep-alive off, then the listeners close (in the workers and here); requests in flight get
           server.drain.timeout_seconds; exit 0.
  SIGINT   fast stop: workers stop at once; exit 0.
A worker that dies is restarted at once, then with backoff (0.25 s doubling to 10 s) while it keeps dying
within 10 s of its start.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from fastgw import __version__
from fastgw.config.checks import parse_hostport
from fastgw.config.root import Config, ConfigError, base_of, config_hash, loads
from fastgw.observe import metrics
from fastgw.observe.exposition import Exposition
from fastgw.observe.log import log, set_context, set_level
from fastgw.observe.metrics import NO_ROUTE, ROUTE_SLOTS, log_dropped, render, snapshot
from fastgw.policies import POLICIES, admin_runtime, runtime
from fastgw.process.admin import PROMETHEUS, TEXT, AdminServer
from fastgw.process.binding import BindError, bind_error, listen_keys
from fastgw.process.control import MSG_LIMIT, read_msg, send_msg
from fastgw.process.listeners import bind
from fastgw.process.sections import owner_metrics, owner_pages, owner_sections
from fastgw.process.shm import SharedMemory
from fastgw.store import stats as store_stats
from fastgw.upstream.health import Prober

STABLE_SECONDS = 10.0        # a worker that lived this long before dying is restarted without delay
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
STOP_GRACE = 3.0             # fast stop: SIGKILL workers still running after this
DRAIN_SLACK = 5.0            # drain: SIGKILL workers still running this long after accept + timeout
# Words put before every worker's command line, for measuring the worker alone (bench/callgrind.py runs
# it under valgrind this way). Read from the supervisor's own environment, which only its owner controls.
WORKER_WRAPPER_ENV = "FASTGW_WORKER_WRAPPER"
WORKER_ENTRY = Path(__file__).resolve().with_name("entry.py")


class StartupError(RuntimeError):
    """A worker could not start while the gateway started: it would serve nothing."""


@dataclass
class Slot:
    index: int
    socks: list[socket.socket]
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    gen: int = 0               # config generation the running worker confirmed
    started: float = 0.0
    quick_deaths: int = 0
    task: asyncio.Task[None] | None = None
    ready: bool = False        # the running worker has said "ready"


class Supervisor:
    def __init__(self, path: str, cfg: Config, text: str, workers: int) -> None:
        self.path = path
        self.cfg = cfg
        self.text = text
        self.hash = config_hash(text.encode())
        self.nworkers = workers
        self.gen = 1
        self.route_names: list[str] = [NO_ROUTE]          # metrics slot -> route name
        self.route_slots: dict[str, int] = {}
        self.assign_slots(cfg)
        self.slots: list[Slot] = []
        self.shm: SharedMemory | None = None
        self.prober: Prober | None = None
        self.admin: AdminServer | None = None
        self.reloads = {"success": 0, "error": 0}
        self.restarts = 0
        self.draining = False
        self.stopping = False
        self.done = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.exit_code = 0
        self.announced = False
        self.listen: list[str] = []
        self.kinds: list[str] = []
        self.admin_addr = ""
        self.failure: str | None = None     # why the gateway stopped at startup (StartupError)
        self.exposition = Exposition(lambda: self.cfg)    # process_*, build info, certificate expiry

    # -- config ----------------------------------------------------------------------------------------
    def assign_slots(self, cfg: Config) -> None:
        for r in cfg.routes:
            if r.name not in self.route_slots and len(self.route_names) < ROUTE_SLOTS:
                self.route_slots[r.name] = len(self.route_names)
                self.route_names.append(r.name)

    def config_msg(self) -> dict[str, Any]:
        return {"op": "config", "gen": self.gen, "hash": self.hash, "toml": self.text, "base": base_of(self.path),
                "slots": {r.name: self.route_slots.get(r.name, 0) for r in self.cfg.routes},
                "workers": self.nworkers}

    async def reload(self) -> None:
        async with self.reload_lock:
            if self.draining or self.stopping:
                return
            try:
                data = Path(self.path).read_bytes()
                text = data.decode("utf-8")
                cfg = loads(text, source=self.path, base=base_of(self.path))
            except (OSError, UnicodeDecodeError, ConfigError) as e:
                errors = e.errors if isinstance(e, ConfigError) else [f"{self.path}: cannot read: {e}"]
                self.reloads["error"] += 1
                log("config_reload_failed", level="error", path=self.path, errors=errors,
                    serving=self.hash)
                return
            for what in _restart_only(self.cfg, cfg):
                log("config_needs_restart", level="warning", key=what,
                    detail="this setting only takes effect when fastgw restarts; the rest is reloaded")
            self.cfg, self.text, self.hash = cfg, text, config_hash(data)
            if self.prober is not None:
                self.prober.apply(cfg)
            set_level(cfg.server.log_level)
            self.gen += 1
            self.assign_slots(cfg)
            msg = self.config_msg()
            self.reloads["success"] += 1
            log("config_reload", gen=self.gen, hash=self.hash, routes=len(cfg.routes))
            for slot in self.slots:
                await self.send(slot, msg)

    async def send(self, slot: Slot, msg: dict[str, Any]) -> None:
        if slot.writer is None:
            return
        try:
            await send_msg(slot.writer, msg)
        except (ConnectionError, OSError):
            pass   # the worker is dying; its replacement gets the current config

    # -- workers ---------------------------------------------------------------------------------------
    async def spawn(self, slot: Slot) -> None:
        slot.started = time.monotonic()
        parent, child = socket.socketpair()
        fds = [s.fileno() for s in slot.socks]
        pass_fds = [*fds, child.fileno()]
        cmd = [sys.executable, "-P", str(WORKER_ENTRY), "--slot", str(slot.index), "--ctl-fd", str(child.fileno()),
               "--listen-fds", ",".join(map(str, fds)), "--listen-kinds", ",".join(self.kinds)]
        cmd[:0] = shlex.split(os.environ.get(WORKER_WRAPPER_ENV, ""))
        if self.shm is not None:
            pass_fds.append(self.shm.fd)
            cmd += ["--shm-fd", str(self.shm.fd), "--shm-layout", msgspec.json.encode(self.shm.layout.to_json()).decode()]
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, pass_fds=pass_fds, stdin=asyncio.subprocess.DEVNULL,
                                                        process_group=0)
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent, limit=MSG_LIMIT)
        slot.proc, slot.writer, slot.gen, slot.ready = proc, writer, 0, False
        log("worker_started", worker=slot.index, worker_pid=proc.pid)
        await self.send(slot, self.config_msg())
        try:
            while True:
                msg = await read_msg(reader)
                if msg is None:
                    break
                ev = msg.get("ev")
                if ev in ("ready", "applied"):
                    slot.gen, slot.ready = int(msg["gen"]), True
                    if self.ready():
                        log("ready", gen=self.gen, hash=self.hash, workers=self.nworkers)
                        if not self.announced:
                            self.announced = True
                            log("listening", listen=self.listen, admin=self.admin_addr, workers=self.nworkers)
                            print(self.serving_line(), file=sys.stderr, flush=True)
                elif ev == "rejected":
                    log("worker_rejected_config", level="error", worker=slot.index, gen=msg.get("gen"),
                        error=msg.get("error"))
        except (ConnectionError, OSError, ValueError):
            pass
        code = await proc.wait()
        writer.close()
        slot.proc, slot.writer, slot.gen = None, None, 0
        if self.shm is not None:
            metrics.words(self.shm, slot.index)[metrics.H_CONNS] = 0     # its open-connections gauge is stale now
        reason = f"exit code {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        expected = self.stopping or self.draining
        log("worker_exit", level="info" if expected and code == 0 else "error", worker=slot.index,
            worker_pid=proc.pid, code=code, reason=reason, lived_seconds=round(time.monotonic() - slot.started, 3))
        if not slot.ready and not expected:
            self.start_failed(slot, code, reason)

    def start_failed(self, slot: Slot, code: int, reason: str) -> None:
        """The worker of `slot` ended before it was ready. While the gateway starts, that stops it."""
        log("worker_start_failed", level="error", worker=slot.index, code=code, reason=reason,
            detail="the worker ended before it was ready; its own error, if it wrote one, is on stderr")
        if self.announced or self.stopping:
            return                  # serving already: keep_alive restarts it with backoff
        self.failure = f"worker {slot.index} could not start ({reason}); the gateway stops"
        self.exit_code = 1
        self.stopping = True
        asyncio.get_running_loop().create_task(self.fast_stop())

    async def keep_alive(self, slot: Slot) -> None:
        """Run the worker of `slot`, restarting it (with backoff) until the supervisor stops."""
        while not (self.stopping or self.draining):
            try:
                await self.spawn(slot)
            except OSError as e:
                log("worker_spawn_failed", level="error", worker=slot.index, error=str(e))
            if self.stopping or self.draining:
                break
            lived = time.monotonic() - slot.started
            slot.quick_deaths = 0 if lived >= STABLE_SECONDS else slot.quick_deaths + 1
            delay = 0.0 if slot.quick_deaths <= 1 else min(BACKOFF_FIRST * 2 ** (slot.quick_deaths - 2), BACKOFF_MAX)
            self.restarts += 1
            log("worker_restart", worker=slot.index, delay_seconds=delay)
            if delay:
                await asyncio.sleep(delay)

    def ready(self) -> bool:
        return (not self.draining and not self.stopping
                and all(s.proc is not None and s.gen == self.gen for s in self.slots))

    def serving_line(self) -> str:
        """The one human line once every worker serves (the JSON log on stdout says the same for machines)."""
        urls = [f"{'http' if kind == 'plain' else 'https'}://{addr}" for addr, kind in zip(self.listen, self.kinds, strict=True)]
        return (f"fastgw {__version__} serving {', '.join(urls)} ({self.nworkers} worker{'s' if self.nworkers != 1 else ''}), "
                f"admin http://{self.admin_addr}")

    # -- admin -----------------------------------------------------------------------------------------
    def healthz(self) -> tuple[int, str, str]:
        return 200, TEXT, "ok\n"

    def pid(self) -> tuple[int, str, str]:
        """The supervisor's process id: what `fastgw reload` signals when no pid file is given."""
        return 200, TEXT, f"{os.getpid()}\n"

    def readyz(self) -> tuple[int, str, str]:
        if self.draining:
            return 503, TEXT, "draining\n"
        if self.ready():
            return 200, TEXT, f"ready: {self.nworkers} workers on config {self.hash}\n"
        up = sum(1 for s in self.slots if s.proc is not None and s.gen == self.gen)
        return 503, TEXT, f"not ready: {up} of {self.nworkers} workers on config {self.hash}\n"

    def metrics(self) -> tuple[int, str, str]:
        live = {s.index for s in self.slots if s.proc is not None}
        snap = (snapshot(self.shm, self.nworkers, len(self.route_names), live)
                if self.shm is not None and self.cfg.admin.metrics else None)
        process = {"reloads": self.reloads, "hash": self.hash, "configured": self.nworkers,
                   "running": len(live), "ready": sum(1 for s in self.slots if s.proc is not None and s.gen == self.gen),
                   "restarts": self.restarts, "draining": self.draining,
                   "log_dropped": log_dropped(self.shm, self.nworkers) if self.shm is not None else None}
        families = ([runtime(p).metrics(self.shm, self.nworkers, sorted(live), self.cfg) for p in POLICIES]
                    + [owner_metrics(self.shm, self.cfg)] if self.shm is not None else [])
        return 200, PROMETHEUS, render(snap, self.route_names, process, families) + self.exposition.render()

    def redis_status(self) -> tuple[int, str, str]:
        """GET /status/redis: every live worker's view of the Redis nodes (fastgw/store/stats.py)."""
        if self.shm is None or store_stats.SECTION not in self.shm.layout.sections:
            return 404, TEXT, "no shared memory\n"
        live = sorted(s.index for s in self.slots if s.proc is not None)
        return 200, "application/json", store_stats.status_json([store_stats.region(self.shm, i) for i in live])

    def policy_action(self, p: Any) -> Any:
        """A policy's admin path (PURGE /cache...): its answer, and its message to every live worker
        (delivered in order on each control channel; the workers log what they did)."""
        async def act(method: str, query: str) -> tuple[int, str, str]:
            res = admin_runtime(p).admin_action(self.cfg, method, query)
            status, body, msg = await res if inspect.isawaitable(res) else res    # a read from the store
            if msg is not None:
                loop = asyncio.get_running_loop()
                for slot in self.slots:
                    loop.create_task(self.send(slot, {"op": "policy", "policy": p.name, **msg}))
            return status, "application/json" if body.startswith("{") else TEXT, body
        return act

    # -- signals ---------------------------------------------------------------------------------------
    def on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload())

    def on_sigterm(self) -> None:
        if self.draining or self.stopping:
            return
        self.draining = True
        d = self.cfg.server.drain
        log("drain_started", accept_seconds=d.accept_seconds, timeout_seconds=d.timeout_seconds)
        asyncio.get_running_loop().create_task(self.drain(d.accept_seconds, d.timeout_seconds))

    async def drain(self, accept: float, timeout: float) -> None:
        for slot in self.slots:
            await self.send(slot, {"op": "drain", "accept": accept, "timeout": timeout})
        await asyncio.sleep(accept)
        self.close_listeners()
        await self.wait_workers(timeout + DRAIN_SLACK)
        log("drained")
        self.done.set()

    def on_sigint(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log("stopping", reason="SIGINT (fast stop)")
        asyncio.get_running_loop().create_task(self.fast_stop())

    async def fast_stop(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                try:
                    slot.proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
        self.close_listeners()
        await self.wait_workers(STOP_GRACE)
        self.done.set()

    async def wait_workers(self, limit: float) -> None:
        tasks = [s.task for s in self.slots if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=limit)
            if pending:
                for slot in self.slots:
                    if slot.proc is not None and slot.proc.returncode is None:
                        log("worker_killed", level="error", worker=slot.index, reason=f"still running after {limit}s")
                        slot.proc.kill()
                await asyncio.wait(pending, timeout=2.0)

    def close_listeners(self) -> None:
        for slot in self.slots:
            for s in slot.socks:
                s.close()

    # -- main ------------------------------------------------------------------------------------------
    def bind_all(self) -> None:
        """One socket per listen address per slot, all with SO_REUSEPORT. A port of 0 is resolved by the
        first bind and reused for the other slots, so the slots still share one port."""
        # Plain listeners, then the TLS listeners ([[server.tls]]); the worker is told which is which.
        keys = listen_keys(self.cfg)
        addrs = [a for _, a in keys]
        self.kinds = ["plain"] * len(self.cfg.server.listen) + [
            f"tls:{i}" for i, t in enumerate(self.cfg.server.tls) for _ in t.listen]
        for i in range(self.nworkers):
            socks = []
            try:
                for j, addr in enumerate(addrs):
                    try:
                        s = bind(addr)
                    except OSError as e:
                        raise BindError(e.errno, bind_error(keys[j][0], addr, e)) from None
                    socks.append(s)
                    if i == 0 and addr.endswith(":0"):
                        host = addr.rsplit(":", 1)[0]
                        addrs[j] = f"{host}:{s.getsockname()[1]}"
            except OSError:
                for s in socks:
                    s.close()
                self.close_listeners()
                raise
            self.slots.append(Slot(i, socks))
        self.listen = addrs

    async def run(self) -> int:
        set_context(role="supervisor")
        set_level(self.cfg.server.log_level)
        loop = asyncio.get_running_loop()
        self.bind_all()
        self.shm = SharedMemory.create([metrics.shm_section(self.nworkers), *owner_sections(self.cfg, self.nworkers),
                                        *(s for p in POLICIES for s in runtime(p).shm_sections(self.cfg, self.nworkers))])
        host, port = parse_hostport(self.cfg.admin.listen, allow_port_zero=True)
        self.admin = AdminServer({"/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics,
                                  "/pid": self.pid, "/status/redis": self.redis_status,
                                  **owner_pages(lambda: self.shm, lambda: self.cfg)},
                                 {p.admin: (admin_runtime(p).methods, self.policy_action(p)) for p in POLICIES if p.admin})
        try:
            admin_host, admin_port = await self.admin.start(host, port)
        except OSError as e:
            self.close_listeners()
            raise BindError(e.errno, bind_error("admin.listen", self.cfg.admin.listen, e)) from None
        loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self.on_sigint)
        self.admin_addr = f"[{admin_host}]:{admin_port}" if ":" in admin_host else f"{admin_host}:{admin_port}"
        log("started", version=__version__, config=self.path, hash=self.hash, workers=self.nworkers,
            listen=self.listen, admin=self.admin_addr)
        for slot in self.slots:
            slot.task = loop.create_task(self.keep_alive(slot))
        self.prober = Prober(self.shm)          # active health checks: one prober for the host
        self.prober.apply(self.cfg)
        await self.done.wait()
        self.prober.stop()
        self.admin.close()
        log("stopped", code=self.exit_code)
        return self.exit_code


def _restart_only(old: Config, new: Config) -> list[str]:
    changed = []
    if old.server.listen != new.server.listen:
        changed.append("server.listen")
    if [t.listen for t in old.server.tls] != [t.listen for t in new.server.tls]:
        changed.append("server.tls[].listen")
    if old.server.proxy_protocol != new.server.proxy_protocol:
        changed.append("server.proxy_protocol")
    if old.server.workers != new.server.workers:
        changed.append("server.workers")
    if old.admin.listen != new.admin.listen:
        changed.append("admin.listen")
    if old.admin.metrics != new.admin.metrics:
        changed.append("admin.metrics")
    return changed


def worker_count(cfg: Config, override: int | None) -> int:
    if override is not None:
        return override
    if cfg.server.workers != "auto":
        return int(cfg.server.workers)
    # The CPUs this process may run on (taskset, cpusets), not every CPU of the host.
    return max(1, len(os.sched_getaffinity(0)))


def serve(path: str, workers: int | None = None, pid_file: str | None = None) -> int:
    """`fastgw run`: validate `path`, start the supervisor and its workers; return the exit code.
    `pid_file`: written with the supervisor's pid while it runs (for `fastgw reload --pid-file`)."""
    data = Path(path).read_bytes()
    text = data.decode("utf-8")
    warnings: list[str] = []
    cfg = loads(text, source=path, base=base_of(path), warnings=warnings)
    for w in warnings:
        log("config_warning", level="warning", warning=w)
    sup = Supervisor(path, cfg, text, worker_count(cfg, workers))
    if pid_file is not None:
        Path(pid_file).write_text(f"{os.getpid()}\n")
    try:
        rc = asyncio.run(sup.run())
    finally:
        if pid_file is not None:
            Path(pid_file).unlink(missing_ok=True)
    if sup.failure is not None:
        raise StartupError(sup.failure)
    return rc
