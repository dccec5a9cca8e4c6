# The upstream interface (see upstream.pyx; included by worker.pxd): how an exchange drives its route's
# upstream, whatever the upstream speaks. One driver per kind, chosen for each route at config load
# (compile.py: RouteRT.upstream = upstream_for(protocol)): H1Upstream (upstream_h1.pyx) and H2Upstream
# (h2call.pyx; with `grpc` set, its gRPC kind). The exchange (exchange.pyx) calls only what is declared
# here, and never asks which kind it has.


cdef class Upstream:
    cdef int needs                        # CAP_* (downstream.pxd) the client side must have
    cdef bint start(self, Exchange ex)
    cdef void send(self, Exchange ex, bytes data)
    cdef void end(self, Exchange ex)
    cdef void retry(self, Exchange ex)
    cdef void cancel(self, Exchange ex)
    cdef void set_paused(self, Exchange ex, bint want)
    cdef void held_up(self, Exchange ex, double now)
    cdef bint check(self, Exchange ex, double now, bint sending, bint held)
