# cython: language_level=3
"""GatewayError: every failure of a request, as one value that says who failed and whether a retry is safe.

Each failure of the data path (a malformed request, a policy's refusal, a store outage, an upstream that
refused the connection, reset it or answered garbage, a timeout) is made into a GatewayError where it is
detected and handed to the exchange's one failure path (exchange.pyx Exchange.failed), which decides the
retry from `retryable` alone, counts upstream errors, writes the problem (fastgw/errors.py has the
catalogue of slugs) and leaves the error on the exchange for the access log (`error_source`,
`error_retryable`, `retried_after`).

`retryable` is true only when sending the request again cannot make the upstream act on it twice: the
upstream processed nothing of it (a kept-alive connection it closed or reset before any response byte)
and the request can be sent again whole (no body, an idempotent method) [RFC 9110 9.2.2; nginx
proxy_next_upstream retries only idempotent requests by default]. A failure made on a fresh connection
is not retryable: today's retry goes to the same target (one pick per request) and would meet the same
failure.
"""

SOURCES = ("downstream", "upstream_connect", "upstream_response", "policy", "store")


cdef class GatewayError:
    """One failure (status, slug, source, retryable, detail); see the module docstring."""

    def __init__(self, int status, str slug, int source, bint retryable=False, bytes detail=None,
                 str kind=None):
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
    return e
