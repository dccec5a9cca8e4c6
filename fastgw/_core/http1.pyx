# cython: language_level=3
"""Sans-IO HTTP/1.1 request reader: bytes in, events out.

It wraps httptools (llhttp, strict mode; fastgw never enables its leniency switches) and adds the checks a
gateway needs that llhttp does not make (DESIGN.md §5). Events are delivered to four overridable methods:
``request_head(head)``, ``request_body(data)``, ``request_end()`` and ``request_error(status, slug, detail)``.
After an error the reader is dead: the connection must answer and close (never forward an ambiguity).

What happens to each header field is the config's wire table (fastgw/_core/wire.pyx `HeaderTable`, from
fastgw/headers.py): managed fields are checked and kept out of the forwarded list (`RequestHead.pieces`);
a name with "_" is dropped and reported in `RequestHead.dropped` unless server.limits.allow_underscores.

The reader never touches a transport, a clock or a logger; the tests feed it byte by byte.
"""
from libc.string cimport memcmp

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade
from httptools import HttpRequestParser

from fastgw._core.wire cimport (
    A_ALIAS, A_CONN_SPECIFIC, A_CONNECTION, A_CONTENT_LENGTH, A_CREDENTIALS, A_EXPECT, A_FORWARD,
    A_FORWARDED_FOR, A_HOST, A_REQUEST_ID, A_TE, A_TRACEPARENT, A_TRACESTATE, A_TRANSFER_ENCODING,
    A_UNDERSCORE, C_HOST, C_PATH, C_PATH_REFUSED, C_REQUEST_ID, CHARS, HeaderTable, bad_path, only,
    traceparent_ok,
)
from fastgw._core.wire import DEFAULT_TABLE

# (The reader's states and the chunk-slack bound are constants of http1.pxd.)

cdef class RequestHead:
    """One parsed request head. ``pieces`` is the flat list [name, b": ", value, b"\\r\\n", ...] of the
    headers that may be forwarded."""

    def __repr__(self):
        return f"<RequestHead {self.method!r} {self.path!r}{self.query!r} host={self.host!r}>"

    def headers(self):
        """(name, value) pairs of the forwardable headers (for tests and tooling)."""
        p = self.pieces
        return [(p[i], p[i + 2]) for i in range(0, len(p), 4)]


cdef int _version_from_line(bytes line, bytes method, bytes url):
    """1 or 0 when `line` starts with exactly "METHOD SP URL SP HTTP/1.x CRLF" (x = 1 or 0), else -1.
    llhttp has validated the head, and no header line can look like a request line, so a match is
    this request's own line."""
    cdef Py_ssize_t m, u, off
    cdef const char* s
    if line is None:
        return -1
    m = len(method)
    u = len(url)
    off = m + u + 2
    if len(line) < off + 10:
        return -1
    s = line
    if s[m] != b' ' or s[off - 1] != b' ' or memcmp(s, <const char*>method, m) != 0 \
            or memcmp(s + m + 1, <const char*>url, u) != 0 or memcmp(s + off, b"HTTP/1.", 7) != 0 \
            or s[off + 8] != b'\r' or s[off + 9] != b'\n':
        return -1
    if s[off + 7] == b'1':
        return 1
    if s[off + 7] == b'0':
        return 0
    return -1


