"""[server] (listeners, limits, drain, HTTP/2, [[server.tls]]) and [admin]: their schema and checks."""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from fastgw.config.checks import check_cidrs, check_file, parse_hostport
from fastgw.config.schema import Duration, FilePath, Size
from fastgw.config.units import parse_rate

if TYPE_CHECKING:
    from fastgw.config.root import Config

ALPN_KNOWN = ("h2", "http/1.1")


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-connection limits; edge-safe defaults after nginx and Envoy (each key's precedent: config/fastgw.toml)."""

    max_header_bytes: Size = 32 * 1024
    max_headers: int = 100
    max_request_line: Size = 8 * 1024
    max_body: Size = 1024 * 1024
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0
    body_timeout: Duration = 30.0
    # Bytes per second a request body must keep up, over an allowance of body_timeout (docs/http1.md
    # "Slow peers: whose time is it"); 0 turns it off. [Apache mod_reqtimeout MinRate=500]
    min_body_rate: Size = 500
    # How long a response may wait on a client that does not take it. [nginx send_timeout 60s]
    send_timeout: Duration = 60.0
    # Client connections per worker; "auto" sizes it from memory and file descriptors (fastgw/process/admission.py).
    max_connections: int | Literal["auto"] = "auto"
    max_requests_per_connection: int = 1000
    max_pipelined: int = 16
    allow_underscores: bool = False     # keep request header names with "_" (never managed ones: fastgw/headers.py)
    auth_failures: str = "20/min"     # failed credentials per client address, then 429 (or "off")


class Drain(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """SIGTERM behaviour (docs/operations.md "Signals"). accept_seconds matches the load balancer's
    deregistration delay; timeout_seconds bounds the wait for requests in flight after that.

    The default accepts nothing after SIGTERM: without a load balancer in front (a laptop, `docker stop`
    with its 10 s grace) nobody else is about to send connections. Behind an NLB, set it (deploy/k8s/).
    """

    accept_seconds: Duration = 0.0
    timeout_seconds: Duration = 20.0


class Http2(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Downstream HTTP/2 (h2c prior knowledge and TLS ALPN "h2"); docs/http2.md. Header limits are
    server.limits' (max_header_bytes is the header list size, max_headers the field count)."""

    max_concurrent_streams: int = 100
    stream_window: Size = 65535
    connection_window: Size = 1024 * 1024
    stall_timeout: Duration = 30.0


class TlsCert(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One certificate chain and its private key (PEM files)."""

    cert: FilePath
    key: FilePath


class TlsListener(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A TLS listener ([[server.tls]]): fastgw/tls.py builds its SSLContext."""

    listen: list[str]
    cert: FilePath
    key: FilePath
    sni: list[TlsCert] = msgspec.field(default_factory=list)   # more certificates, chosen by SNI
    client_ca: FilePath | None = None
    client_auth: Literal["required", "optional"] = "required"
    min_version: Literal["1.2", "1.3"] = "1.2"
    alpn: list[str] = msgspec.field(default_factory=lambda: ["h2", "http/1.1"])


class Server(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    workers: int | Literal["auto"] = "auto"
    access_log: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"    # lifecycle lines below it are not written
    limits: Limits = msgspec.field(default_factory=Limits)
    drain: Drain = msgspec.field(default_factory=Drain)
    http2: Http2 = msgspec.field(default_factory=Http2)
    proxy_protocol: bool = False
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    ip_allow: list[str] = msgspec.field(default_factory=list)
    ip_deny: list[str] = msgspec.field(default_factory=list)
    tls: list[TlsListener] = msgspec.field(default_factory=list)


class Admin(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    listen: str = "127.0.0.1:9901"
    metrics: bool = True



def check(cfg: Config, errors: list[str]) -> None:
    _check_server(cfg, errors)
    _check_tls(cfg, errors)


def _check_server(cfg: Config, errors: list[str]) -> None:
    s = cfg.server
    if not s.listen:
        errors.append("server.listen: at least one address is required")
    bound: dict[tuple[str, int], int] = {}
    for i, addr in enumerate(s.listen):
        try:
            hp = parse_hostport(addr, allow_port_zero=True)
        except ValueError as e:
            errors.append(f'server.listen[{i}]: invalid address "{addr}": {e}')
            continue
        if hp in bound and hp[1] != 0:
            errors.append(f'server.listen[{i}]: "{addr}" is listed twice (also server.listen[{bound[hp]}])')
        bound.setdefault(hp, i)
    if not isinstance(s.workers, str) and s.workers < 1:
        errors.append(f'server.workers: must be at least 1 or "auto", got {s.workers}')
    lim = s.limits
    positive = {"max_header_bytes": lim.max_header_bytes, "max_headers": lim.max_headers,
                "max_request_line": lim.max_request_line, "header_timeout": lim.header_timeout,
                "idle_timeout": lim.idle_timeout, "body_timeout": lim.body_timeout,
                "send_timeout": lim.send_timeout, "max_requests_per_connection": lim.max_requests_per_connection,
                "max_pipelined": lim.max_pipelined}
    for name, value in positive.items():
        if value <= 0:
            errors.append(f"server.limits.{name}: must be greater than 0")
    if not isinstance(lim.max_connections, str) and not 1 <= lim.max_connections <= 10_000_000:
        errors.append(f'server.limits.max_connections: must be between 1 and 10000000 or "auto", '
                      f"got {lim.max_connections}")
    # A zero body limit is meaningful: such routes accept no request body at all.
    if lim.max_body < 0:
        errors.append("server.limits.max_body: must not be negative")
    if lim.auth_failures != "off":
        try:
            parse_rate(lim.auth_failures)
        except ValueError as e:
            errors.append(f'server.limits.auth_failures: {e} (or "off")')
    h2 = s.http2
    # RFC 9113 6.5.2 asks for at least 100 concurrent streams; 1000 bounds what one connection may hold.
    if not 1 <= h2.max_concurrent_streams <= 1000:
        errors.append("server.http2.max_concurrent_streams: must be between 1 and 1000")
    # Windows: 16 KiB (one frame) up to 2^31-1 (RFC 9113 6.9.1).
    for name, window in (("stream_window", h2.stream_window), ("connection_window", h2.connection_window)):
        if not 16384 <= window <= 2**31 - 1:
            errors.append(f"server.http2.{name}: must be between 16KiB and 2GiB-1")
    if h2.connection_window < 65535:
        errors.append("server.http2.connection_window: must be at least 65535 (the protocol's initial window)")
    if h2.stall_timeout <= 0:
        errors.append("server.http2.stall_timeout: must be greater than 0")
    # Zero is allowed for both drain durations (stop accepting at once / do not wait); a day is far beyond
    # any load balancer's deregistration delay (AWS NLB: at most 3600 s) and surely a unit mistake.
    for name, seconds in (("accept_seconds", s.drain.accept_seconds), ("timeout_seconds", s.drain.timeout_seconds)):
        if seconds > 86400:
            errors.append(f"server.drain.{name}: must be at most 24h")
    try:
        admin = parse_hostport(cfg.admin.listen, allow_port_zero=True)
    except ValueError as e:
        errors.append(f'admin.listen: invalid address "{cfg.admin.listen}": {e}')
        return
    # The admin endpoints (/metrics, later /readyz) must never be reachable on the public listener.
    wildcard = {"0.0.0.0", "::"}
    for host, port in bound:
        if port and port == admin[1] and (host == admin[0] or host in wildcard or admin[0] in wildcard):
            errors.append(f'admin.listen: "{cfg.admin.listen}" overlaps a server.listen address')
            break



def _check_tls(cfg: Config, errors: list[str]) -> None:
    s = cfg.server
    for key, blocks in (("trusted_proxies", s.trusted_proxies), ("ip_allow", s.ip_allow), ("ip_deny", s.ip_deny)):
        check_cidrs(blocks, f"server.{key}", errors)
    plain = set()
    for addr in s.listen:
        try:
            plain.add(parse_hostport(addr, allow_port_zero=True))
        except ValueError:
            pass
    for i, t in enumerate(s.tls):
        p = f"server.tls[{i}]"
        if not t.listen:
            errors.append(f"{p}.listen: at least one address is required")
        for j, addr in enumerate(t.listen):
            try:
                hp = parse_hostport(addr, allow_port_zero=True)
            except ValueError as e:
                errors.append(f'{p}.listen[{j}]: invalid address "{addr}": {e}')
                continue
            if hp in plain and hp[1] != 0:
                errors.append(f'{p}.listen[{j}]: "{addr}" is also a plain listener (server.listen)')
            plain.add(hp)
        check_file(t.cert, f"{p}.cert", errors)
        check_file(t.key, f"{p}.key", errors)
        for j, extra in enumerate(t.sni):
            check_file(extra.cert, f"{p}.sni[{j}].cert", errors)
            check_file(extra.key, f"{p}.sni[{j}].key", errors)
        if t.client_ca is not None:
            check_file(t.client_ca, f"{p}.client_ca", errors)
        if not t.alpn:
            errors.append(f'{p}.alpn: must not be empty (default ["h2", "http/1.1"])')
        for j, proto in enumerate(t.alpn):
            if proto not in ALPN_KNOWN:
                errors.append(f'{p}.alpn[{j}]: unknown protocol "{proto}" (known: {", ".join(ALPN_KNOWN)})')
