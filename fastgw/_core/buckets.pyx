# cython: boundscheck=False, wraparound=False
"""Token buckets, calendar quotas and concurrency counters in a fixed-size table (usually shared memory).

The arithmetic is on integer nanoseconds and never reads a clock: callers pass `mono` (CLOCK_MONOTONIC,
the same clock in every process of a host) and, for calendar quotas, `wall` (UTC, time.time_ns()).

Rate limits use GCRA, the token bucket written as one number: the theoretical arrival time (TAT) of the
next request when the bucket is full. With an emission interval T = period / count and a burst B, a
request at `now` is allowed when max(TAT, now) + T - now <= B*T, and then TAT becomes max(TAT, now) + T.
One integer per key, and a key whose TAT is in the past is exactly a full bucket, so it can be dropped at
any time without changing a decision: that is what makes eviction free.

Table layout (one buffer; `Table(buf)`): a 64-byte Header, then 2^k Slots of 64 bytes (one cache line).
Keys are 64-bit hashes; a key lives in one of the 8 slots of the bucket `mix(key) & mask & ~7` (512 bytes).
A bucket is updated under a spin lock held for a few dozen instructions (the first slot's lock word);
workers are single-threaded, so a lock is only ever contended by another process. If a process dies while
holding it (SIGKILL between two instructions), the next one takes it over after ~1M spins (counted in
Header.steals). A new key takes, in order: an unused slot, a slot whose entry is idle (equivalent to
fresh), else the slot that becomes idle soonest (counted in Header.evictions: a table too small for the
live keys; size it up). Memory never grows: the table is the buffer it was given.
"""
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from *:
    """
    static inline int fgw_trylock(unsigned long long *p) {
        unsigned long long expected = 0;
        return __atomic_compare_exchange_n(p, &expected, 1ULL, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
    }
    static inline void fgw_unlock(unsigned long long *p) { __atomic_store_n(p, 0ULL, __ATOMIC_RELEASE); }
    static inline void fgw_raise(unsigned long long *p, unsigned long long v) {
        unsigned long long cur = __atomic_load_n(p, __ATOMIC_RELAXED);
        while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {}
    }
    static inline void fgw_clear_if(unsigned long long *p, unsigned long long seen) {
        __atomic_compare_exchange_n(p, &seen, 0ULL, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    }
    static inline void fgw_pause(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    """
    int fgw_trylock(unsigned long long* p) noexcept nogil
    void fgw_unlock(unsigned long long* p) noexcept nogil
    void fgw_raise(unsigned long long* p, unsigned long long v) noexcept nogil
    void fgw_clear_if(unsigned long long* p, unsigned long long seen) noexcept nogil
    void fgw_pause() noexcept nogil

# (The layout constants and the limit kinds are declared in buckets.pxd.)

RATE, QUOTA_MINUTE, QUOTA_HOUR, QUOTA_DAY, QUOTA_MONTH, CONCURRENCY, LEASE = 1, 2, 3, 4, 5, 6, 7
HEADER_BYTES = HDR
SLOT_BYTES = SLOTB


def table_bytes(nslots):
    """Bytes of a table with `nslots` slots (a power of two, at least 8)."""
    return HEADER_BYTES + SLOT_BYTES * nslots


# -- hashing -------------------------------------------------------------------------------------------
# _mix and _hash are inline functions in buckets.pxd (gates.pyx hashes keys with them too).


