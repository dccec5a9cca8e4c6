"""[upstreams.NAME]: targets and their weights, balancing, keep-alive pool, timeouts and TLS to the upstream;
their schema and checks."""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Literal

import msgspec

from fastgw.config.checks import NAME, ConfigWarning, parse_hostport
from fastgw.config.schema import Duration, FilePath, Size, keypath
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


class WeightedTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A target with its share: `{ address = "10.0.1.11:8000", weight = 3 }` (a bare string weighs 1)."""
    address: str
    weight: int = 1


# Where `balance = "hash"` reads its key: a request header, a cookie, a query argument (each named after
# the colon), the authenticated consumer, the client's address (after PROXY protocol) or the path.
HASH_KEY = re.compile(r"(header|cookie|query):[!#$%&'*+.^_`|~0-9A-Za-z-]+|consumer|client_ip|path")
MAX_WEIGHT = 1000        # weights are relative shares; a bound keeps the hash table's fill exact


def address(t: str | WeightedTarget) -> str:
    return t if isinstance(t, str) else t.address


def weight(t: str | WeightedTarget) -> int:
    return 1 if isinstance(t, str) else t.weight


class Outlier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Passive outlier detection, on by default with Envoy's numbers (consecutive gateway failures 5, 30 s
    x ejections capped at 300 s, at most 10% ejected, panic below 50% healthy)."""
    consecutive_failures: int = 5            # connect failure, reset, timeout, 502/503/504; 0: off
    base_ejection: Duration = 30.0           # x the number of ejections of the target, capped
    max_ejection: Duration = 300.0
    max_ejected_percent: int = 10            # never more ejected (at least one may always be)
    panic_threshold: int = 50                # below this % of usable targets, on_panic decides
    on_panic: Literal["all", "fail"] = "all"


