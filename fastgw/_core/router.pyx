"""Route matching: an immutable trie compiled once from the config's routes.

Router(routes) takes ``(host, path, methods, value)`` tuples; ``Router.match(method, host, path)``
returns ``(0, value, params)``, ``(404, None, None)`` or ``(405, allow, None)``.

The rule (tests/router_ref.py implements the same rule by brute force; tests/test_router.py checks
that the two agree on random route sets):

* Patterns. A path starts with "/" and is split on every "/" into segments, with no normalization:
  "/" is one empty segment, "/a/" is ["a", ""], and "//" is an empty segment that only an empty
  literal matches. A pattern segment is a literal (matched byte for byte against the raw request
  bytes; a non-ASCII literal is compared in UTF-8), a "{name}" parameter (matches exactly one
  non-empty segment; name [A-Za-z_][A-Za-z0-9_]*, unique in the pattern), or, as the last segment
  only, "*": a prefix route. "/api/*" matches "/api", "/api/" and "/api/x/y"; "/*" matches every
  path. Anything else ("a*", "x{y}", "*" before the end, a space or control character) is a
  ValueError.
* Hosts. The request's Host is lowercased and its ":port" stripped ("[v6]:port" keeps "[v6]").
  Routes with that host are searched first; if none of them matches the path, the routes without
  a host are searched. If some route of the host matched the path but not the method, the answer is
  405 from that host's routes (no fallback), because the host owner defined that path.
* Precedence inside one host table: candidates are compared segment by segment, left to right; at
  each position a literal beats a {param}, which beats the prefix "*". When a path ends where a
  route could continue, an exact route ending there beats a prefix route ending there. So a longer
  prefix beats a shorter one with the same leading segments, and "/a/b/*" beats "/a/{x}/c". Routes
  of identical shape (same literals, same parameter positions, same kind) keep their input order.
  Equivalently: a depth-first walk of the trie trying literal child, then {param} child, then the
  node's prefix routes, backtracking on failure.
* Methods. The first candidate in that order whose methods include the request method wins. A
  route allowing GET also allows HEAD; methods None allows any method. Methods compare byte for byte
  (they are case-sensitive tokens).
* 405. If some route matched the path but none the method, the answer is (405, allow, None) with
  allow the sorted, de-duplicated union of the methods of every route that matched the path in the
  searched host table, HEAD included when GET is, joined with ", " (b"GET, HEAD, POST").
* Params. The winner's {name} captures, as str: the raw segment bytes decoded as latin-1 (no
  percent-decoding: the upstream gets the path as it was sent). None when the route has no params.
* A request path that does not start with "/" matches nothing (404): the HTTP engine rejects such
  targets before routing anyway.

Why a trie: a match costs a few dict lookups per segment whatever the number of routes; the
work per request is bounded by the deepest pattern, not by the request path's length.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memchr

import re

_NOT_FOUND = (404, None, None)
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
# Segment bounds live on the C stack for patterns up to this depth (the common case); deeper
# route sets use a heap buffer per match.
cdef enum:
    _STACK_SEGS = 64
# Distinct Allow values are bounded by the config, but cap the cache all the same.
cdef enum:
    _ALLOW_CACHE_MAX = 4096


cdef class _Route:
    pass


cdef class _Node:
    def __cinit__(self):
        self.lit = {}
        self.param = None
        self.exact = []
        self.prefix = []
        self.exact_allow = frozenset()
        self.prefix_allow = frozenset()


cdef bint _method_ok(_Route r, bytes method):
    return r.methods is None or method in r.methods


cdef _Route _find(_Node node, Py_ssize_t i, _Req* rq, bytes method, bint* matched):
    """Depth-first, most specific first; returns the first route allowing the method, or None.
    Sets matched[0] when any route matched the path (needed to choose 404 vs 405)."""
    cdef _Route r
    cdef _Node child
    cdef PyObject* p
    cdef bytes seg
    cdef Py_ssize_t k, size
    if i == rq.n:
        size = PyList_GET_SIZE(node.exact)
        if size:
            matched[0] = True
            for k in range(size):
                r = <_Route>PyList_GET_ITEM(node.exact, k)
                if _method_ok(r, method):
                    return r
    else:
        if node.lit:
            seg = PyBytes_FromStringAndSize(rq.buf + rq.start[i], rq.end[i] - rq.start[i])
            p = PyDict_GetItem(node.lit, seg)
            if p is not NULL:
                r = _find(<_Node>p, i + 1, rq, method, matched)
                if r is not None:
                    return r
        child = node.param
        if child is not None and rq.end[i] > rq.start[i]:
            r = _find(child, i + 1, rq, method, matched)
            if r is not None:
                return r
    size = PyList_GET_SIZE(node.prefix)
    if size:
        matched[0] = True
        for k in range(size):
            r = <_Route>PyList_GET_ITEM(node.prefix, k)
            if _method_ok(r, method):
                return r
    return None


cdef void _collect(_Node node, Py_ssize_t i, _Req* rq, set acc):
    """Union of the methods of every route matching the path (the 405 Allow header)."""
    cdef PyObject* p
    if i == rq.n:
        acc |= node.exact_allow
    else:
        if node.lit:
            p = PyDict_GetItem(node.lit, rq.buf[rq.start[i]:rq.end[i]])
            if p is not NULL:
                _collect(<_Node>p, i + 1, rq, acc)
        if node.param is not None and rq.end[i] > rq.start[i]:
            _collect(node.param, i + 1, rq, acc)
    acc |= node.prefix_allow


cdef bytes _norm_host(bytes host):
    """Lowercase, strip ":port"; "[v6]:port" keeps "[v6]". Allocates only when something changes."""
    cdef const char* s = PyBytes_AS_STRING(host)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(host)
    cdef Py_ssize_t k
    cdef const char* q
    cdef bint upper = False
    if n and s[0] == b'[':
        q = <const char*>memchr(s, b']', n)
        if q is not NULL:
            n = q - s + 1
    else:
        q = <const char*>memchr(s, b':', n)
        if q is not NULL:
            n = q - s
    for k in range(n):
        if b'A' <= s[k] <= b'Z':
            upper = True
            break
    if n != PyBytes_GET_SIZE(host):
        host = s[:n]
    return host.lower() if upper else host


def _parse_pattern(path):
    """Pattern -> (segments, is_prefix); a segment is bytes (literal) or str (param name)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"route path {path!r}: must be a string starting with '/'")
    parts = path[1:].split("/")
    is_prefix = parts[-1] == "*"
    if is_prefix:
        parts.pop()
    segs = []
    for part in parts:
        m = _PARAM_RE.match(part)
        if m is not None:
            name = m.group(1)
            if name in segs:
                raise ValueError(f"route path {path!r}: parameter {{{name}}} appears twice")
            segs.append(name)
            continue
        if any(c in "{}*" or c <= " " or c == "\x7f" for c in part):
            raise ValueError(
                f"route path {path!r}: bad segment {part!r} (a segment is a literal, a whole "
                "'{name}' with name [A-Za-z_][A-Za-z0-9_]*, or a final '*')"
            )
        segs.append(part.encode("utf-8"))
    return segs, is_prefix


