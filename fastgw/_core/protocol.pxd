# Declarations of the downstream shell (see protocol.pyx; included by worker.pxd).

cdef enum:
    GATHER_MIN = 16384           # bytes from which one write hands its parts to writelines (no copy)
    CLIENT_WRITE_HIGH = 262144   # the client transport's write high-water mark

# Reasons to stop reading from the client (a bit each; reading resumes when none is left).
cdef enum:
    P_UPSTREAM = 1     # the upstream's write buffer is full
    P_PENDING = 2      # request body is waiting for an upstream connection
    P_PIPELINE = 4     # pipelined requests are queued
    P_TERM = 8         # the connection is finishing (no more input wanted)


cdef class Handshake:
    cdef Worker w
    cdef bint started
    cdef bint parked
    cdef public bytes proxied_peer        # the client address from a PROXY header (fastgw.worker.ProxiedTLS)
