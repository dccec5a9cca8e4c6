# Declarations of the gateway's failure value (see gateway_error.pyx).

# Who failed.
cdef enum Source:
    SRC_DOWNSTREAM = 0          # the client: a malformed, too large, too slow or unroutable request
    SRC_UPSTREAM_CONNECT = 1    # no connection to the upstream (refused, unreachable, TLS, connect timeout)
    SRC_UPSTREAM_RESPONSE = 2   # the upstream failed once the request was on its way (closed, reset,
                                # invalid response, timeout)
    SRC_POLICY = 3              # a policy refused the request, or failed itself
    SRC_STORE = 4               # the shared store a policy needs (Redis) is unavailable

# Which retry condition a failure meets (retry.on, in the order of fastgw/config/upstreams.py RETRY_ON).
cdef enum RetryCond:
    RC_CONNECT = 0              # connect-failure: refused, failed or timed out connecting (nothing sent)
    RC_REFUSED = 1              # refused-stream: HTTP/2 REFUSED_STREAM or above a GOAWAY's last stream
    RC_SEND = 2                 # reset-before-send: a kept-alive connection lost before any response byte
                                #   (the upstream closed it as it was reused)
    RC_RESPONSE = 3             # reset-before-response: lost, closed or reset before any response byte
    RC_TIMEOUT = 4              # no response head within the try's timeout
    RC_502 = 5                  # the target answered 502, 503 or 504
    RC_503 = 6
    RC_504 = 7
    RC_NONE = 8                 # not a retry condition


cdef class GatewayError:
    cdef readonly int status
    cdef readonly str slug
    cdef readonly int source            # Source
    cdef readonly bint retryable        # sending the request again is safe (see gateway_error.pyx)
    cdef public bytes detail            # the problem's detail sentence (None: the catalogue's default)
    cdef public str kind                # an upstream failure's kind (fastgw/failures.py), then its label
    cdef public int cond                # the retry condition it meets (RetryCond; RC_NONE: none)


cdef GatewayError gateway_error(int status, str slug, int source, bint retryable, bytes detail, str kind)
