# (Included by gates.pyx: the rate gate and its parts, compiled into fastgw._core.gates.)
#
# Rate limits (fastgw/policies/ratelimit): a plan's limit keys hashed from the request (KeySpec, Keys),
# its RateLimit lines (Headers), its decision counters (Counter), and RateGate, which checks the keys
# against the host bucket table (buckets.pyx) in one C call on plans kept locally.

cdef class KeySpec:
    """How one limit key is made from a request: its parts, hashed in order (FNV-1a + splitmix64 of
    each value, chained). A missing consumer or header counts as the client's address ("ip:" + peer),
    never as one bucket shared by everyone."""
    cdef tuple kinds
    cdef tuple names
    cdef int n                      # len(kinds), at most 16
    cdef int kind[16]               # kinds, read in C
    cdef str consumer               # the consumer seen last (Identity objects are shared: the same str)
    cdef bytes consumer_b           # ...and its bytes, not encoded again per request
    cdef uint64_t consumer_seed     # ...and its hash, chained from this value (the parts before it),
    cdef uint64_t consumer_h        #   not computed again while both are the same (0: not computed)

    def __init__(self, parts):
        kinds, names = [], []
        for part in parts:
            if part == "consumer":
                kinds.append(P_CONSUMER)
                names.append(None)
            elif part == "ip":
                kinds.append(P_IP)
                names.append(None)
            elif part == "route":
                kinds.append(P_ROUTE)
                names.append(None)
            elif part.startswith("header:"):
                kinds.append(P_HEADER)
                names.append(part[7:].lower().encode())
            else:
                raise ValueError(f"unknown key part {part!r}")
        if len(kinds) > 16:
            raise ValueError("at most 16 key parts")
        self.kinds = tuple(kinds)
        self.names = tuple(names)
        self.n = len(kinds)
        for i, k in enumerate(kinds):
            self.kind[i] = k

    cdef uint64_t hash(self, object ex, object consumer) except? 0:
        cdef uint64_t h = 0
        cdef Py_ssize_t i
        cdef int kind
        cdef bytes v
        for i in range(self.n):
            kind = self.kind[i]
            if kind == P_CONSUMER:
                if consumer is None:
                    v = b"ip:" + ex.peer
                else:
                    if consumer is not self.consumer:
                        self.consumer_b = (<str>consumer).encode()
                        self.consumer = <str>consumer
                        self.consumer_h = 0
                    if self.consumer_h == 0 or self.consumer_seed != h:
                        self.consumer_seed = h
                        self.consumer_h = _hash(h, <const unsigned char*>PyBytes_AS_STRING(self.consumer_b),
                                                PyBytes_GET_SIZE(self.consumer_b))
                    h = self.consumer_h
                    continue
            elif kind == P_IP:
                v = ex.peer
            elif kind == P_ROUTE:
                name = ex.route_name
                v = (<str>name).encode() if name is not None else b""
            else:
                v = _header(ex, self.names[i])
                if v is None:
                    v = b"ip:" + ex.peer
            h = _hash(h, <const unsigned char*>PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
        return h


cdef class Keys:
    """A plan's distinct limit keys (a tuple of KeySpec, at most 16: one per limit); `of(ex, consumer)`
    -> tuple of 64-bit hashes (Python callers), `into` -> the same in a C array (the rate gate's path:
    no Python int or tuple per request)."""
    cdef tuple specs

    def __init__(self, specs):
        self.specs = tuple(KeySpec(s) for s in specs)
        if len(self.specs) > 16:
            raise ValueError("at most 16 limit keys per plan")

    cpdef tuple of(self, object ex, object consumer):
        cdef Py_ssize_t n = len(self.specs)
        if n == 1:
            return ((<KeySpec>self.specs[0]).hash(ex, consumer),)
        return tuple([(<KeySpec>s).hash(ex, consumer) for s in self.specs])

    cdef int into(self, object ex, object consumer, uint64_t* out) except -1:
        """The key hashes into out[:n] (n <= 16); returns n."""
        cdef Py_ssize_t i, n = len(self.specs)
        for i in range(n):
            out[i] = (<KeySpec>self.specs[i]).hash(ex, consumer)
        return <int>n


cdef inline tuple _key_tuple(const uint64_t* kv, int n):
    """The key hashes as the Python paths take them (Redis plans, concurrency releases)."""
    if n == 1:
        return (kv[0],)
    return tuple([kv[i] for i in range(n)])


cdef class Headers:
    """A plan's response header lines: RateLimit-Policy (every enforced limit) and RateLimit (the limit
    with the fewest requests left), prebuilt up to the numbers."""
    cdef bytes policy          # b"RateLimit-Policy: ...\r\n" or b""
    cdef tuple prefix          # per limit: b'RateLimit: "name";r='
    # The lines given last and their outcome: the same outcome again (a key whose bucket is full, as
    # under a limit far above its traffic, answers the same r= and t= request after request) gets the
    # same bytes, not formatted again.
    cdef bytes last
    cdef int last_tight
    cdef long long last_remaining, last_reset

    def __init__(self, policy, prefix):
        self.policy = b"RateLimit-Policy: " + policy + b"\r\n" if policy is not None else b""
        self.prefix = tuple(b"RateLimit: " + p for p in prefix)

    cpdef bytes lines(self, int tight, long long remaining, long long reset_s, bytes degraded):
        """The header lines for an outcome (tight < 0: no RateLimit line)."""
        cdef char buf[512]
        cdef char* p = buf
        cdef bytes pre
        cdef Py_ssize_t n, m = PyBytes_GET_SIZE(self.policy)
        if degraded is None and self.last is not None and tight == self.last_tight and \
                remaining == self.last_remaining and reset_s == self.last_reset:
            return self.last
        if tight < 0 or tight >= len(self.prefix):
            out = self.policy
        else:
            pre = <bytes>self.prefix[tight]
            n = PyBytes_GET_SIZE(pre)
            if n + m > 400:
                out = self.policy + pre + b"%d;t=%d\r\n" % (remaining, reset_s)
            else:
                # Both lines written into one buffer: one bytes object per request, no concatenation.
                memcpy(p, PyBytes_AS_STRING(self.policy), m)
                memcpy(p + m, PyBytes_AS_STRING(pre), n)
                p = _itoa(p + m + n, remaining)
                memcpy(p, b";t=", 3)
                p = _itoa(p + 3, reset_s)
                p[0] = b'\r'
                p[1] = b'\n'
                out = PyBytes_FromStringAndSize(buf, p + 2 - buf)
            if degraded is None:
                self.last = out
                self.last_tight = tight
                self.last_remaining = remaining
                self.last_reset = reset_s
        if degraded is not None:
            out = out + b"RateLimit-Degraded: " + degraded + b"\r\n"
        return out


cdef class Release:
    """on_complete callback: give back the concurrency slots a request took."""
    cdef Plan bp
    cdef tuple keys
    cdef unsigned long long charged

    def __call__(self, ex):
        self.bp.release(self.keys, self.charged)


cdef class Counter:
    """Decision counters of one (route, plan) in the worker's stats region (words: a "Q" memoryview)."""
    cdef unsigned long long[::1] words
    cdef Py_ssize_t base          # -1: not counted (the region is full)

    def __init__(self, words, Py_ssize_t base):
        self.words = words
        self.base = base

    cpdef void count(self, int decision):
        if self.base >= 0:
            self.words[self.base + 1 + decision] += 1


cdef class PlanGate:
    """One plan as the rate gate sees it. `bp` is None when the plan is kept in Redis (Python path)."""
    cdef public object rt             # the Python PlanRT
    cdef public str name              # rt.name
    cdef public Plan bp
    cdef public Keys keys
    cdef public Headers headers
    cdef public bint has_quota, has_conc
    cdef public Table lease           # sync = "lease": the worker's lease table (else None)
    cdef public bint lease_fast       # lease plan without concurrency limits: RateGate.on_request spends leases
    cdef public uint64_t lease_seed
    cdef public dict lease_state      # key hash -> [last refill, batch, deny until, tight, remaining, reset]
    cdef public dict inflight         # key hash -> the refill in flight
    cdef public object client         # the plan's RedisClient (.up: the breaker)
    cdef tuple slugs                  # per limit: problem slug of a rejection
    cdef int[16] decision             # per limit: decision counted on rejection
    cdef int[16] conc                 # per limit: 1 for a concurrency limit

    def __init__(self, rt, Plan bp, Keys keys, Headers headers, bint has_quota, bint has_conc, limits):
        cdef int i
        self.rt = rt
        self.name = rt.name
        self.bp = bp
        self.keys = keys
        self.headers = headers
        self.has_quota = has_quota
        self.has_conc = has_conc
        self.slugs = tuple(lim.slug for lim in limits)
        for i, lim in enumerate(limits[:16]):
            self.decision[i] = lim.decision
            self.conc[i] = 1 if lim.is_conc else 0


@cython.final
cdef class LastLookup:
    """One dict lookup kept: d.get(key) again for the same dict and key object (compared by identity)
    returns the value found then. For keys that recur as the same objects request after request (plan
    names from the shared Identity and PlanGate objects) in dicts set up once (RateGate's)."""
    cdef object d, key, value

    cdef inline object get(self, dict d, object key):
        if key is not self.key or d is not self.d:
            self.value = d.get(key)
            self.key = key
            self.d = d
        return self.value


cdef class RateGate(Gate):
    """Fast path of fastgw.policies.ratelimit.RateLimitPolicy (set up by its __init__)."""
    cdef public PlanGate default             # the route's plan, or None
    cdef public dict by_name                 # plan name -> PlanGate (a consumer's or token's plan)
    cdef public dict counters                # plan name -> Counter (absent: not counted)
    cdef LastLookup plan_seen, count_seen    # the last lookup in each

    def __cinit__(self):
        self.plan_seen = LastLookup()
        self.count_seen = LastLookup()

    cpdef object on_request(self, object ex):
        cdef PlanGate pg = self.default
        cdef uint64_t kv[16]
        cdef int n
        consumer = None
        ident = _identity(ex)
        if ident is not None:
            consumer = (<Identity?>ident).consumer      # checked: only AuthGate sets it
            pname = (<Identity>ident).plan
            if pname is not None:
                hit = self.plan_seen.get(self.by_name, pname)
                if hit is not None:
                    pg = <PlanGate>hit
        if pg is None:
            return None
        n = pg.keys.into(ex, consumer, kv)
        if pg.bp is not None:
            return self.local_c(ex, pg, pg.bp, kv, n, None)
        keys = _key_tuple(kv, n)
        if pg.lease_fast and len(keys) == 1 and pg.client.up:
            if self.spend_lease(ex, pg, keys[0], keys):
                return None
        return self.shared(ex, pg.rt, keys)

    cpdef bint spend_lease(self, object ex, PlanGate pg, object tag, tuple keys) except -1:
        """Lease mode: spend a token of this worker's lease for the key `tag`, if one is left (False if
        not). RateLimit comes from the store's reply at the last refill; when half of the last batch is
        spent, the next refill starts (RateLimitPolicy.prefetch) without anyone waiting."""
        cdef uint64_t lk = (<uint64_t>tag) ^ pg.lease_seed
        cdef int64_t mono = _now(CLOCK_MONOTONIC)
        cdef long long left
        if lk == 0:
            lk = 1
        left = pg.lease.lease_take(lk, mono)
        if left < 0:
            return False
        self._count(pg.name, D_ALLOWED)
        st = pg.lease_state.get(tag)
        if st is not None:
            self.lease_headers(ex, pg, <list>st, mono)
            if left * 2 <= <double>(<list>st)[1] and <double>(<list>st)[2] <= mono and tag not in pg.inflight:
                self.prefetch(pg.rt, tag, keys, mono)
        return True

    cpdef void lease_headers(self, object ex, PlanGate pg, list st, int64_t mono):
        """The RateLimit lines of a lease answer, from the lease state `st` of its key."""
        cdef int tight = <int>(<double>st[3])
        cdef int64_t until
        if tight >= 0:
            until = <int64_t>(<double>st[5]) - mono
            _add_response_lines(ex, pg.headers.lines(
                tight, <long long>(<double>st[4]), (until + 999999999) // 1000000000 if until > 0 else 0, None))

    def prefetch(self, rt, tag, keys, mono):
        """Start the next refill of a lease (Python subclass)."""

    def shared(self, ex, rt, keys):
        """Plans kept in Redis (Python subclass)."""
        raise NotImplementedError

    def shadow(self, ex, rt):
        """A shadow limit was over its budget (Python subclass: count and log)."""

    def count(self, plan_name, int decision):
        """Count a decision for the plan (the Python paths)."""
        self._count(plan_name, decision)

    cdef void _count(self, object plan_name, int decision) except *:
        # (a cdef method: a cpdef one, called on the Python subclass, first looks for an override)
        c = self.count_seen.get(self.counters, plan_name)
        if c is not None:
            (<Counter>c).count(decision)

    cpdef object local(self, object ex, PlanGate pg, Plan bp, tuple keys, bytes degraded):
        """Check `keys` against the host table with `bp` (the plan, or its share in a fallback)."""
        cdef uint64_t kv[16]
        cdef int i, n = <int>len(keys)
        if n > 16:
            raise ValueError("at most 16 limit keys per plan")
        for i in range(n):
            kv[i] = <uint64_t>keys[i]
        return self.local_c(ex, pg, bp, kv, n, degraded)

    cdef object local_c(self, object ex, PlanGate pg, Plan bp, const uint64_t* kv, int n, bytes degraded):
        """local() on the key hashes kv[:n] in C."""
        cdef int r
        if n < bp.nkeys:
            raise ValueError(f"{bp.nkeys} key values expected, got {n}")
        r = bp.check_c(kv, _now(CLOCK_MONOTONIC), _now(CLOCK_REALTIME) if pg.has_quota else 0)
        name = pg.name
        if bp.shadowed:
            self.shadow(ex, pg.rt)
        if r >= 0:
            self._count(name, pg.decision[r])
            return self.reject(ex, pg, r, bp.reset_s, bp.retry_s, degraded)
        self._count(name, 5 if degraded is not None else D_ALLOWED)    # 5: "degraded"
        if pg.has_conc:
            rel = Release.__new__(Release)
            (<Release>rel).bp = bp
            (<Release>rel).keys = _key_tuple(kv, n)
            (<Release>rel).charged = bp.charged
            ex.on_complete(rel)
        _add_response_lines(ex, pg.headers.lines(bp.tight, bp.remaining, bp.reset_s, degraded))
        return None

    cpdef object reject(self, object ex, PlanGate pg, int idx, long long reset_s, long long retry_s,
                        bytes degraded):
        """The 429 for limit `idx` (with the RateLimit lines, except for a concurrency limit)."""
        if not pg.conc[idx]:
            _add_response_lines(ex, pg.headers.lines(idx, 0, reset_s, degraded))
        elif degraded is not None:
            _add_response_lines(ex, b"RateLimit-Degraded: " + degraded + b"\r\n")
        return (429, pg.slugs[idx], None, b"Retry-After: %d\r\n" % (retry_s if retry_s > 1 else 1))


