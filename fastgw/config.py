"""The config file: its schema (msgspec Structs), loading, and validation with errors that name the key.

`load(path)` returns a frozen `Config` or raises `ConfigError`, whose `.errors` lists every problem found
as "key.path: reason" (for example `routes[2].upstream: unknown upstream "acounts" (known: accounts,
payments)`), so `fastgw check` in CI reports a whole broken file at once rather than one error per run.

Loading has three passes:
1. TOML -> plain dicts (tomllib); a syntax error names the line and column.
2. A walk of the raw dicts against the Struct schema: unknown keys, missing keys, wrong types, and
   duration/size strings turned into float seconds / int bytes. It collects every error with its key
   path. (msgspec alone stops at the first error and cannot say which key of a table was wrong.)
3. msgspec.convert builds the Structs, then semantic checks (route syntax, references between sections,
   header rules, addresses, limits) run on the typed result, again collecting every error.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tomllib
import types
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from fastgw import headers
from fastgw.units import parse_duration, parse_quota, parse_rate, parse_size


class _Unit:
    """Marks a field (via Annotated) whose TOML value is a unit string converted by `parse`."""

    def __init__(self, name: str, parse: Callable[[Any], Any], accepts: tuple[type, ...]) -> None:
        self.name = name
        self.parse = parse
        self.accepts = accepts

    def __repr__(self) -> str:
        return f"<{self.name}>"


# Durations must be strings: a bare number would leave the reader guessing between s and ms.
# A size may also be a TOML integer, meaning bytes.
Duration = Annotated[float, _Unit("duration", parse_duration, (str,))]
Size = Annotated[int, _Unit("size", parse_size, (str, int))]


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-connection limits; defaults follow DESIGN.md §5 (nginx/Envoy-style edge defaults)."""

    max_header_bytes: Size = 32 * 1024
    max_headers: int = 100
    max_request_line: Size = 8 * 1024
    max_body: Size = 1024 * 1024
    header_timeout: Duration = 10.0
    idle_timeout: Duration = 60.0
    body_timeout: Duration = 30.0
    # Bytes per second a request body must keep up, over an allowance of body_timeout (README "The
    # HTTP/1.1 data path"); 0 turns it off. [Apache mod_reqtimeout MinRate=500]
    min_body_rate: Size = 500
    # How long a response may wait on a client that does not take it. [nginx send_timeout 60s]
    send_timeout: Duration = 60.0
    # Client connections per worker; "auto" sizes it from memory and file descriptors (fastgw/admission.py).
    max_connections: int | Literal["auto"] = "auto"
    max_requests_per_connection: int = 1000
    max_pipelined: int = 16
    allow_underscores: bool = False     # keep request header names with "_" (never managed ones: fastgw/headers.py)
    auth_failures: str = "20/min"     # failed credentials per client address, then 429 (or "off")


