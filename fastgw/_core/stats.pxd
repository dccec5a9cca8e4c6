# Declarations of the data path's counters (see stats.pyx; included by worker.pxd).

# The metrics region's layout, in 64-bit words (see stats.pyx; observe/metrics.py renders it):
# M_HEADER words of per-worker values (most written by fastgw/process/worker.py; the counters M_OVERRUNS and
# M_CONN_FULL by the data path), then M_ROUTE words per route slot: requests by method (8) x status class
# (5), the duration histogram (M_NBOUNDS bounds + overflow, not cumulative), the duration sum in
# microseconds, upstream errors (502, 503, 504), auth failures; then the gateway's and the upstream's
# share of the duration as two more histograms, each with its sum (Worker.observe).
cdef enum:
    M_HEADER = 16
    M_OVERRUNS = 5         # upstream connections closed for bytes beyond the end of a response
    M_CONN_FULL = 9        # times this worker reached max_connections and paused accepting
    M_SPANS_DROPPED = 11   # finished spans dropped from a full export buffer (fastgw/observe/tracing.py)
    M_ROUTE = 96
    M_HIST = 40
    M_NBOUNDS = 13
    M_SUM_US = 54
    M_UPERR = 55
    M_GW_HIST = 64         # gateway time: M_NBOUNDS + 1 buckets, then the sum in microseconds
    M_UP_HIST = 79         # upstream time: likewise
