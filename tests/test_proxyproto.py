"""PROXY protocol v1/v2: the sans-IO parser (bytes in, result out, split at every offset) and the
listener hook in a real gateway (client address for X-Forwarded-For and IP rules, v4 and v6)."""
from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

import pytest
from conftest import GatewayLauncher

from fastgw import proxyproto as pp

REQ = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def v2(cmd: int, fam: int, body: bytes) -> bytes:
    return pp.V2_SIG + bytes([0x20 | cmd, fam]) + len(body).to_bytes(2, "big") + body


def v2_tcp4(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 443, tlv: bytes = b"") -> bytes:
    return v2(1, 0x11, ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
              + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + tlv)


def v2_tcp6(src: str, sport: int) -> bytes:
    return v2(1, 0x21, ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address("2001:db8::1").packed
              + sport.to_bytes(2, "big") + (443).to_bytes(2, "big"))


GOOD = [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n", "203.0.113.7", 51000, 1),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n", "2001:db8::7", 51000, 1),
    (b"PROXY UNKNOWN\r\n", None, None, 1),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None, 1),
    (v2_tcp4("198.51.100.9", 4000), "198.51.100.9", 4000, 2),
    (v2_tcp4("198.51.100.9", 4000, tlv=b"\x04\x00\x03abc"), "198.51.100.9", 4000, 2),   # TLVs skipped
    (v2_tcp6("2001:db8::9", 4001), "2001:db8::9", 4001, 2),
    (v2(0, 0x00, b""), None, None, 2),                                                  # LOCAL
]


@pytest.mark.parametrize("header,src,port,ver", GOOD)
def test_good_headers_at_every_split(header: bytes, src: str | None, port: int | None, ver: int) -> None:
    data = header + REQ
    for cut in range(len(data) + 1):
        first = data[:cut]
        r = pp.parse(first)
        if cut < len(header):
            assert r is None, cut                  # incomplete: wait for more
            r = pp.parse(data)                     # the connection keeps the whole buffer
        assert r == pp.Header(len(header), src, port, ver), cut
        assert data[r.consumed:] == REQ


BAD = [
    b"GET / HTTP/1.1\r\n\r\n",                                   # no PROXY header at all
    b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",                # a field missing
    b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",                   # family mismatch
    b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 443\r\n",             # port out of range
    b"PROXY TCP4 203.0.113.7 10.0.0.1 0443 443\r\n",              # leading zero
    b"PROXY TCP5 203.0.113.7 10.0.0.1 1 2\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n",                    # LF only
    b"PROXY " + b"A" * 120,                                      # no CRLF within 107 bytes
    b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + b"\x00" * 12,  # bad signature
    pp.V2_SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12,              # version 1 in a v2 header
    pp.V2_SIG + b"\x22\x11\x00\x0c" + b"\x00" * 12,              # unknown command
    v2(1, 0x11, b"\x00" * 8),                                    # address block too short
    v2(1, 0x51, b"\x00" * 12),                                   # unknown family
    pp.V2_SIG + b"\x21\x11\xff\xff",                             # longer than we accept
]


@pytest.mark.parametrize("data", BAD)
def test_bad_headers_raise_once_decidable(data: bytes) -> None:
    with pytest.raises(pp.ProxyProtocolError):
        pp.parse(data)
    # Any prefix either waits for more or already refuses; none is ever accepted.
    for cut in range(len(data)):
        try:
            assert pp.parse(data[:cut]) is None
        except pp.ProxyProtocolError:
            pass


def raw_request(port: int, preface: bytes, path: str = "/open") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        msg = preface + f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
        try:
            for i in range(0, len(msg), 7):       # a dribbling balancer: the header arrives in pieces
                s.sendall(msg[i:i + 7])
        except (BrokenPipeError, ConnectionResetError):
            return b""
        out = b""
        while True:
            try:
                d = s.recv(65536)
            except ConnectionResetError:
                return out
            if not d:
                return out
            out += d


def xff(resp: bytes) -> str:
    body = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    return dict((n.lower(), v) for n, v in body["headers"])["x-forwarded-for"]


def test_gateway_takes_the_client_address_from_proxy_headers(gateway: GatewayLauncher, echo_origin: Any) -> None:
    routes = [{"name": "open", "path": "/open", "upstream": "echo"},
              {"name": "nets", "path": "/nets", "upstream": "echo", "ip_allow": ["203.0.113.0/24", "2001:db8:7::/48"]}]
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, routes, server={"proxy_protocol": True})
    r = raw_request(gw.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
    assert r.startswith(b"HTTP/1.1 200") and xff(r) == "203.0.113.7"
    r = raw_request(gw.port, v2_tcp6("2001:db8:7::5", 4000))
    assert r.startswith(b"HTTP/1.1 200") and xff(r) == "2001:db8:7::5"
    r = raw_request(gw.port, v2(0, 0, b""))                    # LOCAL (health check): the TCP peer
    assert r.startswith(b"HTTP/1.1 200") and xff(r) == "127.0.0.1"
    # IP rules see the PROXY address, v4 and v6.
    assert raw_request(gw.port, v2_tcp4("203.0.113.99", 1), "/nets").startswith(b"HTTP/1.1 200")
    assert raw_request(gw.port, v2_tcp4("198.51.100.1", 1), "/nets").startswith(b"HTTP/1.1 403")
    assert raw_request(gw.port, v2_tcp6("2001:db8:7:1::1", 1), "/nets").startswith(b"HTTP/1.1 200")
    assert raw_request(gw.port, v2_tcp6("2001:db8:8::1", 1), "/nets").startswith(b"HTTP/1.1 403")
    # No header, or a broken one: the connection is closed without an HTTP answer.
    assert raw_request(gw.port, b"") == b""
    assert raw_request(gw.port, b"PROXY TCP4 1.2.3.4\r\n") == b""


def test_forwarded_for_only_from_trusted_proxies(gateway: GatewayLauncher, echo_origin: Any) -> None:
    routes = [{"name": "nets", "path": "/nets", "upstream": "echo", "ip_allow": ["203.0.113.0/24"]}]
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, routes, server={"trusted_proxies": ["127.0.0.0/8"]})
    with gw.client() as c:
        assert c.get("/nets", headers={"X-Forwarded-For": "203.0.113.4"}).status_code == 200
        assert c.get("/nets", headers={"X-Forwarded-For": "198.51.100.4"}).status_code == 403
        assert c.get("/nets").status_code == 403
    gw2 = gateway.start({"echo": {"targets": [echo_origin.addr]}}, routes)     # no trusted proxies
    with gw2.client() as c:
        assert c.get("/nets", headers={"X-Forwarded-For": "203.0.113.4"}).status_code == 403
