# Declarations of the gateway's failure value (see gateway_error.pyx).

# Who failed.
cdef enum Source:
    SRC_DOWNSTREAM = 0          # the client: a malformed, too large, too slow or unroutable request
    SRC_UPSTREAM_CONNECT = 1    # no connection to the upstream (refused, unreachable, TLS, connect timeout)
    SRC_UPSTREAM_RESPONSE = 2   # the upstream failed once the request was on its way (closed, reset,
                                # invalid response, timeout)
    SRC_POLICY = 3              # a policy refused the request, or failed itself
    SRC_STORE = 4               # the shared store a policy needs (Redis) is unavailable


cdef class GatewayError:
    cdef readonly int status
    cdef readonly str slug
    cdef readonly int source            # Source
    cdef readonly bint retryable        # sending the request again is safe (see gateway_error.pyx)
    cdef public bytes detail            # the problem's detail sentence (None: the catalogue's default)
    cdef public str kind                # an upstream failure's kind (fastgw/failures.py), then its label


cdef GatewayError gateway_error(int status, str slug, int source, bint retryable, bytes detail, str kind)
