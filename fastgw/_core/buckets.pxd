# Declarations of the bucket table (see buckets.pyx for the arithmetic and the memory layout).
from libc.stdint cimport INT64_MAX, int64_t, uint64_t

# The table's layout and arithmetic.
cdef enum:
    WAYS = 8
    HDR = 64
    SLOTB = 64
    STEAL_SPINS = 1 << 20
    NS = 1000000000

cdef extern from *:
    """
    #define FASTGW_BUCKETS_MAGIC 0x66676277746b6231ULL
    """
    const uint64_t MAGIC "FASTGW_BUCKETS_MAGIC"     # "fgbwtkb1": a table this code laid out

# Limit kinds (Slot.kind and Plan.kind).
cdef enum:
    K_RATE = 1
    K_QUOTA_MINUTE = 2
    K_QUOTA_HOUR = 3
    K_QUOTA_DAY = 4
    K_QUOTA_MONTH = 5
    K_CONC = 6
    K_LEASE = 7


# Keys must hash the same in every worker process (Python's hash() of bytes is salted per process), so
# this is FNV-1a followed by the splitmix64 finaliser, seeded.
cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * <uint64_t>0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94d049bb133111ebULL
    return z ^ (z >> 31)


cdef inline uint64_t _hash(uint64_t seed, const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = <uint64_t>0xcbf29ce484222325ULL ^ _mix(seed)
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * <uint64_t>0x100000001b3ULL
    h = _mix(h)
    return h if h != 0 else 1


cdef struct Slot:
    uint64_t key        # 0: never used; otherwise the 64-bit hash of (limit, key value)
    uint64_t lock       # 0: free; otherwise held (see _lock)
    int64_t idle_at     # monotonic ns from which the slot is equivalent to a fresh one (evictable)
    int64_t a           # rate: TAT (ns); quota: window end (wall ns); concurrency: in flight; lease: tokens
    int64_t b           # quota: count in the window; lease: expiry (monotonic ns)
    int64_t kind
    int64_t spare0
    int64_t spare1


cdef struct Header:
    uint64_t magic
    uint64_t nslots
    uint64_t instance       # random id of the host's gateway instance (written by the supervisor)
    uint64_t evictions      # live (not yet idle) entries evicted because their bucket was full
    uint64_t steals         # locks taken over after a holder died mid-update
    uint64_t instances_seen # the host table: live instances in the last Redis heartbeat any worker saw
    uint64_t blocked_until  # the auth-failure table: until then (monotonic ns) some key may be over its
    #                         budget; 0: none is (fastgw.policies.authfail; read on the auth fast path)
    uint64_t spare


cdef class Table:
    cdef object buf
    cdef Header* hdr
    cdef Slot* slots
    cdef uint64_t mask
    cdef Slot* find(self, uint64_t key, int64_t now, bint create) noexcept nogil
    cdef Slot* _bucket(self, uint64_t key) noexcept nogil
    cpdef long long lease_take(self, uint64_t key, int64_t now)
    cpdef int64_t rate_wait(self, uint64_t key, int64_t now, int64_t interval, int64_t burst)


cdef class Plan:
    cdef Table table
    cdef int n
    cdef int64_t[16] kind, interval, tau, count, enforce, seed, keyidx
    cdef public int tight           # limit reported in headers (the one with the least left), or -1
    cdef public long long remaining
    cdef public long long reset_s   # seconds until the tight limit makes more quota available (t=)
    cdef public long long retry_s   # on rejection: seconds until a retry can succeed (Retry-After = t)
    cdef public unsigned long long charged    # bit i: limit i was charged by the last check that passed
    cdef public int shadowed        # limits over their budget but in shadow mode (enforce = false)
    cdef int nkeys                  # key values a check reads (1 + the largest key index)
    cdef uint64_t _key(self, const uint64_t* keys, int i) noexcept nogil
    cdef void _undo(self, const uint64_t* keys, uint64_t done, int64_t mono, int64_t wall) noexcept nogil
    cdef int64_t _wait(self, const uint64_t* keys, int i, int64_t mono, int64_t wall) noexcept nogil
    cdef int check_c(self, const uint64_t* keys, int64_t mono, int64_t wall) noexcept
    cdef void release_c(self, const uint64_t* keys, uint64_t charged) noexcept nogil
    cdef int _unpack(self, tuple keys, uint64_t* out) except -1
    cpdef int check(self, tuple keys, int64_t mono, int64_t wall) except -2
    cpdef void release(self, tuple keys, uint64_t charged) except *
