# The compiled wire table (see wire.pyx): header actions, character classes, byte helpers.

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

# What a request reader does with a header field, by name (fastgw/headers.py gives each name its role).
cdef enum Action:
    A_FORWARD = 0          # not managed: forwarded as received
    A_HOST = 1             # Host: validated, one
    A_CONTENT_LENGTH = 2
    A_TRANSFER_ENCODING = 3
    A_CONNECTION = 4       # its tokens name more hop-by-hop headers
    A_DROP = 5             # hop-by-hop, X-Forwarded-* (but -For), identity headers: never forwarded
    A_EXPECT = 6
    A_REQUEST_ID = 7
    A_FORWARDED_FOR = 8
    A_CONN_SPECIFIC = 9    # keep-alive, proxy-connection, upgrade: dropped (HTTP/1.1), malformed (HTTP/2)
    A_TE = 10              # dropped; "trailers" noted (RequestHead.te_trailers); on HTTP/2 the only valid value
    A_TRACEPARENT = 11
    A_TRACESTATE = 12
    A_UNDERSCORE = 13      # a name with "_" and server.limits.allow_underscores off: dropped, counted
    A_ALIAS = 14           # a name with "_" that folds to a managed name: always dropped, counted
    A_CREDENTIALS = 64     # A_CREDENTIALS + k: credential header k (k < 64), read by the gateway:
                           #   forwarded, never twice (a reader keeps a bit per k for the request)

# Response header kinds (the upstream response-head walk, and the gRPC relay).
cdef enum RespKind:
    R_KEEP = 0
    R_CONTENT_LENGTH = 1
    R_TRANSFER_ENCODING = 2
    R_CONNECTION = 3
    R_HOP = 4

# Character classes: bits of CHARS[byte].
cdef enum CharClass:
    C_NAME = 1             # lowercase RFC 9110 token characters (HTTP/2 field names)
    C_HOST = 2             # Host / :authority
    C_REQUEST_ID = 4       # a client X-Request-ID kept as is
    C_PATH_REFUSED = 8     # never in a path: '#', '\', controls, space, non-ASCII
    C_PATH_PCT = 16        # '%': the path is checked for encoded '/', '\', NUL and dots
    C_PATH_DOT = 32        # '.': the path is checked for dot segments
    C_PATH = 56            # the three path bits

cdef unsigned char CHARS[256]

cdef bint bad_path(bytes path, int flags)


# Response header names by length (wire.pyx fills them from fastgw/headers.py RESPONSE).
cdef unsigned char RESP_FIRST[64]     # 1 + index of the first name of that length; 0: none
cdef unsigned char RESP_NEXT[16]      # 1 + index of the next name of the same length; 0: none
cdef const char* RESP_NAME[16]        # lowercase
cdef unsigned char RESP_KIND[16]      # RespKind


cdef inline bint only(bytes value, unsigned char cls) noexcept:
    """Every byte of `value` is in class `cls` (true for b"")."""
    cdef const unsigned char* p = value
    cdef Py_ssize_t i, n = len(value)
    for i in range(n):
        if not CHARS[p[i]] & cls:
            return False
    return True


# ASCII lowercase of eight (four) bytes at once: 0x20 added to each byte in 'A'..'Z', the rest unchanged.
# Per byte h = b & 0x7f: h + 0x3f carries into bit 7 from 'A' (0x41) up, h + 0x25 from '[' (0x5b) up; the
# bytes where exactly one carried, and whose own bit 7 is clear, are the capitals.
cdef inline uint64_t lower8(uint64_t w) noexcept:
    cdef uint64_t h = w & 0x7f7f7f7f7f7f7f7fULL
    return w | ((((h + 0x3f3f3f3f3f3f3f3fULL) ^ (h + 0x2525252525252525ULL)) & ~w & 0x8080808080808080ULL) >> 2)


cdef inline uint32_t lower4(uint32_t w) noexcept:
    cdef uint32_t h = w & 0x7f7f7f7fU
    return w | ((((h + 0x3f3f3f3fU) ^ (h + 0x25252525U)) & ~w & 0x80808080U) >> 2)


