# Declarations of the gRPC passthrough (see upstream_grpc.pyx; included by worker.pxd).


from fastgw._core.upstream_h2 cimport H2Pool, H2Sink, H2UpStream


cdef class GrpcCall(H2Sink):
    cdef H2Stream st
    cdef Exchange ex
    cdef H2UpStream us             # the upstream stream (upstream_h2.pyx)
    cdef public int code           # gRPC status for the gateway's answer (0: mapped from the HTTP status)
    cdef bint head_sent
    cdef bint over                 # the call ended (answered, failed or reset): no more upstream work
    cdef bint paused               # the client side cannot take more response now
    cdef long long up_owed         # response bytes received from upstream, not acknowledged yet
    cdef double deadline           # the response head must arrive by then (upstream `timeout`)
    cdef long long max_msg         # route max_body: the largest request message
    cdef long long need            # bytes of the current request message still to come
    cdef int hlen                  # bytes of the current 5-byte message prefix seen so far
    cdef unsigned char hdr[5]
    cdef void request_data(self, bytes data, long long n)
    cdef bint scan(self, bytes data)
    cdef void message_too_large(self)
    cdef void request_end(self)
    cdef void cancel(self)
    cdef void set_paused(self, bint want)
    cdef void check(self, double now)
    cdef void fail(self, int status, str slug, bytes detail, int code, str kind=*)
    cdef void note_status(self, bytes value)
    cdef void finish(self)
