# cython: language_level=3
"""The reference HTTP/1.1 request reader: httptools (llhttp, strict mode) with a Python callback per parser
event, as fastgw read requests before its own parser (http1.pyx). It is not on the data path: the
differential test (tests/test_http1_differential.py) and the fuzzer (bench/fuzz_http1.py) feed the same
bytes to both readers and require the same requests, bodies and refusals. Same events, same limits."""
from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade
from httptools import HttpRequestParser

from libc.string cimport memcmp, memset

from fastgw._core.http1 cimport (
    CHUNK_SLICE, MAX_CHUNK_SLACK, SLICE, ST_BODY, ST_DEAD, ST_HEAD, ST_IDLE, FieldState, RequestHead,
    RequestReader, h1_field, h1_head_done,
)
from fastgw._core.wire cimport A_CONTENT_LENGTH, HeaderTable


cdef int version_from_line(bytes line, bytes method, bytes url):
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


cdef class LlhttpRequestReader(RequestReader):
    def __init__(self, Py_ssize_t max_request_line=8192, Py_ssize_t max_header_bytes=32768,
                 Py_ssize_t max_headers=100, HeaderTable table=None):
        RequestReader.__init__(self, max_request_line, max_header_bytes, max_headers, table)
        self._parser = HttpRequestParser(self)
        self._feed = self._parser.feed_data     # bound once: no method lookup per read (nor per head below)
        self._get_method = self._parser.get_method
        self._keep_alive = self._parser.should_keep_alive
        self._slack = 0

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

    cdef int _reject(self, int status, str slug, str detail) except -1:
        """Reject from inside a parser callback: report, then stop llhttp by raising."""
        self._fail(status, slug, detail)
        raise ValueError(slug)

    # -- httptools callbacks ---------------------------------------------------------------------------
    cdef void _begin(self):
        self._state = ST_HEAD
        self._url_parts = []
        self._url_len = 0
        self._hbytes = 0
        self._nheaders = 0
        memset(&self._fs, 0, sizeof(FieldState))
        self._chunk_bytes = 0
        cdef RequestHead h = RequestHead.__new__(RequestHead)
        h.pieces = []
        h.content_length = -1
        h.host = b""
        self._head = h

    def on_url(self, bytes url):
        if self._state != ST_HEAD:
            self._begin()
        self._url_parts.append(url)
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
        code = self._table.classify(name)
        if code == A_CONTENT_LENGTH:
            h.content_length = int(value)         # llhttp validated the digits and uniqueness
            return
        detail = h1_field(h, code, name, value, &self._fs)
        if detail is not None:
            self._reject(400, "bad-request", detail)

    def on_headers_complete(self):
        cdef RequestHead h = self._head
        cdef bytes url
        cdef str version, detail
        cdef int minor
        p = self._parser
        h.method = self._get_method()
        self._feed_acc += len(h.method) + 14
        self._state = ST_BODY
        self._head_fed = 0
        url = self._url_parts[0] if len(self._url_parts) == 1 else b"".join(self._url_parts)
        minor = version_from_line(self._line, h.method, url)
        self._line = None
        if minor < 0:
            # The request line is not at the start of a slice we kept (pipelining, a split read):
            # ask llhttp (get_http_version formats a str: ~2k instructions, hence the fast path).
            version = p.get_http_version()
            minor = 1 if version == "1.1" else 0 if version == "1.0" else -1
        detail = h1_head_done(h, url, minor, &self._fs)
        if detail is not None:
            self._reject(400, "bad-request", detail)
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
