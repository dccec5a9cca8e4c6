"""PROXY protocol v1 and v2 (HAProxy's spec, as sent by AWS NLB and most L4 balancers), sans-IO.

`parse(buf)` looks at the bytes received so far on a connection of a listener with
`server.proxy_protocol = true`:
  - None: the header is not complete yet (feed more and call again with the whole buffer);
  - a Header: `consumed` bytes were the PROXY header; `source` is the client address it carries, or None
    when the header says to use the connection's own address (v2 LOCAL: health checks; v1 UNKNOWN);
  - ProxyProtocolError: not a valid PROXY header; the connection must be closed. A listener that expects
    PROXY never falls back to reading HTTP, or any client could pick its own address.
"""
from __future__ import annotations

import ipaddress
from typing import NamedTuple

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107                # the longest v1 line, CRLF included (spec §2.1)
V2_MAX = 16 + 4096          # header + addresses + TLVs; NLB TLVs are a few dozen bytes


class ProxyProtocolError(ValueError):
    pass


class Header(NamedTuple):
    consumed: int
    source: str | None
    source_port: int | None
    version: int


def parse(buf: bytes) -> Header | None:
    if not buf:
        return None
    if buf[0] == 0x0D:
        n = min(len(buf), 12)
        if buf[:n] != V2_SIG[:n]:
            raise ProxyProtocolError("bad PROXY v2 signature")
        return _v2(buf) if len(buf) >= 16 else None
    n = min(len(buf), 6)
    if buf[:n] != b"PROXY "[:n]:
        raise ProxyProtocolError("expected a PROXY protocol header")
    return _v1(buf)


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError("bad port")
    p = int(text)
    if p > 65535:
        raise ProxyProtocolError("bad port")
    return p


def _v1(buf: bytes) -> Header | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX or b"\n" in buf[:V1_MAX]:
            raise ProxyProtocolError("PROXY v1 line too long or not CRLF-terminated")
        return None
    line = buf[:end]
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return Header(end + 2, None, None, 1)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 line")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyProtocolError("bad address in PROXY v1 line") from None
    want = 4 if parts[1] == b"TCP4" else 6
    if src.version != want or dst.version != want:
        raise ProxyProtocolError("address family does not match the protocol")
    sport = _port(parts[4])
    _port(parts[5])
    return Header(end + 2, str(src), sport, 1)


def _v2(buf: bytes) -> Header | None:
    ver_cmd, fam = buf[12], buf[13]
    length = int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY v2 version")
    cmd = ver_cmd & 0x0F
    if cmd > 1:
        raise ProxyProtocolError("unknown PROXY v2 command")
    if 16 + length > V2_MAX:
        raise ProxyProtocolError("PROXY v2 header too long")
    if len(buf) < 16 + length:
        return None
    body = buf[16:16 + length]
    total = 16 + length
    if cmd == 0:                        # LOCAL: the balancer's own connection (health check)
        return Header(total, None, None, 2)
    family, transport = fam >> 4, fam & 0x0F
    if family == 1:                     # AF_INET
        if length < 12:
            raise ProxyProtocolError("PROXY v2 address block too short")
        src = str(ipaddress.IPv4Address(body[0:4]))
        return Header(total, src, int.from_bytes(body[8:10], "big"), 2)
    if family == 2:                     # AF_INET6
        if length < 36:
            raise ProxyProtocolError("PROXY v2 address block too short")
        src = str(ipaddress.IPv6Address(body[0:16]))
        return Header(total, src, int.from_bytes(body[32:34], "big"), 2)
    if family in (0, 3) and transport <= 2:   # UNSPEC or AF_UNIX: keep the connection's address
        return Header(total, None, None, 2)
    raise ProxyProtocolError("unknown PROXY v2 address family")
