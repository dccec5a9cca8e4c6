# Declarations of the sans-IO HTTP/1.1 response reader (see http1_response.pyx; included by http1.pxd).

# Bounds of one upstream response head; more is a 502 (invalid response).
cdef enum:
    MAX_RESP_HEAD = 65536     # bytes of one response head (and of one trailer section)
    MAX_RESP_LINES = 256      # header lines of one response head

# What ResponseReader.next() reports.
cdef enum:
    RE_NEED = 0      # every byte fed so far is read: feed more (or eof())
    RE_HEAD = 1      # a final response head: status, pieces, length, keep_alive
    RE_BODY = 2      # body bytes, in .body
    RE_END = 3       # the response ended; left() bytes after its end were fed
    RE_ERROR = 4     # invalid response, .error says why; the reader is dead
    RE_SWITCH = 5    # a 101 to a tunnel request: its head in pieces; rest() is the new protocol's

# Where the reader is (ResponseReader._state).
cdef enum:
    RS_HEAD = 0      # in a head (or before one)
    RS_LENGTH = 1    # a body delimited by Content-Length
    RS_CHUNKED = 2   # a chunked body
    RS_EOF = 3       # a body delimited by the end of the connection
    RS_ENDING = 4    # the response ends: next() reports RE_END
    RS_DONE = 5      # ended (or switched, or dead): nothing more is read until start()


cdef class ResponseReader:
    cdef bint _head_req            # the request was HEAD: the response has no body
    cdef bint _tunnel              # the request may be answered with 101 (a tunnel request)
    cdef object _remove            # lowercase names dropped from the head (route resp_remove), or None
    cdef int _state
    cdef bytes _data               # what is being read (the head so far and the new bytes, when split)
    cdef Py_ssize_t _pos
    cdef bytes _hbuf               # an incomplete head, kept from its start until it ends
    cdef Py_ssize_t _hok           # bytes of _hbuf whose lines are checked
    cdef int _chunk                # CH_* inside a chunked body
    cdef unsigned long long _left  # body bytes still due (Content-Length), or of the current chunk
    cdef int _digits
    cdef long long _slack          # chunk-extension bytes (MAX_CHUNK_SLACK), then trailer bytes
    cdef readonly int status
    cdef readonly list pieces      # kept header lines, as slices of the received bytes
    cdef readonly bytes length     # the Content-Length value as received (trimmed), or None
    cdef readonly bint chunked
    cdef readonly bint keep_alive  # the connection may carry another request after this response
    cdef readonly bytes body
    cdef readonly str error

    cpdef start(self, bint head_request, bint tunnel, object remove)
    cpdef feed(self, bytes data)
    cpdef int next(self) except -1
    cpdef bint eof(self)
    cpdef release(self)
    cpdef Py_ssize_t left(self)
    cpdef bytes rest(self)
    cdef int _fail(self, str detail)
    cdef int _head(self) except -1
    cdef int _chunked(self) except -1
