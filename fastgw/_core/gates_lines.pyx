# (Included by gates.pyx: the line-giving gates, compiled into fastgw._core.gates.)
#
# API products: CORS and the lifecycle (fastgw/policies/cors, fastgw/policies/lifecycle)
#
# Both only add response lines that depend on the request alone (its Origin; the route's dates): the
# exchange asks their `response_lines` in C once the route is chosen and puts them on every answer of the
# exchange (the upstream's response, the gateway's problems, a Respond, a 413 before any policy ran). No
# response phase runs on these routes: in Python it cost a CORS route 8,046 instructions per request over
# a plain one (+31.6%; bench/callgrind.py); calling back into the exchange for the Origin and to add the
# lines cost ~930 more than this.

cdef bytes VARY_ORIGIN = b"Vary: Origin\r\n"
cdef tuple INTERNAL_ERROR = (500, "internal-error", None, None)


cdef void _report(str where, exc):
    """A line-giving policy's Python half raised: reported on stderr (as the exchange reports a policy's
    error); the compiled half answers as if it had said no (its callers run no try per request)."""
    import sys
    import traceback
    sys.stderr.write(f"fastgw: policy error in {where}: {exc!r}\n")
    traceback.print_exception(exc, file=sys.stderr)


cdef bytes _field(RequestHead h, const char* want, Py_ssize_t n):
    """The value of the request's first field named `want` (n bytes, lowercase: letters and '-'), or
    None: the head's fields scanned in C."""
    cdef list pieces = h.pieces
    cdef Py_ssize_t i, k
    cdef const char* p
    for i in range(0, len(pieces), 4):
        if PyBytes_GET_SIZE(<bytes>pieces[i]) != n:
            continue
        p = PyBytes_AS_STRING(<bytes>pieces[i])
        for k in range(n):
            if (p[k] | 0x20) != want[k]:
                break
        else:
            return <bytes>pieces[i + 2]
    return None


cdef class CorsGate(Gate):
    """Fast path of fastgw.policies.cors.policy.Cors (set up by its __init__): no Origin, or an origin
    listed exactly, is answered here; host patterns and "*" ask the Python `allowed`, a preflight the
    Python `preflight`. No on_request: the preflight test is in head_request (a Python request phase cost
    the route ~450 instructions per request for its call and method comparison, callgrind)."""
    cdef public tuple granted            # (origin, its response lines) of each origin listed exactly
    cdef public bint more                # host patterns or "*": `allowed` decides what `granted` does not
    cdef public bytes tail               # the lines after the echoed origin (credentials, expose, Vary)

    def __cinit__(self):
        self.has_lines = True

    cdef bytes grant(self, bytes origin):
        """The lines for an `origin` that is granted, else None."""
        cdef bytes o
        cdef Py_ssize_t n = PyBytes_GET_SIZE(origin)
        # A route lists a few origins: compared by length and bytes, their lines prebuilt (hashing the
        # origin and joining its lines cost more than the rest of the phase).
        for pair in self.granted:
            o = <bytes>(<tuple>pair)[0]
            if PyBytes_GET_SIZE(o) == n and memcmp(PyBytes_AS_STRING(o), PyBytes_AS_STRING(origin), n) == 0:
                return <bytes>(<tuple>pair)[1]
        if self.more:
            try:
                if self.allowed(origin):
                    return b"Access-Control-Allow-Origin: " + origin + self.tail
            except Exception as exc:
                _report("cors", exc)                      # not granted
        return None

    cdef bytes response_lines(self, RequestHead h):
        cdef bytes origin = _field(h, b"origin", 6)
        cdef bytes lines = self.grant(origin) if origin is not None else None
        return lines if lines is not None else VARY_ORIGIN

    cdef object head_request(self, RequestHead h):
        cdef bytes m = h.method
        if PyBytes_GET_SIZE(m) != 7 or memcmp(PyBytes_AS_STRING(m), b"OPTIONS", 7) != 0:
            return None
        origin = _field(h, b"origin", 6)
        if origin is None or _field(h, b"access-control-request-method", 29) is None:
            return None                                    # not a preflight: the upstream's OPTIONS
        try:
            res = self.preflight(self.grant(origin) is not None)
            if type(res) is not Respond:
                raise TypeError(f"preflight returned {type(res).__name__}, not a Respond")
            return res
        except Exception as exc:
            _report("cors", exc)
            return INTERNAL_ERROR


cdef class LifecycleGate(Gate):
    """Fast path of fastgw.policies.lifecycle.policy.LifecyclePolicy (set up by its __init__): the
    route's Deprecation / Sunset / Link lines, the deprecated-requests counter, the 410 after the sunset."""
    cdef public bytes lines
    cdef public long long counting_from  # epoch s from which requests are counted
    cdef public long long gone_from      # epoch s from which the route answers 410 (-1: never)
    cdef public bytes detail             # the 410's detail (JSON-escaped)
    cdef unsigned long long[:] words     # this worker's lifecycle region (fastgw/policies/lifecycle), if any
    cdef Py_ssize_t at

    def __cinit__(self):
        self.has_lines = True

    cdef bytes response_lines(self, RequestHead h):
        return self.lines

    def count_in(self, words, Py_ssize_t at):
        """Count the route's deprecated requests in words[at] (a 64-bit shared-memory word)."""
        self.words = words
        self.at = at

    cdef object head_request(self, RequestHead h):
        cdef long long now = _now(CLOCK_REALTIME) // 1000000000
        if now >= self.counting_from and self.words is not None:
            self.words[self.at] += 1
        if self.gone_from >= 0 and now >= self.gone_from:
            return (410, "gone", self.detail, None)
        return None