cdef inline bint ieq(const char* s, Py_ssize_t n, const char* low, Py_ssize_t m) noexcept:
    """ASCII case-insensitive equality of s[:n] with the lowercase literal low[:m]: eight bytes at a time
    (the last word overlapping the one before), four for 4..7 bytes, then one at a time (a header name
    compared byte by byte cost ~7 instructions a byte)."""
    cdef Py_ssize_t i = 0
    cdef uint64_t a, b
    cdef uint32_t c, d
    cdef char ch
    if n != m:
        return False
    if n >= 8:
        while i + 8 < n:
            memcpy(&a, s + i, 8)
            memcpy(&b, low + i, 8)
            if lower8(a) != b:
                return False
            i += 8
        memcpy(&a, s + n - 8, 8)
        memcpy(&b, low + n - 8, 8)
        return lower8(a) == b
    if n >= 4:
        memcpy(&c, s, 4)
        memcpy(&d, low, 4)
        if lower4(c) != d:
            return False
        memcpy(&c, s + n - 4, 4)
        memcpy(&d, low + n - 4, 4)
        return lower4(c) == d
    for i in range(n):
        ch = s[i]
        if b'A' <= ch <= b'Z':
            ch = ch + 32
        if ch != low[i]:
            return False
    return True


cdef inline bint feq(const char* s, Py_ssize_t n, const char* folded) noexcept:
    """s[:n] folded as upstreams that fold names read it (ASCII lowercase, "_" read as "-"; fastgw/headers.py
    fold) equals folded[:n]: no folded copy per field."""
    cdef Py_ssize_t i
    cdef char ch
    for i in range(n):
        ch = s[i]
        if b'A' <= ch <= b'Z':
            ch = ch + 32
        elif ch == b'_':
            ch = b'-'
        if ch != folded[i]:
            return False
    return True


# HeaderTable's compiled names: an open-addressed table of the lowercase names (name_slot hashes them).
cdef enum:
    NAME_SLOTS = 512                  # a power of two, at least four times the names (HeaderTable checks)

cdef struct NameSlot:
    const char* name                  # lowercase, inside HeaderTable.blob
    Py_ssize_t n                      # 0: an empty slot
    int action


cdef inline unsigned int name_slot(const char* p, Py_ssize_t n) noexcept:
    """The first slot of the name p[:n] (n > 0), the same in any ASCII case: its length and its first, middle
    and last bytes (| 0x20 folds the letters; the table compares whole names, so other folds only collide)."""
    return <unsigned int>(n * 37 + (p[0] | 32) * 7 + (p[n >> 1] | 32) * 131 + (p[n - 1] | 32) * 1031) \
        & (NAME_SLOTS - 1)


cdef class HeaderTable:
    cdef dict actions                 # lowercase name -> Action (built first; underscore(), tests)
    cdef NameSlot slots[NAME_SLOTS]   # the same names, lowercase, for classify
    cdef bytes blob                   # the lowercase names the slots point into
    cdef unsigned long long lengths   # bit min(len, 63) set for the length of every name in `actions`
    cdef readonly bint allow_underscores
    cdef int _add(self, dict actions, str name, int action) except -1
    cdef int _compile(self) except -1
    cdef int classify(self, bytes name) except -1
    cdef int classify_c(self, const char* p, Py_ssize_t n) except -1
    cdef int underscore(self, bytes name) except -1


cdef inline int response_kind(const char* s, Py_ssize_t n) noexcept:
    """The RespKind of the response header name s[:n] (any case); most names cost one load."""
    cdef int i
    if n > 63:
        return R_KEEP
    i = RESP_FIRST[n]
    while i:
        if ieq(s, n, RESP_NAME[i - 1], n):
            return RESP_KIND[i - 1]
        i = RESP_NEXT[i - 1]
    return R_KEEP


cdef inline uint64_t name_lengths(object names):
    """Bit min(len, 63) set for every name in `names` (None: 0): a header name is folded and looked up
    in a set only when its length is one of the set's (filter_headers, RouteRT.req_remove)."""
    cdef uint64_t mask = 0
    cdef Py_ssize_t k
    if names is not None:
        for nm in names:
            k = len(<bytes>nm)
            mask |= (<uint64_t>1) << (k if k < 63 else 63)
    return mask
