"""[[routes]]: which requests a route takes (host, path, methods), where it sends them and what it changes
on the way (strip_prefix, header rules, max_body); their schema and checks. Path syntax and precedence:
docs/routing.md; the router is fastgw/_core/router.pyx.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from fastgw import headers
from fastgw.config.checks import HOSTNAME, NAME, TOKEN
from fastgw.config.schema import Duration, Size, compose, keypath
from fastgw.policies import POLICIES

if TYPE_CHECKING:
    from fastgw.config.root import Config

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# A literal path segment: RFC 3986 pchar minus "*", which is reserved for prefix routes.
_LITERAL = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;=:@]|%[0-9A-Fa-f]{2})+")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")        # a token without lowercase (methods are case-sensitive)
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")      # controls except HTAB (RFC 9110 §5.5)


class HeaderRules(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    add: dict[str, str] = msgspec.field(default_factory=dict)
    remove: list[str] = msgspec.field(default_factory=list)


class RouteCore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The keys of [[routes]] the gateway itself reads; `Route` adds each policy's (the registry)."""

    name: str
    path: str
    upstream: str
    host: str | None = None
    methods: list[str] | None = None
    strip_prefix: bool = False
    protocol: Literal["http", "grpc"] = "http"   # grpc: an alias of the upstream's protocol = "grpc"
    max_body: Size | None = None
    timeout: Duration | None = None              # the whole request's deadline across retries (None: the upstream's)
    request_headers: HeaderRules = msgspec.field(default_factory=HeaderRules)
    response_headers: HeaderRules = msgspec.field(default_factory=HeaderRules)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...     # a key a policy adds (typed in its config module)


if TYPE_CHECKING:
    Route = RouteCore
else:
    Route = compose("Route", RouteCore, [p.route for p in POLICIES if p.route is not None], __name__)


def path_errors(path: str) -> list[str]:
    """Why `path` is not a valid route path (empty list if it is). Syntax: docs/routing.md."""
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


def check(cfg: Config, errors: list[str]) -> None:
    if not cfg.routes:
        errors.append("routes: at least one route is required (with none, every request gets 404)")
    known = ", ".join(sorted(cfg.upstreams)) or "none"
    names: dict[str, int] = {}
    claimed: dict[tuple[str | None, str], list[tuple[int, Route]]] = {}
    for i, r in enumerate(cfg.routes):
        p = f"routes[{i}]"
        if not NAME.fullmatch(r.name):
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
            elif not HOSTNAME.fullmatch(r.host.lower()):
                errors.append(f'{p}.host: "{r.host}" is not a valid host name')
        if r.methods is not None:
            _check_methods(r.methods, f"{p}.methods", errors)
        if r.max_body is not None and r.max_body < 0:
            errors.append(f"{p}.max_body: must not be negative")
        if r.timeout is not None and r.timeout <= 0:
            errors.append(f"{p}.timeout: must be greater than 0")
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
        kp = keypath(f"{path}.add", name)
        low = name.lower()
        if not TOKEN.fullmatch(name):
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
        if not TOKEN.fullmatch(name):
            errors.append(f'{kp}: invalid header name "{name}" (RFC 9110 token characters only)')
        elif owned(name):
            errors.append(f"{kp}: cannot remove {name}: {owned(name)}")
        elif name.lower() in added:
            errors.append(f"{kp}: {name} is both added and removed (an added header already replaces the client's)")


def normalise(cfg: Config) -> Config:
    """Lower-case route hosts (host names are case-insensitive, RFC 4343) so the router compares bytes."""
    if all(r.host is None or r.host == r.host.lower() for r in cfg.routes):
        return cfg
    routes = [msgspec.structs.replace(r, host=r.host.lower()) if r.host else r for r in cfg.routes]
    return msgspec.structs.replace(cfg, routes=routes)

