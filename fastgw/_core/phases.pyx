# cython: boundscheck=False, wraparound=False
"""The policy phases' own types: `Respond` (a policy answers itself) and the response-header view that
on_response edits (fastgw/policies/contract.py has the contract; the exchange runs the phases).

A response's headers, while its on_response phase runs, are one list of (name, value) byte pairs in wire
order, names as received (compared case-insensitively). The exchange builds it from whatever it is about to
send (the upstream's kept header lines, a Respond's headers, a problem's extra lines), lets the policies edit
it, and serialises it back to header lines for either downstream. Framing and hop-by-hop fields, and
X-Request-ID, are the gateway's on every response: a policy can neither set nor remove them.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcpy

from fastgw._core.wire cimport CHARS, C_NAME, R_KEEP, response_kind


cdef bytes _field(object v):
    return v if type(v) is bytes else (<str?>v).encode("latin-1")


cdef bytes _low(bytes name):
    return name.lower()


cpdef bytes check_name(object name):
    """`name` as bytes, if a policy may set or remove it on a response; ValueError if it is not a field
    name (RFC 9110 token) or the gateway manages it."""
    cdef bytes b = _field(name)
    cdef bytes low = _low(b)
    cdef const unsigned char* p = low
    cdef Py_ssize_t i, n = len(low)
    if n == 0:
        raise ValueError("empty header name")
    for i in range(n):
        if not CHARS[p[i]] & C_NAME:
            raise ValueError(f"not a header name: {b!r}")
    if response_kind(<const char*>p, n) != R_KEEP or low == b"x-request-id":
        raise ValueError(f"{b.decode('latin-1')}: fastgw sets this header itself")
    return b


cpdef bytes check_value(object value):
    """`value` as bytes; ValueError if it holds CR, LF or NUL (it would split the header block)."""
    cdef bytes b = _field(value)
    if b.find(b"\r") >= 0 or b.find(b"\n") >= 0 or b.find(b"\0") >= 0:
        raise ValueError(f"header value with CR, LF or NUL: {b!r}")
    return b.strip(b" \t")


cdef class Respond:
    """The answer a policy gives itself, instead of the upstream's (from on_request) or in place of it
    (from on_response): a status, header (name, value) pairs and a body. The gateway adds X-Request-ID,
    Date and the framing (Content-Length; on HTTP/1.1 Connection); HEAD, 204 and 304 answers carry no
    body. Checked when made: a bad status, name or value is a ValueError in the policy, never bad bytes
    on the wire."""

    def __init__(self, int status, headers=(), body=b""):
        if status < 200 or status > 599:
            raise ValueError(f"a policy answers with a final status (200-599), not {status}")
        self.status = status
        self.headers = [(check_name(n), check_value(v)) for n, v in headers]
        self.body = _field(body) if type(body) is not bytes else body

    def __repr__(self):
        return f"Respond({self.status}, {self.headers!r}, {len(self.body)} bytes)"


cdef inline bint _blank(char c) noexcept nogil:
    return c == b' ' or c == b'\t'


cdef list parse_lines(bytes block, list out):
    """Append (name, value) for each "Name: value\\r\\n" line of a header block (names as written, values
    without surrounding blanks). A walk over the bytes: this runs per response on routes with on_response."""
    cdef const char* s = PyBytes_AS_STRING(block)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(block), pos = 0, eol, colon, vs, ve
    cdef const char* q
    while pos < n:
        q = <const char*>memchr(s + pos, b'\n', n - pos)
        eol = (q - s) if q != NULL else n
        ve = eol - 1 if eol > pos and s[eol - 1] == b'\r' else eol
        q = <const char*>memchr(s + pos, b':', ve - pos)
        if q != NULL and q > s + pos:
            colon = q - s
            vs = colon + 1
            while vs < ve and _blank(s[vs]):
                vs += 1
            while ve > vs and _blank(s[ve - 1]):
                ve -= 1
            out.append((PyBytes_FromStringAndSize(s + pos, colon - pos),
                        PyBytes_FromStringAndSize(s + vs, ve - vs)))
        pos = eol + 1
    return out


cdef bytes join_pairs(list pairs):
    """The header lines of (name, value) pairs, in one allocation."""
    cdef Py_ssize_t total = 0, k, i, n = len(pairs)
    cdef bytes out, name, value
    cdef char* dst
    for i in range(n):
        total += PyBytes_GET_SIZE(<bytes>(<tuple>pairs[i])[0]) + PyBytes_GET_SIZE(<bytes>(<tuple>pairs[i])[1]) + 4
    out = PyBytes_FromStringAndSize(NULL, total)
    dst = PyBytes_AS_STRING(out)
    for i in range(n):
        name = <bytes>(<tuple>pairs[i])[0]
        value = <bytes>(<tuple>pairs[i])[1]
        k = PyBytes_GET_SIZE(name)
        memcpy(dst, PyBytes_AS_STRING(name), k)
        dst += k
        memcpy(dst, b": ", 2)
        dst += 2
        k = PyBytes_GET_SIZE(value)
        memcpy(dst, PyBytes_AS_STRING(value), k)
        dst += k
        memcpy(dst, b"\r\n", 2)
        dst += 2
    return out


cpdef object first(list view, bytes lname):
    """The first value of header `lname` (lowercase) in `view`, or None."""
    for name, value in view:
        if len(<bytes>name) == len(lname) and (<bytes>name).lower() == lname:
            return value
    return None


cpdef int drop(list view, object name) except -1:
    """Drop every `name` field (any case) from `view`; how many went."""
    cdef bytes low = _low(check_name(name))
    cdef Py_ssize_t before = len(view)
    view[:] = [pair for pair in view if (<bytes>pair[0]).lower() != low]
    return before - len(view)


cpdef int replace(list view, object name, object value) except -1:
    """`name: value` in `view` in place of every `name` field there (at the first one's place)."""
    cdef bytes b = check_name(name)
    cdef bytes v = check_value(value)
    cdef bytes low = _low(b)
    cdef list out = []
    cdef bint placed = False
    for pair in view:
        if (<bytes>pair[0]).lower() == low:
            if not placed:
                out.append((b, v))
                placed = True
        else:
            out.append(pair)
    if not placed:
        out.append((b, v))
    view[:] = out
    return 0
