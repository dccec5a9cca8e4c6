# Declarations of one exchange on an HTTP/2 upstream stream (see h2call.pyx; included by worker.pxd).

from fastgw._core.runtime cimport RouteRT
from fastgw._core.upstream_h2 cimport H2Pool, H2Sink, H2UpStream


cdef class H2Upstream(Upstream):
    cdef bint grpc                 # its gRPC kind: GrpcCall, the client side must carry gRPC


cdef class H2Call(H2Sink):
    cdef Downstream cl             # the client side: an HTTP/1.1 connection or an HTTP/2 stream
    cdef H2Stream st               # the same when it is an HTTP/2 stream, else None
    cdef Exchange ex
    cdef H2UpStream us             # the upstream stream (upstream_h2.pyx)
    cdef public int code           # gRPC status for the gateway's answer (0: mapped from the HTTP status)
    cdef bint head_sent
    cdef bint over                 # the call ended (answered, failed or reset): no more upstream work
    cdef bint paused               # the client side cannot take more response now
    cdef long long up_owed         # response bytes received from upstream, not acknowledged yet
    cdef long long unsent          # an HTTP/1.1 client's body bytes not yet sent upstream
    cdef double deadline           # the upstream must have sent something by then (its `timeout`)
    cdef list fields               # the request's fields, for a retry on another stream (retry.pyx)
    cdef void request_data(self, bytes data, long long n)
    cdef void too_large(self)
    cdef void request_end(self)
    cdef void cancel(self)
    cdef void set_paused(self, bint want)
    cdef void check(self, double now)
    cdef void fail(self, int status, str slug, bytes detail, int code, str kind=*)
    cdef bint response_phase(self, RouteRT route, list out, int status)
    cdef void note_status(self, bytes value)
    cdef void finish(self)
