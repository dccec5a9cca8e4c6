# cython: language_level=3
"""Which upstream target a request goes to.

  UpstreamGroup  one [upstreams.NAME]: its targets, TLS settings and timeouts; pick(ex) chooses the target,
                 called once per request where the upstream head is built (exchange.pyx), by `balance`:
                   round_robin    smooth weighted round robin (nginx's): the heaviest target goes first but
                                  never twice in a row when others are due; each worker starts at a random
                                  point of the cycle so workers do not send their first requests to the same
                                  target
                   least_request  power of two choices: two distinct targets drawn by weight, the one with
                                  fewer requests in flight per unit of weight wins (ties: the first drawn);
                                  the in-flight counts are pod-wide (TargetTable, shared memory), so a target
                                  busy through another worker is seen as busy [Mitzenmacher 2001; Envoy
                                  counts per thread and misses the other threads' load]
                   hash           a Maglev lookup table (Eisenbud et al., NSDI 2016) built once per config:
                                  each target fills the table in the order of its own permutation, so
                                  removing one of N targets moves about 1/N of the keys and a key's target
                                  depends on nothing per process (every worker and pod agrees). A request
                                  without the key goes to a random target (documented in docs/upstreams.md)
                 slow_start: a target a reload or DNS discovery adds, and a target back in service after an
                 ejection or an active check's "down", starts at 10% of its weight and reaches it linearly over
                 the window (round_robin and least_request; a hash table is not re-weighted per request). A
                 return is seen by every worker from the shared record alone: whoever records it (the worker
                 that finds the ejection over, the prober) counts it in the upstream's G_CHANGES, and a worker
                 whose last read of that counter is older re-reads its targets' R_SINCE at its next pick, so
                 every worker ramps from the same instant [the per-worker note of a recovery that only the
                 recording worker would have; Envoy ramps a host only in the thread that sees it change].
                 Health is read at pick time from the targets' records (no event between workers to miss):
                 a pick that lands on an ejected target chooses again among the others (avoid), or, below
                 panic_threshold % in service, uses it anyway or none (on_panic).
  outlier detection  every worker counts a target's consecutive failures in its record (failure, from the
                 exchange's one failure path and from 502/503/504 answers; success ends the run); the
                 worker whose failure reaches the threshold ejects it for base x ejections (capped), within
                 max_ejected_percent; the ejection ends by itself when its time is over [Envoy's outlier
                 detection; Kong's passive checks never re-admit a target by themselves].
  Target         one upstream address, its weight, its record in the TargetTable (in-flight requests), and
                 the list of its idle keep-alive connections (the pool's rules, LIFO and bounded by
                 `keepalive`, are upstream_h1.pyx's pool_take/pool_give)
  TargetTable    the records of the targets in a buffer every worker of the pod maps (the "upstreams"
                 section of the shared file, fastgw/upstream/state.py): open addressing on a 64-bit key of
                 (upstream, address), claimed with an atomic compare-and-swap, so the workers agree on a
                 record without talking and a reload that keeps an address keeps its record.
"""
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef extern from *:
    """
    static inline int64_t fg_atomic_add(int64_t *p, int64_t v) {
        return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    }
    static inline int64_t fg_atomic_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void fg_atomic_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline int fg_atomic_claim(int64_t *p, int64_t expect, int64_t v) {
        return __atomic_compare_exchange_n(p, &expect, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) || expect == v;
    }
    """
    int64_t fg_atomic_add(int64_t *p, int64_t v) nogil
    int64_t fg_atomic_load(int64_t *p) nogil
    int fg_atomic_claim(int64_t *p, int64_t expect, int64_t v) nogil
    void fg_atomic_store(int64_t *p, int64_t v) nogil


# The Maglev table's size: a prime (every skip then walks all entries), fixed so that a target keeps its
# permutation whatever the others are, and large against any upstream's target count (the paper's M >> N:
# closer shares, fewer moved keys on a change). 128 KiB per hashed upstream per worker.
MAGLEV_SIZE = 65521
SLOW_START_FLOOR = 10          # % of its weight a slow-starting target begins with (Envoy's min_weight_percent)

