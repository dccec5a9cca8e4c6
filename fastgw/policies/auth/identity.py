"""Who a verified credential names: the consumer's Identity (fastgw._core.gates.Identity, read by the
compiled rate gate), and the failure every credential check raises.

A consumer's identity ([consumers.NAME]: its plan, scopes, roles and the X-Consumer header for the
upstream) depends on the config only, so an API key or a client certificate of that consumer gets the
same identity. A JWT's identity also carries its claims (fastgw/policies/auth/jwt.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fastgw._core.gates import Identity

if TYPE_CHECKING:
    from fastgw.config.root import Config

EXPIRED = "token expired"        # the AuthError text counted as reason "expired" (not "invalid")


class AuthError(Exception):
    """A credential that was presented but does not verify; the message is the problem detail."""


def consumer_plan(cfg: Config, name: str) -> str | None:
    """The consumer's rate plan (consumers.NAME.plan, a key of the traffic policy), if it has one."""
    c = cfg.consumers.get(name)
    return c.plan if c is not None else None


def consumer_identity(cfg: Config, name: str, method: str) -> Identity:
    """The identity of consumer `name` (which the config defines), authenticated by `method`."""
    c = cfg.consumers[name]
    ident = Identity(name, method, consumer_plan(cfg, name), scopes=frozenset(c.scopes), roles=frozenset(c.roles))
    ident.headers.append((b"X-Consumer", name.encode()))
    return ident
