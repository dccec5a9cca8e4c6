"""WebSocket tunnels (fastgw/policies/websocket/, fastgw/_core/tunnel.pyx): the `websockets` package's
server as the origin behind a real gateway process and its client through it. Messages of every kind
(text, binary, 1 MiB, fragmented, ping/pong), close codes both ways, the handshake's checks before anything
goes upstream (authentication, version, key, Origin, caps), the origin's refusal relayed, idle timeout,
the JWT expiry close (1008), a reload that keeps live tunnels and one that removes their route (1001),
SIGTERM (1012), a client that stops reading (the gateway's memory stays bounded), the metrics, and routes
without `websocket` keeping the Upgrade dropped."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.sync.client import connect

from tests.procutil import Gateway, admin_get, metric

KEY = "ws-key-a"
JWT_SECRET = "websocket-test-secret-websocket-test-secret"
FLOOD = 256 * 1024 * 1024        # bytes an origin sends to a client that does not read


class WsOrigin:
    """The websockets package's server on its own loop in a thread: /echo echoes, /flood sends FLOOD bytes
    and reports how far it got, /close/<code> closes with that code, /refuse answers 403, /headers sends
    back the handshake's request headers as JSON."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sent = 0
        self.handshakes: list[dict[str, str]] = []
        self.closes: list[tuple[str, int | None, str | None]] = []    # (path, code, reason) the origin received
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        self.addr = f"127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start(ready))
        self.loop.run_forever()

    async def _start(self, ready: threading.Event) -> None:
        self.server = await serve(self.handler, "127.0.0.1", 0, max_size=None, process_request=self.check,
                                  ping_interval=None, compression=None)
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()

    async def check(self, conn: Any, request: Any) -> Response | None:
        self.handshakes.append({k.lower(): v for k, v in request.headers.raw_items()})
        if request.path == "/ws/refuse":
            return Response(403, "Forbidden", Headers({"Content-Length": "6"}), b"nope!\n")
        if request.path == "/ws/silent":
            await asyncio.sleep(3)         # the gateway's handshake timeout comes first
        return None

    async def handler(self, ws: Any) -> None:
        path = ws.request.path
        if path.startswith("/ws/close/"):
            await ws.close(int(path.rsplit("/", 1)[1]), "origin says bye")
            return
        if path == "/ws/headers":
            await ws.send(json.dumps(self.handshakes[-1]))
        if path == "/ws/flood":
            chunk = b"x" * 65536
            try:
                while self.sent < FLOOD:
                    await ws.send(chunk)
                    self.sent += len(chunk)
            except ConnectionClosed:
                return
        try:
            async for msg in ws:
                await ws.send(msg)
        except ConnectionClosed:
            pass
        exc = ws.close_exc
        rcvd = exc.rcvd if exc is not None else None
        self.closes.append((path, rcvd.code if rcvd else None, rcvd.reason if rcvd else None))

    async def _stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def origin() -> Any:
    o = WsOrigin()
    yield o
    o.close()


def config(origin: WsOrigin, websocket: str = "", extra_routes: str = "", drain: str = "") -> str:
    return f'''
[server]
listen = ["127.0.0.1:0"]
[server.drain]
{drain or 'accept_seconds = "0s"'}
[admin]
listen = "127.0.0.1:0"
[websocket]
{websocket}
[upstreams.ws]
targets = ["{origin.addr}"]
[auth.jwt.bank]
issuer = "https://idp.bank.example"
audiences = ["fastgw"]
leeway = "0s"
algorithms = ["HS256"]
secret_env = "WS_JWT_SECRET"
[consumers.partner-a]
api_keys_sha256 = ["{hashlib.sha256(KEY.encode()).hexdigest()}"]
[cors.web]
origins = ["https://app.bank.example"]
[[routes]]
name = "ws"
path = "/ws/*"
upstream = "ws"
websocket = true
cors = "web"
[[routes]]
name = "ws-key"
path = "/wskey/*"
upstream = "ws"
strip_prefix = true
websocket = true
cors = "web"
auth = ["api_key"]
[[routes]]
name = "ws-jwt"
path = "/wsjwt/*"
upstream = "ws"
strip_prefix = true
websocket = true
cors = "web"
auth = ["jwt:bank"]
[[routes]]
name = "plain"
path = "/plain/*"
upstream = "ws"
strip_prefix = true
{extra_routes}
'''


