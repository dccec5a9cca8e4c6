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

cdef enum:                          # Record: one target's record in the TargetTable: 64-bit words
    R_KEY = 0                       # hash of (upstream, address) | 1; 0: a free slot
    R_INFLIGHT = 1                  # requests in flight, pod-wide (least_request)
    R_FAILS = 2                     # consecutive failures (outlier detection), all workers
    R_DOWN_UNTIL = 3                # ejected until (monotonic ms); 0: in service
    R_EJECTIONS = 4                 # the ejection multiplier (base_ejection x this)
    R_SINCE = 5                     # the last change of state (monotonic ms; 0: never)
    R_REASON = 6                    # the last ejection's Reason
    R_LAST_UNTIL = 7                # when the last ejection ended (monotonic ms)
    R_EJECTED_BY = 8                # + Reason: ejections counted by reason (4 words, and health's)
                                    # words 13-15 of a host-name target: its DNS state (upstream/discovery.py);
                                    # of an address it resolved to: the name's record key and the address
    REC_WORDS = 16                  # 128 bytes: two cache lines

cdef enum:                          # GroupRecord: an upstream's own records in the TargetTable (words)
    G_ACTIVE = 1                    # requests in flight to the upstream, pod-wide (limits.max_requests)
    G_PENDING = 2                   # requests waiting for a new connection to open (limits.max_pending)
    G_CONNS = 3                     # upstream connections open (limits.max_connections)
    G_RETRYING = 4                  # requests in flight that have been retried (the retry budget)
    G_BUDGET_OUT = 5                # retries the budget refused
    G_OVERFLOW = 6                  # + Overflow: requests answered 503 upstream-overloaded, by limit (3)
    G_CHANGES = 9                   # returns to service of its targets (an ejection ended, a check passed):
                                    #   a worker that has seen fewer re-reads its targets' slow starts
    # the second record (rrec): retries by RetryCond, words 1 + cond

cdef enum Overflow:
    OV_REQUESTS = 0
    OV_PENDING = 1
    OV_CONNECTIONS = 2

cdef enum Reason:                   # why a target failed (outlier detection)
    REASON_CONNECT = 0              # connection refused or failed
    REASON_RESET = 1                # reset, closed or invalid response once the request was on its way
    REASON_TIMEOUT = 2              # connect timeout or no response within the upstream's timeout
    REASON_STATUS = 3               # the target answered 502, 503 or 504


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
    cdef int64_t changes                   # G_CHANGES when this worker last read its targets' returns
    cdef uint64_t rng
    cdef int hash_kind                     # HashKind
    cdef bytes hash_name                   # header/cookie/query name (lowercase for header and cookie)
    cdef object maglev_owner               # array('H') of target indexes
    cdef unsigned short* maglev
    cdef readonly Py_ssize_t msize
    cdef Py_ssize_t last_slot              # the table entry of the last hashed pick
    cdef readonly int max_fails            # outlier.consecutive_failures (0: detection off)
    cdef readonly int64_t base_ms          # outlier.base_ejection, max_ejection in ms
    cdef readonly int64_t max_ms
    cdef readonly int eject_pct            # outlier.max_ejected_percent
    cdef readonly int panic_pct            # outlier.panic_threshold
    cdef readonly bint panic_fail          # outlier.on_panic = "fail"
    cdef int64_t panic_checked             # when in_panic last counted (monotonic ms)
    cdef bint panicking
    cdef int64_t* grec                     # the upstream's limits record (GroupRecord words), and
    cdef int64_t* rrec                     #   its retries-by-condition record
    cdef object grec_owner
    cdef readonly int64_t max_conns        # limits.*
    cdef readonly int64_t max_pending
    cdef readonly int64_t max_requests
    cdef readonly int attempts             # retry.attempts
    cdef readonly int retry_on             # retry.on: bits (1 << RetryCond)
    cdef readonly int budget_pct
    cdef readonly int budget_min
    cdef readonly double backoff           # seconds
    cdef readonly double backoff_max
    cdef readonly double try_timeout       # retry.per_try_timeout, or the upstream's timeout
    cdef readonly long long replay_max     # retry.replay_buffer (bytes)
    cdef Target pick(self, object ex)
    cdef void notice(self)
    cdef Target swrr(self, double now)
    cdef Target draw(self, double now, Target other)
    cdef Target p2c(self, double now)
    cdef Target by_hash(self, object ex)
    cdef Target avoid(self, Target first)
    cdef Py_ssize_t usable(self, int64_t now)
    cdef bint in_panic(self)
    cdef void eject(self, Target t, int reason)
    cdef bytes hash_key_of(self, object ex)
    cdef uint64_t next_random(self) noexcept
    cdef int64_t eff(self, Target t, double now) noexcept
    cdef bint admit(self) noexcept
    cdef void release(self) noexcept
    cdef bint retry_admit(self, bint unsent) noexcept
    cdef void retry_done(self) noexcept
    cdef void count_retry(self, int cond) noexcept
    cdef int connect_slot(self) noexcept
    cdef void connect_done(self) noexcept
    cdef void connections(self, int delta) noexcept
    cdef double backoff_delay(self, int retry) noexcept
    cdef Target pick_other(self, object ex, Target failed)

cdef class Target:
    cdef public str host
    cdef public int port
    cdef public int keepalive
    cdef public list idle                  # idle keep-alive connections: a stack in idle[:nidle] (upstream_h1.pyx)
    cdef public int nidle
    cdef public UpstreamGroup group
    cdef public bytes hostport
    cdef public object h2pool              # upstream_h2.pyx H2Pool of an HTTP/2 upstream (protocol "h2" or "grpc")
    cdef readonly int weight
    cdef readonly Py_ssize_t index         # position in group.targets
    cdef int64_t cur                       # smooth weighted round robin's current weight (this worker)
    cdef public double since               # slow start began (monotonic seconds; 0: at full weight)
    cdef int64_t* rec                      # its record (TargetTable, or its own when there is none)
    cdef object rec_owner
    cdef void finish(self) noexcept
    cdef bint down(self, int64_t now) noexcept
    cdef void failure(self, int reason)
    cdef void success(self) noexcept
    cdef void failed_with(self, bint connect, int status)
