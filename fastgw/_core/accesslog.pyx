# cython: language_level=3
"""Access-log lines in C: a batch of per-request tuples (fastgw._core.worker.Worker.observe) formatted as
JSON lines, and whole lines written to an output other processes write to as well (fastgw/observe.py runs
both: formatting on the event loop, writing in a thread).

Format. One JSON object per line, fields in this order (README "Logs"):
  ts, type ("access"), request_id, client, peer, method, host, path, route, upstream, target, status,
  duration_ms, worker, then upstream_error, grpc_status, error_source, error_retryable, retried_after and
  attempts only when set, "truncated": true only when cut.
Request-derived bytes are latin-1 (every byte is kept: a byte >= 0x80 becomes that code point in UTF-8,
control bytes become \\u00XX). Formatting in C costs a few hundred instructions a line; the same loop in
Python (building msgspec structs) cost ~20k instructions per request.

Whole lines. Every worker writes to the same stdout. A write to a pipe (how container runtimes and systemd
capture stdout) is atomic only up to PIPE_BUF bytes (POSIX write(2)): a larger one may be split and
interleaved with another writer's data, splicing lines. So a line is at most LINE_MAX = PIPE_BUF bytes
(method, host and path are cut to fit, and the line says "truncated": true), and `write_lines` cuts a
batch into writes of at most PIPE_BUF bytes that each end at a line end, looping over them without taking
the GIL back in between (one GIL release per batch, as for a single write). Regular files need no cut:
writes by processes sharing one open file description do not overlap (Linux serialises them on the file
position since 3.14; O_APPEND writes land whole at the end).
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcpy
from posix.unistd cimport write

from fastgw._core.gateway_error cimport GatewayError
from fastgw._core.http1 cimport RequestHead

from fastgw._core.gateway_error import SOURCES


cdef extern from "<limits.h>":
    const int PIPE_BUF

cdef extern from "<string.h>" nogil:
    void* memrchr(const void* s, int c, size_t n)        # GNU (Python.h defines _GNU_SOURCE)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, unsigned long nfds, int timeout)
    short POLLOUT


LINE_MAX = PIPE_BUF          # bytes of one access line, its newline included: one atomic pipe write
cdef const char* HEX = b"0123456789abcdef"


cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap = b.cap
    cdef char* p
    if b.n + more <= cap:
        return 0
    while cap < b.n + more:
        cap = cap * 2 if cap else 65536
    p = <char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline void put(Buf* b, const char* s, Py_ssize_t k) noexcept:
    memcpy(b.p + b.n, s, k)
    b.n += k


cdef void put_int(Buf* b, long long v) noexcept:
    cdef char tmp[24]
    cdef int i = 24
    cdef bint neg = v < 0
    if neg:
        v = -v
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    if neg:
        i -= 1
        tmp[i] = b'-'
    put(b, tmp + i, 24 - i)


cdef void put_fixed(Buf* b, long long v, int decimals) noexcept:
    """v / 10**decimals with exactly `decimals` digits after the point (v >= 0)."""
    cdef long long scale = 1
    cdef int k
    cdef char* o
    for k in range(decimals):
        scale *= 10
    put_int(b, v // scale)
    v %= scale
    b.p[b.n] = b'.'
    o = b.p + b.n + 1
    for k in range(decimals - 1, -1, -1):
        o[k] = <char>(48 + v % 10)
        v //= 10
    b.n += decimals + 1


cdef unsigned char PLAIN[256]             # 1: the byte stands for itself in a JSON string (ASCII)
for _c in range(256):
    PLAIN[_c] = 1 if 0x20 <= _c < 0x80 and _c != 34 and _c != 92 else 0


cdef void put_esc(Buf* b, const unsigned char* s, Py_ssize_t k, bint latin1) noexcept:
    """A JSON string of s[:k] (room: 6 * k + 2). latin1: bytes >= 0x80 are code points (UTF-8 encoded);
    otherwise s is UTF-8 already and they are copied. Runs of plain bytes are copied at once."""
    cdef char* o = b.p + b.n
    cdef unsigned char c
    cdef Py_ssize_t i = 0, j
    o[0] = b'"'
    o += 1
    while i < k:
        j = i
        while j < k and PLAIN[s[j]]:
            j += 1
        memcpy(o, s + i, j - i)
        o += j - i
        if j == k:
            break
        c = s[j]
        i = j + 1
        if c == 34 or c == 92:
            o[0] = b'\\'
            o[1] = <char>c
            o += 2
        elif c < 0x20:
            o[0] = b'\\'
            o[1] = b'u'
            o[2] = b'0'
            o[3] = b'0'
            o[4] = HEX[c >> 4]
            o[5] = HEX[c & 15]
            o += 6
        elif latin1:
            o[0] = <char>(0xC0 | (c >> 6))
            o[1] = <char>(0x80 | (c & 0x3F))
            o += 2
        else:
            o[0] = <char>c
            o += 1
    o[0] = b'"'
    b.n = o + 1 - b.p


cdef inline void put_bytes(Buf* b, bytes v, Py_ssize_t cap) noexcept:
    """v as a JSON string (null for None), at most `cap` of its bytes (cap < 0: all)."""
    cdef Py_ssize_t k
    if v is None:
        put(b, "null", 4)
        return
    k = len(v)
    if 0 <= cap < k:
        k = cap
    put_esc(b, <const unsigned char*><const char*>v, k, True)


cdef inline int put_str(Buf* b, str v) except -1:
    cdef Py_ssize_t k = 0
    cdef const char* s
    if v is None:
        put(b, "null", 4)
        return 0
    s = PyUnicode_AsUTF8AndSize(v, &k)
    put_esc(b, <const unsigned char*>s, k, False)
    return 0


cdef inline Py_ssize_t blen(bytes v) noexcept:
    return len(v) if v is not None else 0


cdef inline Py_ssize_t slen(str v) noexcept:
    # UTF-8 bytes <= 4 per code point; names and failure kinds are ASCII in practice
    return 4 * len(v) if v is not None else 0


def format_lines(list batch, long long mono_ns, double wall, int worker, object client_text):
    """The access lines of `batch` (tuples from Worker.observe: end and duration in monotonic ns, status,
    request head, client address, TCP peer, request id, route, upstream, target, upstream error, gRPC
    status, then, when present, the GatewayError that ended the exchange and the one it was retried
    after), as bytes. `mono_ns` and `wall` are the monotonic and wall clocks now; `client_text(peer,
    xff)` names the client when X-Forwarded-For may (fastgw/clientaddr.py), None when no proxy is
    trusted."""
    cdef Buf b
    cdef tuple t
    cdef RequestHead h
    cdef bytes peer, tcp_peer, rid, target, method, host, path, xff
    cdef str route, upstream, up_error, client, tries
    cdef object grpc
    cdef GatewayError err, retried
    cdef long long wall_us = <long long>(wall * 1e6)
    cdef Py_ssize_t start, room, cm, ch, cp, longest
    cdef bint cut
    b.p = NULL
    b.n = 0
    b.cap = 0
    try:
        for t in batch:
            h = t[3]
            peer = t[4]
            tcp_peer = t[5]
            rid = t[6]
            route = t[7]
            upstream = t[8]
            target = t[9]
            up_error = t[10]
            grpc = t[11]
            err = retried = None
            tries = None
            if len(t) > 12:
                err = t[12]
                retried = t[13]
                if len(t) > 14:
                    tries = t[14]
            method = host = path = xff = None
            if h is not None:
                method, host, path, xff = h.method, h.host, h.path, h.xff
            client = None
            if client_text is not None and xff is not None and peer is not None:
                client = client_text(peer, xff)
            room = FIXED + 6 * (blen(peer) + blen(tcp_peer) + blen(rid) + blen(target) + blen(method)
                                + blen(host) + blen(path) + slen(route) + slen(upstream) + slen(up_error)
                                + slen(client) + slen(tries))
            reserve(&b, room)
            cm = ch = cp = -1
            cut = False
            start = b.n
            while True:
                put(&b, '{"ts":', 6)
                put_fixed(&b, wall_us - (mono_ns - <long long>t[0]) // 1000, 6)
                put(&b, ',"type":"access","request_id":', 30)
                put_bytes(&b, rid, -1)
                put(&b, ',"client":', 10)
                if client is not None:
                    put_str(&b, client)
                else:
                    put_bytes(&b, peer, -1)
                put(&b, ',"peer":', 8)
                put_bytes(&b, tcp_peer, -1)
                put(&b, ',"method":', 10)
                put_bytes(&b, method, cm)
                put(&b, ',"host":', 8)
                put_bytes(&b, host, ch)
                put(&b, ',"path":', 8)
                put_bytes(&b, path, cp)
                put(&b, ',"route":', 9)
                put_str(&b, route)
                put(&b, ',"upstream":', 12)
                put_str(&b, upstream)
                put(&b, ',"target":', 10)
                put_bytes(&b, target, -1)
                put(&b, ',"status":', 10)
                put_int(&b, <int>t[2])
                put(&b, ',"duration_ms":', 15)
                put_fixed(&b, (<long long>t[1] + 500) // 1000, 3)
                put(&b, ',"worker":', 10)
                put_int(&b, worker)
                if up_error is not None:
                    put(&b, ',"upstream_error":', 18)
                    put_str(&b, up_error)
                if grpc is not None:
                    put(&b, ',"grpc_status":', 15)
                    put_int(&b, <long long>grpc)
                if err is not None:
                    put(&b, ',"error_source":', 16)
                    put_str(&b, <str>SOURCES[err.source])
                    if err.retryable:
                        put(&b, ',"error_retryable":true', 23)
                    else:
                        put(&b, ',"error_retryable":false', 24)
                if retried is not None:
                    put(&b, ',"retried_after":', 17)
                    put_str(&b, <str>SOURCES[retried.source])
                if tries is not None:
                    put(&b, ',"attempts":', 12)
                    put_str(&b, tries)
                if cut:
                    put(&b, ',"truncated":true', 17)
                put(&b, "}\n", 2)
                if b.n - start <= PIPE_BUF:
                    break
                # Too long for one atomic write: halve the longest of method, host and path, again.
                b.n = start
                cut = True
                cm = blen(method) if cm < 0 else cm
                ch = blen(host) if ch < 0 else ch
                cp = blen(path) if cp < 0 else cp
                longest = max(cm, ch, cp)
                if longest == 0:
                    break                  # (only config names could make it this long)
                if cp == longest:
                    cp //= 2
                elif ch == longest:
                    ch //= 2
                else:
                    cm //= 2
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        free(b.p)


def write_lines(int fd, const unsigned char[::1] data, Py_ssize_t atomic):
    """Write `data` (lines, each ending in LF) to `fd`; with `atomic` > 0 in writes of at most `atomic`
    bytes that each end at a line end (a longer line goes alone: it cannot be atomic). Blocks until all is
    written (a descriptor someone set non-blocking is waited on with poll). Returns (bytes written, errno):
    errno is 0 unless a write failed, and then the bytes after the count were not written."""
    cdef Py_ssize_t n = data.shape[0], pos = 0, end, w
    cdef const unsigned char* p
    cdef const unsigned char* q
    cdef int err = 0
    cdef pollfd pfd
    if n == 0:
        return 0, 0
    p = &data[0]
    pfd.fd = fd
    pfd.events = POLLOUT
    with nogil:
        while pos < n and err == 0:
            end = n
            if atomic > 0 and n - pos > atomic:
                q = <const unsigned char*>memrchr(p + pos, 10, atomic)
                if q == NULL:                        # one line longer than `atomic`
                    q = <const unsigned char*>memchr(p + pos + atomic, 10, n - pos - atomic)
                end = n if q == NULL else q - p + 1
            while pos < end:
                w = write(fd, p + pos, end - pos)
                if w >= 0:
                    pos += w
                elif errno == EAGAIN:
                    poll(&pfd, 1, -1)
                elif errno != EINTR:
                    err = errno
                    break
    return pos, err