def start(tmp_path: Path, text: str, workers: int = 1) -> Gateway:
    cfg = tmp_path / "fastgw.toml"
    cfg.write_text(text)
    gw = Gateway(cfg, workers=workers, env={"WS_JWT_SECRET": JWT_SECRET})
    gw.wait_ready()
    return gw


@pytest.fixture(scope="module")
def gw(origin: WsOrigin, tmp_path_factory: pytest.TempPathFactory) -> Any:
    g = start(tmp_path_factory.mktemp("ws"), config(origin))
    yield g
    g.close()


def url(gw: Gateway, path: str) -> str:
    return f"ws://{gw.listen}{path}"


def token(exp_in: float) -> str:
    now = time.time()
    return jwt.encode({"iss": "https://idp.bank.example", "aud": "fastgw", "sub": "partner-b", "iat": int(now),
                       "exp": int(now + exp_in)}, JWT_SECRET, algorithm="HS256")


def raw_handshake(gw: Gateway, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """A handshake written by hand (for what a well-behaved client library never sends)."""
    s = socket.create_connection(tuple(gw.listen.rsplit(":", 1)), timeout=5)   # type: ignore[arg-type]
    lines = [f"GET {path} HTTP/1.1", "Host: gw.test"] + [f"{k}: {v}" for k, v in headers.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.decode().partition(":")
                                                          for ln in head.split(b"\r\n")[1:])}
    n = int(hdrs.get("content-length", "0"))
    while len(body) < n:
        more = s.recv(65536)
        if not more:
            break
        body += more
    s.close()
    return status, hdrs, body


UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}


def test_messages_of_every_kind_are_relayed(gw: Gateway) -> None:
    with connect(url(gw, "/ws/echo"), max_size=None, compression=None) as ws:
        ws.send("hello, bank")
        assert ws.recv(5) == "hello, bank"
        ws.send(b"\x00\x01\xff binary")
        assert ws.recv(5) == b"\x00\x01\xff binary"
        big = os.urandom(1024 * 1024)
        ws.send(big)
        assert ws.recv(10) == big
        ws.send(["frag", "mented ", "text"])          # one message in three frames (continuations)
        assert ws.recv(5) == "fragmented text"
        pong = ws.ping(b"are you there")
        assert pong.wait(5)                            # the origin's pong came back through the tunnel
        for i in range(50):                            # many small messages, in order
            ws.send(f"m{i}")
        assert [ws.recv(5) for _ in range(50)] == [f"m{i}" for i in range(50)]


def test_close_codes_both_ways(gw: Gateway) -> None:
    with connect(url(gw, "/ws/close/4001")) as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(5)
        assert e.value.rcvd is not None and e.value.rcvd.code == 4001 and e.value.rcvd.reason == "origin says bye"
    with connect(url(gw, "/ws/echo")) as ws:
        ws.close(3003, "client done")
        assert ws.close_code == 3003 and ws.close_reason == "client done"   # the origin's echo of it


def test_handshake_reaches_the_origin_with_gateway_fields(gw: Gateway) -> None:
    with connect(url(gw, "/ws/headers"), additional_headers={"X-Custom": "kept"}) as ws:
        got = json.loads(ws.recv(5))
        assert ws.response.headers["X-Request-ID"]
    assert got["upgrade"] == "websocket" and "upgrade" in got["connection"].lower()
    assert got["x-custom"] == "kept" and got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-request-id"] == ws.response.headers["X-Request-ID"]
    assert got["sec-websocket-version"] == "13"


def test_authentication_before_the_upgrade(gw: Gateway, origin: WsOrigin) -> None:
    before = len(origin.handshakes)
    with pytest.raises(InvalidStatus) as e:
        connect(url(gw, "/wskey/ws/echo"))
    assert e.value.response.status_code == 401
    assert len(origin.handshakes) == before           # never forwarded
    with connect(url(gw, "/wskey/ws/echo"), additional_headers={"X-API-Key": KEY}) as ws:
        ws.send("authenticated")
        assert ws.recv(5) == "authenticated"


