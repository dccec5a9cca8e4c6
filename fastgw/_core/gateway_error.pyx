# cython: language_level=3
"""GatewayError: every failure of a request, as one value that says who failed and whether a retry is safe.

Each failure of the data path (a malformed request, a policy's refusal, a store outage, an upstream that
refused the connection, reset it or answered garbage, a timeout) is made into a GatewayError where it is
detected and handed to the exchange's one failure path (exchange.pyx Exchange.failed), which decides the
retry from `retryable` alone, counts upstream errors, writes the problem (fastgw/errors.py has the
catalogue of slugs) and leaves the error on the exchange for the access log (`error_source`,
`error_retryable`, `retried_after`).

`retryable` is true only when the upstream cannot have processed anything of the request: no connection
was made (refused, failed, timed out, TLS), a kept-alive connection was lost before any response byte
(the upstream closed it as it was reused: the request never reached it), or an HTTP/2 stream was refused.
Sending such a request again is safe whatever its method. `cond` names the retry condition a failure
meets (RetryCond: connect-failure, reset-before-response, timeout, ...); the exchange's one retry decision
(retry.pyx decide_retry) weighs it against the upstream's `retry.on`, the method (RFC 9110 9.2.2
idempotent methods, or a policy's `retry_safe`), the attempts, the budget and the deadline [nginx
proxy_next_upstream retries only idempotent requests once they were sent].
"""

SOURCES = ("downstream", "upstream_connect", "upstream_response", "policy", "store")


cdef class GatewayError:
    """One failure (status, slug, source, retryable, detail); see the module docstring."""

    def __init__(self, int status, str slug, int source, bint retryable=False, bytes detail=None,
                 str kind=None, int cond=RC_NONE):
        self.cond = cond
        self.status = status
        self.slug = slug
        self.source = source
        self.retryable = retryable
        self.detail = detail
        self.kind = kind

    @property
    def source_name(self):
        """`source` as the access log writes it (SOURCES)."""
        return SOURCES[self.source]

    def __repr__(self):
        return (f"GatewayError({self.status}, {self.slug!r}, {SOURCES[self.source]}, "
                f"retryable={bool(self.retryable)}, detail={self.detail!r}, kind={self.kind!r})")


cdef GatewayError gateway_error(int status, str slug, int source, bint retryable, bytes detail, str kind):
    """A GatewayError made from C (no argument parsing)."""
    cdef GatewayError e = GatewayError.__new__(GatewayError)
    e.status = status
    e.slug = slug
    e.source = source
    e.retryable = retryable
    e.detail = detail
    e.kind = kind
    e.cond = RC_NONE
    return e
