"""server.limits.max_connections (issue 11 item 18): a worker holding its cap of client connections stops
accepting (the kernel's listen backlog holds new connections) and resumes once one ends. The cap covers
every listener of the worker: plain (HTTP/1.1 and h2c), TLS, and TLS behind PROXY protocol. Metrics:
fastgw_connections{state="open"|"limit"} and fastgw_connections_limit_reached_total.
"""
from __future__ import annotations

import socket
import ssl
import struct
import time
import uuid
from typing import Any

import pytest
from certs import CA, write_pair
from conftest import free_port
from procutil import admin_get, metric

CAP = 4


def mark() -> str:
    return uuid.uuid4().hex[:12]


def metrics(gw) -> str:
    admin = next(e["admin"] for e in gw.events if e.get("event") == "started")
    return admin_get(f"http://{admin}/metrics")[1]


def hold(port: int, path: str) -> socket.socket:
    """A connection holding a request in flight (the origin answers after 30 s)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path}?delay=30 HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
    return s


def gone(s: Any) -> None:
    """End a held connection with a reset (a FIN would be a half-close: the response is still owed)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def wait_open(gw, n: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(metrics(gw), "fastgw_connections", state="open") != n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(metrics(gw), "fastgw_connections", state="open") == n


def answered_within(s: Any, timeout: float) -> bytes | None:
    s.settimeout(timeout)
    try:
        return s.recv(65536)
    except (TimeoutError, ssl.SSLWantReadError):
        return None
    finally:
        s.settimeout(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA("fastgw limit CA")
    (d / "ca.pem").write_bytes(ca.pem())
    return str(d / "ca.pem"), write_pair(d, "api", ca.issue("api.test", ["api.test"], ips=["127.0.0.1"]))


def start(gateway, echo_origin, pki, proxied: bool = False):
    tls_port = free_port()
    extra = f"""
[[server.tls]]
listen = ["127.0.0.1:{tls_port}"]
cert = "{pki[1][0]}"
key = "{pki[1][1]}"
"""
    gw = gateway.start({"echo": {"targets": [echo_origin.addr], "timeout": "60s"}},
                       [{"name": "all", "path": "/*", "upstream": "echo"}],
                       limits={"max_connections": CAP, "header_timeout": "30s"},
                       server={"proxy_protocol": True} if proxied else None, extra=extra)
    return gw, tls_port


def tls_client(port: int, ca: str, preface: bytes = b"") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    if preface:
        raw.sendall(preface)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(raw, server_hostname="api.test", do_handshake_on_connect=False)


def test_plain_listener_pauses_at_the_cap_and_resumes(gateway, echo_origin, pki):
    gw, _ = start(gateway, echo_origin, pki)
    held = [hold(gw.port, f"/{mark()}") for _ in range(CAP)]
    wait_open(gw, CAP)
    text = metrics(gw)
    assert metric(text, "fastgw_connections", state="limit") == CAP
    assert metric(text, "fastgw_connections_limit_reached_total") >= 1
    # One more: the kernel completes the TCP handshake (backlog), but the gateway does not take it.
    extra = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    extra.sendall(f"GET /{mark()} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
    assert answered_within(extra, 1.0) is None, "a connection beyond max_connections was served"
    assert metric(metrics(gw), "fastgw_connections", state="open") == CAP
    gone(held.pop())                                # one ends: accepting resumes, the waiting one is served
    data = answered_within(extra, 3.0)
    assert data is not None and data.startswith(b"HTTP/1.1 200 "), data
    for s in held + [extra]:
        gone(s)
    wait_open(gw, 0)


@pytest.mark.parametrize("proxied", [False, True], ids=["tls", "proxy-protocol-tls"])
def test_tls_listener_shares_the_cap(gateway, echo_origin, pki, proxied):
    gw, tls_port = start(gateway, echo_origin, pki, proxied)
    preface = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n" if proxied else b""
    if proxied:
        held = []
        for _ in range(CAP):
            t = tls_client(tls_port, pki[0], preface)
            t.do_handshake()
            t.sendall(f"GET /{mark()}?delay=30 HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
            held.append(t)
    else:
        held = [hold(gw.port, f"/{mark()}") for _ in range(CAP)]     # plain connections fill the cap
    wait_open(gw, CAP)
    late = tls_client(tls_port, pki[0], preface)
    late.settimeout(1.0)
    with pytest.raises((TimeoutError, ssl.SSLError, OSError)):
        late.do_handshake()                         # nobody accepted it: no ServerHello
    gone(held.pop())
    late.settimeout(5)
    late.do_handshake()
    late.sendall(b"GET /after HTTP/1.1\r\nHost: api.test\r\n\r\n")
    data = late.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 "), data
    for s in held + [late]:
        s.close()


def test_h2c_connections_count(gateway, echo_origin, pki):
    gw, _ = start(gateway, echo_origin, pki)
    held = [hold(gw.port, f"/{mark()}") for _ in range(CAP - 1)]
    h2 = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    h2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")   # preface + SETTINGS
    assert answered_within(h2, 2.0)                 # the server's SETTINGS
    wait_open(gw, CAP)
    extra = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    extra.sendall(f"GET /{mark()} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
    assert answered_within(extra, 1.0) is None
    gone(h2)
    data = answered_within(extra, 3.0)
    assert data is not None and data.startswith(b"HTTP/1.1 200 "), data
    for s in held + [extra]:
        s.close()


@pytest.mark.parametrize("proxied", [False, True], ids=["tls", "proxy-protocol-tls"])
def test_failed_tls_handshakes_give_their_place_back(gateway, echo_origin, pki, proxied):
    # A failed handshake never becomes a connection the worker serves: its place is free again at once,
    # so garbage handshakes (three times the cap) cannot lock the listener.
    gw, tls_port = start(gateway, echo_origin, pki, proxied)
    preface = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n" if proxied else b""
    for _ in range(3 * CAP):
        s = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
        s.sendall(preface + b"\x16\x03\x01\x00\x05garbage-not-a-client-hello")
        s.settimeout(3)
        try:
            s.recv(100)                             # the gateway ends the failed handshake
        except (ConnectionResetError, TimeoutError):
            pass
        s.close()
    wait_open(gw, 0)
    good = tls_client(tls_port, pki[0], preface)
    good.settimeout(3)
    good.do_handshake()
    good.sendall(b"GET /after HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    assert good.recv(65536).startswith(b"HTTP/1.1 200 ")
    good.close()
