"""The addresses the gateway listens on, each with the config key that names it, and what a bind failure
says: `server.listen[0]: 0.0.0.0:8080 is already in use by another process`, not a bare errno.

`fastgw run` reports a failed bind this way; `fastgw check --bind-check` tries every address before the
gateway starts (a plain bind without SO_REUSEPORT, so that a running fastgw counts as "in use" too).
Imports nothing compiled: `check` runs before a build.
"""
from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from fastgw.config.checks import parse_hostport

if TYPE_CHECKING:
    from fastgw.config.root import Config


def listen_keys(cfg: Config) -> list[tuple[str, str]]:
    """(key path, address) of every public listener: server.listen, then each [[server.tls]] listen."""
    keys = [(f"server.listen[{i}]", a) for i, a in enumerate(cfg.server.listen)]
    keys += [(f"server.tls[{i}].listen[{j}]", a) for i, t in enumerate(cfg.server.tls) for j, a in enumerate(t.listen)]
    return keys


def bind_error(key: str, addr: str, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return f"{key}: {addr} is already in use by another process"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"{key}: {addr} is not an address of this host"
    if e.errno == errno.EACCES:
        return f"{key}: {addr}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return f"{key}: cannot listen on {addr}: {e.strerror or e}"


class BindError(OSError):
    """A listen address could not be bound; the message names its config key (and stands alone, without
    the "[Errno N]" of OSError)."""

    def __str__(self) -> str:
        return str(self.strerror)


def bind_check(cfg: Config) -> list[str]:
    """Try to bind every listen address and the admin address (then release them): one error per failure."""
    errors = []
    for key, addr in [*listen_keys(cfg), ("admin.listen", cfg.admin.listen)]:
        host, port = parse_hostport(addr, allow_port_zero=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
            except OSError as e:
                errors.append(bind_error(key, addr, e))
    return errors
