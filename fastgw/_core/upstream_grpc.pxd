# Declarations of the gRPC passthrough (see upstream_grpc.pyx; included by worker.pxd).


cdef class GrpcCall(H2Call):
    cdef long long max_msg         # route max_body: the largest request message
    cdef long long need            # bytes of the current request message still to come
    cdef int hlen                  # bytes of the current 5-byte message prefix seen so far
    cdef unsigned char hdr[5]
    cdef bint scan(self, bytes data)
    cdef void message_too_large(self)
