# The sans-IO HTTP/1.1 response reader (included by http1.pyx: it shares the byte classes P and HEX and the
# chunk states). fastgw reads its upstreams' responses with it (upstream_h1.pyx): a pull API, so a read
# costs no Python-level call per parser event:
#
#   r.start(head_request, tunnel, remove)    before each response
#   r.feed(data); ev = r.next()              until RE_NEED: RE_HEAD, RE_BODY, RE_END, RE_ERROR, RE_SWITCH
#   r.eof()                                  the peer closed: True when that ends the response
#
# Its strictness is llhttp's in strict mode, as httptools' HttpResponseParser drove it before (the
# reference of tests/test_http1_response_differential.py), with these deliberate differences, each for the
# rule named:
#   * a response to HEAD, like 204 and 304, ends with its head (RFC 9112 6.3 rule 1: llhttp cannot be told
#     the request method); the connection stays reusable.
#   * only "HTTP/" status lines: llhttp also reads RTSP/ and ICE/ ones, which an HTTP upstream never sends;
#     a status code under 100 is refused (RFC 9110 15: invalid; llhttp reads it).
#   * chunk extensions are bounded per response (MAX_CHUNK_SLACK, as on the request side), trailer sections
#     by MAX_RESP_HEAD; a head over MAX_RESP_HEAD or with more than MAX_RESP_LINES fields is refused.
#   * bytes after the end of a response are not read: the caller counts them (an overrun, never reused).
# The head is walked once, in C, when its end is there: each line checked, its name classified
# (wire.pxd response_kind), and the kept lines handed on as slices of the received bytes (`pieces`):
# framing fields, hop-by-hop ones, the names the Connection field lists (RFC 9110 7.6.1) and the route's
# `remove` names are dropped.

from libc.stdint cimport uint64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastgw._core.wire cimport R_CONNECTION, R_CONTENT_LENGTH, R_HOP, R_KEEP, R_TRANSFER_ENCODING, ieq, response_kind

cdef enum:
    CONN_NAMES = 16      # (_connection) the Connection value names fields

# The largest Content-Length taken (llhttp's bound: 64 bits; chunk sizes: http1.pyx MAX_CHUNK_SIZE).
cdef unsigned long long MAX_RESP_LENGTH = 0xffffffffffffffffULL


cdef inline bint _token_is(const char* s, Py_ssize_t a, Py_ssize_t b, const char* low, Py_ssize_t m) noexcept:
    """s[a:b], without its surrounding whitespace, is the lowercase literal low[:m] in any case."""
    while a < b and (s[a] == b' ' or s[a] == b'\t'):
        a += 1
    while b > a and (s[b - 1] == b' ' or s[b - 1] == b'\t'):
        b -= 1
    return ieq(s + a, b - a, low, m)


cdef inline bytes _slice(bytes data, Py_ssize_t a, Py_ssize_t b):
    """data[a:b], 0 <= a <= b <= len(data) (a bytes copy without a slice object)."""
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + a, b - a)


# Field-value bytes eight at a time (SWAR): a word with no byte under 0x20 and none 0x7f is all value bytes
# (obs-text, 0x80 and up, is one); a word that has one is checked byte by byte (HTAB is one too).
cdef uint64_t ONES = 0x0101010101010101ULL
cdef uint64_t HIGHS = 0x8080808080808080ULL


cdef inline bint _plain8(const char* s) noexcept:
    cdef uint64_t w, y
    memcpy(&w, s, 8)
    y = w ^ (ONES * 0x7f)
    return ((w - ONES * 0x20) & ~w & HIGHS) == 0 and ((y - ONES) & ~y & HIGHS) == 0


cdef int _connection(bytes data, Py_ssize_t vs, Py_ssize_t ve, set drop) except -1:
    """The options (CONN_CLOSE, CONN_KEEP_ALIVE, CONN_UPGRADE) of the Connection value data[vs:ve], and
    CONN_NAMES when it has other tokens: those are added, lowercase, to `drop` (when it is not None)."""
    cdef const char* p = data
    cdef Py_ssize_t a = vs, k
    cdef int conn = 0
    for k in range(vs, ve + 1):
        if k < ve and p[k] != b',':
            continue
        if _token_is(p, a, k, b"close", 5):
            conn |= CONN_CLOSE
        elif _token_is(p, a, k, b"keep-alive", 10):
            conn |= CONN_KEEP_ALIVE
        else:
            if _token_is(p, a, k, b"upgrade", 7):
                conn |= CONN_UPGRADE
            tok = data[a:k].strip(b" \t").lower()
            if tok:
                conn |= CONN_NAMES
                if drop is not None:
                    drop.add(tok)
        a = k + 1
    return conn