def test_invalid_handshakes_are_refused_before_the_origin(gw: Gateway, origin: WsOrigin) -> None:
    before = len(origin.handshakes)
    status, hdrs, body = raw_handshake(gw, "/ws/echo", {**UPGRADE, "Sec-WebSocket-Version": "8"})
    assert status == 426 and hdrs["sec-websocket-version"] == "13"
    assert json.loads(body)["type"] == "urn:fastgw:problem:websocket-version"
    status, _, body = raw_handshake(gw, "/ws/echo", {**UPGRADE, "Sec-WebSocket-Key": "c2hvcnQ="})
    assert status == 400 and b"Sec-WebSocket-Key" in body
    status, _, body = raw_handshake(gw, "/ws/echo", {**UPGRADE, "Origin": "https://evil.example"})
    assert status == 403 and json.loads(body)["type"] == "urn:fastgw:problem:websocket-origin"
    assert len(origin.handshakes) == before
    with connect(url(gw, "/ws/echo"), origin="https://app.bank.example") as ws:    # the listed origin
        ws.send("same site")
        assert ws.recv(5) == "same site"


def test_the_origins_refusal_is_relayed(gw: Gateway) -> None:
    with pytest.raises(InvalidStatus) as e:
        connect(url(gw, "/ws/refuse"))
    assert e.value.response.status_code == 403 and e.value.response.body == b"nope!\n"


def test_routes_without_websocket_drop_the_upgrade(gw: Gateway, origin: WsOrigin) -> None:
    status, _, body = raw_handshake(gw, "/plain/ws/echo", UPGRADE)
    # The origin sees a plain GET (no Upgrade, no Connection: upgrade) and refuses to switch.
    assert status == 426 and b"missing Connection header" in body, body
    # A plain request on a websocket route is served as one.
    r = httpx.get(f"http://{gw.listen}/ws/refuse", timeout=5)
    assert r.status_code != 101


def test_metrics(gw: Gateway) -> None:
    with connect(url(gw, "/ws/echo")) as ws:
        ws.send(b"x" * 1000)
        ws.recv(5)
        text = admin_get(gw.admin_base + "/metrics")[1]
        assert metric(text, "fastgw_websocket_connections", route="ws") >= 1
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = admin_get(gw.admin_base + "/metrics")[1]
        if metric(text, "fastgw_websocket_connections", route="ws") == 0:
            break
        time.sleep(0.1)
    assert metric(text, "fastgw_websocket_connections", route="ws") == 0
    assert metric(text, "fastgw_websocket_closes_total", route="ws", code="1000") >= 1
    assert metric(text, "fastgw_websocket_bytes_total", route="ws", direction="client_to_origin") >= 1000
    assert metric(text, "fastgw_websocket_bytes_total", route="ws", direction="origin_to_client") >= 1000
    assert metric(text, "fastgw_websocket_duration_seconds_count", route="ws") >= 1