class Drain(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """SIGTERM behaviour (DESIGN.md §2, Signals). accept_seconds matches the load balancer's
    deregistration delay; timeout_seconds bounds the wait for requests in flight after that.

    The default accepts nothing after SIGTERM: without a load balancer in front (a laptop, `docker stop`
    with its 10 s grace) nobody else is about to send connections. Behind an NLB, set it (deploy/k8s/).
    """

    accept_seconds: Duration = 0.0
    timeout_seconds: Duration = 20.0


class Http2(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Downstream HTTP/2 (h2c prior knowledge and TLS ALPN "h2"); README "HTTP/2". Header limits are
    server.limits' (max_header_bytes is the header list size, max_headers the field count)."""

    max_concurrent_streams: int = 100
    stream_window: Size = 65535
    connection_window: Size = 1024 * 1024
    stall_timeout: Duration = 30.0


class TlsCert(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One certificate chain and its private key (PEM files)."""

    cert: str
    key: str


class TlsListener(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A TLS listener ([[server.tls]]): fastgw/tls.py builds its SSLContext."""

    listen: list[str]
    cert: str
    key: str
    sni: list[TlsCert] = msgspec.field(default_factory=list)   # more certificates, chosen by SNI
    client_ca: str | None = None
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


class HeaderRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    add: dict[str, str] = msgspec.field(default_factory=dict)
    remove: list[str] = msgspec.field(default_factory=list)


class UpstreamTLS(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """TLS to the upstream: verified by default (the system trust store, or `ca`)."""
    verify: bool = True
    ca: str | None = None                 # PEM bundle of trusted CAs; None = the system store
    server_name: str | None = None        # SNI and the name verified; default: each target's host
    cert: str | None = None               # client certificate (PEM) for upstreams that require one
    key: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class Upstream(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    targets: list[str]
    keepalive: int = 128
    connect_timeout: Duration = 3.0
    timeout: Duration = 15.0
    idle_timeout: Duration = 60.0
    balance: Literal["round_robin"] = "round_robin"
    tls: UpstreamTLS | None = None


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    path: str
    upstream: str
    host: str | None = None
    methods: list[str] | None = None
    strip_prefix: bool = False
    protocol: Literal["http", "grpc"] = "http"   # grpc: HTTP/2 to the upstream, trailers relayed
    max_body: Size | None = None
    request_headers: HeaderRules = msgspec.field(default_factory=HeaderRules)
    response_headers: HeaderRules = msgspec.field(default_factory=HeaderRules)
    plan: str | None = None                  # rate plan; a consumer's own plan overrides it
    auth: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)
    roles: list[str] = msgspec.field(default_factory=list)
    ip_allow: list[str] = msgspec.field(default_factory=list)
    ip_deny: list[str] = msgspec.field(default_factory=list)


class ApiKeyAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[auth.api_key]: where the key is read and whether it travels on."""

    header: str = "X-API-Key"
    query: str | None = None
    forward: bool = False


class JwtIssuer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[auth.jwt.NAME]: one token issuer (fastgw/policies/auth.py)."""

    issuer: str
    algorithms: list[str]
    audiences: list[str] = msgspec.field(default_factory=list)
    required_claims: list[str] = msgspec.field(default_factory=list)
    leeway: Duration = 30.0
    max_lifetime: Duration | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    public_key: str | None = None           # inline PEM
    secret: str | None = None               # HS*: inline shared secret
    secret_env: str | None = None           # HS*: name of an environment variable holding it
    refresh: Duration = 300.0
    refetch_min_interval: Duration = 10.0
    fetch_timeout: Duration = 5.0
    header: str | None = None               # read the token from this header instead of Authorization
    cookie: str | None = None               # or from this cookie
    consumer_claim: str = "sub"
    plan_claim: str | None = None
    scopes_claim: str = "scope"
    roles_claim: str = "roles"
    claims_to_headers: dict[str, str] = msgspec.field(default_factory=dict)
    cache_size: int = 10000


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: ApiKeyAuth = msgspec.field(default_factory=ApiKeyAuth)
    jwt: dict[str, JwtIssuer] = msgspec.field(default_factory=dict)


class Consumer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[consumers.NAME]: identity fields (the traffic policy adds the consumer's plan here)."""

    api_keys_sha256: list[str] = msgspec.field(default_factory=list)
    jwt_subjects: list[str] = msgspec.field(default_factory=list)
    cert_subjects: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)
    roles: list[str] = msgspec.field(default_factory=list)
    plan: str | None = None                 # rate plan of this consumer ([plans.NAME]); overrides the route's


class PlanLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One limit of a plan: exactly one of rate (token bucket), quota (UTC calendar window) or
    concurrency (requests in flight). See README "Traffic policy"."""

    rate: str | None = None              # "100/s", "6000/min": refill rate of a token bucket
    burst: int | None = None             # bucket size (default: the rate's count; 1 = spike arrest)
    quota: str | None = None             # "10000/day": count per UTC minute, hour, day or month
    concurrency: int | None = None       # requests in flight at once (per host)
    key: list[str] = msgspec.field(default_factory=lambda: ["consumer"])   # consumer|ip|route|header:NAME
    enforce: bool = True                 # false: shadow mode, count and log only
    name: str | None = None              # name in RateLimit-Policy (default: rate, minute, hour, day, month)


class RatePlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    limits: list[PlanLimit]
    sync: Literal["local", "lease", "strict"] = "local"
    on_store_error: Literal["local", "open", "closed"] = "local"


class RedisStore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[redis]: the store shared by every instance for sync = "lease" / "strict" plans."""

    url: str                              # redis://[:password@]host:port[/db]
    timeout: Duration = 0.02              # per command; then the circuit breaker opens
    retry_interval: Duration = 0.2        # reconnect attempts while the breaker is open
    lease_period: Duration = 0.1          # a lease covers about this much of a worker's traffic
    lease_max: int = 1000                 # most tokens one worker takes per refill, for one key
    lease_ttl: Duration = 1.0             # unspent leased tokens expire after this
    heartbeat: Duration = 1.0             # instance liveness (for on_store_error = "local")
    expected_instances: int | None = None  # on_store_error = "local": divide limits by at least this many


class RateLimitTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[ratelimit]: the per-host bucket table in shared memory."""

    table_size: Size = 16 * 1024 * 1024


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: Server = msgspec.field(default_factory=Server)
    admin: Admin = msgspec.field(default_factory=Admin)
    upstreams: dict[str, Upstream]
    routes: list[Route]
    redis: RedisStore | None = None
    plans: dict[str, RatePlan] = msgspec.field(default_factory=dict)
    ratelimit: RateLimitTable = msgspec.field(default_factory=RateLimitTable)
    auth: Auth = msgspec.field(default_factory=Auth)
    consumers: dict[str, Consumer] = msgspec.field(default_factory=dict)


class ConfigError(Exception):
    """An unusable config. `.errors` holds one "key.path: reason" line per problem."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


def load(path: str | Path) -> Config:
    """Read and validate the TOML file at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not UTF-8 (byte {e.start})") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> Config:
    """Validate TOML `text`; `source` names it in syntax errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_error(source, str(e), text)) from None
    errors: list[str] = []
    converted = _walk_struct(Config, raw, "", errors)
    if errors:
        raise ConfigError(errors)
    try:
        cfg = msgspec.convert(converted, Config)
    except msgspec.ValidationError as e:  # the walk should have caught it; keep the key path anyway
        raise ConfigError(_from_msgspec(str(e))) from None
    errors = _validate(cfg)
    if errors:
        raise ConfigError(errors)
    return _normalise(cfg)


def config_hash(path_or_bytes: str | Path | bytes) -> str:
    """First 12 hex digits of the sha256 of the file's bytes: a short, stable config version label."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


def _syntax_error(source: str, message: str, text: str) -> str:
    # tomllib ends its messages with "(at line N, column M)" or "(at end of document)"; put the position
    # up front so the reader (or an editor) can jump to it.
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m:
        return f"{source}: line {m[1]}, column {m[2]}: TOML syntax error: {message[: m.start()]}"
    m = re.search(r"\s*\(at end of document\)$", message)
    if m:
        line, col = text.count("\n") + 1, len(text) - text.rfind("\n")
        return f"{source}: line {line}, column {col}: TOML syntax error: {message[: m.start()]} (at end of file)"
    return f"{source}: TOML syntax error: {message}"


def _from_msgspec(message: str) -> str:
    """ "Expected `int`, got `str` - at `$.routes[0].foo`" -> "routes[0].foo: Expected `int`, got `str`"."""
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        return message
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    return f"{path or '<root>'}: {reason}"


# ---------------------------------------------------------------------------------------------------
# Pass 2: raw TOML values against the schema.

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NONE = type(None)


def _key(path: str, key: str) -> str:
    """Append a TOML key to a path, quoting it as TOML would when it is not a bare key."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{part}" if path else part


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime | date | time):
        return "date-time"
    return type(value).__name__


def _got(value: object) -> str:
    kind = _toml_type(value)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{kind} {json.dumps(shown)}"
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    if isinstance(value, int | float):
        return f"{kind} {value}"
    return kind


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        unit = _unit_of(tp)
        return f"a {unit.name}" if unit else _describe(get_args(tp)[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not _NONE)
    if origin is list:
        return "an array"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _unit_of(tp: Any) -> _Unit | None:
    for meta in get_args(tp)[1:]:
        if isinstance(meta, _Unit):
            return meta
    return None


def _walk_struct(cls: type[msgspec.Struct], raw: object, path: str, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected a table, got {_got(raw)}")
        return None
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field = fields.get(key)
        if field is None:
            errors.append(f"{_key(path, key)}: unknown key")
        else:
            out[key] = _walk(field.type, value, _key(path, key), errors)
    for name, field in fields.items():
        if field.required and name not in raw:
            errors.append(f"{_key(path, name)}: required key is missing")
    return out


def _walk(tp: Any, value: object, path: str, errors: list[str]) -> Any:
    """Check `value` against `tp`, returning it with units converted; append errors with their path."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not _NONE]
        if len(arms) == 1:  # X | None: TOML has no null, so an absent key is the only way to get None
            return _walk(arms[0], value, path, errors)
    if origin is Annotated:
        unit = _unit_of(tp)
        if unit is None:
            return _walk(get_args(tp)[0], value, path, errors)
        if not isinstance(value, unit.accepts) or isinstance(value, bool):
            errors.append(f"{path}: expected {_describe(tp)} such as {_UNIT_EXAMPLE[unit.name]}, got {_got(value)}")
            return None
        try:
            return unit.parse(value)
        except ValueError as e:
            errors.append(f"{path}: {e}")
            return None
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _walk_struct(tp, value, path, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected an array, got {_got(value)}")
            return None
        (item,) = get_args(tp)
        return [_walk(item, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a table, got {_got(value)}")
            return None
        _, item = get_args(tp)
        return {k: _walk(item, v, _key(path, k), errors) for k, v in value.items()}
    if _scalar_ok(tp, value):
        return float(value) if tp is float else value  # type: ignore[arg-type]
    errors.append(f"{path}: expected {_describe(tp)}, got {_got(value)}")
    return None


_UNIT_EXAMPLE = {"duration": '"10s" or "250ms"', "size": '"1MiB" or "512KiB"'}


def _scalar_ok(tp: Any, value: object) -> bool:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_scalar_ok(a, value) for a in get_args(tp))
    if origin is Literal:
        # Compare types too: in Python True == 1, but TOML true is not the integer 1.
        return any(type(a) is type(value) and a == value for a in get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return False


# ---------------------------------------------------------------------------------------------------
# Pass 3: meaning.

_NAME = re.compile(r"[A-Za-z0-9_.-]+")            # route/upstream names: they become metric labels
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A literal path segment: RFC 3986 pchar minus "*", which is reserved for prefix routes.
_LITERAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;=:@]|%[0-9A-Fa-f]{2})+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")      # RFC 9110 §5.6.2 token
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")        # a token without lowercase (methods are case-sensitive)
_HOSTNAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # controls except HTAB (RFC 9110 §5.5)
def parse_hostport(text: str, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" into (host, port), raising ValueError with the reason.

    The host may be an IPv4 address, a bracketed IPv6 address or a DNS name. Port 0 (an ephemeral port
    chosen by the kernel) is only meaningful for a listener.
    """
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError('expected "[ipv6]:port", e.g. "[::1]:8080"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'"{host}" is not an IPv6 address') from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError('missing port, expected "host:port", e.g. "127.0.0.1:8080"')
        if ":" in host:
            raise ValueError('an IPv6 address must be in brackets, e.g. "[::1]:8080"')
        if not host:
            raise ValueError('missing host, expected "host:port" (use "0.0.0.0:PORT" for every IPv4 address)')
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f'"{host}" is not an IPv4 address') from None
        elif not _HOSTNAME.fullmatch(host.lower()):
            raise ValueError(f'"{host}" is not a valid host name')
    if not port.isascii() or not port.isdigit() or len(port) > 5:
        raise ValueError(f'port "{port}" is not a number')
    number = int(port)
    if number > 65535 or (number == 0 and not allow_port_zero):
        raise ValueError(f"port {number} is out of range (1-65535)")
    return host, number


def path_errors(path: str) -> list[str]:
    """Why `path` is not a valid route path (empty list if it is). See Route syntax in DESIGN.md."""
    if not path.startswith("/"):
        return ['must start with "/"']
    segments = path[1:].split("/")
    problems: list[str] = []
    seen: set[str] = set()
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "*":
            if not last:
                problems.append('"*" is only allowed as the last segment (prefix route, e.g. "/api/*")')
        elif seg.startswith("{") and seg.endswith("}"):
            m = _PARAM.fullmatch(seg)
            if m is None:
                problems.append(f'bad parameter name "{seg}" (use [A-Za-z_][A-Za-z0-9_]*, e.g. "{{id}}")')
            elif m[1] in seen:
                problems.append(f'parameter "{seg}" appears twice')
            else:
                seen.add(m[1])
        elif seg == "":
            # Only a trailing slash may make an empty segment; it is significant ("/a" != "/a/").
            if not last:
                problems.append('empty segment ("//")')
        elif seg in (".", ".."):
            problems.append(f'"{seg}" segments are not allowed (clients and proxies may collapse them)')
        elif "{" in seg or "}" in seg:
            problems.append(f'"{seg}": a parameter must be a whole segment, e.g. "/users/{{id}}"')
        elif "*" in seg:
            problems.append(f'"{seg}": "*" is only allowed as the whole last segment, e.g. "/api/*"')
        elif not _LITERAL.fullmatch(seg):
            problems.append(f'"{seg}" has characters not allowed in a path (percent-encode them)')
    return problems


def _shape(path: str) -> str:
    """The path with parameter names erased: "/u/{id}" and "/u/{uid}" match the same requests."""
    return _PARAM.sub("{}", path)


def _validate(cfg: Config) -> list[str]:
    errors: list[str] = []
    _check_server(cfg, errors)
    _check_traffic(cfg, errors)
    _check_identity(cfg, errors)
    if not cfg.upstreams:
        errors.append("upstreams: at least one upstream is required")
    for name, up in cfg.upstreams.items():
        _check_upstream(name, up, _key("upstreams", name), errors)
    if not cfg.routes:
        errors.append("routes: at least one route is required (with none, every request gets 404)")
    known = ", ".join(sorted(cfg.upstreams)) or "none"
    names: dict[str, int] = {}
    claimed: dict[tuple[str | None, str], list[tuple[int, Route]]] = {}
    for i, r in enumerate(cfg.routes):
        p = f"routes[{i}]"
        if not _NAME.fullmatch(r.name):
            errors.append(f'{p}.name: invalid name "{r.name}" (use letters, digits, "_", ".", "-")')
        elif r.name in names:
            errors.append(f'{p}.name: duplicate route name "{r.name}" (also routes[{names[r.name]}])')
        else:
            names[r.name] = i
        bad_path = path_errors(r.path)
        if bad_path:
            errors.append(f'{p}.path: invalid path "{r.path}": {"; ".join(bad_path)}')
        if r.strip_prefix and not r.path.endswith("/*"):
            errors.append(f'{p}.strip_prefix: only valid on a prefix route (a path ending in "/*"), not "{r.path}"')
        if r.upstream not in cfg.upstreams:
            errors.append(f'{p}.upstream: unknown upstream "{r.upstream}" (known: {known})')
        if r.host is not None:
            if ":" in r.host:
                errors.append(f'{p}.host: "{r.host}" must not include a port (the request\'s port is ignored)')
            elif not _HOSTNAME.fullmatch(r.host.lower()):
                errors.append(f'{p}.host: "{r.host}" is not a valid host name')
        if r.methods is not None:
            _check_methods(r.methods, f"{p}.methods", errors)
        if r.max_body is not None and r.max_body < 0:
            errors.append(f"{p}.max_body: must not be negative")
        _check_headers(r.request_headers, f"{p}.request_headers", errors, headers.owned)
        _check_headers(r.response_headers, f"{p}.response_headers", errors, headers.owned_response)
        if not bad_path:
            host = r.host.lower() if r.host else None
            for j, other in claimed.setdefault((host, _shape(r.path)), []):
                overlap = _method_overlap(r.methods, other.methods)
                if overlap:
                    errors.append(
                        f'{p}.path: routes "{other.name}" (routes[{j}]) and "{r.name}" (routes[{i}]) both '
                        f'match host {host or "*"} path "{r.path}" for {overlap}')
            claimed[(host, _shape(r.path))].append((i, r))
    return errors


def _method_overlap(a: list[str] | None, b: list[str] | None) -> str:
    """Describe the methods two routes both accept ("" if none). A route allowing GET also serves HEAD."""
    if a is None and b is None:
        return "any method"
    if a is None or b is None:
        return ", ".join(sorted(set(b if a is None else a)))  # type: ignore[arg-type]

    def expand(ms: list[str]) -> set[str]:
        return set(ms) | ({"HEAD"} if "GET" in ms else set())

    return ", ".join(sorted(expand(a) & expand(b)))


def _check_methods(methods: list[str], path: str, errors: list[str]) -> None:
    if not methods:
        errors.append(f"{path}: must not be empty (omit the key to allow any method)")
    seen: set[str] = set()
    for i, m in enumerate(methods):
        if not _METHOD.fullmatch(m):
            hint = f' (methods are case-sensitive: "{m.upper()}")' if _METHOD.fullmatch(m.upper()) else ""
            errors.append(f'{path}[{i}]: invalid method "{m}"{hint}')
        elif m in seen:
            errors.append(f'{path}[{i}]: duplicate method "{m}"')
        seen.add(m)


def _check_headers(rules: HeaderRules, path: str, errors: list[str], owned: Callable[[str], str | None]) -> None:
    """`owned(name)`: why a route may not touch that header (fastgw/headers.py), or None."""
    added: set[str] = set()
    for name, value in rules.add.items():
        kp = _key(f"{path}.add", name)
        low = name.lower()
        if not _TOKEN.fullmatch(name):
            errors.append(f"{kp}: invalid header name (RFC 9110 token characters only)")
        elif owned(name):
            errors.append(f"{kp}: cannot add {name}: {owned(name)}")
        elif low in added:
            errors.append(f"{kp}: header added twice (names are case-insensitive)")
        if _VALUE_BAD.search(value):
            errors.append(f"{kp}: value contains a control character (CR, LF and NUL are never allowed)")
        elif not value.isascii():
            errors.append(f"{kp}: value must be ASCII (RFC 9110 §5.5: other bytes are not portable)")
        added.add(low)
    for i, name in enumerate(rules.remove):
        kp = f"{path}.remove[{i}]"
        if not _TOKEN.fullmatch(name):
            errors.append(f'{kp}: invalid header name "{name}" (RFC 9110 token characters only)')
        elif owned(name):
            errors.append(f"{kp}: cannot remove {name}: {owned(name)}")
        elif name.lower() in added:
            errors.append(f"{kp}: {name} is both added and removed (an added header already replaces the client's)")


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
    positive = ("max_header_bytes", "max_headers", "max_request_line", "header_timeout", "idle_timeout",
                "body_timeout", "send_timeout", "max_requests_per_connection", "max_pipelined")
    for name in positive:
        if getattr(lim, name) <= 0:
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
    for name in ("stream_window", "connection_window"):
        if not 16384 <= getattr(h2, name) <= 2**31 - 1:
            errors.append(f"server.http2.{name}: must be between 16KiB and 2GiB-1")
    if h2.connection_window < 65535:
        errors.append("server.http2.connection_window: must be at least 65535 (the protocol's initial window)")
    if h2.stall_timeout <= 0:
        errors.append("server.http2.stall_timeout: must be greater than 0")
    # Zero is allowed for both drain durations (stop accepting at once / do not wait); a day is far beyond
    # any load balancer's deregistration delay (AWS NLB: at most 3600 s) and surely a unit mistake.
    for name in ("accept_seconds", "timeout_seconds"):
        if getattr(s.drain, name) > 86400:
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


def _check_upstream(name: str, up: Upstream, path: str, errors: list[str]) -> None:
    if not _NAME.fullmatch(name):
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
    for field in ("connect_timeout", "timeout", "idle_timeout"):
        if getattr(up, field) <= 0:
            errors.append(f"{path}.{field}: must be greater than 0")
    if up.tls is not None:
        t = up.tls
        if (t.cert is None) != (t.key is None):
            errors.append(f"{path}.tls: cert and key go together (a client certificate needs its key)")
        for field in ("ca", "cert", "key"):
            f = getattr(t, field)
            if f is not None and not os.path.isfile(f):
                errors.append(f'{path}.tls.{field}: no such file "{f}"')
        if not any(e.startswith(f"{path}.tls") for e in errors):
            from fastgw.tls import upstream_context
            try:
                upstream_context(t)                   # the files must load, not just exist
            except (OSError, ValueError) as e:        # ssl.SSLError is an OSError
                errors.append(f"{path}.tls: unusable certificate or key: {e}")


def _normalise(cfg: Config) -> Config:
    """Lower-case route hosts (host names are case-insensitive, RFC 4343) so the router compares bytes."""
    if all(r.host is None or r.host == r.host.lower() for r in cfg.routes):
        return cfg
    routes = [msgspec.structs.replace(r, host=r.host.lower()) if r.host else r for r in cfg.routes]
    return msgspec.structs.replace(cfg, routes=routes)


# ---------------------------------------------------------------------------------------------------
# Identity and TLS (issue 5): [auth.*], [consumers.*], route auth/scopes/roles/ip rules, [[server.tls]].

# Algorithms a JWT issuer may pin. "none" is never accepted; HMAC and public-key algorithms may not be
# mixed in one issuer (the classic confusion: an HS256 token "signed" with the RSA public key).
JWT_HMAC = frozenset({"HS256", "HS384", "HS512"})
JWT_PUBLIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
ALPN_KNOWN = ("h2", "http/1.1")


def _check_cidrs(values: list[str], path: str, errors: list[str]) -> None:
    for i, v in enumerate(values):
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            errors.append(f'{path}[{i}]: "{v}" is not an IP address or CIDR block (e.g. "10.0.0.0/8", "2001:db8::/32")')


def _check_file(value: str, path: str, errors: list[str]) -> None:
    if not Path(value).is_file():
        errors.append(f'{path}: cannot read "{value}": no such file')


def _check_identity(cfg: Config, errors: list[str]) -> None:
    s = cfg.server
    for key in ("trusted_proxies", "ip_allow", "ip_deny"):
        _check_cidrs(getattr(s, key), f"server.{key}", errors)
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
        _check_file(t.cert, f"{p}.cert", errors)
        _check_file(t.key, f"{p}.key", errors)
        for j, extra in enumerate(t.sni):
            _check_file(extra.cert, f"{p}.sni[{j}].cert", errors)
            _check_file(extra.key, f"{p}.sni[{j}].key", errors)
        if t.client_ca is not None:
            _check_file(t.client_ca, f"{p}.client_ca", errors)
        if not t.alpn:
            errors.append(f'{p}.alpn: must not be empty (default ["h2", "http/1.1"])')
        for j, proto in enumerate(t.alpn):
            if proto not in ALPN_KNOWN:
                errors.append(f'{p}.alpn[{j}]: unknown protocol "{proto}" (known: {", ".join(ALPN_KNOWN)})')

    ak = cfg.auth.api_key
    if not _TOKEN.fullmatch(ak.header):
        errors.append(f'auth.api_key.header: invalid header name "{ak.header}"')
    elif headers.why(ak.header):
        errors.append(f"auth.api_key.header: {ak.header} cannot carry an API key ({headers.why(ak.header)})")
    elif "_" in ak.header and not s.limits.allow_underscores:
        errors.append(f"auth.api_key.header: {ak.header} contains \"_\": such request headers are dropped "
                      "(server.limits.allow_underscores = false)")
    if ak.query is not None and not re.fullmatch(r"[A-Za-z0-9_.~-]+", ak.query):
        errors.append(f'auth.api_key.query: invalid query parameter name "{ak.query}"')

    for name, iss in cfg.auth.jwt.items():
        _check_issuer(name, iss, _key("auth.jwt", name), errors, s.limits.allow_underscores)

    hashes: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for name, c in cfg.consumers.items():
        p = _key("consumers", name)
        if not _NAME.fullmatch(name):
            errors.append(f'{p}: invalid consumer name "{name}" (use letters, digits, "_", ".", "-")')
        for i, h in enumerate(c.api_keys_sha256):
            if not _SHA256_HEX.fullmatch(h):
                errors.append(f"{p}.api_keys_sha256[{i}]: expected 64 lowercase hex digits (sha256 of the key)")
            elif h in hashes:
                errors.append(f'{p}.api_keys_sha256[{i}]: the same key hash is also held by consumer "{hashes[h]}"')
            hashes.setdefault(h, name)
        for i, sub in enumerate(c.jwt_subjects):
            if sub in subjects:
                errors.append(f'{p}.jwt_subjects[{i}]: "{sub}" is also mapped to consumer "{subjects[sub]}"')
            subjects.setdefault(sub, name)

    mtls = any(t.client_ca for t in s.tls)
    for i, r in enumerate(cfg.routes):
        p = f"routes[{i}]"
        _check_cidrs(r.ip_allow, f"{p}.ip_allow", errors)
        _check_cidrs(r.ip_deny, f"{p}.ip_deny", errors)
        for j, method in enumerate(r.auth):
            kind, _, ref = method.partition(":")
            if method in ("api_key", "mtls"):
                if method == "mtls" and not mtls:
                    errors.append(f'{p}.auth[{j}]: "mtls" needs a [[server.tls]] listener with client_ca')
            elif kind == "jwt" and ref:
                if ref not in cfg.auth.jwt:
                    known = ", ".join(sorted(cfg.auth.jwt)) or "none"
                    errors.append(f'{p}.auth[{j}]: unknown JWT issuer "{ref}" (known: {known})')
            else:
                errors.append(f'{p}.auth[{j}]: unknown method "{method}" (use "api_key", "jwt:NAME" or "mtls")')
        if (r.scopes or r.roles) and not r.auth:
            errors.append(f"{p}.scopes: scopes and roles need auth methods on the route")


def _check_issuer(name: str, iss: JwtIssuer, p: str, errors: list[str], allow_underscores: bool) -> None:
    if not _NAME.fullmatch(name):
        errors.append(f'{p}: invalid issuer name "{name}" (use letters, digits, "_", ".", "-")')
    if not iss.algorithms:
        errors.append(f"{p}.algorithms: at least one algorithm is required (pin what the issuer signs with)")
    for i, a in enumerate(iss.algorithms):
        if a not in JWT_HMAC | JWT_PUBLIC:
            errors.append(f'{p}.algorithms[{i}]: unsupported algorithm "{a}" '
                          f'(known: {", ".join(sorted(JWT_HMAC | JWT_PUBLIC))})')
    hmac = [a for a in iss.algorithms if a in JWT_HMAC]
    public = [a for a in iss.algorithms if a in JWT_PUBLIC]
    if hmac and public:
        errors.append(f"{p}.algorithms: HMAC ({', '.join(hmac)}) and public-key algorithms "
                      f"({', '.join(public)}) cannot be mixed in one issuer")
    sources = [k for k in ("jwks_file", "jwks_url", "public_key", "secret", "secret_env") if getattr(iss, k)]
    if len(sources) != 1:
        errors.append(f"{p}: exactly one key source is required: jwks_file, jwks_url, public_key, secret or "
                      f"secret_env (got {', '.join(sources) or 'none'})")
    if (iss.secret or iss.secret_env) and public:
        errors.append(f"{p}.algorithms: a shared secret only verifies HS256/384/512")
    if iss.public_key and hmac:
        errors.append(f"{p}.algorithms: a public key cannot verify {', '.join(hmac)}")
    if iss.jwks_file is not None:
        try:
            doc = json.loads(Path(iss.jwks_file).read_bytes())
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                errors.append(f'{p}.jwks_file: "{iss.jwks_file}" is not a JWK Set (no "keys" array)')
        except OSError as e:
            errors.append(f'{p}.jwks_file: cannot read "{iss.jwks_file}": {e.strerror or e}')
        except ValueError:
            errors.append(f'{p}.jwks_file: "{iss.jwks_file}" is not JSON')
    if iss.jwks_url is not None and not re.match(r"https?://[^/\s]+", iss.jwks_url):
        errors.append(f'{p}.jwks_url: "{iss.jwks_url}" is not an http:// or https:// URL')
    if iss.public_key is not None and "-----BEGIN" not in iss.public_key:
        errors.append(f"{p}.public_key: expected a PEM block (-----BEGIN PUBLIC KEY-----)")
    if not 0 <= iss.leeway <= 60:
        errors.append(f"{p}.leeway: must be between 0s and 60s (clock skew, not a grace period)")
    if iss.max_lifetime is not None and iss.max_lifetime <= 0:
        errors.append(f"{p}.max_lifetime: must be greater than 0")
    for key in ("refresh", "refetch_min_interval", "fetch_timeout"):
        if getattr(iss, key) <= 0:
            errors.append(f"{p}.{key}: must be greater than 0")
    if iss.cache_size < 0:
        errors.append(f"{p}.cache_size: must not be negative (0 disables the cache)")
    if iss.header is not None:
        if not _TOKEN.fullmatch(iss.header):
            errors.append(f'{p}.header: invalid header name "{iss.header}"')
        elif headers.why(iss.header):
            errors.append(f"{p}.header: {iss.header} cannot carry a token ({headers.why(iss.header)})")
        elif "_" in iss.header and not allow_underscores:
            errors.append(f'{p}.header: {iss.header} contains "_": such request headers are dropped '
                          "(server.limits.allow_underscores = false)")
    if iss.cookie is not None and not _TOKEN.fullmatch(iss.cookie):
        errors.append(f'{p}.cookie: invalid cookie name "{iss.cookie}"')
    for claim, header in iss.claims_to_headers.items():
        kp = _key(f"{p}.claims_to_headers", claim)
        if not _TOKEN.fullmatch(header):
            errors.append(f'{kp}: invalid header name "{header}"')
        elif headers.role(header) not in (None, headers.IDENTITY):
            errors.append(f"{kp}: {header} cannot carry a claim ({headers.why(header)})")


# ---------------------------------------------------------------------------------------------------
# Traffic policy (issue 4): [plans.*], [redis], [ratelimit], routes[].plan, consumers.*.plan.

_LIMIT_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


def _check_traffic(cfg: Config, errors: list[str]) -> None:
    known = ", ".join(sorted(cfg.plans)) or "none"
    for pname, plan in cfg.plans.items():
        pp = _key("plans", pname)
        if not _NAME.fullmatch(pname):
            errors.append(f'{pp}: invalid plan name "{pname}" (use letters, digits, "_", ".", "-")')
        if not plan.limits:
            errors.append(f"{pp}.limits: at least one limit is required")
        if len(plan.limits) > 16:
            errors.append(f"{pp}.limits: at most 16 limits per plan")
        names: set[str] = set()
        for i, lim in enumerate(plan.limits):
            lp = f"{pp}.limits[{i}]"
            given = [k for k in ("rate", "quota", "concurrency") if getattr(lim, k) is not None]
            if len(given) != 1:
                errors.append(f"{lp}: set exactly one of rate, quota or concurrency"
                              + (f" (got {', '.join(given)})" if given else ""))
            if lim.rate is not None:
                try:
                    parse_rate(lim.rate)
                except ValueError as e:
                    errors.append(f"{lp}.rate: {e}")
            if lim.quota is not None:
                try:
                    parse_quota(lim.quota)
                except ValueError as e:
                    errors.append(f"{lp}.quota: {e}")
            if lim.burst is not None:
                if lim.rate is None:
                    errors.append(f"{lp}.burst: only valid with rate")
                elif lim.burst < 1:
                    errors.append(f"{lp}.burst: must be at least 1 (1 is spike arrest)")
            if lim.concurrency is not None and lim.concurrency < 1:
                errors.append(f"{lp}.concurrency: must be at least 1")
            if not lim.key:
                errors.append(f'{lp}.key: must not be empty (e.g. ["consumer"])')
            for j, part in enumerate(lim.key):
                name = part[7:] if part.startswith("header:") else None
                if part not in ("consumer", "ip", "route") and not (name and _TOKEN.fullmatch(name)):
                    errors.append(f'{lp}.key[{j}]: invalid key part "{part}" '
                                  '(use "consumer", "ip", "route" or "header:NAME")')
            if lim.name is not None and not _LIMIT_NAME.fullmatch(lim.name):
                errors.append(f'{lp}.name: invalid name "{lim.name}" (lowercase letters, digits, "_.-", at most 32)')
            label = lim.name or _default_limit_name(lim)
            if label in names and lim.concurrency is None:
                errors.append(f'{lp}.name: two limits of the plan are called "{label}" (set name to tell them apart)')
            names.add(label)
    for i, r in enumerate(cfg.routes):
        if r.plan is not None and r.plan not in cfg.plans:
            errors.append(f'routes[{i}].plan: unknown plan "{r.plan}" (known: {known})')
    for cname, consumer in getattr(cfg, "consumers", {}).items():
        cplan = getattr(consumer, "plan", None)
        if cplan is not None and cplan not in cfg.plans:
            errors.append(f'{_key(_key("consumers", cname), "plan")}: unknown plan "{cplan}" (known: {known})')
    if cfg.redis is not None:
        rd = cfg.redis
        if not re.fullmatch(r"redis://(?::[^@/]*@)?[^:/@]+(?::\d+)?(?:/\d+)?", rd.url):
            errors.append(f'redis.url: invalid URL "{rd.url}" (use "redis://[:password@]host:port[/db]")')
        for field in ("timeout", "retry_interval", "lease_period", "lease_ttl", "heartbeat"):
            if getattr(rd, field) <= 0:
                errors.append(f"redis.{field}: must be greater than 0")
        if rd.lease_max < 1:
            errors.append("redis.lease_max: must be at least 1")
        if rd.expected_instances is not None and not 1 <= rd.expected_instances <= 10000:
            errors.append("redis.expected_instances: must be between 1 and 10000")
    # 64-byte slots; fewer than 64 slots would evict live keys constantly.
    if cfg.ratelimit.table_size < 64 * 65:
        errors.append("ratelimit.table_size: must be at least 4KiB")


def _default_limit_name(lim: PlanLimit) -> str:
    if lim.quota is not None:
        return lim.quota.rpartition("/")[2]
    return "rate" if lim.rate is not None else "concurrency"