def hash_key(uint64_t seed, bytes data):
    """64-bit hash of `data` under `seed`; never 0 (0 marks an unused slot)."""
    return _hash(seed, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


# -- calendar windows (UTC) ----------------------------------------------------------------------------

cdef int64_t _days_from_civil(int64_t y, int64_t m, int64_t d) noexcept nogil:
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's public-domain algorithm).
    cdef int64_t era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef int64_t _month_end(int64_t days) noexcept nogil:
    """First day (days since epoch) of the month after the one containing `days`."""
    cdef int64_t z = days + 719468
    cdef int64_t era = (z if z >= 0 else z - 146096) // 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef int64_t y = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef int64_t mp = (5 * doy + 2) // 153
    cdef int64_t m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    if m == 12:
        return _days_from_civil(y + 1, 1, 1)
    return _days_from_civil(y, m + 1, 1)


cdef int64_t _window_end(int64_t kind, int64_t wall) noexcept nogil:
    """End (wall ns, exclusive) of the calendar window containing `wall`."""
    cdef int64_t size
    if kind == K_QUOTA_MONTH:
        return _month_end(wall // (86400LL * NS)) * 86400LL * NS
    size = 60LL * NS if kind == K_QUOTA_MINUTE else (3600LL * NS if kind == K_QUOTA_HOUR else 86400LL * NS)
    return (wall // size + 1) * size


def window_end(int64_t kind, int64_t wall):
    return _window_end(kind, wall)


# -- the table -----------------------------------------------------------------------------------------

cdef struct Outcome:
    bint ok
    int64_t remaining
    int64_t reset_ns    # until more quota is made available (the `t` of draft-ietf-httpapi-ratelimit-
    #                     headers-10 §4.1.2): rate: the next token; quota: the window end
    int64_t retry_ns    # when denied: until the same request could pass


cdef inline void _lock(Header* hdr, Slot* first) noexcept nogil:
    cdef long spins = 0
    while not fgw_trylock(<unsigned long long*>&first.lock):
        fgw_pause()
        spins += 1
        if spins >= STEAL_SPINS:
            # The holder died mid-update (a worker killed between two instructions): take the lock over.
            # The bucket's entries are plain integers; the worst case is one lost update.
            first.lock = 1
            hdr.steals += 1
            return


cdef inline void _unlock(Slot* first) noexcept nogil:
    fgw_unlock(<unsigned long long*>&first.lock)


cdef inline void _rate(Slot* s, int64_t now, int64_t interval, int64_t tau, int64_t n, bint commit,
                       Outcome* o) noexcept nogil:
    # The bucket holds (tau - (TAT - now)) / interval tokens; the next whole one arrives when that credit
    # reaches the next multiple of the interval. Refused (n = 1): that is exactly retry_ns, so the 429's
    # Retry-After and its RateLimit t are one number.
    cdef int64_t tat = s.a if s.a > now else now
    cdef int64_t new = tat + n * interval
    cdef int64_t credit
    if new - now > tau:
        o.ok = False
        o.retry_ns = new - tau - now
        credit = tau - (tat - now)
        o.remaining = credit // interval
        o.reset_ns = (o.remaining + 1) * interval - credit
        return
    o.ok = True
    o.retry_ns = 0
    credit = tau - (new - now)
    o.remaining = credit // interval
    o.reset_ns = (o.remaining + 1) * interval - credit
    if commit:
        s.a = new
        s.idle_at = new


cdef inline int64_t _rate_wait(Slot* s, int64_t now, int64_t interval, int64_t tau) noexcept nogil:
    """Until one more request would pass the rate limit in slot s (0: now; NULL: a fresh key)."""
    cdef int64_t tat
    if s == NULL:
        return 0
    tat = s.a if s.a > now else now
    return tat + interval - tau - now if tat + interval - now > tau else 0


cdef inline void _quota(Slot* s, int64_t kind, int64_t limit, int64_t n, int64_t mono, int64_t wall,
                        bint commit, Outcome* o) noexcept nogil:
    cdef int64_t end = _window_end(kind, wall)
    if s.a != end:
        s.a = end
        s.b = 0
    o.reset_ns = end - wall
    if s.b + n > limit:
        o.ok = False
        o.remaining = limit - s.b if limit > s.b else 0
        o.retry_ns = end - wall
        return
    o.ok = True
    o.retry_ns = 0
    o.remaining = limit - s.b - n
    if commit:
        s.b += n
        s.idle_at = mono + (end - wall)


cdef inline void _conc(Slot* s, int64_t limit, Outcome* o) noexcept nogil:
    o.reset_ns = 0
    if s.a + 1 > limit:
        o.ok = False
        o.remaining = 0
        o.retry_ns = NS       # unknown: when some request in flight ends; say one second
        return
    o.ok = True
    o.retry_ns = 0
    s.a += 1
    o.remaining = limit - s.a
    s.idle_at = INT64_MAX


cdef class Table:
    """A bucket table over a writable buffer (bytearray, mmap, memoryview). `init=True` formats it
    (`zeroed=True`: the buffer is known to be all zero, only the header is written); a worker attaching to
    the supervisor's shared section passes init=False."""

    def __init__(self, buf, bint init=True, bint zeroed=False):
        cdef unsigned char[::1] view = buf
        cdef Py_ssize_t size = view.shape[0]
        cdef uint64_t n = WAYS
        if size < HDR + SLOTB * WAYS:
            raise ValueError(f"bucket table of {size} bytes is too small (at least {table_bytes(WAYS)})")
        while HDR + SLOTB * n * 2 <= <uint64_t>size:
            n *= 2
        cdef unsigned char* base = &view[0]
        self.buf = view         # holds the buffer export: the pointers below stay valid while we live
        self.hdr = <Header*>base
        self.slots = <Slot*>(base + HDR)
        if init or self.hdr.magic != MAGIC:
            # A fresh memfd/mmap is already zero: writing it would make every page resident at start.
            memset(base, 0, HDR if zeroed else HDR + SLOTB * n)
            self.hdr.magic = MAGIC
            self.hdr.nslots = n
        elif self.hdr.nslots != n:
            raise ValueError("bucket table size does not match its header")
        self.mask = n - 1

    @property
    def nslots(self):
        return self.hdr.nslots

    @property
    def evictions(self):
        return self.hdr.evictions

    @property
    def steals(self):
        return self.hdr.steals

    @property
    def instance(self):
        return self.hdr.instance

    @instance.setter
    def instance(self, uint64_t v):
        self.hdr.instance = v

    @property
    def blocked_until(self):
        return self.hdr.blocked_until

    def block_until(self, uint64_t until):
        """Raise blocked_until to `until` (atomic maximum: workers of one host race on it)."""
        fgw_raise(<unsigned long long*>&self.hdr.blocked_until, until)

    def unblock(self, uint64_t seen):
        """blocked_until = 0, unless another worker raised it since it was read as `seen`."""
        fgw_clear_if(<unsigned long long*>&self.hdr.blocked_until, seen)

    cpdef int64_t rate_wait(self, uint64_t key, int64_t now, int64_t interval, int64_t burst):
        """Nanoseconds until `key` could take one more token (0: now), without charging or creating it."""
        cdef Slot* first = self._bucket(key)
        cdef int64_t w
        _lock(self.hdr, first)
        w = _rate_wait(self.find(key, now, False), now, interval, burst * interval)
        _unlock(first)
        return w

    @property
    def instances_seen(self):
        """Kept in the table so that it outlives the workers (fastgw.policies.ratelimit.Store.share)."""
        return self.hdr.instances_seen

    @instances_seen.setter
    def instances_seen(self, uint64_t v):
        self.hdr.instances_seen = v

    def used(self):
        """Slots holding a key (idle or not); O(table)."""
        cdef uint64_t i, c = 0
        for i in range(self.hdr.nslots):
            if self.slots[i].key != 0:
                c += 1
        return c

    cdef Slot* find(self, uint64_t key, int64_t now, bint create) noexcept nogil:
        """The slot of `key` in its bucket (the bucket lock must be held); with `create`, claim one."""
        cdef Slot* first = self.slots + ((_mix(key) & self.mask) & ~(<uint64_t>(WAYS - 1)))
        cdef Slot* s
        cdef Slot* victim = NULL
        cdef int i
        for i in range(WAYS):
            s = first + i
            if s.key == key:
                return s
        if not create:
            return NULL
        for i in range(WAYS):
            s = first + i
            if s.key == 0 or s.idle_at <= now:
                victim = s
                break
            if victim == NULL or s.idle_at < victim.idle_at:
                victim = s
        if victim.key != 0 and victim.idle_at > now:
            self.hdr.evictions += 1
        victim.key = key
        victim.idle_at = 0
        victim.a = 0
        victim.b = 0
        victim.kind = 0
        return victim

    cdef Slot* _bucket(self, uint64_t key) noexcept nogil:
        return self.slots + ((_mix(key) & self.mask) & ~(<uint64_t>(WAYS - 1)))

    # Single operations, for tests, the lease mode and the fallback. Each returns
    # (allowed, remaining, reset_ns, retry_ns).
    def rate(self, uint64_t key, int64_t now, int64_t interval, int64_t burst, int64_t n=1, bint commit=True):
        cdef Outcome o
        cdef Slot* first = self._bucket(key)
        _lock(self.hdr, first)
        _rate(self.find(key, now, True), now, interval, burst * interval, n, commit, &o)
        _unlock(first)
        return o.ok, o.remaining, o.reset_ns, o.retry_ns

    def quota(self, uint64_t key, int64_t kind, int64_t limit, int64_t mono, int64_t wall, int64_t n=1,
              bint commit=True):
        cdef Outcome o
        cdef Slot* first = self._bucket(key)
        _lock(self.hdr, first)
        _quota(self.find(key, mono, True), kind, limit, n, mono, wall, commit, &o)
        _unlock(first)
        return o.ok, o.remaining, o.reset_ns, o.retry_ns

    def acquire(self, uint64_t key, int64_t now, int64_t limit):
        cdef Outcome o
        cdef Slot* first = self._bucket(key)
        _lock(self.hdr, first)
        _conc(self.find(key, now, True), limit, &o)
        _unlock(first)
        return o.ok, o.remaining, o.reset_ns, o.retry_ns

    def release(self, uint64_t key):
        cdef Slot* first = self._bucket(key)
        cdef Slot* s
        _lock(self.hdr, first)
        s = self.find(key, 0, False)
        if s != NULL and s.a > 0:
            s.a -= 1
            if s.a == 0:
                s.idle_at = 0
        _unlock(first)

    # Lease mode: tokens taken from the shared store, spent locally (Slot.a tokens, Slot.b expiry).
    cpdef long long lease_take(self, uint64_t key, int64_t now):
        """Spend one leased token if one is left and the lease has not expired: the tokens left after it,
        or -1 when there was none."""
        cdef Slot* first = self._bucket(key)
        cdef Slot* s
        cdef long long left = -1
        _lock(self.hdr, first)
        s = self.find(key, now, False)
        if s != NULL and s.a > 0 and s.b > now:
            s.a -= 1
            left = s.a
            if s.a == 0:
                s.idle_at = 0
        _unlock(first)
        return left

    def lease_left(self, uint64_t key, int64_t now):
        cdef Slot* first = self._bucket(key)
        cdef Slot* s
        cdef int64_t left = 0
        _lock(self.hdr, first)
        s = self.find(key, now, False)
        if s != NULL and s.b > now:
            left = s.a
        _unlock(first)
        return left

    def lease_put(self, uint64_t key, int64_t now, int64_t tokens, int64_t expires):
        """Add `tokens` (expiring at `expires`) to the key's lease; tokens of an expired lease are dropped."""
        cdef Slot* first = self._bucket(key)
        cdef Slot* s
        _lock(self.hdr, first)
        s = self.find(key, now, True)
        if s.b <= now:
            s.a = 0
        s.a += tokens
        s.b = expires
        s.idle_at = expires if s.a > 0 else 0
        _unlock(first)


cdef class Plan:
    """The local limits of one plan, checked together: all pass (and are charged), or none is charged.

    limits: sequence of (kind, interval_ns or count, burst, enforce, seed, key index). For K_RATE the
    second value is the emission interval and burst the bucket size; for quotas and concurrency it is the
    count. check(keys, mono, wall) takes the hashed key values (keys[key index]) and returns -1 when the
    request passes, else the index of the limit that rejects it; the attributes describe the outcome.
    """

    def __init__(self, Table table, limits):
        cdef int i = 0
        if len(limits) > 16:
            raise ValueError("at most 16 limits per plan")
        self.table = table
        for kind, value, burst, enforce, seed, keyidx in limits:
            self.kind[i] = kind
            if kind == K_RATE:
                self.interval[i] = value
                self.tau[i] = value * burst
            else:
                self.count[i] = value
            self.enforce[i] = 1 if enforce else 0
            self.seed[i] = <int64_t>(<uint64_t>seed)
            self.keyidx[i] = keyidx
            if keyidx < 0 or keyidx >= 16:
                raise ValueError(f"key index {keyidx} out of range")
            if keyidx >= self.nkeys:
                self.nkeys = keyidx + 1
            i += 1
        self.n = i
        self.tight = -1

    cdef uint64_t _key(self, const uint64_t* keys, int i) noexcept nogil:
        cdef uint64_t k = _mix(keys[self.keyidx[i]] ^ <uint64_t>self.seed[i])
        return k if k != 0 else 1

    cdef int _unpack(self, tuple keys, uint64_t* out) except -1:
        """The key values of a tuple (Python callers) into out[:nkeys]."""
        cdef int i
        if len(keys) < self.nkeys:
            raise ValueError(f"{self.nkeys} key values expected, got {len(keys)}")
        for i in range(self.nkeys):
            out[i] = <uint64_t>keys[i]
        return 0

    cdef void _undo(self, const uint64_t* keys, uint64_t done, int64_t mono, int64_t wall) noexcept nogil:
        cdef int j
        cdef uint64_t k
        cdef Slot* first
        cdef Slot* s
        for j in range(self.n):
            if not (done >> j) & 1:
                continue
            k = self._key(keys, j)
            first = self.table._bucket(k)
            _lock(self.table.hdr, first)
            s = self.table.find(k, mono, False)
            if s != NULL:
                if self.kind[j] == K_RATE:
                    s.a -= self.interval[j]
                    s.idle_at = s.a
                elif self.kind[j] == K_CONC:
                    if s.a > 0:
                        s.a -= 1
                        if s.a == 0:
                            s.idle_at = 0
                elif s.a == _window_end(self.kind[j], wall) and s.b > 0:
                    s.b -= 1
            _unlock(first)

    cdef int64_t _wait(self, const uint64_t* keys, int i, int64_t mono, int64_t wall) noexcept nogil:
        """Until limit i would admit one more request (0: now); nothing is charged or created."""
        cdef uint64_t k = self._key(keys, i)
        cdef Slot* first = self.table._bucket(k)
        cdef Slot* s
        cdef Outcome o
        cdef int64_t w = 0
        _lock(self.table.hdr, first)
        s = self.table.find(k, mono, False)
        if s != NULL:
            if self.kind[i] == K_RATE:
                w = _rate_wait(s, mono, self.interval[i], self.tau[i])
            elif self.kind[i] == K_CONC:
                w = NS if s.a + 1 > self.count[i] else 0      # as _conc: "some request ends", say 1 s
            else:
                _quota(s, self.kind[i], self.count[i], 1, mono, wall, False, &o)
                w = o.retry_ns
        _unlock(first)
        return w

    cpdef int check(self, tuple keys, int64_t mono, int64_t wall) except -2:
        cdef uint64_t kv[16]
        self._unpack(keys, kv)
        return self.check_c(kv, mono, wall)

    cdef int check_c(self, const uint64_t* keys, int64_t mono, int64_t wall) noexcept:
        """check() on key values in C (keys[:nkeys]): the rate gate's path, no Python int per key."""
        cdef int i, j, kind
        cdef int64_t wait, w
        cdef uint64_t k
        cdef uint64_t done = 0     # bit i: limit i was charged (undone if a later limit rejects)
        cdef Outcome o
        cdef Slot* first
        cdef Slot* s
        cdef int64_t best = INT64_MAX
        cdef int64_t best_reset = 0
        self.tight = -1
        self.shadowed = 0
        for i in range(self.n):
            kind = self.kind[i]
            k = self._key(keys, i)
            first = self.table._bucket(k)
            _lock(self.table.hdr, first)
            s = self.table.find(k, mono, True)
            # A shadow limit (enforce = false) is charged like an enforced one, so that it measures what
            # enforcing it would do, but its refusals only count.
            if kind == K_RATE:
                _rate(s, mono, self.interval[i], self.tau[i], 1, True, &o)
            elif kind == K_CONC:
                _conc(s, self.count[i], &o)
            else:
                _quota(s, kind, self.count[i], 1, mono, wall, True, &o)
            _unlock(first)
            if not o.ok:
                if not self.enforce[i]:
                    self.shadowed += 1
                    continue
                self._undo(keys, done, mono, wall)
                # The request passes again only when every enforced limit has room: report the refusing
                # limit that keeps it waiting longest, so that Retry-After (and that limit's t) is when
                # the same request could pass, not when the first refusing limit alone would let it.
                self.tight = i
                wait = o.retry_ns
                for j in range(i + 1, self.n):
                    if self.enforce[j]:
                        w = self._wait(keys, j, mono, wall)
                        if w > wait:
                            wait = w
                            self.tight = j
                self.remaining = 0
                self.reset_s = (wait + NS - 1) // NS
                self.retry_s = self.reset_s if self.reset_s > 1 else 1
                return self.tight
            done |= (<uint64_t>1) << i
            if kind != K_CONC and self.enforce[i] and (o.remaining < best or (o.remaining == best and o.reset_ns > best_reset)):
                best = o.remaining
                best_reset = o.reset_ns
                self.tight = i
        self.charged = done
        if self.tight >= 0:
            self.remaining = best
            self.reset_s = (best_reset + NS - 1) // NS
        self.retry_s = 0
        return -1

    cpdef void release(self, tuple keys, uint64_t charged) except *:
        """End of a request admitted by check(): give back its concurrency slots (`charged` is the
        value of .charged after that check)."""
        cdef uint64_t kv[16]
        self._unpack(keys, kv)
        self.release_c(kv, charged)

    cdef void release_c(self, const uint64_t* keys, uint64_t charged) noexcept nogil:
        cdef int i
        cdef uint64_t k
        cdef Slot* first
        cdef Slot* s
        for i in range(self.n):
            if self.kind[i] != K_CONC or not (charged >> i) & 1:
                continue
            k = self._key(keys, i)
            first = self.table._bucket(k)
            _lock(self.table.hdr, first)
            s = self.table.find(k, 0, False)
            if s != NULL and s.a > 0:
                s.a -= 1
                if s.a == 0:
                    s.idle_at = 0
            _unlock(first)
