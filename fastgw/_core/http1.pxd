# Declarations of the sans-IO HTTP/1.1 request reader (see http1.pyx).

from fastgw._core.wire cimport HeaderTable

# The reader's state (RequestReader._state).
cdef enum:
    ST_IDLE = 0      # between messages, nothing pending
    ST_HEAD = 1      # inside a request head
    ST_BODY = 2      # head done, body (possibly empty) in progress
    ST_DEAD = 3      # an error was reported, or the connection reads no more requests

# Bytes of chunk-size lines beyond "HEX CRLF" (extensions, padding) tolerated per request. The parser
# reads extensions without keeping them, and fastgw re-chunks bodies so they are never forwarded; the cap
# stops a client from streaming unbounded non-data bytes (the 2024 chunk-extension DoS class). It is
# counted byte by byte, so a message with more never completes.
# (The reference reader, http1_llhttp.pyx, feeds llhttp CHUNK_SLICE bytes at a time inside a chunked
# body, SLICE elsewhere, to check the same bound there; it refuses past MAX_CHUNK_SLACK - CHUNK_SLICE.)
cdef enum:
    MAX_CHUNK_SLACK = 4096
    SLICE = 4096
    CHUNK_SLICE = 1024

# Where the reader is inside a chunked body (RequestReader._chunk).
cdef enum:
    CH_SIZE0 = 0        # the first hex digit of a chunk-size
    CH_SIZE = 1         # more digits, ';' or CR
    CH_EXT0 = 2         # after ';'
    CH_EXT_NAME = 3
    CH_EXT_VAL0 = 4     # after '='
    CH_EXT_VAL = 5      # a token value
    CH_EXT_QUOTED = 6   # inside a quoted value
    CH_EXT_QEND = 7     # after its closing quote
    CH_SIZE_LF = 8      # the LF of the chunk-size line
    CH_DATA = 9
    CH_DATA_CR = 10
    CH_DATA_LF = 11
    CH_LAST_CR = 12     # after the last chunk's line: the empty line (a trailer field is refused)
    CH_LAST_LF = 13
    CH_TR_NAME = 14     # a response's trailer section (http1_response.pyx): a field name
    CH_TR_VALUE = 15
    CH_TR_LF = 16

# Connection semantics of one head (FieldState.conn): the Connection tokens close, keep-alive, upgrade,
# and an Upgrade field present (both upgrade bits: the request switches protocols, as CONNECT does).
cdef enum:
    CONN_CLOSE = 1
    CONN_KEEP_ALIVE = 2
    CONN_UPGRADE = 4
    CONN_UPGRADE_FIELD = 8

cdef class RequestHead:
    cdef public bytes method
    cdef public bytes path
    cdef public bytes query
    cdef public bytes host
    cdef public int minor
    cdef public list pieces
    cdef public bytes request_id
    cdef public bytes xff
    cdef public bint keep_alive
    cdef public bint chunked
    cdef public long long content_length
    cdef public bint expect_continue
    cdef public bint te_trailers       # TE names "trailers": the client takes a response's trailer fields
    cdef public object drop
    cdef public bytes traceparent      # the one traceparent field's value; b"" when it came twice
    cdef public bytes tracestate       # the tracestate fields joined; None when dropped (tracecontext.pyx)
    cdef public list dropped           # [(Action, name)] dropped by the underscore rule, or None
    cdef public bytes upgrade          # the Upgrade field (never forwarded as such), or None: a tunnel
                                       #   route reads it (fastgw/policies/websocket)

# What take_field did with a field (both request readers: this one and h2engine.pyx's).
cdef enum:
    FIELD_TAKEN = 0        # forwarded or noted
    FIELD_DUPLICATE = 1    # a second field of one credential: the request is refused
    FIELD_OTHER = 2        # an action that is the reader's own (Host, framing, connection, TE, Expect, dropped)

cdef int take_field(RequestHead h, int code, bytes name, bytes value, unsigned long long* creds) except -1

# What a reader knows of a head's fields so far, for the checks both HTTP/1.1 readers share.
cdef struct FieldState:
    bint host_seen
    bint te_seen
    bint te_chunked                # the Transfer-Encoding field is exactly "chunked"
    int conn                       # CONN_* bits
    unsigned long long creds       # bit k: credential header k (wire.pxd A_CREDENTIALS) seen in this head

cdef str h1_field(RequestHead h, int code, bytes name, bytes value, FieldState* st)
cdef str h1_head_done(RequestHead h, bytes url, int minor, FieldState* st)

cdef class RequestReader:
    cdef HeaderTable _table
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _max_hbytes
    cdef Py_ssize_t _max_headers
    cdef int _state
    cdef bytearray _buf            # the incomplete line of a head split over reads; None otherwise
    cdef Py_ssize_t _hfed          # bytes of this head's complete lines
    cdef Py_ssize_t _hbytes
    cdef Py_ssize_t _nheaders
    cdef RequestHead _head
    cdef bytes _url
    cdef int _minor                # of the request line; < 0: refused when the head ends (-1: HTTP/0.9 or 2.0,
                                   #   -3: no version), or after the line (-2: PRI, the HTTP/2 preface)
    cdef FieldState _fs
    cdef bint _cl_seen
    cdef bint _closing             # the last message did not keep the connection: nothing may follow
    cdef int _chunk                # CH_* inside a chunked body
    cdef unsigned long long _left  # body bytes still due (Content-Length), or of the current chunk
    cdef int _digits               # hex digits of the current chunk-size
    cdef long long _slack          # chunk-extension and padding bytes of this request
    cdef public bint upgraded

    cpdef feed(self, bytes data)
    cdef void _fail(self, int status, str slug, str detail)
    cdef void _begin(self)
    cdef Py_ssize_t _head_in(self, bytes data, Py_ssize_t i) except -1
    cdef int _line(self, const char* s, Py_ssize_t n) except -2
    cdef int _request_line(self, const char* s, Py_ssize_t n, bint partial) except -2
    cdef int _pri_line(self, const char* s, Py_ssize_t n, bint partial) except -2
    cdef int _bad(self, str detail) except -2
    cdef int _field_line(self, const char* s, Py_ssize_t n) except -2
    cdef int _head_done(self) except -2
    cdef void _complete(self)
    cdef Py_ssize_t _body(self, bytes data, Py_ssize_t i) except -1
    cdef Py_ssize_t _chunked(self, bytes data, Py_ssize_t i) except -1
    cdef Py_ssize_t _bad_body(self, str detail) except -1
    cpdef request_head(self, RequestHead head)
    cpdef request_body(self, bytes data)
    cpdef request_end(self)
    cpdef request_error(self, int status, str slug, str detail)


include "http1_response.pxd"
