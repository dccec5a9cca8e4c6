# cython: boundscheck=False, wraparound=False
"""The policy phases' own types: `Respond` (a policy answers itself) and the response-header view that
on_response edits (fastgw/policies/contract.py has the contract; the exchange runs the phases).

A response's headers, while its on_response phase runs, are one list of (name, value) byte pairs in wire
order, names as received (compared case-insensitively). The exchange builds it from whatever it is about to
send (the upstream's kept header lines, a Respond's headers, a problem's extra lines), lets the policies edit
it, and serialises it back to header lines for either downstream. Framing and hop-by-hop fields, and
X-Request-ID, are the gateway's on every response: a policy can neither set nor remove them.
"""
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


cdef list parse_lines(bytes block, list out):
    """Append (name, value) for each "Name: value\\r\\n" line of a header block (names as written)."""
    cdef Py_ssize_t pos = 0, n = len(block), eol, colon
    while pos < n:
        eol = block.find(b"\r\n", pos)
        if eol < 0:
            eol = n
        colon = block.find(b":", pos, eol)
        if colon > pos:
            out.append((block[pos:colon], block[colon + 1:eol].strip(b" \t")))
        pos = eol + 2
    return out


cdef bytes join_pairs(list pairs):
    """The header lines of (name, value) pairs."""
    cdef list parts = []
    for name, value in pairs:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    return b"".join(parts)


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
