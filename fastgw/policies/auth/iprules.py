"""IP rules: which client addresses a route admits (server.ip_deny + the route's ip_deny always apply;
the route's ip_allow, else server.ip_allow, when set). The address is fastgw/clientaddr.py's (the one the
access log shows), so the two always agree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastgw.clientaddr import Addr, nets, within
from fastgw.policies.contract import Rejection

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route

FORBIDDEN_IP: Rejection = (403, "forbidden", b"client address not allowed", None)


class IpRules:
    def __init__(self, cfg: Config, route: Route) -> None:
        s = cfg.server
        self.deny = nets(s.ip_deny) + nets(route.ip_deny)
        self.allow = nets(route.ip_allow) if route.ip_allow else nets(s.ip_allow)
        self.active = bool(self.deny or self.allow)

    def admits(self, addr: Addr | None) -> bool:
        """None (the peer is not an IP address) is refused when rules apply."""
        return addr is not None and not (self.deny and within(addr, self.deny)) \
            and not (self.allow and not within(addr, self.allow))
