# The upstream interface (upstream.pxd; included by worker.pyx): what an exchange asks of its route's
# upstream. The kinds implement every method; the exchange holds the route's driver (Exchange.drv) from
# routing on.
#
# Rules kept here (and why):
# * One driver object per kind, shared by every request (no allocation per request: the per-request
#   state of an HTTP/1.1 call is on the exchange and its pooled UpstreamConn, an HTTP/2 call's is its
#   H2Call).
# * Request body bytes that arrive before `start` are held by the exchange (Exchange.hold), unframed;
#   `start` sends them and, when the body already ended, ends it.


cdef class Upstream:
    cdef bint start(self, Exchange ex):
        """The request passed its route's policies: pick the target, open the call, send what arrived.
        False when it failed (the exchange's failure path answered)."""
        raise NotImplementedError

    cdef void send(self, Exchange ex, bytes data):
        """Request body bytes, after start (unframed: each kind frames them)."""
        raise NotImplementedError

    cdef void end(self, Exchange ex):
        """The request body ended, after start."""
        raise NotImplementedError

    cdef void retry(self, Exchange ex):
        """Send the request again on a fresh connection (a failure that is retryable: gateway_error.pyx)."""
        raise NotImplementedError

    cdef void cancel(self, Exchange ex):
        """Stop the upstream work (answered otherwise, or the client went away): never pooled."""
        raise NotImplementedError

    cdef void set_paused(self, Exchange ex, bint want):
        """The client side takes no more response now (want), or again."""
        raise NotImplementedError

    cdef void held_up(self, Exchange ex, double now):
        """The client side still holds response bytes it has not taken (an HTTP/2 stream's queue): the
        upstream's silence does not count until now."""
        raise NotImplementedError

    cdef bint check(self, Exchange ex, double now, bint sending, bint held):
        """The upstream's timers (Downstream.check_exchange, every sweep); `sending`: the request body is
        still coming, `held`: the client's reading is paused for the upstream. True when the client's
        body timers do not run now (it is the upstream's time)."""
        raise NotImplementedError
