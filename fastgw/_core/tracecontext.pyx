# cython: language_level=3
"""The W3C Trace Context of a request: what a valid `traceparent` and `tracestate` are, the trace the
gateway continues or starts, and its span id (W3C Trace Context, https://www.w3.org/TR/trace-context/).

Every request has one, configured or not (docs/logs-and-metrics.md "Traces"): a valid inbound traceparent
is continued (its trace id kept, its parent id recorded as the caller's span), anything else starts a new
trace; the gateway's span gets a fresh id, which is the parent id it forwards upstream. The sampled flag
forwarded is the gateway's own head decision (`tracing.incoming = "keep-trace-id"`, the default: a client
cannot force or suppress sampling) or the caller's (`"trust"`). Only the sampled bit is forwarded: the
other flag bits are undefined in version 00 and a vendor must not pass on flags it does not know.

The trace is held in a C struct on the exchange (TraceCtx): ids are 64-bit integers, the bytes of a
traceparent are made only when something needs them (the upstream request, the access log, a span).

traceparent (3.2): version "-" trace-id "-" parent-id "-" flags, lowercase hex only; version ff is
invalid; all-zero trace or parent ids are invalid; version 00 is exactly 55 characters; a later version
is parsed as 00 by its first 55 characters, which must be followed by "-" if there are more (its extra
fields are ignored, and the gateway forwards version 00, the version it speaks).

tracestate (3.3): forwarded unchanged when it is valid and within bounds, dropped whole otherwise: at most
32 list members and 512 bytes (the combined field; the spec asks vendors to propagate at least that
much), each member `key=value` with the spec's key grammar (simple or tenant@system) and value characters,
no key twice. A tracestate without a valid traceparent is dropped too (3.3.1: it belongs to that trace).
Dropping rather than cutting keeps the rule simple and never forwards a list altered by the gateway.

Ids come from a per-process splitmix64 generator seeded from os.urandom (at import, and again by `seed`
in a worker after it starts): ~10 instructions per id, no system call, no Python object. Not
cryptographic; a trace id is an identifier, not a secret.
"""
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcmp, memcpy


cdef uint64_t _state = 0
cdef const char* HEX = b"0123456789abcdef"
cdef signed char HEXVAL[256]             # lowercase hex digit -> value, else -1
for _c in range(256):
    HEXVAL[_c] = (_c - 48 if 48 <= _c <= 57 else _c - 87 if 97 <= _c <= 102 else -1)


def seed(bytes material=None):
    """Seed this process's id generator (8 bytes; os.urandom when not given). A worker calls it once it
    runs, so processes never share a sequence."""
    global _state
    if material is None:
        material = os.urandom(8)
    _state = int.from_bytes(material[:8].ljust(8, b"\0"), "little")


seed()


cdef uint64_t rand64() noexcept:
    """splitmix64 (Steele, Lea, Flood 2014): a Weyl sequence through a 64-bit mixer."""
    global _state
    cdef uint64_t z
    _state += <uint64_t>0x9E3779B97F4A7C15
    z = _state
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline bint _hex64(const unsigned char* p, int digits, uint64_t* out) noexcept:
    cdef uint64_t v = 0
    cdef int i
    cdef signed char d
    for i in range(digits):
        d = HEXVAL[p[i]]
        if d < 0:
            return False
        v = (v << 4) | <uint64_t>d
    out[0] = v
    return True


cdef bint parse_traceparent(const unsigned char* p, Py_ssize_t n, TraceCtx* t) noexcept:
    """Fill t's trace id, parent and (inbound) flags from a valid traceparent; False when invalid."""
    cdef uint64_t ver, fl
    if n < TP_LEN or p[2] != 45 or p[35] != 45 or p[52] != 45:
        return False
    if not _hex64(p, 2, &ver) or ver == 0xff:
        return False
    if ver == 0:
        if n != TP_LEN:
            return False
    elif n > TP_LEN and p[TP_LEN] != 45:
        return False
    if not (_hex64(p + 3, 16, &t.hi) and _hex64(p + 19, 16, &t.lo) and _hex64(p + 36, 16, &t.parent)
            and _hex64(p + 53, 2, &fl)):
        return False
    if (t.hi == 0 and t.lo == 0) or t.parent == 0:
        return False
    t.flags = <unsigned char>fl
    return True


cdef inline bint _keychar(unsigned char c) noexcept:
    return 97 <= c <= 122 or 48 <= c <= 57 or c == 95 or c == 45 or c == 42 or c == 47


cdef bint _key_ok(const unsigned char* k, Py_ssize_t n) noexcept:
    """simple-key = lcalpha 0*255(keychar); multi-tenant-key = (lcalpha / DIGIT) 0*240(keychar) "@"
    lcalpha 0*13(keychar)."""
    cdef Py_ssize_t i, at = -1
    for i in range(n):
        if k[i] == 64:
            if at >= 0:
                return False
            at = i
        elif not _keychar(k[i]):
            return False
    if at < 0:
        return 1 <= n <= 256 and 97 <= k[0] <= 122
    return (1 <= at <= 241 and (97 <= k[0] <= 122 or 48 <= k[0] <= 57)
            and 1 <= n - at - 1 <= 14 and 97 <= k[at + 1] <= 122)


