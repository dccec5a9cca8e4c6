# cython: language_level=3
# The metering policy's compiled half (fastgw/policies/metering/policy.py builds it; tally.py owns the
# layout): what a finished exchange counts for its consumer, called as the route's on_log phase.
#
# Rule: the count is one increment of a 64-bit word in the worker's own region of shared memory (the
# worker is its only writer; the supervisor reads aligned words), found through a per-route cache of
# consumer -> the word of each status class; only the first request of a (consumer, class) pair goes to
# Python (Tally.slot claims the entry). Written in C because a Python on_log cost ~6,000 instructions per
# request (bench/callgrind.py `metering`); the Redis sink's per-minute aggregation stays in Python and
# runs only with sink = "redis".

from libc.time cimport time as c_time


cdef class MeterGate(Gate):
    def __init__(self, str route, object tally, object sink, frozenset known, int lo, int hi,
                 long long deprecated_from):
        cdef unsigned char[::1] view
        self.route = route
        self.known = known
        self.sink = sink
        self.lo, self.hi = lo, hi
        self.deprecated_from = deprecated_from
        self.slots = {}
        self.claim = tally.slot
        if tally.words is not None:
            view = tally.words.cast("B")
            self.keep = view
            self.words = <uint64_t*>&view[0]

    def on_log(self, ex):
        cdef str consumer
        cdef object plan
        cdef list idx
        cdef Py_ssize_t i
        cdef int status = ex.response_status
        cdef int cls = status // 100
        ident = ex.identity
        if ident is None:
            consumer, plan = "(anonymous)", "-"
        else:
            consumer = ident.consumer
            if consumer not in self.known:
                consumer = "(unlisted)"
            plan = ident.plan or "-"
        if cls < 1 or cls > 5:                  # outside 100-599: the gateway did not answer properly
            cls = 5
        if self.words != NULL:
            idx = self.slots.get(consumer)
            if idx is None:
                idx = [UNCLAIMED] * 6
                self.slots[consumer] = idx
            i = idx[cls]
            if i == UNCLAIMED:
                i = self.claim(consumer, self.route, cls)
                idx[cls] = i
            if i >= 0:
                self.words[i] += 1
                if self.deprecated_from and c_time(NULL) >= self.deprecated_from:
                    self.words[i + 1] += 1
            else:
                self.words[W_OVERFLOW] += 1
        if self.sink is not None and self.lo <= status <= self.hi:
            self.sink.record(consumer, plan, self.route, cls, ex.request_body_bytes, ex.response_body_bytes)
