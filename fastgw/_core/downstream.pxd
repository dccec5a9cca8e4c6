# The Downstream interface (see downstream.pyx; included by worker.pxd): what an exchange may ask of the
# client side it answers, whatever that side speaks. Implemented by ClientConn (h1engine.pyx: one
# HTTP/1.1 connection) and H2Stream (h2engine.pyx: one stream of an HTTP/2 connection); neither is a kind
# of the other. The exchange (exchange.pyx) calls only what is declared here.

from fastgw._core.http1 cimport RequestHead
from fastgw._core.runtime cimport Runtime

# What a client side can carry (Downstream.caps), for what a route requires (RouteRT.needs, compile.py).
cdef enum:
    CAP_GRPC = 1          # gRPC: HTTP/2 end to end, trailers as HEADERS (an HTTP/2 stream)


cdef class Downstream:
    cdef Worker w
    cdef object loop
    cdef Runtime rt0                      # the runtime the client side started on (its limits)
    cdef bytes peer                       # the client address: the TCP peer, or a PROXY header's source
    cdef bytes tcp_peer                   # the TCP peer (the access log's `peer`)
    cdef public bytes proto               # b"http" | b"https", for X-Forwarded-Proto
    cdef int caps                         # CAP_* this side can carry
    cdef Exchange active                  # the exchange being answered, or None
    cdef Exchange rx                      # the exchange whose request body is being received, or None
    cdef int rpause                       # P_* reasons the client's input is not taken now (protocol.pxd)
    cdef bint wpaused                     # the client does not take output now
    cdef public bint closed
    cdef public bint batching             # output is gathered and written once after the current event
    cdef public bint draining             # the worker drains: the side ends after its current answer
    cdef bint discard                     # no more requests are taken from this side
    cdef double last_rx                   # when the client last sent something (its silence timers)
    cdef double head_start
    cdef int nreq                         # requests answered
    # -- the response, written by the exchange (each side frames it in its protocol) --
    cdef void write_head(self, Exchange ex, int status, list lines, bytes length)
    cdef void write_fields(self, Exchange ex, int status, list fields, bint end)
    cdef void write_body(self, Exchange ex, bytes data)
    cdef void write_trailers(self, Exchange ex, list fields)
    cdef void write_end(self, Exchange ex)
    cdef void write_answer(self, Exchange ex, int status, bytes lines, bytes body)
    cdef void write_problem(self, Exchange ex, str slug, bytes detail, bytes extra)
    cdef void write_continue(self)
    cdef void flush(self)
    # -- the request's input, and the side itself --
    cdef void pause_reading(self, int why)
    cdef void resume_reading(self, int why)
    cdef void stop_requests(self)
    cdef void abort(self)
    cdef bint reader_done(self)
    cdef object peercert(self)
    cdef void finished(self, Exchange ex)
    # -- shared by both sides (downstream.pyx) --
    cdef Exchange new_exchange(self, RequestHead head)
    cdef void start(self, Exchange ex)
    cdef void body_data(self, bytes data)
    cdef void body_end(self)
    cdef void body_too_large(self, Exchange ex)
    cdef void client_gone(self, Exchange ex)
    cdef void check_exchange(self, Exchange ex, double now)
    cdef bint body_slow(self, Exchange ex, Runtime rt, double now)
    cdef void body_timed_out(self, Exchange ex, bytes detail)
