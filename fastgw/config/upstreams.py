"""[upstreams.NAME]: targets, keep-alive pool, timeouts and TLS to the upstream; their schema and checks."""
from __future__ import annotations

import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Literal

import msgspec

from fastgw.config.checks import NAME, parse_hostport
from fastgw.config.schema import Duration, FilePath, keypath
from fastgw.tls import upstream_context

if TYPE_CHECKING:
    from fastgw.config.root import Config


class UpstreamTLS(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """TLS to the upstream: verified by default (the system trust store, or `ca`)."""
    verify: bool = True
    ca: FilePath | None = None                 # PEM bundle of trusted CAs; None = the system store
    server_name: str | None = None        # SNI and the name verified; default: each target's host
    cert: FilePath | None = None               # client certificate (PEM) for upstreams that require one
    key: FilePath | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class Upstream(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    targets: list[str]
    # How fastgw talks to the targets: HTTP/1.1 (pooled keep-alive connections), HTTP/2 ("h2": h2c with
    # prior knowledge, or ALPN h2 with `tls`; multiplexed), or gRPC (HTTP/2, trailers relayed, gateway
    # errors as gRPC statuses; HTTP/2 clients only).
    protocol: Literal["http1", "h2", "grpc"] = "http1"
    keepalive: int = 128
    connect_timeout: Duration = 3.0
    timeout: Duration = 15.0
    idle_timeout: Duration = 60.0
    balance: Literal["round_robin"] = "round_robin"
    tls: UpstreamTLS | None = None


def check(cfg: Config, errors: list[str]) -> None:
    if not cfg.upstreams:
        errors.append("upstreams: at least one upstream is required")
    for name, up in cfg.upstreams.items():
        _check_upstream(name, up, keypath("upstreams", name), errors)


def _check_upstream(name: str, up: Upstream, path: str, errors: list[str]) -> None:
    if not NAME.fullmatch(name):
        errors.append(f'{path}: invalid upstream name "{name}" (use letters, digits, "_", ".", "-")')
    if not up.targets:
        errors.append(f"{path}.targets: at least one target is required")
    for i, target in enumerate(up.targets):
        try:
            parse_hostport(target)
        except ValueError as e:
            errors.append(f'{path}.targets[{i}]: invalid target "{target}": {e}')
    if up.keepalive < 0:
        errors.append(f"{path}.keepalive: must not be negative (0 disables pooling)")
    for field, seconds in (("connect_timeout", up.connect_timeout), ("timeout", up.timeout),
                           ("idle_timeout", up.idle_timeout)):
        if seconds <= 0:
            errors.append(f"{path}.{field}: must be greater than 0")
    if up.tls is not None:
        t = up.tls
        if (t.cert is None) != (t.key is None):
            errors.append(f"{path}.tls: cert and key go together (a client certificate needs its key)")
        for field, f in (("ca", t.ca), ("cert", t.cert), ("key", t.key)):
            if f is not None and not os.path.isfile(f):
                errors.append(f'{path}.tls.{field}: no such file "{f}"')
        if not any(e.startswith(f"{path}.tls") for e in errors):
            try:
                upstream_context(t)                   # the files must load, not just exist
            except (OSError, ValueError) as e:        # ssl.SSLError is an OSError
                errors.append(f"{path}.tls: unusable certificate or key: {e}")



def resolve_warnings(cfg: Config, timeout: float = 3.0) -> list[str]:
    """`fastgw check`: a target host name that does not resolve here is a warning, not an error. The
    gateway resolves names when it connects (a name may exist only where it runs, such as a cluster's
    service names), so the file stays valid; but a typo in a name is the likeliest cause."""
    names: dict[str, list[str]] = {}
    for name, up in cfg.upstreams.items():
        for i, target in enumerate(up.targets):
            host = parse_hostport(target)[0]
            if not _is_ip(host):
                names.setdefault(host, []).append(f"{keypath('upstreams', name)}.targets[{i}]")
    if not names:
        return []
    pool = ThreadPoolExecutor(max_workers=min(8, len(names)))
    futures = {host: pool.submit(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM) for host in names}
    wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    out = []
    for host, fut in futures.items():
        err = fut.exception() if fut.done() else None
        if not fut.done():
            reason = f"no answer within {timeout:g}s"
        elif isinstance(err, OSError):
            reason = err.strerror or str(err)
        else:
            continue
        out += [f'{key}: host "{host}" does not resolve here ({reason}); fastgw resolves it again when it '
                "connects" for key in names[host]]
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
