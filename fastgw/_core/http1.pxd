# Declarations of the sans-IO HTTP/1.1 request reader (see http1.pyx).

from fastgw._core.wire cimport HeaderTable

# The reader's state (RequestReader._state).
cdef enum:
    ST_IDLE = 0      # between messages, nothing pending
    ST_HEAD = 1      # inside a request head
    ST_BODY = 2      # head done, body (possibly empty) in progress
    ST_DEAD = 3      # an error was reported, or the connection reads no more requests

# Bytes of chunk-size lines beyond "HEX CRLF" (extensions, padding) tolerated per request. llhttp parses
# extensions without buffering them, and fastgw re-chunks bodies so they are never forwarded; the cap stops
# a client from streaming unbounded non-data bytes (the 2024 chunk-extension DoS class).
# Input is fed to llhttp in slices so that this bound is checked before a message can complete: a
# chunked body is fed CHUNK_SLICE bytes at a time and rejected once its slack passes
# MAX_CHUNK_SLACK - CHUNK_SLICE, so a message with more than MAX_CHUNK_SLACK bytes of slack never
# completes, and one with up to MAX_CHUNK_SLACK - CHUNK_SLICE (3 KiB) always passes.
cdef enum:
    MAX_CHUNK_SLACK = 4096
    SLICE = 4096
    CHUNK_SLICE = 1024

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
    cdef public bytes traceparent      # the one well-formed traceparent; b"" when refused (wire.pyx)
    cdef public bytes tracestate
    cdef public list dropped           # [(Action, name)] dropped by the underscore rule, or None
    cdef public bytes upgrade          # the Upgrade field (never forwarded as such), or None: a tunnel
                                       #   route reads it (fastgw/policies/websocket)

# What take_field did with a field (both request readers: this one and h2engine.pyx's).
cdef enum:
    FIELD_TAKEN = 0        # forwarded or noted
    FIELD_DUPLICATE = 1    # a second field of one credential: the request is refused
    FIELD_OTHER = 2        # an action that is the reader's own (Host, framing, connection, TE, Expect, dropped)

cdef int take_field(RequestHead h, int code, bytes name, bytes value, unsigned long long* creds) except -1

cdef class RequestReader:
    cdef object _parser
    cdef object _feed
    cdef object _get_method
    cdef object _keep_alive
    cdef HeaderTable _table
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _max_hbytes
    cdef Py_ssize_t _max_headers
    cdef int _state
    cdef list _url
    cdef Py_ssize_t _url_len
    cdef Py_ssize_t _hbytes
    cdef Py_ssize_t _nheaders
    cdef Py_ssize_t _head_fed
    cdef RequestHead _head
    cdef bint _host_seen
    cdef bint _te_seen
    cdef unsigned long long _creds # bit k: credential header k (wire.pxd A_CREDENTIALS) seen in this head
    cdef bytes _te
    cdef long long _chunk_bytes
    cdef long long _feed_acc
    cdef long long _slack
    cdef bytes _line               # the fed slice that began while idle: usually starts with the request line
    cdef public bint upgraded

    cpdef feed(self, bytes data)
    cdef int _feed1(self, bytes data) except -1
    cdef int _reject(self, int status, str slug, str detail) except -1
    cdef void _fail(self, int status, str slug, str detail)
    cdef void _begin(self)
    cpdef request_head(self, RequestHead head)
    cpdef request_body(self, bytes data)
    cpdef request_end(self)
    cpdef request_error(self, int status, str slug, str detail)