def _parse_host(host):
    if host is None:
        return None
    if not isinstance(host, str) or not host:
        raise ValueError(f"route host {host!r}: must be a non-empty string or None")
    h = host.encode("utf-8").lower()
    if (h[1:-1].count(b"]") or not h.endswith(b"]")) if h.startswith(b"[") else b":" in h:
        raise ValueError(f"route host {host!r}: must not carry a port (ports never take part in routing)")
    return h


def _parse_methods(methods):
    if methods is None:
        return None
    if isinstance(methods, (str, bytes)) or not methods:
        raise ValueError(f"route methods {methods!r}: must be a non-empty sequence of strings, or None")
    out = set()
    for m in methods:
        if not isinstance(m, str) or not m or not m.isascii() or any(c <= " " or c == "\x7f" for c in m):
            raise ValueError(f"route method {m!r}: must be a non-empty ASCII token")
        out.add(m.encode("ascii"))
    if b"GET" in out:
        out.add(b"HEAD")  # RFC 9110 9.3.2: HEAD is GET without the body
    return frozenset(out)


cdef class Router:
    """Immutable route table; see the module docstring for the matching rule."""

    def __init__(self, routes):
        cdef _Node root, node
        cdef _Route r
        self._hosts = {}
        self._any = _Node()
        self._allow_cache = {}
        depth = 0
        for entry in routes:
            try:
                host, path, methods, value = entry
            except (TypeError, ValueError):
                raise ValueError(f"route {entry!r}: expected (host, path, methods, value)") from None
            hkey = _parse_host(host)
            segs, is_prefix = _parse_pattern(path)
            r = _Route()
            r.value = value
            r.methods = _parse_methods(methods)
            names = tuple((s, k) for k, s in enumerate(segs) if isinstance(s, str))
            r.params = names or None
            r.hit = (0, value, None)
            if hkey is None:
                root = self._any
            else:
                root = self._hosts.get(hkey)
                if root is None:
                    root = self._hosts[hkey] = _Node()
            node = root
            for s in segs:
                if isinstance(s, str):
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    child = node.lit.get(s)
                    if child is None:
                        child = node.lit[s] = _Node()
                    node = child
            (node.prefix if is_prefix else node.exact).append(r)
            depth = max(depth, len(segs))
        self._cap = depth + 1
        _seal(self._any)
        for root in self._hosts.values():
            _seal(root)

    cpdef tuple match(self, bytes method, bytes host, bytes path):
        """(0, value, params) | (404, None, None) | (405, allow, None); see the module docstring."""
        cdef Py_ssize_t stack_start[_STACK_SEGS]
        cdef Py_ssize_t stack_end[_STACK_SEGS]
        cdef _Req rq
        cdef Py_ssize_t size, pos, cap = self._cap
        cdef const char* q
        cdef _Node table
        cdef object res
        if method is None or path is None:
            raise TypeError("method and path must be bytes")
        size = PyBytes_GET_SIZE(path)
        rq.buf = PyBytes_AS_STRING(path)
        if size == 0 or rq.buf[0] != b'/':
            return _NOT_FOUND
        if cap <= _STACK_SEGS:
            rq.start = stack_start
            rq.end = stack_end
        else:
            rq.start = <Py_ssize_t*>PyMem_Malloc(2 * cap * sizeof(Py_ssize_t))
            if rq.start is NULL:
                raise MemoryError()
            rq.end = rq.start + cap
        try:
            # Split on "/" by index, at most `cap` segments: no pattern looks deeper, and a
            # path with more segments than that can only match prefix routes.
            rq.n = 0
            pos = 1
            while True:
                if rq.n == cap:
                    rq.n = cap + 1
                    break
                rq.start[rq.n] = pos
                q = <const char*>memchr(rq.buf + pos, b'/', size - pos)
                if q is NULL:
                    rq.end[rq.n] = size
                    rq.n += 1
                    break
                rq.end[rq.n] = q - rq.buf
                rq.n += 1
                pos = q - rq.buf + 1
            if self._hosts and host:
                table = self._hosts.get(_norm_host(host))
                if table is not None:
                    res = self._search(table, &rq, method)
                    if res is not None:
                        return res
            res = self._search(self._any, &rq, method)
            return _NOT_FOUND if res is None else res
        finally:
            if cap > _STACK_SEGS:
                PyMem_Free(rq.start)

    cdef object _search(self, _Node table, _Req* rq, bytes method):
        """The answer from one host table, or None if no route there matched the path."""
        cdef bint matched = False
        cdef _Route r = _find(table, 0, rq, method, &matched)
        cdef dict params
        cdef Py_ssize_t k
        if r is not None:
            if r.params is None:
                return r.hit
            params = {}
            for name, idx in r.params:
                k = idx
                params[name] = PyUnicode_DecodeLatin1(
                    <char*>rq.buf + rq.start[k], rq.end[k] - rq.start[k], NULL)
            return (0, r.value, params)
        if not matched:
            return None
        acc = set()
        _collect(table, 0, rq, acc)
        key = frozenset(acc)
        allow = self._allow_cache.get(key)
        if allow is None:
            allow = b", ".join(sorted(acc))
            if len(self._allow_cache) < _ALLOW_CACHE_MAX:
                self._allow_cache[key] = allow
        return (405, allow, None)


cdef void _seal(_Node node):
    """Precompute each node's Allow unions (routes with methods None never reach 405)."""
    cdef _Route r
    node.exact_allow = frozenset().union(*[r.methods for r in node.exact if r.methods is not None])
    node.prefix_allow = frozenset().union(*[r.methods for r in node.prefix if r.methods is not None])
    for child in node.lit.values():
        _seal(child)
    if node.param is not None:
        _seal(node.param)
