# cython: language_level=3
"""The wire table, compiled: what the data path does with each header name, and which bytes are valid
where. The names and their roles are declared once, in fastgw/headers.py; this module turns them into
the tables the HTTP/1.1 reader (http1.pyx), the HTTP/2 validator (h2engine.pyx), the upstream-head builders
and the response-head walk (exchange.pyx, upstream_h1.pyx, upstream_grpc.pyx) read, with the action codes of wire.pxd.

  HeaderTable   the request readers' table for one config: name -> Action, plus the underscore rule
  CHARS         character classes (bits of wire.pxd CharClass), shared by both readers
  response_kind the upstream response-head walk's classification of a header name (inline, wire.pxd)
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr

from fastgw import headers as _h


# ---------------------------------------------------------------------------------------------------
# Character classes

cdef unsigned char CHARS[256]


cdef void _mark(bytes chars, unsigned char cls):
    for c in chars:
        CHARS[c] |= cls


for _i in range(256):
    CHARS[_i] = C_PATH_REFUSED if _i <= 32 or _i >= 127 else 0
_mark(b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~", C_NAME)
_mark(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]", C_HOST)
_mark(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-", C_REQUEST_ID)
_mark(b"#\\", C_PATH_REFUSED)
_mark(b"%", C_PATH_PCT)
_mark(b".", C_PATH_DOT)


cdef bint _has_dot_segment(bytes path):
    for seg in path.split(b"/"):
        if seg == b"." or seg == b"..":
            return True
    return False


cdef bint bad_path(bytes path, int flags):
    """Dot segments, encoded slashes/backslashes/NUL, raw backslashes and fragments are refused: a route
    decision taken on one spelling of a path must hold for the upstream that decodes another.
    `flags` is the OR of CHARS over the path (one pass, done by the caller)."""
    cdef bytes low
    if flags & C_PATH_REFUSED:
        return True
    if flags & C_PATH_PCT:
        low = path.lower()
        if low.find(b"%2f") >= 0 or low.find(b"%5c") >= 0 or low.find(b"%00") >= 0:
            return True
        if low.find(b"%2e") >= 0:
            return _has_dot_segment(low.replace(b"%2e", b"."))
    if flags & C_PATH_DOT:
        return _has_dot_segment(path)
    return False


# ---------------------------------------------------------------------------------------------------
# Response heads

_RESP_BY_NAME = {"content-length": R_CONTENT_LENGTH, "transfer-encoding": R_TRANSFER_ENCODING}
_RESP_BY_ROLE = {_h.CONNECTION: R_CONNECTION, _h.HOP_BY_HOP: R_HOP}
_RESP = [(n.encode(), _RESP_BY_NAME[n] if n in _RESP_BY_NAME else _RESP_BY_ROLE[r])
         for n, r in _h.RESPONSE.items()]
cdef bytes RESP_NAMES = b"".join(n for n, _ in _RESP)      # kept alive: RESP_NAME points into it
cdef const char* _base = RESP_NAMES
cdef Py_ssize_t _off = 0
assert len(_RESP) <= 16 and all(len(n) < 64 for n, _ in _RESP)
for _i in range(64):
    RESP_FIRST[_i] = 0
for _i, (_n, _k) in enumerate(_RESP):
    RESP_NAME[_i] = _base + _off
    RESP_KIND[_i] = _k
    RESP_NEXT[_i] = RESP_FIRST[len(_n)]        # chain names of the same length
    RESP_FIRST[len(_n)] = _i + 1
    _off += len(_n)

# Response fields never relayed from an HTTP/2 upstream (gRPC): the connection-specific ones.
CONNECTION_SPECIFIC = frozenset(n.encode() for n in _h.CONNECTION_SPECIFIC)


# ---------------------------------------------------------------------------------------------------
# Request headers

cdef dict _ROLE_ACTION = {
    _h.HOST: A_HOST, _h.CONNECTION: A_CONNECTION, _h.TE: A_TE, _h.EXPECT: A_EXPECT,
    _h.REQUEST_ID: A_REQUEST_ID, _h.FORWARDED_FOR: A_FORWARDED_FOR, _h.FORWARDED: A_DROP,
    _h.IDENTITY: A_DROP,
}
cdef dict _NAME_ACTION = {
    "content-length": A_CONTENT_LENGTH, "transfer-encoding": A_TRANSFER_ENCODING,
    "traceparent": A_TRACEPARENT, "tracestate": A_TRACESTATE,
}


def _action(str name, str role):
    a = _NAME_ACTION.get(name)
    if a is not None:
        return a
    if role == _h.CREDENTIAL:
        return None                             # numbered by HeaderTable
    if role == _h.HOP_BY_HOP:
        return A_CONN_SPECIFIC if name in _h.CONNECTION_SPECIFIC else A_DROP
    return _ROLE_ACTION[role]


cdef bytes FORWARDED_PREFIX = _h.FORWARDED_PREFIX.encode()


cdef class HeaderTable:
    """The request readers' header table for one config (fastgw.compile builds it; both readers share
    it). `classify(name)` answers the Action of a field name: managed names (fastgw/headers.py, plus
    the config's identity and credential names), the rest of the X-Forwarded-* family, and names with
    "_" (dropped unless allow_underscores; dropped always when they fold to a managed name)."""

    def __init__(self, identity=(), credentials=(), bint allow_underscores=False):
        cdef dict actions = {}
        cdef int ncred = 0
        creds = [n for n, r in _h.REQUEST.items() if r == _h.CREDENTIAL] + [n.lower() for n in credentials]
        for name, role in _h.REQUEST.items():
            if role != _h.CREDENTIAL:
                self._add(actions, name, _action(name, role))
        for name in identity:               # and as a folding upstream would read it
            self._add(actions, name.lower(), A_DROP)
            self._add(actions, _h.fold(name), A_DROP)
        for name in creds:                  # each its own number: two different ones are not a duplicate
            if name.encode("latin-1") not in actions:
                if ncred == 64:
                    raise ValueError("more than 64 credential headers")
                self._add(actions, name, A_CREDENTIALS + ncred)
                ncred += 1
        self.actions = actions
        self.allow_underscores = allow_underscores
        self._compile()

    cdef int _compile(self) except -1:
        """Fill the slots from `actions` (lowercase names): classify finds a name in any case."""
        cdef Py_ssize_t off = 0, n
        cdef unsigned int h
        cdef const char* base
        if len(self.actions) * 4 > NAME_SLOTS:
            raise ValueError(f"header table: {len(self.actions)} names, room for {NAME_SLOTS // 4}")
        self.blob = b"".join(self.actions)
        base = self.blob
        self.lengths = 0
        for key, action in self.actions.items():
            n = len(key)
            h = name_slot(base + off, n)
            while self.slots[h].n:
                h = (h + 1) & (NAME_SLOTS - 1)
            self.slots[h].name = base + off
            self.slots[h].n = n
            self.slots[h].action = action
            self.lengths |= 1ULL << (n if n < 63 else 63)
            off += n
        return 0

    cdef int _add(self, dict actions, str name, int action) except -1:
        """`name` (lowercase) -> `action`, unless the table holds the name already: never override what
        the table says of a name it owns."""
        actions.setdefault(name.encode("latin-1"), action)
        return 0

    def action(self, bytes name):
        """classify() for Python callers (tests, tooling)."""
        return self.classify(name)

    def names(self):
        """{lowercase name: Action} of the table (tests: the reference of classify)."""
        return dict(self.actions)

    cdef int classify(self, bytes name) except -1:
        """The Action of field name `name`, in any case (classify_c)."""
        return self.classify_c(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))

    cdef int classify_c(self, const char* p, Py_ssize_t n) except -1:
        """The Action of the field name p[:n], in any case. A C table, not the dict: a dict lookup hashes
        each request's new name object (siphash) and cost ~400 instructions a field; this ~60, and the
        HTTP/1.1 reader makes no name object for a field it does not forward (Host, framing)."""
        cdef unsigned int h
        cdef NameSlot* slot
        if n and (self.lengths >> (n if n < 63 else 63)) & 1:
            h = name_slot(p, n)
            while True:
                slot = &self.slots[h]
                if slot.n == 0:
                    break
                if slot.n == n and ieq(p, n, slot.name, n):
                    return slot.action
                h = (h + 1) & (NAME_SLOTS - 1)
        if memchr(p, 95, n) != NULL:                # '_'
            return self.underscore(PyBytes_FromStringAndSize(p, n))
        if n > 12 and (p[0] | 32) == 120 and ieq(p, 12, FORWARDED_PREFIX, 12):   # 'x'
            return A_DROP
        return A_FORWARD

    cdef int underscore(self, bytes name) except -1:
        folded = name.lower().replace(b"_", b"-")
        if folded in self.actions or folded.startswith(FORWARDED_PREFIX):
            return A_ALIAS
        return A_FORWARD if self.allow_underscores else A_UNDERSCORE


DEFAULT_TABLE = HeaderTable()

# The Action codes by name, for Python callers (tests, tooling): HeaderTable.action(name) answers these.
ACTIONS = {
    "forward": A_FORWARD, "host": A_HOST, "content-length": A_CONTENT_LENGTH,
    "transfer-encoding": A_TRANSFER_ENCODING, "connection": A_CONNECTION, "drop": A_DROP, "expect": A_EXPECT,
    "request-id": A_REQUEST_ID, "forwarded-for": A_FORWARDED_FOR, "credential": A_CREDENTIALS,
    "connection-specific": A_CONN_SPECIFIC, "te": A_TE, "traceparent": A_TRACEPARENT,
    "tracestate": A_TRACESTATE, "underscore": A_UNDERSCORE, "alias": A_ALIAS,
}


def case_equal(bytes name, bytes low):
    """ieq() for tests: `name` equals the lowercase `low` in ASCII case-insensitive comparison."""
    return ieq(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), PyBytes_AS_STRING(low), PyBytes_GET_SIZE(low))