cdef int _status_line(const char* s, Py_ssize_t n, bint partial, int* status, int* version) noexcept:
    """"HTTP/" DIGIT "." DIGIT SP 3DIGIT [SP reason] (RFC 9112 4; the reason is any bytes but CR and LF, as
    llhttp reads it; it may be empty or absent). Versions as llhttp: 1.1, 1.0, 0.9 and 2.0 (a 2.0 status
    line on an HTTP/1.1 connection is read as 1.1 is). `partial`: s[:n] is the line so far (perhaps ending
    with its CR). 0, or -1 (invalid)."""
    cdef Py_ssize_t i
    cdef int major, minor
    cdef const char* pat = b"HTTP/0.0 000"
    if partial and n and s[n - 1] == b'\r':
        n -= 1
    for i in range(n if n < 12 else 12):
        if pat[i] == b'0':
            if not b'0' <= s[i] <= b'9':
                return -1
        elif s[i] != pat[i]:
            return -1
    if n >= 8:
        major = s[5] - 48
        minor = s[7] - 48
        if not ((major == 1 and minor <= 1) or (major == 0 and minor == 9) or (major == 2 and minor == 0)):
            return -1
        version[0] = major * 10 + minor
    if (n > 12 and s[12] != b' ') or memchr(s, 13, n) != NULL:
        return -1
    if partial:
        return 0
    if n < 12:
        return -1
    status[0] = (s[9] - 48) * 100 + (s[10] - 48) * 10 + (s[11] - 48)
    return 0


cdef Py_ssize_t _field_syntax(const char* s, Py_ssize_t n, bint partial) noexcept:
    """A field line s[:n] (RFC 9112 5): token ":" value of field-value bytes, no whitespace before the
    colon, no obs-fold (a line starting with whitespace). The colon's offset, or -1 (invalid); `partial`:
    the line so far (perhaps ending with its CR): 0 when it may still become valid."""
    cdef Py_ssize_t i = 0, c
    if partial and n and s[n - 1] == b'\r':
        n -= 1
    while i < n and P[<unsigned char>s[i]] & P_TCHAR:
        i += 1
    if i == n:
        return 0 if partial else -1
    if i == 0 or s[i] != b':':
        return -1
    c = i
    i += 1
    while i + 8 <= n and _plain8(s + i):
        i += 8
    while i < n and P[<unsigned char>s[i]] & P_VALUE:
        i += 1
    if i != n:
        return -1
    return c


