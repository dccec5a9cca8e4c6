"""Helpers for process-level tests: a real origin server and a real `fastgw run` in subprocesses.

The gateway is started with ephemeral ports (listen "127.0.0.1:0", admin "127.0.0.1:0"); its JSON log on
stdout says which ports it got ("started") and when it is ready. Everything here is stdlib + httpx.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# A small keep-alive HTTP/1.1 origin on uvloop. GET /slow/<ms> answers after <ms> milliseconds; anything
# else answers at once. Every response says which origin answered (X-Origin) and echoes the path.
ORIGIN = textwrap.dedent("""
    import asyncio, sys, uvloop
    NAME = sys.argv[1].encode()

    class P(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
            self.buf = b""
        def data_received(self, data):
            self.buf += data
            while b"\\r\\n\\r\\n" in self.buf:
                head, _, rest = self.buf.partition(b"\\r\\n\\r\\n")
                length = 0
                for line in head.split(b"\\r\\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(rest) < length:
                    return
                self.buf = rest[length:]
                path = head.split(b" ")[1]
                delay = int(path.split(b"?")[0].split(b"/")[2]) / 1000 if path.startswith(b"/slow/") else 0
                body = b"ok " + path + b"\\n"
                resp = (b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nX-Origin: %s\\r\\n\\r\\n" % (len(body), NAME)
                        + body)
                if delay:
                    asyncio.get_running_loop().call_later(delay, self.send, resp)
                else:
                    self.t.write(resp)
        def send(self, resp):
            if not self.t.is_closing():
                self.t.write(resp)

    async def main():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(P, "127.0.0.1", 0, backlog=4096)
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())
""")


class Origin:
    def __init__(self, name: str = "o1") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ORIGIN, name], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.addr = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def config(origin: Origin, extra_server: str = "", routes: str = "", drain: str = "") -> str:
    """A gateway config: ephemeral ports, one upstream, route "hello" (GET /hello) and "all" (/*)."""
    drain = drain or 'accept_seconds = "1s"\ntimeout_seconds = "5s"'
    return (
        f'[server]\nlisten = ["127.0.0.1:0"]\n{extra_server}\n'
        f"[server.drain]\n{drain}\n"
        '[admin]\nlisten = "127.0.0.1:0"\n'
        f'[upstreams.origin]\ntargets = ["{origin.addr}"]\n'
        '[[routes]]\nname = "hello"\npath = "/hello"\nmethods = ["GET"]\nupstream = "origin"\n'
        '[[routes]]\nname = "all"\npath = "/*"\nupstream = "origin"\n'
        + routes
    )


class Gateway:
    """`python -m fastgw run` in a subprocess; its JSON log lines are collected by a thread."""

    def __init__(self, cfg_path: Path, workers: int = 2, args: list[str] | None = None,
                 env: dict[str, str] | None = None, cmd: list[str] | None = None, cwd: Path = ROOT) -> None:
        self.cfg_path = cfg_path
        argv = cmd or [sys.executable, "-m", "fastgw", "run", "-c", str(cfg_path), "--workers", str(workers),
                       *(args or [])]
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        started = self.wait_event("started")
        self.listen = started["listen"][0]
        self.admin = started["admin"]
        self.base = f"http://{self.listen}"
        self.admin_base = f"http://{self.admin}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            with self.cond:
                if isinstance(ev, dict):
                    ev["_t"] = time.monotonic()
                    self.events.append(ev)
                else:
                    self.other.append(line)
                self.cond.notify_all()

    def wait_event(self, name: str, timeout: float = 15.0, after: int = 0, **match: Any) -> dict[str, Any]:
        """The first event `name` (at index >= after) whose fields include `match`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events[after:]:
                    if ev.get("event") == name and all(ev.get(k) == v for k, v in match.items()):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    stderr = self.proc.stderr.read().decode() if self.proc.poll() is not None and self.proc.stderr else ""
                    raise AssertionError(f"no {name} {match} event; log: {self.events[-20:]} {stderr}")
                self.cond.wait(min(left, 0.1))

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if admin_get(self.admin_base + "/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"not ready; log: {self.events[-10:]}")

    def access_lines(self) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e.get("type") == "access"]

    def worker_pids(self) -> dict[int, int]:
        """Slot -> pid of the latest started worker."""
        with self.cond:
            return {e["worker"]: e["worker_pid"] for e in self.events if e.get("event") == "worker_started"}

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def admin_get(url: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == series:
            return float(value)
    return 0.0
