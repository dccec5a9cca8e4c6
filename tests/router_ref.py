"""Pure-Python reference for fastgw._core.router: the same rule, by brute force.

No trie, no backtracking: every route of a host table is tested against the request on its own,
each match gets a specificity key, and the candidates are sorted. The key of a route for a request
is one rank per pattern segment (literal 0, {param} 1) followed by what comes after the last one
(0 when an exact route ends with the path, 2 for a prefix route's "*"); smaller keys sort first,
input order breaks ties. Slow and obvious on purpose: tests/test_router.py checks that the Cython
trie gives the same answer on random route sets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NOT_FOUND = (404, None, None)


@dataclass(frozen=True)
class RefRoute:
    index: int
    host: bytes | None
    segments: tuple[tuple[str, object], ...]  # ("lit", bytes) or ("param", name)
    prefix: bool
    methods: frozenset[bytes] | None
    value: object


def parse(index: int, host: str | None, path: str, methods, value) -> RefRoute:
    parts = path[1:].split("/")
    prefix = parts[-1] == "*"
    if prefix:
        parts = parts[:-1]
    segments = []
    for part in parts:
        m = re.fullmatch(r"\{(\w+)\}", part)
        segments.append(("param", m.group(1)) if m else ("lit", part.encode("utf-8")))
    return RefRoute(
        index=index,
        host=None if host is None else host.encode("utf-8").lower(),
        segments=tuple(segments),
        prefix=prefix,
        methods=None if methods is None else frozenset(m.encode() for m in methods),
        value=value,
    )


def normalize_host(host: bytes | None) -> bytes:
    if not host:
        return b""
    if host.startswith(b"["):
        close = host.find(b"]")
        if close != -1:
            host = host[: close + 1]
    else:
        host = host.split(b":", 1)[0]
    return host.lower()


def allows(route: RefRoute, method: bytes) -> bool:
    if route.methods is None:
        return True
    return method in route.methods or (method == b"HEAD" and b"GET" in route.methods)


def specificity(route: RefRoute, segs: list[bytes]) -> tuple[int, ...] | None:
    """The route's key for this request, or None if its pattern does not match the path."""
    n = len(route.segments)
    if n > len(segs) or (not route.prefix and n != len(segs)):
        return None
    ranks = []
    for (kind, want), got in zip(route.segments, segs, strict=False):
        if kind == "lit":
            if want != got:
                return None
            ranks.append(0)
        else:
            if got == b"":  # a {param} never matches an empty segment
                return None
            ranks.append(1)
    ranks.append(2 if route.prefix else 0)
    return tuple(ranks)


def search(table: list[RefRoute], method: bytes, path: bytes):
    segs = path[1:].split(b"/")
    candidates = []
    for route in table:
        key = specificity(route, segs)
        if key is not None:
            candidates.append((key, route.index, route))
    if not candidates:
        return None
    candidates.sort(key=lambda c: (c[0], c[1]))
    for _key, _index, route in candidates:
        if allows(route, method):
            params = {}
            for (kind, name), got in zip(route.segments, segs, strict=False):
                if kind == "param":
                    params[name] = got.decode("latin-1")
            return (0, route.value, params or None)
    allow: set[bytes] = set()
    for _key, _index, route in candidates:
        allow |= route.methods or set()
        if route.methods and b"GET" in route.methods:
            allow.add(b"HEAD")
    return (405, b", ".join(sorted(allow)), None)


class RefRouter:
    def __init__(self, routes):
        self.routes = [parse(i, *r) for i, r in enumerate(routes)]

    def match(self, method: bytes, host: bytes | None, path: bytes):
        if not path.startswith(b"/"):
            return NOT_FOUND
        h = normalize_host(host)
        if h:
            result = search([r for r in self.routes if r.host == h], method, path)
            if result is not None:
                return result
        result = search([r for r in self.routes if r.host is None], method, path)
        return NOT_FOUND if result is None else result
