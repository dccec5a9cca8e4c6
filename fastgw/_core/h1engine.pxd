# Declarations of the HTTP/1.1 downstream connection (see h1engine.pyx; included by worker.pxd).

from fastgw._core.runtime cimport Runtime

from fastgw._core.http1 cimport RequestHead, RequestReader


cdef class ClientConn(RequestReader):
    cdef public object transport
    cdef object loop
    cdef Worker w
    cdef bytes peer                       # the client address: the TCP peer, or a PROXY header's source
    cdef bytes tcp_peer                   # the TCP peer (the access log's `peer`)
    cdef Exchange active
    cdef Exchange rx
    cdef list queue
    cdef int rpause
    cdef bint wpaused
    cdef public bint closed
    cdef public bint batching
    cdef bint eof
    cdef bint discard
    cdef public bint draining
    cdef list wbuf
    cdef double last_rx
    cdef double head_start
    cdef int nreq
    cdef Runtime rt0
    cdef public bint want_proxy           # server.proxy_protocol: a PROXY v1/v2 header comes first
    cdef public bytes proxied_peer        # the client address from a PROXY header read before TLS (worker.py)
    cdef public bytes proto               # b"http" | b"https", for X-Forwarded-Proto
    cdef bytes pre                        # input held until the PROXY header is complete
    cdef H2Conn h2                        # set when the connection speaks HTTP/2 (h2engine.pyx)
    cdef bint sniffed                     # the first bytes were checked for the h2c preface
    cdef bytes sbuf                       # a partial preface-looking start, until 24 bytes are in
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
    cdef void flush(self)
    cdef void close(self)
    cdef void abort(self)
    cdef void flush_now(self)
    cdef void pause_reading(self, int why)
    cdef void resume_reading(self, int why)
    cdef bint reader_done(self)
    cdef object peercert(self)
    cdef void write_head(self, Exchange ex, UpstreamConn c, int status)
    cdef void write_switch(self, Exchange ex, UpstreamConn c)
    cdef void end_head(self, Exchange ex, RequestHead h, list parts)
    cdef void write_fields(self, Exchange ex, int status, list fields, bint end)
    cdef void write_body(self, Exchange ex, bytes data)
    cdef void write_end(self, Exchange ex)
    cdef void write_answer(self, Exchange ex, int status, bytes lines, bytes body)
    cdef void write_problem(self, Exchange ex, str slug, bytes detail, bytes extra)
    cdef bytes render_problem(self, Runtime rt, str slug, RequestHead h, bytes rid, bytes detail, bytes extra, bint close, bytes members=*)
    cdef Exchange new_exchange(self, RequestHead head)
    cdef void enqueue(self, Exchange ex)
    cpdef request_head(self, RequestHead head)
    cpdef request_body(self, bytes data)
    cdef void body_too_large(self, Exchange ex)
    cpdef request_end(self)
    cpdef request_error(self, int status, str slug, str detail)
    cdef void start(self, Exchange ex)
    cdef void write_continue(self)
    cdef void finished(self, Exchange ex)
    cdef void client_gone(self, Exchange ex)
    cdef void check(self, double now)
    cdef void reset_connection(self)
    cdef bint body_slow(self, Exchange ex, Runtime rt, double now)
    cdef void body_timed_out(self, Exchange ex, bytes detail)
    cdef void timeout_response(self, int status, str slug, bytes detail)
