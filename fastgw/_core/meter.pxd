# Declarations of the metering policy's compiled half (see meter.pyx).

from libc.stdint cimport uint64_t

from fastgw._core.gates cimport Gate

cdef enum:
    W_OVERFLOW = 3            # fastgw/policies/metering/tally.py W_OVERFLOW: requests the table had no room for
    UNCLAIMED = -2            # a (consumer, class) whose word is not looked up yet


cdef class MeterGate(Gate):
    cdef uint64_t* words          # this worker's tally region (NULL: no shared memory, `fastgw check`)
    cdef object keep              # the buffer the words live in (kept alive)
    cdef dict slots               # consumer -> its word index per status class (UNCLAIMED; -1: table full)
    cdef object claim             # Tally.slot: (consumer, route, class) -> index
    cdef str route
    cdef frozenset known          # the configured consumers (others count as "(unlisted)")
    cdef object sink              # the worker's RedisSink, or None
    cdef int lo, hi               # the billable statuses, inclusive
    cdef long long deprecated_from    # epoch seconds of the route's deprecation; 0: not deprecated
