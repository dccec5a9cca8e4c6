# Declarations of the HTTP/1.1 downstream connection (see h1engine.pyx; included by worker.pxd).

from fastgw._core.http1 cimport RequestHead, RequestReader
from fastgw._core.runtime cimport Runtime

# A response head's framing (ClientConn.framing).
cdef enum:
    FR_NONE = 0            # none: no body, or (HTTP/1.0 client) the body ends with the connection
    FR_LENGTH = 1          # the upstream's Content-Length
    FR_CHUNKED = 2         # Transfer-Encoding: chunked

@cython.final
cdef class H1Reader(RequestReader):
    cdef ClientConn conn                  # the connection its events go to


@cython.final
cdef class ClientConn(Downstream):
    # (the Downstream methods it implements are declared in downstream.pxd)
    cdef public object transport
    cdef H1Reader reader                  # the HTTP/1.1 request reader (http1.pyx) of this connection
    cdef list queue
    cdef bint eof
    cdef list wbuf                        # the output batch: wbuf[:nw] (send, flush)
    cdef Py_ssize_t nw
    cdef public bint want_proxy           # server.proxy_protocol: a PROXY v1/v2 header comes first
    cdef public bytes proxied_peer        # the client address from a PROXY header read before TLS (worker.py)
    cdef bytes pre                        # input held until the PROXY header is complete
    cdef H2Conn h2                        # set when the connection speaks HTTP/2 (h2engine.pyx)
    cdef bint sniffed                     # the first bytes were checked for the h2c preface
    cdef bytes sbuf                       # a partial preface-looking start, until 24 bytes are in
    cdef bytes first                      # the first read taken as HTTP/1.x, until the first request head:
                                          #   a start that is no HTTP/1.x line is answered with GOAWAY
    cdef bint admitted                    # counted in Worker.nconns (until connection_lost or freed)
    cdef bint parked                      # accepted beyond max_connections: not read until room (Worker)
    cdef double closed_at                 # when close() was called (unsent output is dropped later)
    cdef double wpaused_at                # when the transport's buffer last went over its high-water mark
    cdef void begin(self)
    cdef void unpark(self)
    cdef bytes proxy_preface(self, bytes data)
    cdef bytes sniff(self, bytes data)
    cpdef start_h2(self, bytes data)
    cdef void send(self, bytes data)
    cdef void close(self)
    cdef void flush_now(self)
    cdef void write_batch(self)
    cdef void frame_head(self, Exchange ex, int status, bytes length, list parts)
    cdef void write_switch(self, Exchange ex, UpstreamConn c)
    cdef void end_head(self, Exchange ex, RequestHead h, list parts)
    cdef int framing(self, Exchange ex, int status, bytes length)
    cdef bytes head_end(self, Exchange ex, RequestHead h)
    cdef bytes render_problem(self, Runtime rt, str slug, RequestHead h, bytes rid, bytes detail, bytes extra, bint close, bytes members=*)
    cdef void enqueue(self, Exchange ex)
    cdef void request_head(self, RequestHead head)
    cdef void request_error(self, int status, str slug, str detail)
    cdef void check(self, double now)
    cdef void reset_connection(self)
    cdef void timeout_response(self, int status, str slug, bytes detail)
