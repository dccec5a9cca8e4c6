# Declarations of the tunnel (see tunnel.pyx; included by worker.pxd).

cdef enum:
    TUNNEL_WRITE_HIGH = 262144    # each side's write high-water mark: beyond it the other side is not read
    CLOSE_WAIT = 5                # seconds a close frame may wait for the end of the frame in flight


cdef class TunnelEnd:
    cdef Tunnel t
    cdef object transport
    cdef TunnelEnd peer
    cdef bint client                  # this end is the client's connection (its input is masked frames)
    cdef bint gone                    # connection_lost
    cdef long long nbytes             # bytes received on this end
    # The frame stream received on this end (RFC 6455 5.2), followed only to know where frames begin: a
    # close or ping frame of the gateway's is written to the peer between two frames, never inside one.
    cdef unsigned char hb[14]         # the frame header received so far
    cdef int hn                       # its length (0: at a frame boundary unless `need`)
    cdef long long need               # payload bytes of the current frame still to come
    cdef long long plen               # the current frame's payload length
    cdef int op                       # the current frame's opcode
    cdef int mask_at                  # offset of the masking key in hb (-1: unmasked)
    cdef int cpos                     # close frame: bytes of its status code read (of 2)
    cdef int cval                     # ... and its value so far
    cdef object inject                # a frame for the peer, written at the next boundary (bytes), or None
    cdef void write_inject(self)
    cdef Py_ssize_t advance(self, const unsigned char* p, Py_ssize_t n, bint stop)


cdef class Tunnel:
    cdef Worker w
    cdef ClientConn cl
    cdef TunnelEnd cend               # the client's connection
    cdef TunnelEnd oend               # the origin's connection
    cdef object session               # the policy's session: route, idle, ping, expires, grace, closed()
    cdef str route
    cdef Runtime rt0                  # the Runtime the route was last seen in (reload: see check)
    cdef double opened                # clock.now at the 101
    cdef long long t0                 # monotonic ns at the 101 (the duration)
    cdef double last                  # clock.now at the last byte either way
    cdef double idle
    cdef double ping
    cdef double last_ping
    cdef double expires               # clock.now when the credential expires (0: never)
    cdef double grace
    cdef double close_at              # a close planned (drain, route removed; 0: none)
    cdef int close_code               # ... with this code
    cdef bytes close_reason
    cdef double closing               # clock.now when close frames were queued (0: not closing)
    cdef int code                     # the first close code seen or sent (0: none yet: 1006 at the end)
    cdef bint ended
    cdef void check(self, double now)
    cdef void close(self, int code, bytes reason)
    cdef void plan(self, double at, int code, bytes reason)
    cdef void end_lost(self, TunnelEnd e)
    cdef void finish(self)