def wait_closed(ws: Any, timeout: float) -> Frame | None:
    """Read until the tunnel closes; the close frame the client received (None: none came)."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as e:
        while time.monotonic() < deadline:
            ws.recv(max(0.01, deadline - time.monotonic()))
    return e.value.rcvd


def test_caps_before_the_upgrade_pod_wide(origin: WsOrigin, tmp_path: Path) -> None:
    gw = start(tmp_path, config(origin, 'max_connections = 4\nmax_per_route = 2\nmax_per_consumer = 1'),
               workers=2)
    auth = {"X-API-Key": KEY}
    bearer = {"Authorization": "Bearer " + token(60)}
    stack = contextlib.ExitStack()
    try:
        a = stack.enter_context(connect(url(gw, "/wskey/ws/echo"), additional_headers=auth))
        with pytest.raises(InvalidStatus) as e:                        # the consumer's one
            connect(url(gw, "/wskey/ws/echo"), additional_headers=auth)
        assert e.value.response.status_code == 429
        assert json.loads(e.value.response.body)["type"] == "urn:fastgw:problem:websocket-limit"
        b = connect(url(gw, "/ws/echo")).__enter__()
        c = stack.enter_context(connect(url(gw, "/ws/echo")))
        with pytest.raises(InvalidStatus) as e:                        # the route's two
            connect(url(gw, "/ws/echo"))
        assert e.value.response.status_code == 429
        d = stack.enter_context(connect(url(gw, "/wsjwt/ws/echo"), additional_headers=bearer))
        with pytest.raises(InvalidStatus) as e:                        # the pod's four (in two workers)
            connect(url(gw, "/wsjwt/ws/echo"), additional_headers=bearer)
        assert e.value.response.status_code == 503
        assert json.loads(e.value.response.body)["type"] == "urn:fastgw:problem:websocket-unavailable"
        b.close()
        deadline = time.monotonic() + 5                                # its place is free again
        while True:
            try:
                b = stack.enter_context(connect(url(gw, "/ws/echo")))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        for ws in (a, b, c, d):
            ws.send("still open")
            assert ws.recv(5) == "still open"
            ws.close()
    finally:
        stack.close()
        gw.close()


def test_idle_timeout_and_pings(origin: WsOrigin, tmp_path: Path) -> None:
    gw = start(tmp_path, config(origin, 'idle_timeout = "1s"\nhandshake_timeout = "1s"'))
    try:
        t0 = time.monotonic()
        with pytest.raises(InvalidStatus) as e:                        # the origin does not answer in time
            connect(url(gw, "/ws/silent"), open_timeout=10)
        assert e.value.response.status_code == 504 and 0.9 < time.monotonic() - t0 < 2.5
        with connect(url(gw, "/ws/echo"), ping_interval=None) as ws:
            t0 = time.monotonic()
            rcvd = wait_closed(ws, 5)
            assert rcvd is not None and rcvd.code == 1001 and rcvd.reason == "idle timeout"
            assert 0.9 < time.monotonic() - t0 < 3
        with connect(url(gw, "/ws/echo"), ping_interval=None) as ws:   # traffic keeps it open (1.5 s > 1 s)
            for _ in range(5):
                ws.send("tick")
                assert ws.recv(5) == "tick"
                time.sleep(0.3)
    finally:
        gw.close()
    gw = start(tmp_path, config(origin, 'idle_timeout = "1s"\nping_every = "0.25s"'))
    try:
        # The gateway's pings are answered by the client library: the pongs keep the tunnel in use past
        # 1.5 idle timeouts (an idle tunnel is closed at 1 s, as above).
        with connect(url(gw, "/ws/echo"), ping_interval=None) as ws:
            time.sleep(1.5)
            ws.send("after the idle timeout")
            assert ws.recv(5) == "after the idle timeout"
    finally:
        gw.close()


def test_jwt_expiry_closes_with_1008(gw: Gateway, origin: WsOrigin) -> None:
    with connect(url(gw, "/wsjwt/ws/expiring"), additional_headers={"Authorization": "Bearer " + token(2)}) as ws:
        ws.send("before expiry")
        assert ws.recv(5) == "before expiry"
        t0 = time.monotonic()
        rcvd = wait_closed(ws, 6)
        assert rcvd is not None and rcvd.code == 1008 and rcvd.reason == "token expired"
        assert time.monotonic() - t0 < 3.5
    # The origin got the gateway's close frame too (masked, as a client's must be: else it closes with 1002).
    deadline = time.monotonic() + 5
    while not any(p == "/ws/expiring" for p, _, _ in origin.closes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("/ws/expiring", 1008, "token expired") in origin.closes, origin.closes


def test_reload_keeps_tunnels_and_a_removed_route_closes_them(origin: WsOrigin, tmp_path: Path) -> None:
    text = config(origin, 'removed_route_grace = "1s"')
    gw = start(tmp_path, text)
    try:
        ws = connect(url(gw, "/ws/echo"), ping_interval=None).__enter__()
        n = len(gw.events)
        gw.cfg_path.write_text(text + '[[routes]]\nname = "more"\npath = "/more"\nupstream = "ws"\n')
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_applied", after=n)
        ws.send("after a reload")
        assert ws.recv(5) == "after a reload"
        time.sleep(1.5)                                                # longer than the grace: untouched
        ws.send("still here")
        assert ws.recv(5) == "still here"
        n = len(gw.events)
        gw.cfg_path.write_text(text.replace('name = "ws"\npath = "/ws/*"', 'name = "ws2"\npath = "/ws2/*"'))
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_applied", after=n)
        t0 = time.monotonic()
        rcvd = wait_closed(ws, 5)
        assert rcvd is not None and rcvd.code == 1001 and rcvd.reason == "route removed"
        assert 0.7 < time.monotonic() - t0 < 3
    finally:
        gw.close()


def test_sigterm_sends_1012_spread_over_the_drain(origin: WsOrigin, tmp_path: Path) -> None:
    gw = start(tmp_path, config(origin, drain='accept_seconds = "0s"\ntimeout_seconds = "3s"'))
    try:
        socks = [connect(url(gw, "/ws/echo"), ping_interval=None).__enter__() for _ in range(6)]
        gw.signal(signal.SIGTERM)
        t0 = time.monotonic()
        # Each tunnel waited for in its own thread: the worker plans the closes in its set's order, not in
        # the order of `socks`; waited for one after another, a first socket closed last would read as all
        # of them closing at once.
        closed: dict[int, tuple[Frame | None, float]] = {}

        def wait_one(i: int) -> None:
            rcvd = wait_closed(socks[i], 6)
            closed[i] = (rcvd, time.monotonic() - t0)

        threads = [threading.Thread(target=wait_one, args=(i,)) for i in range(len(socks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(closed) == list(range(len(socks)))
        assert all(rcvd is not None and rcvd.code == 1012 for rcvd, _ in closed.values()), closed
        at = [took for _, took in closed.values()]
        assert max(at) < 3.5
        assert max(at) - min(at) > 0.5                                 # spread, not all at once
        assert gw.wait(10) == 0
    finally:
        gw.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_stops_reading_holds_the_origin_back(origin: WsOrigin, tmp_path: Path) -> None:
    gw = start(tmp_path, config(origin))
    try:
        pid = gw.worker_pids()[0]
        rss0 = rss_kib(pid)
        origin.sent = 0
        # max_queue=1: the client library stops reading its socket after one message it was not asked for.
        with connect(url(gw, "/ws/flood"), max_size=None, max_queue=1) as ws:
            last, stable = -1, 0
            while stable < 10:                                         # until the origin stops making progress
                time.sleep(0.2)
                stable = stable + 1 if origin.sent == last else 0
                last = origin.sent
            assert origin.sent < FLOOD // 2, origin.sent
            grown = rss_kib(pid) - rss0
            assert grown < 16 * 1024, f"gateway worker grew by {grown} KiB"
            got = 0
            while got < origin.sent - 64 * 1024:                       # reading again: it all flows
                got += len(ws.recv(10))
    finally:
        gw.close()


def test_config_checks() -> None:
    from fastgw.config.root import ConfigError, loads
    base = '''
[upstreams.h2]
targets = ["127.0.0.1:9"]
protocol = "h2"
[upstreams.h1]
targets = ["127.0.0.1:9"]
[[routes]]
name = "a"
path = "/a"
upstream = "h2"
websocket = true
[websocket]
ping_every = "10m"
max_per_route = -1
'''
    with pytest.raises(ConfigError) as e:
        loads(base)
    text = "\n".join(e.value.errors)
    assert 'routes[0].websocket: a tunnel needs an HTTP/1.1 upstream (upstream "h2" has protocol "h2")' in text
    assert "websocket.ping_every: must be shorter than websocket.idle_timeout" in text
    assert "websocket.max_per_route: must be 0 (no cap) or more" in text
    warnings: list[str] = []
    loads('[upstreams.h1]\ntargets = ["127.0.0.1:9"]\n[[routes]]\nname = "a"\npath = "/a"\nupstream = "h1"\n'
          'websocket = true\n', warnings=warnings)
    assert any("routes[0].websocket: no cors policy on the route" in w for w in warnings), warnings


def test_over_tls_with_a_large_message(origin: WsOrigin, tmp_path: Path) -> None:
    """wss: the tunnel takes over the TLS transport of the client connection."""
    import ssl

    from certs import CA, write_pair
    ca = CA("ws test CA")
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    cert, key = write_pair(tmp_path, "api", ca.issue("api.test", ["api.test"], ips=["127.0.0.1"]))
    from conftest import free_port
    port = free_port()
    text = config(origin).replace("[admin]", f'[[server.tls]]\nlisten = ["127.0.0.1:{port}"]\ncert = "{cert}"\n'
                                             f'key = "{key}"\n[admin]', 1)
    gw = start(tmp_path, text)
    try:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with connect(f"wss://127.0.0.1:{port}/ws/echo", ssl=ctx, server_hostname="api.test", max_size=None) as ws:
            big = os.urandom(3 * 1024 * 1024)
            ws.send(big)
            assert ws.recv(10) == big
            ws.send("over TLS")
            assert ws.recv(5) == "over TLS"
    finally:
        gw.close()