class Health(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Active checks (opt-in): one prober per host, in the supervisor."""
    path: str = "/healthz"
    host: str | None = None                  # the Host header of probes; default: the target's address
    interval: Duration = 5.0                 # jittered +-10%
    timeout: Duration = 1.0
    healthy: int = 2                         # consecutive passes to mark a down target up
    unhealthy: int = 3                       # consecutive failures to mark an up target down
    expect: list[int] = msgspec.field(default_factory=lambda: [200, 399])   # inclusive status range


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Circuit breaking, per upstream per host (every worker counts in shared memory): beyond a limit a
    request is answered at once with 503 upstream-overloaded and Retry-After, never queued [Envoy's
    circuit breakers, 1024 each; Envoy's are per process, so N workers allow N x 1024]."""
    max_connections: int = 1024              # upstream connections open (HTTP/1.1 upstreams)
    max_pending: int = 1024                  # requests waiting for a new connection to open (HTTP/1.1)
    max_requests: int = 1024                 # requests in flight to the upstream (any protocol)


# The conditions `retry.on` may name (retry.pyx decide_retry): the first two for any method (nothing
# was sent), the others for idempotent requests; the first four are on by default.
RETRY_ON = ("connect-failure", "refused-stream", "reset-before-send", "reset-before-response",
            "timeout", "502", "503", "504")
MAX_ATTEMPTS = 5                            # retries after the first try; more only multiplies load


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Retries on another target, inside a budget (docs/upstreams.md#retries)."""
    attempts: int = 1                        # retries after the first try (0: none)
    on: list[str] = msgspec.field(default_factory=lambda: list(RETRY_ON[:4]))
    budget_percent: int = 20                 # retries in flight at most this % of the requests in flight
    budget_min: int = 3                      # ...but always this many
    backoff: Duration = 0.025                # full jitter, doubling per retry
    backoff_max: Duration = 0.25
    per_try_timeout: Duration = 0.0          # 0: the upstream's timeout
    replay_buffer: Size = 65536              # a request body larger than this is never retried


class Upstream(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    targets: list[str | WeightedTarget]
    # How fastgw talks to the targets: HTTP/1.1 (pooled keep-alive connections), HTTP/2 ("h2": h2c with
    # prior knowledge, or ALPN h2 with `tls`; multiplexed), or gRPC (HTTP/2, trailers relayed, gateway
    # errors as gRPC statuses; HTTP/2 clients only).
    protocol: Literal["http1", "h2", "grpc"] = "http1"
    keepalive: int = 128
    connect_timeout: Duration = 3.0
    timeout: Duration = 15.0
    idle_timeout: Duration = 60.0
    balance: Literal["round_robin", "least_request", "hash"] = "round_robin"
    hash_key: str | None = None              # balance = "hash" only; see HASH_KEY
    slow_start: Duration = 0.0               # a new or returning target ramps up to its share over this
    resolve_every: Duration = 10.0           # host-name targets are resolved again this often (discovery.py)
    tls: UpstreamTLS | None = None
    outlier: Outlier = msgspec.field(default_factory=Outlier)
    health: Health | None = None
    limits: Limits = msgspec.field(default_factory=Limits)
    retry: Retry = msgspec.field(default_factory=Retry)


def check(cfg: Config, errors: list[str]) -> None:
    if not cfg.upstreams:
        errors.append("upstreams: at least one upstream is required")
    for name, up in cfg.upstreams.items():
        _check_upstream(name, up, keypath("upstreams", name), errors)
    errors += retry_warnings(cfg)


def _check_upstream(name: str, up: Upstream, path: str, errors: list[str]) -> None:
    if not NAME.fullmatch(name):
        errors.append(f'{path}: invalid upstream name "{name}" (use letters, digits, "_", ".", "-")')
    if not up.targets:
        errors.append(f"{path}.targets: at least one target is required")
    for i, target in enumerate(up.targets):
        try:
            parse_hostport(address(target))
        except ValueError as e:
            errors.append(f'{path}.targets[{i}]: invalid target "{address(target)}": {e}')
        if not 1 <= weight(target) <= MAX_WEIGHT:
            errors.append(f"{path}.targets[{i}].weight: must be between 1 and {MAX_WEIGHT}")
    addrs = [address(t) for t in up.targets]
    for a in sorted({a for a in addrs if addrs.count(a) > 1}):
        errors.append(f'{path}.targets: "{a}" is listed twice (give it a weight instead)')
    if up.balance == "hash":
        if up.hash_key is None:
            errors.append(f'{path}.hash_key: required with balance = "hash" (header:NAME, cookie:NAME, '
                          "query:NAME, consumer, client_ip or path)")
        elif not HASH_KEY.fullmatch(up.hash_key):
            errors.append(f'{path}.hash_key: invalid "{up.hash_key}" (header:NAME, cookie:NAME, query:NAME, '
                          "consumer, client_ip or path)")
    elif up.hash_key is not None:
        errors.append(f'{path}.hash_key: only with balance = "hash"')
    if up.slow_start < 0:
        errors.append(f"{path}.slow_start: must not be negative")
    if up.resolve_every <= 0:
        errors.append(f"{path}.resolve_every: must be greater than 0")
    if up.keepalive < 0:
        errors.append(f"{path}.keepalive: must not be negative (0 disables pooling)")
    for field, seconds in (("connect_timeout", up.connect_timeout), ("timeout", up.timeout),
                           ("idle_timeout", up.idle_timeout)):
        if seconds <= 0:
            errors.append(f"{path}.{field}: must be greater than 0")
    _check_outlier(up.outlier, f"{path}.outlier", errors)
    if up.health is not None:
        _check_health(up.health, f"{path}.health", errors)
    _check_limits(up.limits, f"{path}.limits", errors)
    _check_retry(up.retry, f"{path}.retry", errors)
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


def _check_outlier(o: Outlier, path: str, errors: list[str]) -> None:
    if o.consecutive_failures < 0:
        errors.append(f"{path}.consecutive_failures: must not be negative (0 turns detection off)")
    if o.base_ejection <= 0:
        errors.append(f"{path}.base_ejection: must be greater than 0")
    if o.max_ejection < o.base_ejection:
        errors.append(f"{path}.max_ejection: must be at least base_ejection")
    for field, pct in (("max_ejected_percent", o.max_ejected_percent), ("panic_threshold", o.panic_threshold)):
        if not 0 <= pct <= 100:
            errors.append(f"{path}.{field}: must be between 0 and 100 (a percentage)")


def _check_limits(lim: Limits, path: str, errors: list[str]) -> None:
    for field, value in (("max_connections", lim.max_connections), ("max_pending", lim.max_pending),
                         ("max_requests", lim.max_requests)):
        if value < 1:
            errors.append(f"{path}.{field}: must be at least 1")


def _check_retry(r: Retry, path: str, errors: list[str]) -> None:
    if not 0 <= r.attempts <= MAX_ATTEMPTS:
        errors.append(f"{path}.attempts: must be between 0 and {MAX_ATTEMPTS} (retries after the first try)")
    for i, cond in enumerate(r.on):
        if cond not in RETRY_ON:
            errors.append(f'{path}.on[{i}]: unknown condition "{cond}" (one of {", ".join(RETRY_ON)})')
    if not 0 <= r.budget_percent <= 100:
        errors.append(f"{path}.budget_percent: must be between 0 and 100 (a percentage)")
    if r.budget_min < 0:
        errors.append(f"{path}.budget_min: must not be negative")
    if r.backoff < 0 or r.backoff_max < r.backoff:
        errors.append(f"{path}.backoff_max: must be at least backoff (and backoff not negative)")
    if r.per_try_timeout < 0:
        errors.append(f"{path}.per_try_timeout: must not be negative (0: the upstream's timeout)")
    if r.replay_buffer < 0:
        errors.append(f"{path}.replay_buffer: must not be negative")


def retry_warnings(cfg: Config) -> list[ConfigWarning]:
    """`fastgw check`: a route whose deadline cannot hold every attempt its upstream allows (the first try
    and `retry.attempts` retries, each up to per_try_timeout) ends before the last of them can finish.
    Without per_try_timeout a try may take the whole deadline (then a timed-out request is not retried,
    which is the default: Envoy's too)."""
    out = []
    for i, route in enumerate(cfg.routes):
        up = cfg.upstreams.get(route.upstream)
        if up is None or up.retry.attempts == 0 or up.retry.per_try_timeout == 0:
            continue                         # (without per_try_timeout, a try may take the whole deadline)
        per_try = up.retry.per_try_timeout
        deadline = route.timeout or up.timeout
        tries = up.retry.attempts + 1
        if tries * per_try > deadline:
            out.append(ConfigWarning(
                f"routes[{i}].timeout: {tries} attempts (upstream \"{route.upstream}\" retry.attempts + 1) x "
                f"per-try timeout {per_try:g}s = {tries * per_try:g}s exceed the route's deadline of "
                f"{deadline:g}s; a try that times out leaves the next one only what remains of it"))
    return out


def _check_health(h: Health, path: str, errors: list[str]) -> None:
    if not h.path.startswith("/"):
        errors.append(f'{path}.path: must start with "/"')
    if h.interval <= 0 or h.timeout <= 0:
        errors.append(f"{path}: interval and timeout must be greater than 0")
    elif h.timeout >= h.interval:
        errors.append(f"{path}.timeout: must be shorter than interval")
    for field, n in (("healthy", h.healthy), ("unhealthy", h.unhealthy)):
        if n < 1:
            errors.append(f"{path}.{field}: must be at least 1")
    if len(h.expect) != 2 or not 100 <= h.expect[0] <= h.expect[1] <= 599:
        errors.append(f"{path}.expect: an inclusive status range [low, high] within 100-599")


def resolve_warnings(cfg: Config, timeout: float = 3.0) -> list[str]:
    """`fastgw check`: a target host name that does not resolve here is a warning, not an error. The
    gateway resolves names when it connects (a name may exist only where it runs, such as a cluster's
    service names), so the file stays valid; but a typo in a name is the likeliest cause."""
    names: dict[str, list[str]] = {}
    for name, up in cfg.upstreams.items():
        for i, target in enumerate(up.targets):
            host = parse_hostport(address(target))[0]
            if not is_ip(host):
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


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
