# Declarations of the HTTP/1.1 upstream (see upstream_h1.pyx; included by worker.pxd).

from fastgw._core.balancer cimport Target

# Upstream response heads. llhttp validates the head (CRLF line ends, no obs-fold, no bare CR, header
# tokens, a single Content-Length, not both CL and TE); fastgw registers no per-header callback and
# instead walks the validated head once in C, when it is complete: one Python call per response instead
# of two per header.
cdef enum:
    MAX_RESP_HEAD = 65536     # bytes of one upstream response head; more is a 502
    MAX_RESP_LINES = 256      # header lines of one upstream response head; more is a 502


cdef class H1Upstream(Upstream):
    pass


@cython.final
cdef class UpstreamConn:
    cdef object transport
    cdef object parser
    cdef object feed                      # parser.feed_data, bound once (no method lookup per read)
    cdef object status_code               # parser.get_status_code, bound once
    cdef object keep_alive                # parser.should_keep_alive, bound once
    cdef Target target
    cdef Exchange ex
    cdef public bint closed
    cdef bint reused
    cdef bint got_bytes
    cdef bint rpaused
    cdef double idle_since
    cdef list rpieces          # kept header lines of the response, as slices of the received bytes
    cdef bytes hbuf            # the response head received so far (until it is complete)
    cdef bint r_head_done
    cdef bint r_chunked
    cdef bint r_has_cl
    cdef bytes r_cl
    cdef bint r_bylen          # the body is delimited by Content-Length
    cdef long long r_extra     # bytes received after the head, less the body bytes llhttp delivered
    cdef bint r_done           # the response ended inside the current read; ended after the read
    cdef bint r_keep           # ... and llhttp says the connection may be kept
    cdef Py_ssize_t r_switch   # a 101 to a tunnel request: the offset in hbuf after its head (0: none)
    cdef Worker w              # set when connected (metrics)
    cdef void close(self)
    cdef void abort(self)
    cdef void end_response(self, bytes data, bint overrun)
    cdef void reset(self)
    cdef int scan_head(self, bytes buf, Py_ssize_t end, object remove) except -1
