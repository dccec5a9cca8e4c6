# Declarations of the upstream groups, targets and their shared records (see balancer.pyx).

from libc.stdint cimport int64_t, uint64_t

cdef enum Balance:
    B_ROUND_ROBIN = 0
    B_LEAST_REQUEST = 1
    B_HASH = 2

cdef enum HashKind:                 # where balance = "hash" reads its key
    H_NONE = 0
    H_HEADER = 1
    H_COOKIE = 2
    H_QUERY = 3
    H_CONSUMER = 4
    H_CLIENT_IP = 5
    H_PATH = 6

cdef enum:                          # Record: one target's record in the TargetTable: 64-bit words, one cache line
    R_KEY = 0                       # hash of (upstream, address) | 1; 0: a free slot
    R_INFLIGHT = 1                  # requests in flight, pod-wide (least_request)
    REC_WORDS = 8


cpdef uint64_t hash_bytes(bytes data, uint64_t seed=*)


cdef class TargetTable:
    cdef object owner                      # the buffer (shared memory section or bytearray)
    cdef int64_t* base
    cdef Py_ssize_t nslots
    cdef int64_t* record(self, uint64_t key)


cdef class UpstreamGroup:
    cdef public str name
    cdef public list targets
    cdef public object ssl                 # ssl.SSLContext for TLS upstreams, else None
    cdef public str server_name            # SNI / verified name override (None: the target's host)
    cdef public Py_ssize_t rr
    cdef public double connect_timeout
    cdef public double timeout
    cdef public double idle_timeout
    cdef readonly int balance              # Balance
    cdef readonly bint uniform             # every target has the same weight
    cdef readonly int64_t total            # sum of the weights
    cdef readonly double slow_start        # seconds (0: off)
    cdef bint ramping                      # some target is still slow-starting
    cdef uint64_t rng
    cdef int hash_kind                     # HashKind
    cdef bytes hash_name                   # header/cookie/query name (lowercase for header and cookie)
    cdef object maglev_owner               # array('H') of target indexes
    cdef unsigned short* maglev
    cdef readonly Py_ssize_t msize
    cdef Target pick(self, object ex)
    cdef Target swrr(self, double now)
    cdef Target draw(self, double now, Target other)
    cdef Target p2c(self, double now)
    cdef Target by_hash(self, object ex)
    cdef bytes hash_key_of(self, object ex)
    cdef uint64_t next_random(self) noexcept
    cdef int64_t eff(self, Target t, double now) noexcept

cdef class Target:
    cdef public str host
    cdef public int port
    cdef public int keepalive
    cdef public list idle
    cdef public UpstreamGroup group
    cdef public bytes hostport
    cdef public object h2pool              # fastgw.grpc_upstream.Pool when a grpc route uses this target
    cdef readonly int weight
    cdef readonly Py_ssize_t index         # position in group.targets
    cdef int64_t cur                       # smooth weighted round robin's current weight (this worker)
    cdef public double since               # slow start began (monotonic seconds; 0: at full weight)
    cdef int64_t* rec                      # its record (TargetTable, or its own when there is none)
    cdef object rec_owner
    cdef void finish(self) noexcept
