# Declarations of the HTTP/1.1 upstream (see upstream_h1.pyx; included by worker.pxd).

from fastgw._core.balancer cimport Target
from fastgw._core.http1 cimport ResponseReader

cdef class H1Upstream(Upstream):
    pass


@cython.final
cdef class UpstreamConn:
    cdef object transport
    cdef ResponseReader rd        # reads the responses (http1_response.pyx)
    cdef Target target
    cdef Exchange ex
    cdef public bint closed
    cdef bint reused
    cdef bint got_bytes
    cdef bint rpaused
    cdef double idle_since
    cdef list rpieces          # kept header lines of the response, as slices of the received bytes
    cdef Worker w              # set when connected (metrics)
    cdef void close(self)
    cdef void abort(self)
    cdef void end_response(self, bint overrun)
    cdef void reset(self)
