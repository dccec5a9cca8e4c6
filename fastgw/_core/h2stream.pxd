# Declarations of one downstream HTTP/2 stream (see h2stream.pyx; included by worker.pxd).


@cython.final
cdef class H2Stream(Downstream):
    # (the Downstream methods it implements are declared in downstream.pxd)
    cdef H2Conn conn
    cdef int sid
    cdef list outq                # response DATA waiting for flow-control window
    cdef Py_ssize_t outq_bytes
    cdef bint head_sent
    cdef bint end_pending         # the response ended; END_STREAM goes with the last queued DATA
    cdef bint ended               # END_STREAM sent (or the stream reset)
    cdef bint rx_done             # the client's END_STREAM arrived
    cdef long long body_left      # request body bytes its content-length still announces; -1: none given
    cdef bint counted             # still counts as "not yet answered" (for Rapid Reset accounting)
    cdef bint dirty
    cdef long long owed           # flow-controlled bytes received but not acknowledged yet
    cdef double blocked_since
    cdef H2Call call              # the upstream HTTP/2 stream's call (h2call.pyx), or None
    cdef list trailers            # response trailers, sent with END_STREAM after the queued DATA
    cdef void kick(self)
    cdef void send_head(self, list headers, bint end)
    cdef void update_wpause(self)
    cdef void reset(self, int code)
    cdef void drop_exchange(self)