cdef int take_field(RequestHead h, int code, bytes name, bytes value, unsigned long long* creds) except -1:
    """What both request readers (this one and the HTTP/2 engine's field validation, h2engine.pyx) do with
    a field by its wire-table action (wire.pxd), except the actions about Host, framing and the
    connection, which are each reader's own: forward it; one field of each credential (a second is an
    ambiguity: which one did the gateway check?); the request id when well-formed; X-Forwarded-For
    joined; one well-formed traceparent (b"" marks "refused": W3C Trace Context 3.2), tracestate joined;
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
        h.traceparent = value if h.traceparent is None and traceparent_ok(value) else b""
    elif code == A_TRACESTATE:
        h.tracestate = value if h.tracestate is None else h.tracestate + b"," + value
    elif code == A_UNDERSCORE or code == A_ALIAS:
        if h.dropped is None:
            h.dropped = []
        h.dropped.append((code, name))
    else:
        return FIELD_OTHER
    return FIELD_TAKEN


cdef class RequestReader:
    def __init__(self, Py_ssize_t max_request_line=8192, Py_ssize_t max_header_bytes=32768,
                 Py_ssize_t max_headers=100, HeaderTable table=None):
        self._parser = HttpRequestParser(self)
        self._feed = self._parser.feed_data     # bound once: no method lookup per read (nor per head below)
        self._get_method = self._parser.get_method
        self._keep_alive = self._parser.should_keep_alive
        self._table = DEFAULT_TABLE if table is None else table
        self._max_line = max_request_line
        self._max_hbytes = max_header_bytes
        self._max_headers = max_headers
        self._state = ST_IDLE
        self.upgraded = False
        self._slack = 0

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
        """Feed bytes from the client. Events fire synchronously, in order.

        Input is handed to llhttp in slices of at most SLICE bytes (except inside a Content-Length body),
        so that the size checks below run before a request can complete: an oversized chunk extension is
        rejected before the chunked body's end is ever reported."""
        cdef Py_ssize_t n = len(data)
        cdef Py_ssize_t i = 0, step
        if n <= CHUNK_SLICE or (self._state == ST_BODY and not self._head.chunked):
            self._feed1(data)
            return
        while i < n:
            if self._state == ST_DEAD or self.upgraded:
                return
            if self._state != ST_BODY:
                step = SLICE
            elif self._head.chunked:
                step = CHUNK_SLICE
            else:
                step = n - i                      # a Content-Length body: no framing bytes to bound
            self._feed1(data[i:i + step] if i or step < n else data)
            i += step

    cdef int _feed1(self, bytes data) except -1:
        cdef Py_ssize_t n = len(data)
        if self._state == ST_DEAD or self.upgraded:
            return 0
        self._feed_acc = 0
        if self._state == ST_IDLE:
            self._line = data
        if self._state == ST_HEAD or self._state == ST_IDLE:
            self._head_fed += n
        try:
            self._feed(data)
        except HttpParserCallbackError:
            if self._state != ST_DEAD:          # an exception of ours that is not a rejection: a bug
                raise
            return 0
        except HttpParserUpgrade:
            # Upgrade/CONNECT: the message itself was parsed (and handled) normally with Upgrade
            # stripped; the bytes after it belong to a protocol fastgw does not speak, so they are
            # dropped and the connection closes after the response.
            self.upgraded = True
            return 0
        except HttpParserError as exc:
            if self._state != ST_DEAD:
                self._state = ST_DEAD
                self.request_error(400, "bad-request", f"malformed HTTP/1.1: {exc}")
            return 0
        if self._state == ST_HEAD:
            # The head has not completed: bound what httptools is accumulating for us.
            # (an over-long target is caught by on_url as 414 as it streams in)
            if self._head_fed > self._max_line + self._max_hbytes:
                self._fail(431, "header-too-large", "request head too large")
            return 0
        self._slack += n - self._feed_acc
        if self._slack > MAX_CHUNK_SLACK - CHUNK_SLICE and self._state == ST_BODY:
            self._fail(400, "bad-request", "chunk extensions too large")
        elif self._state == ST_IDLE:
            if self._slack > MAX_CHUNK_SLACK:
                self._fail(400, "bad-request", "chunk extensions too large")
            else:
                self._slack = 0
        return 0

    cdef void _fail(self, int status, str slug, str detail):
        if self._state != ST_DEAD:
            self._state = ST_DEAD
            self.request_error(status, slug, detail)

    cdef int _reject(self, int status, str slug, str detail) except -1:
        """Reject from inside a parser callback: report, then stop llhttp by raising."""
        self._fail(status, slug, detail)
        raise ValueError(slug)

    # -- httptools callbacks ---------------------------------------------------------------------------
    cdef void _begin(self):
        self._state = ST_HEAD
        self._url = []
        self._url_len = 0
        self._hbytes = 0
        self._nheaders = 0
        self._host_seen = False
        self._te_seen = False
        self._creds = 0
        self._te = None
        self._chunk_bytes = 0
        cdef RequestHead h = RequestHead.__new__(RequestHead)
        h.pieces = []
        h.content_length = -1
        h.host = b""
        self._head = h

    def on_url(self, bytes url):
        if self._state != ST_HEAD:
            self._begin()
        self._url.append(url)
        self._url_len += len(url)
        self._feed_acc += len(url)
        if self._url_len > self._max_line:
            self._reject(414, "uri-too-long", "request target too long")

    def on_header(self, bytes name, bytes value):
        cdef RequestHead h = self._head
        cdef Py_ssize_t size = len(name) + len(value) + 4
        cdef int code
        if self._state == ST_BODY:
            # llhttp hands trailer fields to the header callback; they must never become headers.
            self._reject(400, "bad-request", "trailers are not accepted")
        self._feed_acc += size
        self._nheaders += 1
        self._hbytes += size
        if self._nheaders > self._max_headers:
            self._reject(431, "header-too-large", "too many header fields")
        if self._hbytes > self._max_hbytes:
            self._reject(431, "header-too-large", "request header fields too large")
        code = self._table.classify(name, False)
        if code == A_FORWARD:
            pieces = h.pieces
            pieces.append(name)
            pieces.append(b": ")
            pieces.append(value)
            pieces.append(b"\r\n")
            return
        if code == A_HOST:
            if self._host_seen:
                self._reject(400, "bad-request", "duplicate Host header")
            if not value:
                self._reject(400, "bad-request", "empty Host header")    # RFC 9110 4.2.1: no empty host
            if not only(value, C_HOST):
                self._reject(400, "bad-request", "invalid Host header")
            self._host_seen = True
            h.host = value
        elif code == A_CONTENT_LENGTH:
            h.content_length = int(value)         # llhttp validated the digits and uniqueness
        elif code == A_TRANSFER_ENCODING:
            if self._te_seen:
                self._reject(400, "bad-request", "duplicate Transfer-Encoding header")
            self._te_seen = True
            self._te = value
        elif code == A_CONNECTION:
            for tok in value.lower().split(b","):
                tok = tok.strip()
                if tok and tok != b"close" and tok != b"keep-alive":
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
        elif take_field(h, code, name, value, &self._creds) == FIELD_DUPLICATE:
            self._reject(400, "bad-request", f"duplicate {name.decode('latin-1')} header")
        # the rest (hop-by-hop, X-Forwarded-*, identity): dropped

    def on_headers_complete(self):
        cdef RequestHead h = self._head
        cdef bytes url
        cdef str version
        cdef int minor
        cdef Py_ssize_t q, i, n
        cdef const unsigned char* u
        cdef int flags
        p = self._parser
        h.method = self._get_method()
        self._feed_acc += len(h.method) + 14
        self._state = ST_BODY
        self._head_fed = 0
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        minor = _version_from_line(self._line, h.method, url)
        self._line = None
        if minor < 0:
            # The request line is not at the start of a slice we kept (pipelining, a split read):
            # ask llhttp (get_http_version formats a str: ~2k instructions, hence the fast path).
            version = p.get_http_version()
            minor = 1 if version == "1.1" else 0 if version == "1.0" else -1
        if minor == 1:
            h.minor = 1
            if not self._host_seen:
                self._reject(400, "bad-request", "missing Host header")
        elif minor == 0:
            h.minor = 0
        else:
            self._reject(400, "bad-request", "unsupported HTTP version")
        if self._te_seen:
            if h.minor == 0:
                self._reject(400, "bad-request", "Transfer-Encoding is not allowed in HTTP/1.0")
            if self._te.strip().lower() != b"chunked":
                self._reject(400, "bad-request", "only 'Transfer-Encoding: chunked' is accepted")
            h.chunked = True
        n = len(url)
        u = url
        if n == 1 and u[0] == 42:              # '*'
            if h.method != b"OPTIONS":
                self._reject(400, "bad-request", "'*' target is only valid with OPTIONS")
            h.path = url
            h.query = b""
        elif n == 0 or u[0] != 47:             # not '/'
            self._reject(400, "bad-request", "request target must be origin-form ('/path')")
        else:
            flags = 0
            q = n
            for i in range(n):
                if u[i] == 63:                 # '?'
                    q = i
                    break
                flags |= CHARS[u[i]]
            for i in range(q, n):
                if u[i] == 35:                 # '#' in the query
                    flags |= C_PATH_REFUSED
            flags &= C_PATH
            if q == n:
                h.path = url
                h.query = b""
            else:
                h.path = url[:q]
                h.query = url[q:]
            if flags and bad_path(h.path, flags):
                self._reject(400, "bad-request", "request path is not in canonical form")
        h.keep_alive = self._keep_alive()
        self.request_head(h)

    def on_body(self, bytes body):
        self._feed_acc += len(body)
        self._chunk_bytes += len(body)
        self.request_body(body)

    def on_chunk_header(self):
        self._chunk_bytes = 0

    def on_chunk_complete(self):
        # "HEX CRLF" before the data and CRLF after it.
        self._feed_acc += len(b"%x" % self._chunk_bytes) + 4

    def on_message_complete(self):
        self._state = ST_IDLE
        self.request_end()