cdef enum:
    PANIC_RECHECK_MS = 50      # on_panic = "fail": how stale the count of targets in service may be
    SCALE = 100                # effective weights are weight x SCALE, less while slow-starting


cdef inline double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline int64_t monotonic_ms() noexcept:
    """CLOCK_MONOTONIC in ms: one clock for every process of the host, so ejection times written by one
    worker mean the same in another and in the supervisor (time.monotonic())."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline uint64_t mix64(uint64_t h) noexcept:
    """A 64-bit finaliser (murmur3's fmix64): every input bit affects every output bit."""
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


cpdef uint64_t hash_bytes(bytes data, uint64_t seed=0):
    """A stable 64-bit hash (FNV-1a, then mixed): the same in every process (Python's hash() is salted
    per process, and workers must agree on a key's target)."""
    cdef const unsigned char* p = data
    cdef Py_ssize_t i, n = len(data)
    cdef uint64_t h = 0xcbf29ce484222325ULL ^ seed
    for i in range(n):
        h ^= p[i]
        h *= 0x100000001b3ULL
    return mix64(h)


cdef class TargetTable:
    """Per-target records in a buffer shared by the pod's workers (see the module docstring)."""

    def __init__(self, buf, bint init=False):
        cdef unsigned char[::1] mv = buf
        self.owner = buf
        self.base = <int64_t*>&mv[0]
        self.nslots = len(mv) // (REC_WORDS * 8)
        if init:
            memset(self.base, 0, self.nslots * REC_WORDS * 8)

    cdef int64_t* record(self, uint64_t key):
        """The record of `key` (claimed on first use), or NULL when every slot holds another key."""
        cdef int64_t k = <int64_t>(key | 1)            # 0 marks a free slot
        cdef Py_ssize_t i, s
        cdef int64_t* rec
        if self.nslots == 0:
            return NULL
        s = <Py_ssize_t>(key % <uint64_t>self.nslots)
        for i in range(self.nslots):
            rec = self.base + ((s + i) % self.nslots) * REC_WORDS
            # A free slot is claimed atomically; the claim also succeeds when another worker has just
            # claimed it for the same key.
            if rec[R_KEY] == k or (rec[R_KEY] == 0 and fg_atomic_claim(&rec[R_KEY], 0, k)):
                return rec
        return NULL

    def words(self, uint64_t key):
        """The record of `key` as 64-bit words (the supervisor's view: status, metrics), or None."""
        cdef int64_t* rec = self.record(key)
        if rec == NULL:
            return None
        off = (rec - self.base) * 8
        return memoryview(self.owner).cast("B")[off:off + REC_WORDS * 8].cast("q")

    def having(self, int word, int64_t value):
        """The records (as words) whose `word` holds `value`: the addresses DNS discovery found for a name
        (upstream/state.py W_DNS_OWNER), which their keys alone do not tell."""
        cdef Py_ssize_t i
        out = []
        if not 0 < word < REC_WORDS:
            return out
        for i in range(self.nslots):
            if self.base[i * REC_WORDS + R_KEY] != 0 and fg_atomic_load(&self.base[i * REC_WORDS + word]) == value:
                off = i * REC_WORDS * 8
                out.append(memoryview(self.owner).cast("B")[off:off + REC_WORDS * 8].cast("q"))
        return out

    def add(self, uint64_t key, int word, int64_t delta):
        """Add `delta` to a word of the record of `key`, atomically (the prober counts a target's return in
        its upstream's G_CHANGES while workers may count one too)."""
        cdef int64_t* rec = self.record(key)
        if rec != NULL and 0 < word < REC_WORDS:
            fg_atomic_add(&rec[word], delta)

    def slots_used(self):
        cdef Py_ssize_t i, n = 0
        for i in range(self.nslots):
            if self.base[i * REC_WORDS + R_KEY] != 0:
                n += 1
        return n


cdef class UpstreamGroup:
    def __init__(self):
        self.targets = []
        self.rr = 0
        self.balance = B_ROUND_ROBIN
        self.rng = 0x9e3779b97f4a7c15ULL
        self.max_conns = self.max_pending = self.max_requests = 1 << 62
        self.attach_records(None, 0)

    def attach_records(self, TargetTable table, uint64_t key):
        """The upstream's own records (limits and retry counts, pod-wide): `key` and key + 1 in `table`,
        or this process's own when there is no table (or it is full)."""
        cdef bytearray own
        self.grec = table.record(key) if table is not None else NULL
        self.rrec = table.record(key + 2) if table is not None and self.grec != NULL else NULL
        if self.rrec != NULL:
            self.grec_owner = table
        else:
            own = bytearray(2 * REC_WORDS * 8)
            self.grec_owner = own
            self.grec = <int64_t*><char*>own
            self.rrec = self.grec + REC_WORDS

    def limits(self, long long max_connections, long long max_pending, long long max_requests):
        """Circuit breaking's limits (limits.*), per upstream per pod."""
        self.max_conns = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests

    def retry(self, int attempts, int on_bits, int budget_percent, int budget_min, double backoff,
              double backoff_max, double try_timeout, long long replay_buffer):
        """Retry settings (retry.*; on_bits: 1 << RetryCond per condition; durations in seconds)."""
        self.attempts = attempts
        self.retry_on = on_bits
        self.budget_pct = budget_percent
        self.budget_min = budget_min
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.try_timeout = try_timeout
        self.replay_max = replay_buffer

    cdef bint admit(self) noexcept:
        """A request to this upstream starts: False (and not counted) when max_requests are in flight
        pod-wide."""
        if fg_atomic_add(&self.grec[G_ACTIVE], 1) > self.max_requests:
            fg_atomic_add(&self.grec[G_ACTIVE], -1)
            fg_atomic_add(&self.grec[G_OVERFLOW + OV_REQUESTS], 1)
            return False
        return True

    cdef void release(self) noexcept:
        fg_atomic_add(&self.grec[G_ACTIVE], -1)

    cdef int connect_slot(self) noexcept:
        """A request needs a new connection: -1 when it may open one (it is then pending until
        connect_done), else the Overflow it meets (max_connections open, or max_pending opening)."""
        if fg_atomic_load(&self.grec[G_CONNS]) >= self.max_conns:
            fg_atomic_add(&self.grec[G_OVERFLOW + OV_CONNECTIONS], 1)
            return OV_CONNECTIONS
        if fg_atomic_add(&self.grec[G_PENDING], 1) > self.max_pending:
            fg_atomic_add(&self.grec[G_PENDING], -1)
            fg_atomic_add(&self.grec[G_OVERFLOW + OV_PENDING], 1)
            return OV_PENDING
        return -1

    cdef void connect_done(self) noexcept:
        fg_atomic_add(&self.grec[G_PENDING], -1)

    cdef void connections(self, int delta) noexcept:
        """An upstream connection opened (+1) or closed (-1)."""
        fg_atomic_add(&self.grec[G_CONNS], delta)

    cdef bint retry_admit(self, bint unsent) noexcept:
        """A retry may start: fewer retried requests in flight than budget_percent of the requests in
        flight, or than budget_min [Envoy's retry budget: 20% of active, at least 3]. Counted when
        admitted (G_RETRYING, released by the exchange when it ends), else counted as refused. A retry
        after a failure that sent nothing to any upstream (`unsent`: connect-failure, refused-stream,
        reset-before-send) is always admitted and takes no room in the budget (True, not counted in
        G_RETRYING): it adds no work to the upstreams (the first try did none), refusing it would turn a
        refused connection into a client error, and counting it would let the re-sends of a dead
        target's pooled connections refuse the retries the budget is there for (bench/resilience.py's
        kill: a GET on the connection just opened to it was a 502)."""
        cdef int64_t active = fg_atomic_load(&self.grec[G_ACTIVE])
        cdef int64_t allowed = max(<int64_t>self.budget_min, active * self.budget_pct // 100)
        if unsent:
            return True
        if fg_atomic_add(&self.grec[G_RETRYING], 1) > allowed:
            fg_atomic_add(&self.grec[G_RETRYING], -1)
            fg_atomic_add(&self.grec[G_BUDGET_OUT], 1)
            return False
        return True

    cdef void retry_done(self) noexcept:
        fg_atomic_add(&self.grec[G_RETRYING], -1)

    cdef void count_retry(self, int cond) noexcept:
        """A retry made, by its condition (RetryCond: fastgw_upstream_retries_total)."""
        fg_atomic_add(&self.rrec[1 + cond], 1)

    cdef double backoff_delay(self, int retry) noexcept:
        """Full jitter: uniform in [0, min(backoff_max, backoff x 2^(retry-1))) [AWS architecture blog,
        "Exponential Backoff And Jitter"; Envoy: 25 ms base]."""
        cdef double cap = self.backoff * (1 << min(retry - 1, 20))
        if cap > self.backoff_max:
            cap = self.backoff_max
        return cap * <double>(self.next_random() >> 11) / 9007199254740992.0

    cdef Target pick_other(self, object ex, Target failed):
        """A target for a retry: another than `failed` when one is in service, else `failed`. It does not
        move the algorithm's own course (a retry taking round robin's next turn would send every first
        try to the same target): round robin takes the next target in order after `failed`, least_request
        draws another by weight (counted in flight), a hashed key walks on through the table to the next
        other target."""
        cdef Py_ssize_t i, n = len(self.targets)
        cdef int64_t now = monotonic_ms()
        cdef Target t
        if n == 1:
            return failed
        if self.balance == B_HASH:
            self.by_hash(ex)                    # the key's entry again (other picks moved last_slot)
            i = self.last_slot
            for _ in range(self.msize):
                i = (i + 1) % self.msize
                t = <Target>self.targets[self.maglev[i]]
                if t is not failed and not t.down(now):
                    return t
            return failed
        if self.balance == B_LEAST_REQUEST:
            t = self.draw(monotonic() if self.ramping else 0.0, failed)
            if not t.down(now):
                fg_atomic_add(&t.rec[R_INFLIGHT], 1)
                return t
        for i in range(1, n):
            t = <Target>self.targets[(failed.index + i) % n]
            if not t.down(now):
                if self.balance == B_LEAST_REQUEST:
                    fg_atomic_add(&t.rec[R_INFLIGHT], 1)
                return t
        return failed

    def outlier(self, int consecutive_failures, double base_ejection, double max_ejection,
                int max_ejected_percent, int panic_threshold, bint panic_fail):
        """Passive outlier detection's settings (outlier.*; durations in seconds)."""
        self.max_fails = consecutive_failures
        self.base_ms = <int64_t>(base_ejection * 1000)
        self.max_ms = <int64_t>(max_ejection * 1000)
        self.eject_pct = max_ejected_percent
        self.panic_pct = panic_threshold
        self.panic_fail = panic_fail

    def setup(self, str balance, str hash_key=None, double slow_start=0.0, uint64_t seed=0):
        """Fix the algorithm once the targets are set: weights, the Maglev table, the start offset
        (`seed` random per worker)."""
        cdef Target t
        cdef Py_ssize_t i, n = len(self.targets)
        self.balance = {"round_robin": B_ROUND_ROBIN, "least_request": B_LEAST_REQUEST, "hash": B_HASH}[balance]
        self.rng = mix64(seed) | 1
        self.slow_start = slow_start
        self.total = 0
        self.uniform = True
        for i in range(n):
            t = <Target>self.targets[i]
            t.index = i
            t.cur = 0
            self.total += t.weight
            if t.weight != (<Target>self.targets[0]).weight:
                self.uniform = False
        self.ramping = slow_start > 0 and any((<Target>x).since > 0 for x in self.targets)
        self.changes = -1                       # the first pick reads the targets' returns (a reload's new
                                                # group continues the ramps already under way)
        self.hash_kind = H_NONE
        self.hash_name = None
        if hash_key is not None:
            kind, _, name = hash_key.partition(":")
            self.hash_kind = {"header": H_HEADER, "cookie": H_COOKIE, "query": H_QUERY, "consumer": H_CONSUMER,
                              "client_ip": H_CLIENT_IP, "path": H_PATH}[kind]
            self.hash_name = name.lower().encode("latin-1")
        if self.balance == B_HASH:
            self.build_maglev()
        if n > 1 and self.total > 0:            # per-worker start offset
            self.rr = <Py_ssize_t>(self.next_random() % <uint64_t>n)
            if not self.uniform:
                for i in range(<Py_ssize_t>(self.next_random() % <uint64_t>self.total)):
                    self.swrr(0.0)

    cdef uint64_t next_random(self) noexcept:
        """xorshift64*: fast, good enough to spread picks, seeded per worker."""
        cdef uint64_t x = self.rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.rng = x
        return x * 0x2545f4914f6cdd1dULL

    cdef int64_t eff(self, Target t, double now) noexcept:
        """The target's effective weight (x SCALE): lower while it slow-starts."""
        cdef double age
        if t.since > 0:
            age = now - t.since
            if age < self.slow_start:
                return <int64_t>(t.weight * (SLOW_START_FLOOR + (SCALE - SLOW_START_FLOOR) * age / self.slow_start))
            t.since = 0
        return t.weight * SCALE

    cdef void notice(self):
        """Some target of the upstream came back in service since this worker last looked (G_CHANGES moved):
        each target in service whose return (R_SINCE) is within the slow_start window ramps from it."""
        cdef int64_t now = monotonic_ms(), since
        cdef double window_ms = self.slow_start * 1000
        cdef Target t
        self.changes = fg_atomic_load(&self.grec[G_CHANGES])
        for x in self.targets:
            t = <Target>x
            since = fg_atomic_load(&t.rec[R_SINCE])
            if (since > 0 and now - since < window_ms and fg_atomic_load(&t.rec[R_DOWN_UNTIL]) == 0
                    and since / 1000.0 > t.since):
                t.since = since / 1000.0
                self.ramping = True

    cdef Target pick(self, object ex):
        cdef Py_ssize_t n = len(self.targets)
        cdef Target t
        if n == 1:
            t = <Target>self.targets[0]
        else:
            if self.slow_start > 0 and fg_atomic_load(&self.grec[G_CHANGES]) != self.changes:
                self.notice()
            if self.balance == B_ROUND_ROBIN:
                if self.uniform and not self.ramping:
                    self.rr += 1
                    t = <Target>self.targets[self.rr % n]
                else:
                    t = self.swrr(monotonic() if self.ramping else 0.0)
            elif self.balance == B_LEAST_REQUEST:
                t = self.p2c(monotonic() if self.ramping else 0.0)
            else:
                t = self.by_hash(ex)
        if self.panic_fail and self.in_panic():
            return None
        if t.rec[R_DOWN_UNTIL] != 0:             # ejected, or its ejection just ended
            t = self.avoid(t)
            if t is None:
                return None
        if self.balance == B_LEAST_REQUEST:
            fg_atomic_add(&t.rec[R_INFLIGHT], 1)
        return t

    cdef bint in_panic(self):
        """With on_panic = "fail": fewer than panic_threshold % of the targets in service, as counted at
        most every PANIC_RECHECK_MS (a pick on a target in service does not otherwise look at the
        others)."""
        cdef int64_t now = monotonic_ms()
        cdef Py_ssize_t ok
        if now - self.panic_checked >= PANIC_RECHECK_MS:
            self.panic_checked = now
            ok = self.usable(now)
            self.panicking = ok == 0 or ok * 100 < self.panic_pct * len(self.targets)
        return self.panicking

    cdef Py_ssize_t usable(self, int64_t now):
        cdef Py_ssize_t n = 0
        for x in self.targets:
            if not (<Target>x).down(now):
                n += 1
        return n

    cdef Target avoid(self, Target first):
        """The algorithm chose an ejected target: choose again among the others, the same way (a hash
        key walks on through the table from its entry, so only the ejected target's keys move). Below
        panic_threshold % usable targets, on_panic decides: every target ("all": `first`) or none."""
        cdef int64_t now = monotonic_ms()
        cdef Py_ssize_t i, n = len(self.targets), ok
        cdef Target t
        if not first.down(now):
            return first
        ok = self.usable(now)
        if ok == 0 or ok * 100 < self.panic_pct * n:
            return None if self.panic_fail else first
        if self.balance == B_HASH:
            i = self.last_slot
            for _ in range(self.msize):
                i = (i + 1) % self.msize
                t = <Target>self.targets[self.maglev[i]]
                if not t.down(now):
                    return t
        elif self.balance == B_LEAST_REQUEST:
            cands = [x for x in self.targets if not (<Target>x).down(now)]
            a = <Target>cands[self.next_random() % <uint64_t>len(cands)]
            if len(cands) == 1:
                return a
            cands.remove(a)
            b = <Target>cands[self.next_random() % <uint64_t>len(cands)]
            return b if fg_atomic_load(&b.rec[R_INFLIGHT]) * a.weight < fg_atomic_load(&a.rec[R_INFLIGHT]) * b.weight else a
        else:
            for _ in range(self.total + n):
                if self.uniform and not self.ramping:
                    self.rr += 1
                    t = <Target>self.targets[self.rr % n]
                else:
                    t = self.swrr(0.0)
                if not t.down(now):
                    return t
        return first

    cdef void eject(self, Target t, int reason):
        """`t` failed consecutive_failures times in a row: out of service for base_ejection x its
        ejections (capped at max_ejection), unless max_ejected_percent of the targets already are (at
        least one may always be). The multiplier starts again once a target has stayed in service for
        max_ejection."""
        cdef int64_t now = monotonic_ms(), k
        cdef int64_t* rec = t.rec
        cdef Py_ssize_t ejected = 0, n = len(self.targets)
        if rec[R_DOWN_UNTIL] > now:
            return
        for x in self.targets:
            if (<Target>x).rec[R_DOWN_UNTIL] > now:
                ejected += 1
        if ejected >= max(1, n * self.eject_pct // 100):
            return
        k = rec[R_EJECTIONS]
        if rec[R_LAST_UNTIL] != 0 and now - rec[R_LAST_UNTIL] > self.max_ms:
            k = 0
        rec[R_EJECTIONS] = k + 1
        rec[R_REASON] = reason
        rec[R_SINCE] = now
        fg_atomic_add(&rec[R_EJECTED_BY + reason], 1)
        fg_atomic_store(&rec[R_DOWN_UNTIL], now + min(self.base_ms * (k + 1), self.max_ms))

    cdef Target swrr(self, double now):
        """nginx's smooth weighted round robin: every target gains its weight, the one with the most goes
        and gives back the total. Over a cycle of sum(weights) picks each target goes weight times,
        interleaved."""
        cdef Py_ssize_t i, n = len(self.targets)
        cdef int64_t w, total = 0
        cdef Target t, best = None
        cdef bint ramping = False
        for i in range(n):
            t = <Target>self.targets[i]
            w = self.eff(t, now) if self.ramping else t.weight * SCALE
            ramping |= t.since > 0
            t.cur += w
            total += w
            if best is None or t.cur > best.cur:
                best = t
        best.cur -= total
        if self.ramping and not ramping:
            self.ramping = False
        return best

    cdef Target draw(self, double now, Target other):
        """A target drawn with probability proportional to its effective weight, never `other`."""
        cdef Py_ssize_t i, n = len(self.targets)
        cdef int64_t total = 0, r
        cdef Target t
        if self.uniform and not self.ramping:
            if other is None:
                return <Target>self.targets[self.next_random() % <uint64_t>n]
            i = <Py_ssize_t>(self.next_random() % <uint64_t>(n - 1))
            return <Target>self.targets[i + 1 if i >= other.index else i]
        for i in range(n):
            t = <Target>self.targets[i]
            if t is not other:
                total += self.eff(t, now)
        r = <int64_t>(self.next_random() % <uint64_t>total)
        for i in range(n):
            t = <Target>self.targets[i]
            if t is not other:
                r -= self.eff(t, now)
                if r < 0:
                    return t
        return t

    cdef Target p2c(self, double now):
        """Power of two choices over the pod-wide in-flight counts, weighted: a wins unless b has fewer
        requests in flight per unit of weight. a is drawn by weight, so when every target is idle the
        shares are the weights; b is another target, so the busiest of three is never chosen."""
        cdef Target a = self.draw(now, None)
        cdef Target b = self.draw(now, a)
        cdef int64_t la = fg_atomic_load(&a.rec[R_INFLIGHT])
        cdef int64_t lb = fg_atomic_load(&b.rec[R_INFLIGHT])
        if self.ramping:
            return b if lb * self.eff(a, now) < la * self.eff(b, now) else a
        return b if lb * a.weight < la * b.weight else a

    cdef Target by_hash(self, object ex):
        cdef bytes key = self.hash_key_of(ex)
        cdef uint64_t h
        if key is None:
            self.last_slot = <Py_ssize_t>(self.next_random() % <uint64_t>self.msize)
            return <Target>self.targets[self.maglev[self.last_slot]]
        h = hash_bytes(key, 0)
        self.last_slot = <Py_ssize_t>(h % <uint64_t>self.msize)
        return <Target>self.targets[self.maglev[self.last_slot]]

    cdef bytes hash_key_of(self, object ex):
        """The request's hash key by `hash_key`, or None when the request has none."""
        cdef int kind = self.hash_kind
        if kind == H_HEADER:
            return ex.header(self.hash_name)
        if kind == H_PATH:
            return ex.path
        if kind == H_CLIENT_IP:
            return ex.peer
        if kind == H_CONSUMER:
            ident = ex.identity
            name = getattr(ident, "consumer", None) if ident is not None else None
            return name.encode() if isinstance(name, str) else name
        if kind == H_COOKIE:
            return _param(ex.header(b"cookie"), self.hash_name, b";", False)
        if kind == H_QUERY:
            q = ex.query
            return _param(q[1:] if q else None, self.hash_name, b"&", True)
        return None

    def key_target(self, bytes key):
        """The target `key` maps to (tests, and the guarantee's measurement in bench/)."""
        return self.targets[self.maglev[hash_bytes(key, 0) % <uint64_t>self.msize]]

    def build_maglev(self):
        """Fill the lookup table: targets take turns, each claiming the next free entry of its own
        permutation (offset and skip from its address), a target of weight w taking w turns per w_max.
        A target's permutation depends on its address only and the table's size is fixed, which is what
        keeps keys in place when other targets come and go."""
        cdef Py_ssize_t n = len(self.targets), m = MAGLEV_SIZE, filled = 0, i, j
        cdef Target t
        cdef int64_t wmax = 1
        import array
        table = array.array("H", [0xFFFF]) * m
        state = array.array("q", [0]) * (4 * n)
        cdef unsigned short[::1] tv = table
        cdef int64_t[::1] sv = state           # per target: offset, skip, next, credit
        for i in range(n):
            t = <Target>self.targets[i]
            sv[4 * i] = <int64_t>(hash_bytes(t.hostport, 0x6d61676c6576) % <uint64_t>m)           # "maglev"
            sv[4 * i + 1] = <int64_t>(hash_bytes(t.hostport, 0x736b6970) % <uint64_t>(m - 1)) + 1  # "skip"
            wmax = max(wmax, t.weight)
        while filled < m:
            for i in range(n):
                sv[4 * i + 3] += (<Target>self.targets[i]).weight
                while sv[4 * i + 3] >= wmax and filled < m:
                    sv[4 * i + 3] -= wmax
                    while True:
                        j = (sv[4 * i] + sv[4 * i + 2] * sv[4 * i + 1]) % m
                        sv[4 * i + 2] += 1
                        if tv[j] == 0xFFFF:
                            break
                    tv[j] = <unsigned short>i
                    filled += 1
        self.maglev_owner = table
        self.maglev = &tv[0]
        self.msize = m


cdef bytes _param(bytes text, bytes name, bytes sep, bint query):
    """The value of `name` in "a=1; b=2" (cookies) or "a=1&b=2" (query), or None. Cookie names are
    matched as written (lowercased config name against a lowercased field); query names exactly."""
    if not text:
        return None
    for part in text.split(sep):
        k, eq, v = part.strip().partition(b"=")
        if eq and (k.lower() if not query else k) == name:
            return v
    return None


cdef class Target:
    def __init__(self, str host, int port, int keepalive, UpstreamGroup group, int weight=1,
                 TargetTable table=None, uint64_t key=0):
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.idle = []
        self.group = group
        self.weight = weight
        self.hostport = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        cdef bytearray own
        self.rec = table.record(key) if table is not None else NULL
        if self.rec != NULL:
            self.rec_owner = table
        else:                                   # no shared table (or it is full): this process's own
            own = bytearray(REC_WORDS * 8)
            self.rec_owner = own
            self.rec = <int64_t*><char*>own

    cdef void finish(self) noexcept:
        """A request counted in flight at pick time ended."""
        fg_atomic_add(&self.rec[R_INFLIGHT], -1)

    cdef bint down(self, int64_t now) noexcept:
        """Out of service at `now`; an ejection that has run out is ended here (re-admission needs no
        one: whoever reads it first records it)."""
        cdef int64_t until = fg_atomic_load(&self.rec[R_DOWN_UNTIL])
        if until == 0:
            return False
        if until > now:
            return True
        if fg_atomic_claim(&self.rec[R_DOWN_UNTIL], until, 0):
            self.rec[R_LAST_UNTIL] = until
            self.rec[R_SINCE] = now
            fg_atomic_store(&self.rec[R_FAILS], 0)
            if self.group is not None:          # every worker's balancer ramps it up (notice)
                fg_atomic_add(&self.group.grec[G_CHANGES], 1)
        return False

    cdef void failure(self, int reason):
        """A failure of this target (any worker): the one that makes consecutive_failures ejects it."""
        cdef UpstreamGroup g = self.group
        if g.max_fails > 0 and fg_atomic_add(&self.rec[R_FAILS], 1) == g.max_fails:
            fg_atomic_store(&self.rec[R_FAILS], 0)
            g.eject(self, reason)

    cdef void success(self) noexcept:
        """A response that is not a gateway error: the run of failures is over (written only when there
        was one, so that healthy traffic does not bounce the record's cache line between cores)."""
        if self.rec[R_FAILS] != 0:
            fg_atomic_store(&self.rec[R_FAILS], 0)

    cdef void failed_with(self, bint connect, int status):
        """A failure the exchange saw (GatewayError source and status): its Reason counts."""
        self.failure(REASON_TIMEOUT if status == 504 else (REASON_CONNECT if connect else REASON_RESET))

    def record_failure(self, int reason):
        """failure() from Python (tests)."""
        self.failure(reason)

    def record_success(self):
        """success() from Python (tests)."""
        self.success()

    @property
    def consecutive_failures(self):
        return fg_atomic_load(&self.rec[R_FAILS])

    @property
    def ejected(self):
        """Out of service now."""
        return self.down(monotonic_ms())

    @property
    def inflight(self):
        """Requests in flight to this target, from every worker of the pod."""
        return fg_atomic_load(&self.rec[R_INFLIGHT])

    def add_inflight(self, long long n):
        fg_atomic_add(&self.rec[R_INFLIGHT], n)

    def close_idle(self):
        """Close every idle pooled connection (a reload that drops this target)."""
        idle, n = self.idle, self.nidle
        self.idle = []
        self.nidle = 0
        for c in idle[:n]:
            c.discard()


def pick_target(UpstreamGroup g, object ex=None):
    """pick() called from Python (the distribution tests and the micro-benchmark measure the compiled
    pick itself)."""
    return g.pick(ex)


def finish_target(Target t):
    """finish() called from Python: the request counted in flight by pick_target ended."""
    t.finish()