cdef bint _value_ok(const unsigned char* v, Py_ssize_t n) noexcept:
    """value = 0*255(chr) nblk-chr: printable ASCII without "," and "=", not ending in a space."""
    cdef Py_ssize_t i
    if n < 1 or n > 256 or v[n - 1] == 32:
        return False
    for i in range(n):
        if v[i] < 32 or v[i] > 126 or v[i] == 44 or v[i] == 61:
            return False
    return True


cdef bint tracestate_ok(bytes value) noexcept:
    """A tracestate the gateway forwards unchanged (see the module's rules)."""
    cdef const unsigned char* p = value
    cdef Py_ssize_t n = len(value), i = 0, j, a, b, eq, m = 0, q
    cdef Py_ssize_t kstart[TS_MAX_MEMBERS]
    cdef Py_ssize_t klen[TS_MAX_MEMBERS]
    if n > TS_MAX_BYTES:
        return False
    while i <= n:
        j = i
        while j < n and p[j] != 44:
            j += 1
        a, b = i, j                             # the member, optional whitespace around it trimmed
        while a < b and (p[a] == 32 or p[a] == 9):
            a += 1
        while b > a and (p[b - 1] == 32 or p[b - 1] == 9):
            b -= 1
        if a < b:                               # empty members are allowed and not counted
            if m == TS_MAX_MEMBERS:
                return False
            eq = a
            while eq < b and p[eq] != 61:
                eq += 1
            if eq == b or not _key_ok(p + a, eq - a) or not _value_ok(p + eq + 1, b - eq - 1):
                return False
            for q in range(m):
                if klen[q] == eq - a and memcmp(p + kstart[q], p + a, eq - a) == 0:
                    return False
            kstart[m] = a
            klen[m] = eq - a
            m += 1
        i = j + 1
    return True


cdef inline uint64_t _nonzero64() noexcept:
    cdef uint64_t v = rand64()
    while v == 0:
        v = rand64()
    return v


cdef bint trace_start(TraceCtx* t, bytes traceparent, bint trust, uint64_t threshold) noexcept:
    """The request's trace: the inbound one continued when `traceparent` is valid (True), else a new one.
    Sampled: the caller's flag with `trust`, else rand64() < threshold (threshold = ratio * 2**64;
    UINT64_MAX samples everything, 0 nothing and draws no number)."""
    cdef bint continued = False
    cdef bint sampled
    if traceparent is not None and len(traceparent) != 0:
        continued = parse_traceparent(traceparent, len(traceparent), t)
    if not continued:
        t.hi = rand64()
        t.lo = _nonzero64()
        t.parent = 0
        t.flags = 0
    if continued and trust:
        sampled = t.flags & FLAG_SAMPLED
    elif threshold == 0:
        sampled = False
    else:
        sampled = threshold == <uint64_t>0xFFFFFFFFFFFFFFFF or rand64() < threshold
    t.flags = FLAG_SAMPLED if sampled else 0
    t.span = _nonzero64()
    return continued


cdef char HEXPAIRS[512]                  # byte b -> its two lowercase hex digits at 2 * b
for _c in range(256):
    HEXPAIRS[2 * _c] = HEX[_c >> 4]
    HEXPAIRS[2 * _c + 1] = HEX[_c & 15]


cdef void put_hex(char* o, uint64_t v, int digits) noexcept:
    """v as `digits` (even) lowercase hex digits, two per table lookup."""
    cdef int i
    for i in range(digits - 2, -2, -2):
        memcpy(o + i, HEXPAIRS + 2 * (v & 0xff), 2)
        v >>= 8


cdef bytes traceparent_bytes(TraceCtx* t, bint line):
    """The version-00 traceparent the gateway forwards: its trace id, its own span id, its flags; written
    straight into the new bytes object. With `line`, as the HTTP/1.1 head's line, b"\r\ntraceparent: "
    first (one piece for the head instead of two)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, TP_LEN + (TP_LINE if line else 0))
    cdef char* buf = PyBytes_AS_STRING(out)
    if line:
        memcpy(buf, b"\r\ntraceparent: ", TP_LINE)
        buf += TP_LINE
    memcpy(buf, b"00-", 3)
    put_hex(buf + 3, t.hi, 16)
    put_hex(buf + 19, t.lo, 16)
    buf[35] = b'-'
    put_hex(buf + 36, t.span, 16)
    buf[52] = b'-'
    put_hex(buf + 53, t.flags, 2)
    return out


# -- for Python (tests, the exporter) ----------------------------------------------------------------

def parse(bytes value):
    """(trace id hex, parent id hex, flags) of a valid traceparent, else None."""
    cdef TraceCtx t
    if not parse_traceparent(value, len(value), &t):
        return None
    return value[3:35].decode(), value[36:52].decode(), t.flags


def state_ok(bytes value):
    """Whether a tracestate is forwarded (valid and within bounds)."""
    return tracestate_ok(value)


def start(bytes traceparent, bint trust, double ratio):
    """(the traceparent forwarded, whether the inbound one was continued), as trace_start decides."""
    cdef TraceCtx t
    cdef bint continued = trace_start(&t, traceparent, trust, threshold(ratio))
    return traceparent_bytes(&t, False), continued


def threshold(double ratio):
    """sample_ratio as the 64-bit threshold trace_start compares a random number with."""
    if ratio <= 0.0:
        return 0
    if ratio >= 1.0:
        return 0xFFFFFFFFFFFFFFFF
    return min(int(ratio * 18446744073709551616.0), 0xFFFFFFFFFFFFFFFE)
