# Declarations of the transcoding call (see transcode.pyx; included by worker.pxd).

cdef enum:
    MAX_GRPC_RESPONSE = 4194304   # bytes of one response message (gRPC's default receive limit)


cdef class TranscodeCall(H2Call):
    cdef object tc                # the policy's call: the method, the codec (fastgw/policies/transcode)
    cdef list body                # the JSON body so far (bounded by the route's max_body)
    cdef bytearray rbuf           # response bytes not yet a whole message
    cdef bytes unary              # a unary method's response message
    cdef bint streamed            # the NDJSON head went to the client
    cdef bytes details            # grpc-status-details-bin, when the upstream sent one
    cdef bytes message_text       # grpc-message, when the upstream sent one
    cdef int read_status(self, list headers)
    cdef void grpc_end(self, int code)
    cdef void message(self, bytes payload)
    cdef void respond(self, int status, bytes ctype, bytes body)