cdef class ResponseReader:
    """Reads the responses of one upstream connection, one at a time (see the module comment)."""

    def __init__(self):
        self._state = RS_DONE

    cpdef start(self, bint head_request, bint tunnel, object remove):
        """Read the response to a new request: `head_request` (HEAD: no body), `tunnel` (a 101 is taken),
        `remove` (lowercase names the route drops, or None)."""
        self._head_req = head_request
        self._tunnel = tunnel
        self._remove = remove
        self._state = RS_HEAD
        self._hbuf = None
        self._hok = 0
        self._data = None
        self._pos = 0
        self.pieces = None
        self.length = None
        self.chunked = False
        self.keep_alive = False
        self.body = None
        self.error = None
        self.status = 0

    cpdef feed(self, bytes data):
        """The next bytes from the upstream (read them with next())."""
        self._data = data
        self._pos = 0

    cpdef release(self):
        """Drop the read just handled and the last body slice: between reads (and on an idle pooled
        connection) the reader holds no response bytes. Holding a 64 KiB read and its body slice per
        connection until the next read fragmented the heap: glibc grew and trimmed it (brk) on every
        response, and bench/run.py's 64k scenario fell from 0.83x to 0.65x nginx's req/s."""
        self._data = None
        self._pos = 0
        self.body = None

    cpdef Py_ssize_t left(self):
        """Bytes fed and not read (after RE_END: sent beyond the end of the response)."""
        return len(self._data) - self._pos if self._data is not None else 0

    cpdef bytes rest(self):
        """After RE_SWITCH: the bytes after the 101's head, the new protocol's."""
        return self._data[self._pos:] if self._pos else self._data

    cpdef bint eof(self):
        """The upstream closed its side: True when that ends the response (a body delimited by the close,
        RFC 9112 6.3 rule 8), else the response is cut."""
        if self._state == RS_EOF:
            self._state = RS_DONE
            return True
        return False

    cdef int _fail(self, str detail):
        self._state = RS_DONE
        self._hbuf = None
        self.error = detail
        return RE_ERROR

    cpdef int next(self) except -1:
        """The next event of what was fed (RE_NEED: nothing more until more is fed)."""
        cdef Py_ssize_t n, k
        cdef int r
        while True:
            if self._state == RS_ENDING:
                self._state = RS_DONE
                return RE_END
            if self._state == RS_DONE or self._data is None:
                return RE_NEED
            n = PyBytes_GET_SIZE(self._data)
            if self._pos >= n:
                return RE_NEED
            if self._state == RS_HEAD:
                r = self._head()
                if r != RE_NEED or self._state != RS_HEAD:
                    return r
            elif self._state == RS_LENGTH:
                k = n - self._pos
                if <unsigned long long>k > self._left:
                    k = <Py_ssize_t>self._left
                self._left -= k
                self.body = self._data if k == n else _slice(self._data, self._pos, self._pos + k)
                self._pos += k
                if self._left == 0:
                    self._state = RS_ENDING
                return RE_BODY
            elif self._state == RS_EOF:
                self.body = self._data if self._pos == 0 else _slice(self._data, self._pos, n)
                self._pos = n
                return RE_BODY
            else:
                return self._chunked()

    # -- the head --------------------------------------------------------------------------------------
    cdef int _head(self) except -1:
        """Read head bytes from _data[_pos:]. When the head's end is there, the whole head is walked once
        (lines checked in an earlier read are not checked again). RE_NEED with _state RS_HEAD and _pos at
        the end of the data: more head is due (kept in _hbuf); with _pos before the end: a 1xx interim
        response was skipped (not relayed), the next head follows."""
        cdef bytes data = self._data
        cdef const char* p = data
        cdef Py_ssize_t n = len(data), start = self._pos, pos, e, colon, vs, ve, k, run, checked, a
        cdef Py_ssize_t ls[MAX_RESP_LINES]
        cdef Py_ssize_t le[MAX_RESP_LINES]
        cdef unsigned char kind[MAX_RESP_LINES]     # wire.pxd RespKind
        cdef const char* q
        cdef int nl = 0, status = 0, version = 0, conn = 0, kd
        cdef bint cl_seen = False, te_seen = False, chunked = False, upgrade = False
        cdef unsigned long long cl = 0
        cdef set drop = None
        cdef bytes length = None
        cdef list pieces
        if self._hbuf is None:
            # Empty lines before a status line are skipped, CR and LF alike (llhttp).
            while start < n and (p[start] == 13 or p[start] == 10):
                start += 1
            if start == n:
                self._pos = n
                return RE_NEED
            checked = start
        else:
            data = self._hbuf + (data[start:] if start else data)
            self._data = data
            p = data
            n = len(data)
            start = 0
            checked = self._hok
        pos = start
        while True:
            q = <const char*>memchr(p + pos, 10, n - pos)
            if q == NULL:
                break
            e = q - p
            if e == pos or p[e - 1] != 13:
                return self._fail("a line does not end with CRLF")
            if pos == start:                                    # the status line
                if _status_line(p + pos, e - 1 - pos, False, &status, &version) < 0:
                    return self._fail("invalid status line")
                pos = e + 1
                continue
            if e - 1 == pos:                                    # the empty line: the head ends
                pos = e + 1
                break
            if nl == MAX_RESP_LINES:
                return self._fail("too many response header lines")
            if pos >= checked:
                colon = _field_syntax(p + pos, e - 1 - pos, False)
                if colon < 0:
                    return self._fail("obs-fold" if P[<unsigned char>p[pos]] & P_OWS
                                      else "invalid header field")
                colon += pos
            else:
                colon = <const char*>memchr(p + pos, b':', e - pos) - p
            ls[nl] = pos
            le[nl] = e + 1
            kd = response_kind(p + pos, colon - pos)
            kind[nl] = kd
            nl += 1
            if kd != R_KEEP:
                vs = colon + 1
                ve = e - 1
                while vs < ve and (p[vs] == b' ' or p[vs] == b'\t'):
                    vs += 1
                while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
                    ve -= 1
                if kd == R_CONTENT_LENGTH:
                    # 1*DIGIT, one field, never with Transfer-Encoding (RFC 9112 6.3 rules 3 and 5)
                    if cl_seen:
                        return self._fail("duplicate Content-Length")
                    if te_seen:
                        return self._fail("Content-Length with Transfer-Encoding")
                    if vs == ve:
                        return self._fail("invalid Content-Length")
                    for k in range(vs, ve):
                        if not b'0' <= p[k] <= b'9':
                            return self._fail("invalid Content-Length")
                        if cl > (MAX_RESP_LENGTH - <unsigned long long>(p[k] - 48)) // 10:
                            return self._fail("Content-Length overflow")
                        cl = cl * 10 + (p[k] - 48)
                    cl_seen = True
                    length = _slice(data, vs, ve)
                elif kd == R_TRANSFER_ENCODING:
                    # chunked when it is the last coding (RFC 9112 6.1); the last field decides, as llhttp
                    if cl_seen:
                        return self._fail("Transfer-Encoding with Content-Length")
                    # (as llhttp: whitespace after "chunked" is SP only; an HTAB there makes it no coding
                    # fastgw knows, and the body is delimited by the close)
                    te_seen = True
                    a = e - 1
                    while a > vs and p[a - 1] == b' ':
                        a -= 1
                    k = a
                    while k > vs and p[k - 1] != b',':
                        k -= 1
                    while k < a and (p[k] == b' ' or p[k] == b'\t'):
                        k += 1
                    chunked = ieq(p + k, a - k, b"chunked", 7)
                elif kd == R_CONNECTION:
                    # close, keep-alive and upgrade are its options; every other token names a field
                    # that is hop-by-hop for this message (RFC 9110 7.6.1)
                    if ieq(p + vs, ve - vs, b"keep-alive", 10):
                        kd = CONN_KEEP_ALIVE
                    elif ieq(p + vs, ve - vs, b"close", 5):
                        kd = CONN_CLOSE
                    else:
                        kd = _connection(data, vs, ve, drop)
                    if kd & CONN_NAMES and drop is None:
                        drop = set()
                        kd = _connection(data, vs, ve, drop)
                    conn |= kd
                elif kd == R_HOP and colon - pos == 7 and ieq(p + pos, 7, b"upgrade", 7):
                    upgrade = True
                elif kd == R_HOP and colon - pos == 16 and ieq(p + pos, 16, b"proxy-connection", 16):
                    conn |= _connection(data, vs, ve, None)     # (llhttp reads its options too)
            pos = e + 1
        if q == NULL:
            # The head goes on: the line so far may still become valid; the head is bounded.
            if pos == start:
                if _status_line(p + pos, n - pos, True, &status, &version) < 0:
                    return self._fail("invalid status line")
            elif _field_syntax(p + pos, n - pos, True) < 0:
                return self._fail("obs-fold" if P[<unsigned char>p[pos]] & P_OWS else "invalid header field")
            if n - start > MAX_RESP_HEAD:
                return self._fail("response head too large")
            self._hbuf = data[start:] if start else data
            self._hok = pos - start
            self._pos = len(self._data)
            return RE_NEED
        self._hbuf = None
        self._hok = 0
        self._pos = pos
        if pos - start > MAX_RESP_HEAD:
            return self._fail("response head too large")
        if status < 100:
            return self._fail("invalid status code")    # RFC 9110 15 (llhttp reads it)
        if status < 200 and status != 101:
            return RE_NEED                          # an interim response: not relayed (RFC 9110 15.2)
        # Kept lines: consecutive ones become one slice.
        if self._remove is not None or drop is not None:
            for k in range(nl):
                if kind[k] == R_KEEP:
                    colon = <const char*>memchr(p + ls[k], b':', le[k] - ls[k]) - p
                    name = data[ls[k]:colon].lower()
                    if (drop is not None and name in drop) or (self._remove is not None and name in self._remove):
                        kind[k] = R_HOP
        pieces = []
        k = 0
        while k < nl:
            if kind[k] != R_KEEP:
                k += 1
                continue
            run = k
            while k < nl and kind[k] == R_KEEP:
                k += 1
            pieces.append(_slice(data, ls[run], le[k - 1]))
        self.pieces = pieces
        self.status = status
        if status == 101:
            # Only a tunnel request's, with the Upgrade it switches to (RFC 9110 15.2.2, 7.8); the bytes
            # after its head are the new protocol's.
            if not self._tunnel or not upgrade or not conn & CONN_UPGRADE:
                return self._fail("unexpected 101 Switching Protocols")
            self._state = RS_DONE
            return RE_SWITCH
        self.length = length
        self.chunked = te_seen and chunked
        # RFC 9112 9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 needs "keep-alive" (and so do 0.9 and
        # 2.0 status lines, as llhttp decides: a minor version of 0).
        self.keep_alive = not conn & CONN_CLOSE if version == 11 else conn & CONN_KEEP_ALIVE != 0
        # RFC 9112 6.3: the body's length, in its order of rules.
        if self._head_req or status == 204 or status == 304:
            self._state = RS_ENDING
        elif te_seen:
            if chunked:
                self._state = RS_CHUNKED
                self._chunk = CH_SIZE0
                self._left = 0
                self._digits = 0
                self._slack = 0
            else:
                self._state = RS_EOF
        elif cl_seen:
            self._left = cl
            self._state = RS_LENGTH if cl else RS_ENDING
        else:
            self._state = RS_EOF
        if self._state == RS_EOF:
            self.keep_alive = False
        return RE_HEAD

    # -- a chunked body --------------------------------------------------------------------------------
    cdef int _chunked(self) except -1:
        """A chunked body (RFC 9112 7.1, framing: chunk_step, as the request reader's), except that a
        trailer section is read (each field line checked, then dropped: fastgw relays no response trailers
        over HTTP/1.1, as before) within MAX_RESP_HEAD bytes. RE_BODY for each piece of chunk data, RE_NEED
        when the input is used up, RE_END at the body's end."""
        cdef bytes data = self._data
        cdef Py_ssize_t n = len(data), i = self._pos, k
        cdef const unsigned char* p = data
        cdef unsigned char c
        cdef int st = self._chunk
        while i < n:
            if st == CH_DATA:
                k = n - i
                if <unsigned long long>k > self._left:
                    k = <Py_ssize_t>self._left
                self._left -= k
                self._chunk = CH_DATA_CR if self._left == 0 else CH_DATA
                self.body = data if k == n else _slice(data, i, i + k)
                self._pos = i + k
                return RE_BODY
            c = p[i]
            i += 1
            if st < CH_LAST_CR:
                st = chunk_step(st, c, &self._left, &self._digits, &self._slack)
                if st < 0:
                    return self._fail(CHUNK_ERRORS[-1 - st])
                if st == CH_LAST_CR:
                    self._slack = 0                # (now: the trailer section's bytes)
                continue
            if st == CH_LAST_LF:
                if c != 10:
                    return self._fail("chunked body does not end with CRLF")
                self._pos = i
                self._state = RS_DONE
                return RE_END
            self._slack += 1
            if self._slack > MAX_RESP_HEAD:
                return self._fail("trailer section too large")
            if st == CH_LAST_CR:                   # a line of the trailer section starts
                if c == 13:
                    st = CH_LAST_LF
                elif P[c] & P_TCHAR:
                    st = CH_TR_NAME
                else:
                    return self._fail("invalid trailer field")
            elif st == CH_TR_NAME:
                if c == 58:                        # ':'
                    st = CH_TR_VALUE
                elif not P[c] & P_TCHAR:
                    return self._fail("invalid trailer field")
            elif st == CH_TR_VALUE:
                if c == 13:
                    st = CH_TR_LF
                elif not P[c] & P_VALUE:
                    return self._fail("invalid trailer field")
            elif c != 10:
                return self._fail("a trailer line does not end with CRLF")
            else:
                st = CH_LAST_CR
        self._chunk = st
        self._pos = n
        return RE_NEED
