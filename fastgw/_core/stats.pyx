# The per-worker counters of the data path, in this worker's region of the shared metrics memory (included
# by worker.pyx). The layout (words of stats.pxd) is observe/metrics.py's, which renders it; a check at
# import refuses to run with the two out of step.

from fastgw.observe import metrics as _metrics
from fastgw.observe.metrics import HEADER_DROPS, H_HDROP

if (M_HEADER, M_ROUTE, M_HIST, M_NBOUNDS, M_SUM_US, M_UPERR, M_OVERRUNS, M_CONN_FULL, M_GW_HIST, M_UP_HIST,
        M_SPANS_DROPPED) != (
        _metrics.HEADER, _metrics.ROUTE, _metrics.HIST, _metrics.NBOUNDS, _metrics.SUM_US, _metrics.UPERR,
        _metrics.H_OVERRUNS, _metrics.H_CONN_FULL, _metrics.GW_HIST, _metrics.UP_HIST,
        _metrics.H_SPANS + _metrics.SPAN_OUTCOMES.index("dropped")):
    raise ImportError("fastgw._core stats.pxd and fastgw/observe/metrics.py disagree on the metrics layout")


# fastgw_headers_dropped_total: the words of each reason in the region's header (fastgw.metrics).
cdef Py_ssize_t HDROP_UNDERSCORE = H_HDROP + HEADER_DROPS.index("underscore")
cdef Py_ssize_t HDROP_ALIAS = H_HDROP + HEADER_DROPS.index("managed_alias")

cdef long long HIST_NS[13]
HIST_NS[:] = [1000000, 2500000, 5000000, 10000000, 25000000, 50000000, 100000000, 250000000,
              500000000, 1000000000, 2500000000, 5000000000, 10000000000]


cdef inline long long mono_ns() noexcept:
    """CLOCK_MONOTONIC in ns (a vDSO call on Linux: no system call)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int method_index(bytes method):
    """GET HEAD POST PUT DELETE PATCH OPTIONS, else 7 ("other"): a bounded metrics label."""
    cdef Py_ssize_t n
    cdef const char* s
    if method is None:
        return 7
    n = len(method)
    s = method
    if n == 3:
        return 0 if s[0] == b'G' and s[1] == b'E' and s[2] == b'T' else (
            3 if s[0] == b'P' and s[1] == b'U' and s[2] == b'T' else 7)
    if n == 4:
        return 1 if method == b"HEAD" else (2 if method == b"POST" else 7)
    if n == 6:
        return 4 if method == b"DELETE" else 7
    if n == 5:
        return 5 if method == b"PATCH" else 7
    if n == 7:
        return 6 if method == b"OPTIONS" else 7


cdef inline void count_time(uint64_t* h, long long ns) noexcept:
    """One duration into a histogram of the route block: its bucket (not cumulative), then the sum in us."""
    cdef int b = 0
    while b < M_NBOUNDS and ns > HIST_NS[b]:
        b += 1
    h[b] += 1
    h[M_NBOUNDS + 1] += <uint64_t>(ns // 1000)
