# cython: language_level=3
"""Sans-IO HTTP/1.1 request reader: bytes in, events out.

fastgw's own RFC 9112 parser, in C through Cython: a request head costs no Python-level call per parser
event (the whole head is read in one pass when it arrives in one read; a head split over reads is kept in
a buffer that exists only while it is incomplete). Its strictness is llhttp's in strict mode (no leniency
flag), the parser fastgw used before (httptools), plus the checks a gateway needs (docs/http1.md, "What is
refused"); tests/test_http1_differential.py holds the two to the same answers (http1_llhttp.pyx is the
reference). Events are delivered to four overridable methods: ``request_head(head)``, ``request_body(data)``,
``request_end()`` and ``request_error(status, slug, detail)``. After an error the reader is dead: the
connection must answer and close (never forward an ambiguity).

What happens to each header field is the config's wire table (fastgw/_core/wire.pyx `HeaderTable`, from
fastgw/headers.py): managed fields are checked and kept out of the forwarded list (`RequestHead.pieces`);
a name with "_" is dropped and reported in `RequestHead.dropped` unless server.limits.allow_underscores.

The reader never touches a transport, a clock or a logger; the tests feed it byte by byte.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr, memcmp, memset

from fastgw._core.wire cimport (
    A_ALIAS, A_CONN_SPECIFIC, A_CONNECTION, A_CONTENT_LENGTH, A_CREDENTIALS, A_EXPECT, A_FORWARD,
    A_FORWARDED_FOR, A_HOST, A_REQUEST_ID, A_TE, A_TRACEPARENT, A_TRACESTATE, A_TRANSFER_ENCODING,
    A_UNDERSCORE, C_HOST, C_PATH, C_PATH_REFUSED, C_REQUEST_ID, CHARS, HeaderTable, bad_path, only,
)
from fastgw._core.wire import DEFAULT_TABLE

# (The reader's states, its chunk states and the chunk-slack bound are constants of http1.pxd.)

# Byte classes of the grammar (bits of P[byte]), RFC 9110 5.6.2 / 5.5 and RFC 9112 3.2 / 7.1.1, narrowed
# where llhttp is: a target byte is a visible ASCII character; a field value byte is HTAB, SP, a visible
# ASCII character or obs-text (never NUL, CR, LF, another control or DEL).
cdef enum:
    P_TCHAR = 1      # token character
    P_VALUE = 2      # field-value byte
    P_TARGET = 4     # request-target byte
    P_QDTEXT = 8     # inside a quoted chunk-extension value (no '"', no '\': llhttp has no quoted-pair)
    P_OWS = 16       # SP, HTAB

cdef unsigned char P[256]
cdef signed char HEX[256]


def _init_classes():
    cdef int c
    tchar = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for c in range(256):
        P[c] = 0
        HEX[c] = -1
    for c in tchar:
        P[c] |= P_TCHAR
    for c in range(256):
        if c == 9 or 0x20 <= c <= 0x7e or c >= 0x80:
            P[c] |= P_VALUE
            if c != 34 and c != 92:
                P[c] |= P_QDTEXT
        if 0x21 <= c <= 0x7e:
            P[c] |= P_TARGET
    P[9] |= P_OWS
    P[32] |= P_OWS
    for c, v in zip(b"0123456789abcdefABCDEF", list(range(16)) + list(range(10, 16))):
        HEX[c] = v


_init_classes()

# The request methods accepted (the registered ones llhttp knows; any other token is refused with 400,
# as llhttp does). The common ones first: the lookup walks the tuple. PRI (the HTTP/2 preface's) is not
# a request (refused after its request line, as llhttp does); CONNECT is read, and like an Upgrade ends the HTTP/1.1 conversation (CONN_SWITCH).
cdef bytes METHOD_CONNECT = b"CONNECT"
cdef bytes METHOD_PRI = b"PRI"            # read as llhttp does: refused at the first byte after its line
cdef tuple METHODS = (
    b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", METHOD_CONNECT, b"QUERY",
    b"COPY", b"LOCK", b"MKCOL", b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND", b"REBIND",
    b"UNBIND", b"ACL", b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE",
    b"UNSUBSCRIBE", b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE", METHOD_PRI,
)

# RTSP's own methods: llhttp reads them (and "RTSP/1.0" or "ICE/1.0" request lines) as requests; fastgw
# refuses them (400) once the method is complete, but not before, like any other unknown method.
cdef tuple RTSP_METHODS = (
    b"DESCRIBE", b"ANNOUNCE", b"SETUP", b"PLAY", b"PAUSE", b"TEARDOWN", b"GET_PARAMETER", b"SET_PARAMETER",
    b"REDIRECT", b"RECORD", b"FLUSH",
)


cdef bint _absolute_start(const char* s, Py_ssize_t n, bint partial) noexcept:
    """s[:n] starts as an absolute-form target does: scheme (letters) "://" (or is a prefix of one)."""
    cdef Py_ssize_t i = 0, k
    while i < n and (b'a' <= s[i] <= b'z' or b'A' <= s[i] <= b'Z'):
        i += 1
    if i == 0:
        return False
    for k in range(3):
        if i + k == n:
            return partial
        if s[i + k] != b"://"[k]:
            return False
    return True


cdef bytes known_method(const char* s, Py_ssize_t n):
    """The interned method s[:n] (no allocation per request), or None when it is not one of METHODS."""
    cdef bytes m
    for m in METHODS:
        if len(m) == n and memcmp(<const char*>m, s, n) == 0:
            return m
    return None


# The largest Content-Length (RequestHead.content_length is signed: a larger one is refused, 400) and chunk
# size (llhttp's bound) taken.
cdef unsigned long long MAX_CONTENT_LENGTH = 0x7fffffffffffffffULL
cdef unsigned long long MAX_CHUNK_SIZE = 0xffffffffffffffffULL


cdef class RequestHead:
    """One parsed request head. ``pieces`` is the flat list [name, b": ", value, b"\\r\\n", ...] of the
    headers that may be forwarded."""

    def __repr__(self):
        return f"<RequestHead {self.method!r} {self.path!r}{self.query!r} host={self.host!r}>"

    def headers(self):
        """(name, value) pairs of the forwardable headers (for tests and tooling)."""
        p = self.pieces
        return [(p[i], p[i + 2]) for i in range(0, len(p), 4)]


cdef int take_field(RequestHead h, int code, bytes name, bytes value, unsigned long long* creds) except -1:
    """What both request readers (this one and the HTTP/2 engine's field validation, h2engine.pyx) do with
    a field by its wire-table action (wire.pxd), except the actions about Host, framing and the
    connection, which are each reader's own: forward it; one field of each credential (a second is an
    ambiguity: which one did the gateway check?); the request id when well-formed; X-Forwarded-For
    joined; the one traceparent field's value (b"" when a second came: W3C Trace Context 3.2; whether
    it is valid is decided when the request's trace starts, tracecontext.pyx), tracestate joined;
    the names the underscore rule dropped, noted. `creds`: bit k set once credential k was seen."""
    cdef list pieces
    if code == A_FORWARD or code >= A_CREDENTIALS:
        if code >= A_CREDENTIALS:
            if creds[0] >> (code - A_CREDENTIALS) & 1:
                return FIELD_DUPLICATE
            creds[0] |= 1ULL << (code - A_CREDENTIALS)
        pieces = h.pieces
        pieces.append(name)
        pieces.append(b": ")
        pieces.append(value)
        pieces.append(b"\r\n")
    elif code == A_REQUEST_ID:
        if 0 < len(value) <= 128 and only(value, C_REQUEST_ID):
            h.request_id = value
    elif code == A_FORWARDED_FOR:
        h.xff = value if h.xff is None else h.xff + b", " + value
    elif code == A_TRACEPARENT:
        h.traceparent = value if h.traceparent is None else b""
    elif code == A_TRACESTATE:
        h.tracestate = value if h.tracestate is None else h.tracestate + b"," + value
    elif code == A_UNDERSCORE or code == A_ALIAS:
        if h.dropped is None:
            h.dropped = []
        h.dropped.append((code, name))
    else:
        return FIELD_OTHER
    return FIELD_TAKEN


cdef str h1_field(RequestHead h, int code, bytes name, bytes value, FieldState* st):
    """What both HTTP/1.1 readers (this one and the reference, http1_llhttp.pyx) do with a header field by
    its wire-table action, once its syntax was checked (Content-Length is each parser's own): Host checked
    and kept, Transfer-Encoding noted, the Connection tokens (the names to drop; close, keep-alive and
    upgrade in st.conn), Expect, TE, Upgrade, then take_field. None, or the detail of a 400. `name` may be
    None for the actions that never forward or name the field (RequestReader makes no object for those)."""
    if code == A_FORWARD:
        pieces = h.pieces
        pieces.append(name)
        pieces.append(b": ")
        pieces.append(value)
        pieces.append(b"\r\n")
        return None
    if code == A_HOST:
        if st.host_seen:
            return "duplicate Host header"
        if not value:
            return "empty Host header"              # RFC 9110 4.2.1: no empty host
        if not only(value, C_HOST):
            return "invalid Host header"
        st.host_seen = True
        h.host = value
    elif code == A_TRANSFER_ENCODING:
        if st.te_seen:
            return "duplicate Transfer-Encoding header"
        st.te_seen = True
        st.te_chunked = value.strip().lower() == b"chunked"
    elif code == A_CONNECTION:
        for tok in value.lower().split(b","):
            tok = tok.strip()
            if tok == b"close":
                st.conn |= CONN_CLOSE
            elif tok == b"keep-alive":
                st.conn |= CONN_KEEP_ALIVE
            elif tok:
                if tok == b"upgrade":
                    st.conn |= CONN_UPGRADE
                if h.drop is None:
                    h.drop = set()
                h.drop.add(tok)
    elif code == A_EXPECT:
        if value.lower() == b"100-continue":
            h.expect_continue = True
    elif code == A_TE:
        for tok in value.lower().split(b","):
            if tok.split(b";")[0].strip() == b"trailers":
                h.te_trailers = True
    elif code == A_CONN_SPECIFIC and len(name) == 7:
        # Upgrade (the only connection-specific name of 7 bytes): kept aside, never forwarded; only a
        # route that opens tunnels reads it (Exchange.upgrade), with the Connection tokens in h.drop.
        h.upgrade = value
        st.conn |= CONN_UPGRADE_FIELD
    elif take_field(h, code, name, value, &st.creds) == FIELD_DUPLICATE:
        return f"duplicate {name.decode('latin-1')} header"
    # the rest (hop-by-hop, X-Forwarded-*, identity): dropped
    return None


cdef str h1_head_done(RequestHead h, bytes url, int minor, FieldState* st):
    """The checks of a complete request head, shared by both readers: the version (1.1 or 1.0; 1.1 needs
    Host), Transfer-Encoding (exactly "chunked", never on 1.0), the target (origin-form, or "*" with
    OPTIONS; a canonical path); sets minor, chunked, path and query. None, or the detail of a 400."""
    cdef Py_ssize_t q, i, n
    cdef const unsigned char* u
    cdef int flags
    if minor == 1:
        h.minor = 1
        if not st.host_seen:
            return "missing Host header"
    elif minor == 0:
        h.minor = 0
    else:
        return "unsupported HTTP version"
    if st.te_seen:
        if h.minor == 0:
            return "Transfer-Encoding is not allowed in HTTP/1.0"
        if not st.te_chunked:
            return "only 'Transfer-Encoding: chunked' is accepted"
        h.chunked = True
    n = len(url)
    u = url
    if n == 1 and u[0] == 42:              # '*'
        if h.method != b"OPTIONS":
            return "'*' target is only valid with OPTIONS"
        h.path = url
        h.query = b""
        return None
    if n == 0 or u[0] != 47:               # not '/'
        return "request target must be origin-form ('/path')"
    flags = 0
    q = n
    for i in range(n):
        if u[i] == 63:                     # '?'
            q = i
            break
        flags |= CHARS[u[i]]
    for i in range(q, n):
        if u[i] == 35:                     # '#' in the query
            flags |= C_PATH_REFUSED
    flags &= C_PATH
    if q == n:
        h.path = url
        h.query = b""
    else:
        h.path = url[:q]
        h.query = url[q:]
    if flags and bad_path(h.path, flags):
        return "request path is not in canonical form"
    return None


# What chunk_step refuses (its negative results, -1 - index).
cdef tuple CHUNK_ERRORS = (
    "chunk size overflow", "invalid chunk size", "chunk size line does not end with CRLF",
    "chunk extensions too large", "chunk data does not end with CRLF", "invalid chunk extension",
    "invalid chunk extension value",
)


cdef inline int chunk_step(int st, unsigned char c, unsigned long long* left, int* digits,
                           long long* slack) noexcept:
    """One byte `c` of a chunked body's framing (RFC 9112 7.1) in state `st` (CH_SIZE0 .. CH_DATA_LF: not
    in chunk data, not after the last chunk), for both readers: chunk-size (hex) [extensions] CRLF, and
    the CRLF after chunk data. Extensions are checked as llhttp does (";" name ["=" token / quoted-string],
    no quoted-pair) and never forwarded; they and extra leading zeros count towards *slack, bounded by
    MAX_CHUNK_SLACK. The new state (CH_DATA, or CH_LAST_CR after the last chunk's line), or -1 - the
    index of the refusal in CHUNK_ERRORS."""
    cdef int d
    cdef unsigned long long size
    if st == CH_SIZE or st == CH_SIZE0:
        d = HEX[c]
        if d >= 0:
            if left[0] > (MAX_CHUNK_SIZE - <unsigned long long>d) >> 4:
                return -1
            left[0] = left[0] * 16 + d
            digits[0] += 1
            return CH_SIZE
        if st == CH_SIZE0:
            return -2
        if c == 13:
            return CH_SIZE_LF
        if c != 59:                        # ';'
            return -2
        st = CH_EXT0
    elif st == CH_SIZE_LF:
        if c != 10:
            return -3
        size = left[0]
        d = 1
        while size > 15:
            size >>= 4
            d += 1
        slack[0] += digits[0] - d
        digits[0] = 0
        if slack[0] > MAX_CHUNK_SLACK:
            return -4
        return CH_DATA if left[0] else CH_LAST_CR
    elif st == CH_DATA_CR:
        return CH_DATA_LF if c == 13 else -5
    elif st == CH_DATA_LF:
        return CH_SIZE0 if c == 10 else -5
    # the extension states: every byte up to the CR counts towards the bound
    elif st == CH_EXT0:                    # after ';'
        if P[c] & P_TCHAR:
            st = CH_EXT_NAME
        elif c == 61:                      # '=' (an empty name: llhttp takes it)
            st = CH_EXT_VAL0
        elif c != 59:
            return -6
    elif st == CH_EXT_NAME:
        if c == 61:
            st = CH_EXT_VAL0
        elif c == 59:
            st = CH_EXT0
        elif c == 13:
            return CH_SIZE_LF
        elif not P[c] & P_TCHAR:
            return -6
    elif st == CH_EXT_VAL0 or st == CH_EXT_VAL:
        if c == 34 and st == CH_EXT_VAL0:  # '"'
            st = CH_EXT_QUOTED
        elif c == 59:
            st = CH_EXT0
        elif c == 13:
            return CH_SIZE_LF
        elif P[c] & P_TCHAR:
            st = CH_EXT_VAL
        else:
            return -7
    elif st == CH_EXT_QUOTED:
        if c == 34:
            st = CH_EXT_QEND
        elif not P[c] & P_QDTEXT:
            return -7
    elif st == CH_EXT_QEND:
        if c == 59:
            st = CH_EXT0
        elif c == 13:
            return CH_SIZE_LF
        else:
            return -7
    slack[0] += 1
    if slack[0] > MAX_CHUNK_SLACK:
        return -4
    return st


cdef class RequestReader:
    def __init__(self, Py_ssize_t max_request_line=8192, Py_ssize_t max_header_bytes=32768,
                 Py_ssize_t max_headers=100, HeaderTable table=None):
        self._table = DEFAULT_TABLE if table is None else table
        self._max_line = max_request_line
        self._max_hbytes = max_header_bytes
        self._max_headers = max_headers
        self._state = ST_IDLE
        self.upgraded = False

    # -- the events (override) -------------------------------------------------------------------------
    cpdef request_head(self, RequestHead head):
        pass

    cpdef request_body(self, bytes data):
        pass

    cpdef request_end(self):
        pass

    cpdef request_error(self, int status, str slug, str detail):
        pass

    # -- input -----------------------------------------------------------------------------------------
    cpdef feed(self, bytes data):
        """Feed bytes from the client. Events fire synchronously, in order; nothing is read after an
        error, an Upgrade/CONNECT request, or when the connection stopped the reader (ST_DEAD)."""
        cdef Py_ssize_t i = 0, n = len(data)
        while i < n and self._state != ST_DEAD and not self.upgraded:
            if self._state == ST_BODY:
                i = self._body(data, i)
            else:
                i = self._head_in(data, i)

    cdef void _fail(self, int status, str slug, str detail):
        if self._state != ST_DEAD:
            self._state = ST_DEAD
            self._buf = None
            self.request_error(status, slug, detail)

    cdef void _begin(self):
        cdef RequestHead h = RequestHead.__new__(RequestHead)
        h.pieces = []
        h.content_length = -1
        h.host = b""
        self._head = h
        self._state = ST_HEAD
        self._hfed = 0
        self._hbytes = 0
        self._nheaders = 0
        memset(&self._fs, 0, sizeof(FieldState))
        self._cl_seen = False

    # -- the head --------------------------------------------------------------------------------------
    cdef Py_ssize_t _head_in(self, bytes data, Py_ssize_t i) except -1:
        """Take head bytes from data[i:]: each complete line is read as it ends; the head's end reports
        it. Returns where the body starts in `data`, or len(data) when the head goes on (its incomplete
        line kept in _buf) or the reader died."""
        cdef Py_ssize_t n = len(data), pos, end, e, old = 0
        cdef const char* p = data
        cdef const char* q
        cdef bytearray buf = self._buf
        cdef int r
        if self._state == ST_IDLE:
            # Empty lines before a request are ignored (RFC 9112 2.2, llhttp: CR and LF alike). After a
            # message that does not keep the connection, nothing else may come (llhttp).
            while i < n and (p[i] == 13 or p[i] == 10):
                i += 1
            if i == n:
                return n
            if self._closing:
                self._fail(400, "bad-request", "data after Connection: close")
                return n
            self._begin()
        if buf is None:
            pos = i
            end = n
        else:
            old = len(buf)
            buf.extend(data[i:] if i else data)
            p = buf
            pos = 0
            end = len(buf)
        while True:
            q = <const char*>memchr(p + pos, 10, end - pos)
            if q == NULL:
                break
            e = q - p
            self._hfed += e + 1 - pos
            if e == pos or p[e - 1] != 13:
                # (llhttp ends an HTTP/0.9-form request line at a bare LF too: refused when the head ends)
                if self._head.method is not None or self._request_line(p + pos, e - pos, False) < 0 \
                        or self._minor != -3:
                    self._bad("a line does not end with CRLF")
                    return n
                pos = e + 1
                continue
            r = self._line(p + pos, e - 1 - pos)
            pos = e + 1
            if r:
                if r < 0:
                    return n
                self._buf = None
                return pos - old + i if buf is not None else pos
        # The line at pos is incomplete: bound it (a request target is refused as it grows past the
        # request-line limit, 414; the head as it grows past both limits, 431).
        q = <const char*>memchr(p + pos, 13, end - pos)
        if q != NULL and q - p < end - 1:
            self._bad("a CR not followed by LF")
            return n
        if self._head.method is None and self._request_line(p + pos, end - pos, True) < 0:
            return n
        if self._minor == -2 and self._pri_line(p + pos, end - pos, True) < 0:
            return n
        if self._hfed + end - pos > self._max_line + self._max_hbytes:
            self._fail(431, "header-too-large", "request head too large")
            return n
        if buf is None:
            self._buf = bytearray(data[pos:] if pos else data)
        elif pos:
            del buf[:pos]
        return n

    cdef int _line(self, const char* s, Py_ssize_t n) except -2:
        """One complete head line s[:n] (its CRLF excluded): 0 read, 1 the head ended (reported), -1 the
        reader died."""
        if self._head.method is None:
            return self._request_line(s, n, False)
        if self._minor == -2:
            return self._pri_line(s, n, False)
        if n == 0:
            return self._head_done()
        return self._field_line(s, n)

    cdef int _request_line(self, const char* s, Py_ssize_t n, bint partial) except -2:
        """METHOD SP+ request-target SP+ HTTP/DIGIT.DIGIT (RFC 9112 3; several SP accepted, as llhttp
        does). `partial`: s[:n] is the line so far (perhaps ending with its CR); what is already wrong
        (or too long) is refused, at the byte where llhttp refuses it."""
        cdef Py_ssize_t i = 0, t, te, r
        cdef bytes method
        cdef int major, minor
        cdef bint cr = partial and n and s[n - 1] == b'\r'
        if cr:
            n -= 1
        while i < n and P[<unsigned char>s[i]] & P_TCHAR:
            i += 1
        if i == n:
            if partial and not cr:
                # llhttp refuses a method at its first byte that no method starts with
                for method in METHODS + RTSP_METHODS:
                    if len(method) >= n and memcmp(<const char*>method, s, n) == 0:
                        return 0
                return self._bad("unknown request method")
            return self._bad("request line without a target")
        if s[i] != b' ':
            return self._bad("invalid request method")
        method = known_method(s, i)
        if method is None:
            return self._bad("unknown request method")
        while i < n and s[i] == b' ':
            i += 1
        t = i
        while i < n and P[<unsigned char>s[i]] & P_TARGET:
            i += 1
        te = i
        if i - t > self._max_line:
            self._fail(414, "uri-too-long", "request target too long")
            return -1
        if i < n and s[i] != b' ':
            return self._bad("invalid character in the request target")
        if t < n and s[t] != b'/' and s[t] != b'*' and method is not METHOD_CONNECT and \
                not _absolute_start(s + t, i - t, partial or i == n):
            # (an absolute-form or CONNECT's authority-form target is refused when the head ends, as
            # fastgw refused it after llhttp read it; anything else is not a target at all)
            return self._bad("invalid request target")
        if i == n and partial:
            return 0
        if i == t:
            return self._bad("request line without a target")
        if i < n:
            while i < n and s[i] == b' ':
                i += 1
            # HTTP/DIGIT.DIGIT, checked byte by byte as it comes
            r = n - i
            if r > 8 or memcmp(s + i, b"HTTP/", r if r < 5 else 5) != 0 or \
                    (r > 5 and not b'0' <= s[i + 5] <= b'9') or (r > 6 and s[i + 6] != b'.') or \
                    (r > 7 and not b'0' <= s[i + 7] <= b'9') or (r < 8 and (cr or not partial)):
                return self._bad("invalid HTTP version")
            if r < 8:
                return 0
            major = s[i + 5] - 48
            minor = s[i + 7] - 48
            if major == 1 and minor <= 1:
                pass
            elif (major == 0 and minor == 9) or (major == 2 and minor == 0):
                minor = -1                     # a version llhttp knows, refused when the head ends
            else:
                return self._bad("invalid HTTP version")
            if method is METHOD_PRI:
                minor = -2                     # the rest of the preface is read, then refused
        else:
            # "METHOD target": HTTP/0.9's request line; llhttp reads the fields after it, and the head
            # is refused when it ends (a limit may be reached first)
            minor = -3
        if partial:
            return 0
        self._minor = minor
        self._head.method = method
        self._url = PyBytes_FromStringAndSize(s + t, te - t)
        return 0

    cdef int _pri_line(self, const char* s, Py_ssize_t n, bint partial) except -2:
        """A line after "PRI ... HTTP/x.y": the rest of the HTTP/2 preface ("", "SM", "") is read as llhttp
        reads it, then refused (an HTTP/2 preface on a connection that spoke HTTP/1.1 first) as llhttp
        refuses it; anything else is refused at once. (_nheaders counts the lines.)"""
        cdef bytes want = b"SM\r" if self._nheaders == 1 else b"\r"
        if n > len(want) - 1 + partial or memcmp(s, <const char*>want, n) != 0 or (
                not partial and (n != len(want) - 1 or self._nheaders == 2)):
            return self._bad("an HTTP/2 connection preface is not an HTTP/1.1 request")
        if not partial:
            self._nheaders += 1
        return 0

    cdef int _bad(self, str detail) except -2:
        self._fail(400, "bad-request", "malformed HTTP/1.1: " + detail)
        return -1

    cdef int _field_line(self, const char* s, Py_ssize_t n) except -2:
        """name ":" OWS value (RFC 9112 5): a token name, no whitespace before the colon and no obs-fold
        (a line starting with whitespace); leading whitespace of the value skipped (trailing kept, as llhttp
        reports it)."""
        cdef Py_ssize_t i = 0, v, nl, size
        cdef RequestHead h = self._head
        cdef int code
        cdef unsigned long long cl = 0
        cdef str detail
        while i < n and P[<unsigned char>s[i]] & P_TCHAR:
            i += 1
        if i == 0 or i == n or s[i] != b':':
            return self._bad("obs-fold" if P[<unsigned char>s[0]] & P_OWS else "invalid header field name")
        nl = i
        v = i + 1
        while v < n and P[<unsigned char>s[v]] & P_OWS:
            v += 1
        size = nl + n - v + 4
        i = v
        while i + 8 <= n and _plain8(s + i):          # (eight value bytes at a time: http1_response.pyx)
            i += 8
        while i < n and P[<unsigned char>s[i]] & P_VALUE:
            i += 1
        if i != n:
            return self._bad("invalid character in a header value")
        self._nheaders += 1
        self._hbytes += size
        if self._nheaders > self._max_headers:
            self._fail(431, "header-too-large", "too many header fields")
            return -1
        if self._hbytes > self._max_hbytes:
            self._fail(431, "header-too-large", "request header fields too large")
            return -1
        code = self._table.classify_c(s, nl)
        if code == A_CONTENT_LENGTH:
            # 1*DIGIT then optional whitespace; one field; never with Transfer-Encoding (RFC 9112 6.3).
            if self._cl_seen:
                return self._bad("duplicate Content-Length")
            if self._fs.te_seen:
                return self._bad("Content-Length with Transfer-Encoding")
            i = v
            while i < n and b'0' <= s[i] <= b'9':
                if cl > (MAX_CONTENT_LENGTH - (s[i] - 48)) // 10:
                    return self._bad("Content-Length overflow")
                cl = cl * 10 + (s[i] - 48)
                i += 1
            if i == v:
                return self._bad("invalid Content-Length")
            while i < n and P[<unsigned char>s[i]] & P_OWS:
                i += 1
            if i != n:
                return self._bad("invalid Content-Length")
            self._cl_seen = True
            h.content_length = cl
            return 0
        if code == A_TRANSFER_ENCODING and self._cl_seen:
            return self._bad("Transfer-Encoding with Content-Length")
        # (a name object only for a field that is forwarded or named later: not Host, framing, ...)
        name = PyBytes_FromStringAndSize(s, nl) if code == A_FORWARD or code >= A_CREDENTIALS or \
            code == A_UNDERSCORE or code == A_ALIAS or code == A_CONN_SPECIFIC else None
        value = PyBytes_FromStringAndSize(s + v, n - v)
        detail = h1_field(h, code, name, value, &self._fs)
        if detail is not None:
            self._fail(400, "bad-request", detail)
            return -1
        return 0

    cdef int _head_done(self) except -2:
        cdef RequestHead h = self._head
        cdef str detail = h1_head_done(h, self._url, self._minor, &self._fs)
        cdef int conn = self._fs.conn
        self._url = None
        if detail is not None:
            self._fail(400, "bad-request", detail)
            return -1
        h.keep_alive = not conn & CONN_CLOSE if h.minor == 1 else conn & CONN_KEEP_ALIVE != 0
        self._state = ST_BODY
        self.request_head(h)
        if self._state == ST_DEAD:
            return -1
        if h.method is METHOD_CONNECT or conn & (CONN_UPGRADE | CONN_UPGRADE_FIELD) == \
                CONN_UPGRADE | CONN_UPGRADE_FIELD:
            # Upgrade/CONNECT: the message is handled as one without a body, with Upgrade stripped; the
            # bytes after its head belong to a protocol fastgw does not speak (unless a tunnel route
            # takes the connection): dropped, and the connection closes after the response.
            self._complete()
            self.upgraded = True
        elif h.chunked:
            self._chunk = CH_SIZE0
            self._left = 0
            self._digits = 0
            self._slack = 0
        elif h.content_length > 0:
            self._left = h.content_length
        else:
            self._complete()
        return 1

    cdef void _complete(self):
        self._state = ST_IDLE
        self._closing = not self._head.keep_alive
        self._head = None                  # (the exchange keeps it; an idle connection holds no head)
        self.request_end()

    # -- the body --------------------------------------------------------------------------------------
    cdef Py_ssize_t _body(self, bytes data, Py_ssize_t i) except -1:
        """Take body bytes from data[i:]; returns where the next message starts (len(data) when the body
        goes on or the reader died)."""
        cdef Py_ssize_t n = len(data), k
        cdef const char* p = data
        if not self._head.chunked:
            k = n - i
            if <unsigned long long>k > self._left:
                k = <Py_ssize_t>self._left
            self._left -= k
            self.request_body(data if k == n else PyBytes_FromStringAndSize(p + i, k))
            if self._left == 0 and self._state == ST_BODY:
                self._complete()
            return i + k
        return self._chunked(data, i)

    cdef Py_ssize_t _chunked(self, bytes data, Py_ssize_t i) except -1:
        """A chunked body (RFC 9112 7.1, framing: chunk_step), then "0" [ext] CRLF and the empty line; a
        trailer section is refused (its fields must never become headers)."""
        cdef Py_ssize_t n = len(data), k
        cdef const unsigned char* p = data
        cdef unsigned char c
        cdef int st = self._chunk
        while i < n:
            if st == CH_DATA:
                k = n - i
                if <unsigned long long>k > self._left:
                    k = <Py_ssize_t>self._left
                self._left -= k
                if self._left == 0:
                    st = self._chunk = CH_DATA_CR
                self.request_body(data if k == n else PyBytes_FromStringAndSize(<const char*>p + i, k))
                if self._state != ST_BODY:
                    return n
                i += k
                continue
            c = p[i]
            i += 1
            if st == CH_LAST_CR:
                if c != 13:
                    return self._bad_body("trailers are not accepted")
                st = CH_LAST_LF
            elif st == CH_LAST_LF:
                if c != 10:
                    return self._bad_body("chunked body does not end with CRLF")
                self._chunk = CH_SIZE0
                self._complete()
                return i
            else:
                st = chunk_step(st, c, &self._left, &self._digits, &self._slack)
                if st < 0:
                    return self._bad_body(CHUNK_ERRORS[-1 - st])
        self._chunk = st
        return n

    cdef Py_ssize_t _bad_body(self, str detail) except -1:
        self._fail(400, "bad-request", "malformed chunked body: " + detail)
        return 1 << 62


include "http1_response.pyx"
