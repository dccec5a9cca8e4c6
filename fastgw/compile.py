"""compile(Config) -> Runtime: everything the request path reads, built once per config load.

The request path never looks at the Config structs: it reads the compiled router, the per-route
RouteRT objects (with their header rules serialised to bytes), the upstream groups and the prebuilt
problem bodies. A reload compiles a new Runtime and swaps one reference; requests in flight keep the
Runtime they started with.
"""
from __future__ import annotations

import os
import time
from typing import Any

from fastgw._core.balancer import Target, TargetTable, UpstreamGroup, hash_bytes
from fastgw._core.router import Router
from fastgw._core.runtime import H2Limits, RouteRT, Runtime
from fastgw._core.wire import HeaderTable
from fastgw._core.worker import upstream_for
from fastgw.config.root import Config
from fastgw.config.upstreams import RETRY_ON, address, weight
from fastgw.errors import build_problems
from fastgw.headers import fold, on_errors
from fastgw.policies import POLICIES
from fastgw.policies.chain import build_route_policies, install_phases
from fastgw.policies.contract import RequestHeaders


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _header_bytes(add: dict[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in add.items())


def _remove_set(names: list[str]) -> frozenset[bytes] | None:
    """Folded names (as filter_headers compares them: lowercase, "_" read as "-")."""
    return frozenset(fold(n).encode("latin-1") for n in names) if names else None


def header_table(cfg: Config) -> HeaderTable:
    """The request readers' wire table for this config: fastgw/headers.py, plus the roles the policies'
    config gives headers (the registry's `headers`, e.g. the auth policy's claims_to_headers targets as
    identity headers, its API-key header as a credential, "forwarded, never twice" like Authorization)."""
    identity: list[str] = []
    credentials: list[str] = []
    for h in _policy_headers(cfg):
        identity += h.identity
        credentials += h.credentials
    return HeaderTable(identity, credentials, cfg.server.limits.allow_underscores)


def _policy_headers(cfg: Config) -> list[RequestHeaders]:
    return [p.headers(cfg) for p in POLICIES if p.headers is not None]


def build_groups(cfg: Config, old: Config | None = None,
                 old_groups: dict[str, UpstreamGroup] | None = None,
                 table: TargetTable | None = None) -> dict[str, UpstreamGroup]:
    """One UpstreamGroup per upstream. On a reload, pass the previous config and groups: an upstream
    whose settings did not change keeps its group, and so its warm keep-alive pools and its round robin
    position. `table` holds the targets' pod-wide records (fastgw/upstream/state.py); without it each
    target keeps its own. A target a reload adds to an existing upstream slow-starts (`slow_start`)."""
    groups: dict[str, UpstreamGroup] = {}
    now = time.monotonic()
    for name, up in cfg.upstreams.items():
        if old is not None and old_groups is not None and old.upstreams.get(name) == up and name in old_groups:
            groups[name] = old_groups[name]
            continue
        known = {t.hostport for t in old_groups[name].targets} if old_groups and name in old_groups else None
        g = UpstreamGroup()
        g.name = name
        g.connect_timeout = up.connect_timeout
        g.timeout = up.timeout
        g.idle_timeout = up.idle_timeout
        g.targets = []
        for t in up.targets:
            host, port = split_hostport(address(t))
            target = Target(host, port, up.keepalive, g, weight(t), table, target_key(name, address(t)))
            if known is not None and up.slow_start > 0 and target.hostport not in known:
                target.since = now
            g.targets.append(target)
        g.attach_records(table, target_key(name, ""))
        lim, rt = up.limits, up.retry
        g.limits(lim.max_connections, lim.max_pending, lim.max_requests)
        g.retry(rt.attempts, sum(1 << RETRY_ON.index(c) for c in set(rt.on)), rt.budget_percent, rt.budget_min,
                rt.backoff, rt.backoff_max, rt.per_try_timeout or up.timeout, rt.replay_buffer)
        o = up.outlier
        g.outlier(o.consecutive_failures, o.base_ejection, o.max_ejection, o.max_ejected_percent,
                  o.panic_threshold, o.on_panic == "fail")
        g.setup(up.balance, up.hash_key, up.slow_start, int.from_bytes(os.urandom(8), "little"))
        g.ssl = None
        g.server_name = None
        if up.tls is not None:
            from fastgw.tls import upstream_context  # ssl setup only when an upstream uses TLS
            g.ssl = upstream_context(up.tls)
            g.server_name = up.tls.server_name
        groups[name] = g
    return groups


def target_key(upstream: str, addr: str) -> int:
    """The key of a target's pod-wide record: every worker derives the same from the config."""
    return hash_bytes(f"{upstream}\0{addr}".encode())


def attach_h2_pools(group: UpstreamGroup, up: Any) -> None:
    """Give each target of an HTTP/2 upstream (protocol "h2" or "grpc", or used by a route with the
    route-level alias protocol = "grpc") its HTTP/2 connection pool, kept across reloads with the group.
    TLS upstreams get their own context offering ALPN "h2"."""
    if all(t.h2pool is not None for t in group.targets):
        return
    from fastgw._core.upstream_h2 import H2Pool
    ctx = None
    if up.tls is not None:
        from fastgw.tls import upstream_context
        ctx = upstream_context(up.tls, alpn=("h2",))
    for t in group.targets:
        if t.h2pool is None:
            t.h2pool = H2Pool(t, ctx)


def compile_config(cfg: Config, groups: dict[str, UpstreamGroup] | None = None,
                   slots: dict[str, int] | None = None, services: dict[str, Any] | None = None) -> Runtime:
    """Compile `cfg`. Pass the previous `groups` to keep pools of unchanged upstreams across a reload.

    `slots` maps route names to their metrics slots (assigned by the supervisor, stable across reloads);
    without it route i counts in slot i + 1 (slot 0 counts requests that matched no route).
    """
    limits = cfg.server.limits
    groups = groups if groups is not None else build_groups(cfg)
    services = services if services is not None else {}     # one for every route (issuers are shared)
    specs = []
    tunnels: set[str] = set()
    strip = [name for h in _policy_headers(cfg) for name in h.strip]
    for i, r in enumerate(cfg.routes):
        rt = RouteRT()
        rt.name = r.name
        rt.mslot = slots.get(r.name, 0) if slots is not None else i + 1
        rt.group = groups[r.upstream]
        up = cfg.upstreams[r.upstream]
        rt.deadline = r.timeout or up.timeout
        rt.try_timeout = min(up.retry.per_try_timeout or up.timeout, rt.deadline)
        rt.max_body = r.max_body if r.max_body is not None else limits.max_body
        rt.strip = len(r.path[:-2].encode()) if (r.strip_prefix and r.path.endswith("/*")) else 0
        rt.req_add = _header_bytes(r.request_headers.add)
        # A route's added headers replace anything the client sent under those names; the headers the
        # policies strip (the API key header unless auth.api_key.forward) are not sent on (identity headers
        # never get this far: the readers drop them, see header_table).
        rt.req_remove = _remove_set(list(r.request_headers.remove) + list(r.request_headers.add) + strip)
        rt.resp_add = _header_bytes(r.response_headers.add)
        rt.err_add = _header_bytes({k: v for k, v in r.response_headers.add.items() if on_errors(k)})
        rt.resp_remove = _remove_set(list(r.response_headers.remove) + list(r.response_headers.add))
        policies = build_route_policies(cfg, r, services, rt.mslot)
        install_phases(rt, policies)
        if any(getattr(p, "opens_tunnels", False) for p in policies):
            tunnels.add(r.name)
        # The route-level protocol = "grpc" is an alias of the upstream's (kept for existing configs).
        rt.grpc = r.protocol == "grpc" or up.protocol == "grpc"
        rt.h2up = rt.grpc or up.protocol == "h2"
        if any(getattr(p, "transcodes", False) for p in policies):
            # The client speaks HTTP/JSON (any HTTP version; the gateway's answers problem+json): the gRPC
            # call is the transcoder's (fastgw/_core/transcode.pyx).
            rt.grpc = False
        if rt.h2up:
            attach_h2_pools(rt.group, up)
        rt.upstream = upstream_for("grpc" if rt.grpc else "h2" if rt.h2up else "http1")
        methods = tuple(r.methods) if r.methods else None
        specs.append((r.host, r.path, methods, rt))
    run = Runtime()
    run.router = Router(specs)
    run.problems = build_problems()
    run.tunnel_routes = frozenset(tunnels)
    run.headers = header_table(cfg)
    run.header_timeout = limits.header_timeout
    run.idle_timeout = limits.idle_timeout
    run.body_timeout = limits.body_timeout
    run.min_body_rate = float(limits.min_body_rate)
    run.send_timeout = limits.send_timeout
    run.max_requests = limits.max_requests_per_connection
    run.max_pipelined = limits.max_pipelined
    run.max_line = limits.max_request_line
    run.max_hbytes = limits.max_header_bytes
    run.max_headers = limits.max_headers
    h2 = cfg.server.http2
    run.h2 = H2Limits(h2.max_concurrent_streams, h2.stream_window, h2.connection_window, h2.stall_timeout)
    return run
