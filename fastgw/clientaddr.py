"""The client address: which address a request comes from, for the IP rules (fastgw/policies/auth/iprules.py)
and the access log's `client` (fastgw/observe/access.py), decided once here so that both always agree.

It is the TCP peer (already replaced by the PROXY protocol header's source on listeners with
server.proxy_protocol), or, when that peer is in server.trusted_proxies, the right-most X-Forwarded-For
entry that is not itself a trusted proxy (a malformed entry stops the walk at the last trusted hop).
"""
from __future__ import annotations

import ipaddress
from typing import Any

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

PEER_CACHE = 4096     # peers remembered by `text` (the trusted proxies in front are a handful)


def nets(values: list[str]) -> tuple[Net, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


def within(addr: Addr, blocks: tuple[Net, ...]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in blocks)


class ClientAddress:
    def __init__(self, trusted: tuple[Net, ...]) -> None:
        self.trusted = trusted
        self.peers: dict[bytes, bool] = {}          # peer -> is a trusted proxy (for `text`)

    def __call__(self, ex: Any) -> Addr | None:
        """The client address of exchange `ex`, or None when its peer is not an IP address."""
        return self.resolve(ex.peer, ex.xff)

    def resolve(self, peer: bytes, xff: bytes | None) -> Addr | None:
        try:
            addr = ipaddress.ip_address(peer.decode())
        except ValueError:
            return None
        if not self.trusted or not within(addr, self.trusted) or not xff:
            return addr
        for item in reversed(xff.split(b",")):
            try:
                hop = ipaddress.ip_address(item.strip().decode())
            except (ValueError, UnicodeDecodeError):
                return addr            # a malformed entry: stop at the last address we could trust
            addr = hop
            if not within(hop, self.trusted):
                return hop
        return addr

    def text(self, peer: bytes, xff: bytes | None) -> str:
        """The client address as text, cheaply when nothing is to be walked: the peer itself unless it
        is a trusted proxy that forwarded an X-Forwarded-For (the verdict on a peer is remembered)."""
        if xff is not None and self.trusted:
            trusted = self.peers.get(peer)
            if trusted is None:
                addr = self.resolve(peer, None)
                trusted = addr is not None and within(addr, self.trusted)
                if len(self.peers) >= PEER_CACHE:
                    self.peers.clear()
                self.peers[peer] = trusted
            if trusted:
                return str(self.resolve(peer, xff))
        return peer.decode("latin-1")
