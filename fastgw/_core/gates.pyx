# cython: boundscheck=False, wraparound=False
"""The compiled hot path of the route policies (fastgw/policies; README "Traffic policy", "Identity").

The policies are Python classes (config compilation, JWT verification, Redis, logging) deriving from the
cdef classes here, whose `on_request` (the request phase: fastgw/policies/contract.py) answers the common
request in C and calls back into the Python subclass for everything else. The split is by frequency, not by
feature: each fast path gives exactly the answer the Python path would, and falls back to it whenever it
cannot tell.

  Gate       the base of every policy: the request phase, compiled; the other phases are plain methods.
  Chain      a route's on_request phase: its policies in stage order, the first answer wins.
  AuthGate   auth: the route's first method is an API key found in the verified-key cache, or a bearer
             JWT found (unexpired) in its issuer's verified-token cache -> admit (unless some client
             address is over its budget of failed credentials: then the Python `throttled` first); else
             the Python `authenticate` (every method in order, the full verification, the error answers).
  RateGate   rate limits on a plan kept in the host bucket table (sync = "local", or no [redis]): key
             hash, the bucket check, the decision counter and the RateLimit headers in one call; plans
             kept in Redis go to the Python `shared` (strict, lease, failure modes).
  CacheGate  the response cache: a GET/HEAD whose entry is fresh (and needs no Vary value or validator
             work) -> the entry's Respond with Age and Cache-Status, the hit counted; else the Python
             `slow_request` (fastgw/policies/cache/policy.py).
  CorsGate   CORS: the request's Origin granted or not, its response lines added in the request phase;
             host patterns and preflights in Python.
  LifecycleGate  the lifecycle's response lines, its counter and the 410 after the sunset.
  (RateGate and its parts are in gates_rate.pyx, CorsGate and LifecycleGate in gates_lines.pyx, both
  included at the end.)

Measured with callgrind on the gateway scenario (bench/ratelimit.py): the Python policies cost ~33k
instructions per request on top of the ~32k of plain proxying; see the README's benchmark section.
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

from fastgw._core.buckets cimport Plan, Table, _hash
from fastgw._core.phases cimport Respond, parse_lines
from fastgw._core.wire cimport ieq

# (The decision counters and key parts are declared in gates.pxd.)


cdef inline int64_t _now(int clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline char* _itoa(char* out, long long v) noexcept nogil:
    """Write v in decimal at out; return the end."""
    cdef char tmp[24]
    cdef int n = 0
    cdef unsigned long long u
    if v < 0:
        out[0] = b'-'
        out += 1
        u = <unsigned long long>(-v)
    else:
        u = <unsigned long long>v
    while True:
        tmp[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    while n > 0:
        n -= 1
        out[0] = tmp[n]
        out += 1
    return out


# ---------------------------------------------------------------------------------------------------
# Identity

cdef class Identity:
    """The verified caller. `consumer` is the consumer name (or the token's consumer claim when no
    [consumers.NAME] maps it), `plan` its rate plan if known, `method` how it authenticated, `headers`
    the (name, value) pairs set on the upstream request. Built once per API key or verified token and
    shared read-only by the requests that present it."""
    cdef public str consumer
    cdef public str method
    cdef public object plan
    cdef public object claims
    cdef public frozenset scopes
    cdef public frozenset roles
    cdef public list headers
    cdef bytes lines                 # headers as header lines, built on first use

    def __init__(self, str consumer, str method, plan=None, claims=None, frozenset scopes=frozenset(),
                 frozenset roles=frozenset()):
        self.consumer = consumer
        self.method = method
        self.plan = plan
        self.claims = claims
        self.scopes = scopes
        self.roles = roles
        self.headers = []

    def __repr__(self):
        return f"Identity({self.consumer!r}, {self.method!r}, plan={self.plan!r})"

    cdef bytes header_lines(self):
        if self.lines is None:
            self.lines = b"".join([n + b": " + v + b"\r\n" for n, v in self.headers])
        return self.lines


# ---------------------------------------------------------------------------------------------------
# The exchange as the gates see it

cdef class PolicyExchange:
    """The request's fields and the lines policies add (declared in gates.pxd), with the methods a policy
    calls: the worker's Exchange derives from it, so a gate reads and adds them with C calls (a Python
    method call on the exchange cost ~200 instructions each, five per request on an API-key route).
    Anything else that stands in for an exchange (tests drive policies with their own) is reached
    through its Python methods: the _header, _add_* helpers below choose."""

    cpdef object header(self, bytes lname):
        """The value of the forwarded request header `lname` (lowercase), or None. Headers the gateway
        owns (Host, framing, hop-by-hop, X-Forwarded-*, identity headers) are not visible here."""
        cdef list pieces = self.head.pieces
        cdef Py_ssize_t i, n
        cdef const char* want
        if lname is None:
            raise TypeError("header name must be bytes, not None")
        n = PyBytes_GET_SIZE(lname)
        want = PyBytes_AS_STRING(lname)
        # Compared in C, folding ASCII A-Z as bytes.lower() does: no lowercase copy per field.
        for i in range(0, len(pieces), 4):
            if ieq(PyBytes_AS_STRING(<bytes>pieces[i]), PyBytes_GET_SIZE(<bytes>pieces[i]), want, n):
                return pieces[i + 2]
        return None

    cpdef object add_upstream_lines(self, bytes lines):
        """Complete header lines (b"Name: value\r\n"...), prebuilt by a policy, for the upstream request."""
        self.up_extra = lines if self.up_extra is None else self.up_extra + lines

    cpdef object add_response_lines(self, bytes lines):
        """Complete header lines for the response, whatever its status."""
        if self.resp_view is not None and self.viewed:
            parse_lines(lines, self.resp_view)
            return
        self.resp_extra = lines if self.resp_extra is None else self.resp_extra + lines


cdef inline object _header(object ex, bytes lname):
    if isinstance(ex, PolicyExchange):
        return (<PolicyExchange>ex).header(lname)
    return ex.header(lname)


cdef inline void _add_response_lines(object ex, bytes lines) except *:
    if isinstance(ex, PolicyExchange):
        (<PolicyExchange>ex).add_response_lines(lines)
    else:
        ex.add_response_lines(lines)


cdef inline object _identity(object ex):
    if isinstance(ex, PolicyExchange):
        return (<PolicyExchange>ex).identity
    return ex.identity


# ---------------------------------------------------------------------------------------------------
# The chain

cdef class Gate:
    """A route policy (fastgw/policies/contract.py). Its request phase is `on_request(exchange)` -> None
    (go on), a rejection tuple, a Respond (the policy answers), or an awaitable of one of those; a policy
    may also define on_upstream_request, on_response, on_response_body and on_log (plain methods: a
    route's phase tuples hold only the phases its policies define, fastgw/policies/chain.py)."""
    def __cinit__(self):
        self.nslots = 1                  # (a policy built outside a route: its own one slot)

    cpdef object on_request(self, object ex):
        return None

    # Per-policy request state. Each policy of a route has its own slot in `ex.states`, a list made by the
    # first policy that keeps state (None until then: a route whose policies keep none pays nothing); the
    # slot is the policy's index in the route's policies, set at config load (chain.install_phases). Two
    # policies on one route (the cache and the Idempotency-Key) never see each other's state.
    cpdef object state(self, object ex):
        """This policy's state for the request `ex` (set_state), or None."""
        s = ex.states
        return None if s is None else (<list>s)[self.slot]

    cpdef set_state(self, object ex, object value):
        """Keep `value` as this policy's state for the request `ex`, until the exchange ends."""
        s = ex.states
        if s is None:
            s = [None] * self.nslots
            ex.states = s
        (<list>s)[self.slot] = value

    cdef bytes response_lines(self, RequestHead h):
        """The response lines this policy adds to every answer of the request (a problem, a Respond, the
        upstream's response), known from the request alone; called by the exchange in C when the route is
        chosen, before on_request, for the policies that set `has_lines` (CORS, the lifecycle)."""
        return None

    cdef object head_request(self, RequestHead h):
        """The request phase of a policy that sets `has_lines`, when the request's head alone decides it
        (a CORS preflight, the lifecycle's 410): None (go on) or an answer, as on_request returns. Called
        in C with response_lines, before any on_request: the registry puts these policies first, so their
        answers come before every other policy's (authentication included) as their on_request did."""
        return None

    def check(self, ex):
        """on_request under its earlier name (callers that test a policy directly)."""
        return self.on_request(ex)


cdef class Chain:
    """A route's on_request phase over several policies. Synchronous until a policy returns an awaitable;
    `finish` (a coroutine function: exchange, awaitable, remaining policies) runs the rest from there. The
    first answer (a rejection or a Respond) wins. The exchange calls `run` in C."""

    def __init__(self, pols, finish):
        for p in pols:
            if not isinstance(p, Gate):
                raise TypeError(f"{type(p).__name__} is not a fastgw._core.gates.Gate")
        self.pols = tuple(pols)
        self.finish = finish

    def __call__(self, ex):
        return self.run(ex)

    cdef object run(self, object ex):
        cdef Py_ssize_t i, n = len(self.pols)
        for i in range(n):
            r = (<Gate>self.pols[i]).on_request(ex)
            if r is None:
                continue
            if type(r) is tuple or type(r) is Respond:
                return r
            return self.finish(ex, r, self.pols[i + 1:])
        return None


# ---------------------------------------------------------------------------------------------------
# Auth

cdef inline bint _space(char c) noexcept nogil:
    return c == b' ' or c == b'\t'


cdef Py_ssize_t _bearer(bytes v, Py_ssize_t* end) noexcept:
    """Where the token of an `Authorization: Bearer <token>` value starts (its end in *end; scheme
    case-insensitive, surrounding blanks dropped, as Issuer.token does), or -1: no copy, no slices."""
    cdef const char* p = PyBytes_AS_STRING(v)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(v), i, start
    cdef const char* scheme = b"bearer "
    if n <= 7:
        return -1
    for i in range(7):
        if (p[i] | 0x20 if b'A' <= p[i] <= b'Z' else p[i]) != scheme[i]:
            return -1
    start = 7
    end[0] = n
    while start < end[0] and _space(p[start]):
        start += 1
    while end[0] > start and _space(p[end[0] - 1]):
        end[0] -= 1
    return start


cdef enum:
    TOKEN_SLOTS = 128       # AuthGate.tokens: the recently seen tokens of a bearer-JWT route (a power of 2)
    KEY_SLOTS = 128         # AuthGate.keys_seen: the same for the API keys of a route (a power of 2)


cdef inline bint _same_secret(const char* a, const char* b, Py_ssize_t n) noexcept nogil:
    """a[:n] == b[:n], in a time that depends on n only: every word is compared, no exit at the first
    difference (as hmac.compare_digest), so a guess learns nothing of how much of a key it got right."""
    cdef uint64_t x, y, acc = 0
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&x, a + i, 8)
        memcpy(&y, b + i, 8)
        acc |= x ^ y
        i += 8
    while i < n:
        acc |= <unsigned char>a[i] ^ <unsigned char>b[i]
        i += 1
    return acc == 0


cdef inline Py_ssize_t _token_slot(const char* t, Py_ssize_t n) noexcept nogil:
    """The slot of a token in AuthGate.tokens: its last 8 bytes (signature characters) and its length,
    mixed. Only a hint: the slot's token is compared whole before it is used."""
    cdef uint64_t x = <uint64_t>n
    if n >= 8:
        memcpy(&x, t + n - 8, 8)
        x ^= <uint64_t>n
    return <Py_ssize_t>((x * <uint64_t>0x9E3779B97F4A7C15) >> 57)


cdef class FailGate:
    """Fast path of fastgw.policies.authfail.FailureBudget (set up by its __init__): is the client's
    address over its budget of failed credentials? Only asked while the table's blocked_until is set."""
    cdef public Table table
    cdef public int64_t interval, burst
    cdef public int reason               # fastgw.metrics.AUTH_REASONS index counted on a refusal
    cdef public bint by_xff              # trusted proxies: the address depends on X-Forwarded-For too
    cdef public dict keys                # peer (or (peer, X-Forwarded-For)) -> the address's table key

    def key(self, ex):
        """The table key of the client's address (Python subclass)."""
        raise NotImplementedError

    cpdef uint64_t address_key(self, object ex) except? 0:
        """key(ex), remembered per peer (and X-Forwarded-For): parsing addresses is the costly part."""
        ck = (ex.peer, ex.xff) if self.by_xff else ex.peer
        k = self.keys.get(ck)
        if k is None:
            if len(self.keys) >= 4096:   # bounded: a client controls the X-Forwarded-For values
                self.keys.clear()
            k = self.keys[ck] = self.key(ex)
        return <uint64_t>k

    cpdef object check(self, object ex):
        """The 429 when the client's address has no failure left, else None."""
        cdef uint64_t until = self.table.hdr.blocked_until
        cdef int64_t now, wait
        if until == 0:
            return None
        now = _now(CLOCK_MONOTONIC)
        if <uint64_t>now >= until:
            self.table.unblock(until)    # every address that was over its budget has a token again
            return None
        wait = self.table.rate_wait(self.address_key(ex), now, self.interval, self.burst)
        if wait == 0:
            return None
        return (429, "auth-throttled", None, b"Retry-After: %d\r\n" % ((wait + 999999999) // 1000000000))


cdef class AuthGate(Gate):
    """Fast path of fastgw.policies.auth.AuthPolicy (set up by its __init__)."""
    cdef public bint ip_rules            # IP allow/deny lists apply: always the Python path
    cdef public int first                # the route's first method: 0 other, 1 api_key, 2 bearer JWT
    cdef public bytes key_header         # lowercase API-key header name
    cdef public dict key_cache           # exact header value -> Identity, for keys that verified
    cdef public object issuer            # first == 2: the Issuer (its .cache: token -> (exp, kid, Identity))
    cdef public frozenset scopes
    cdef public bytes scope_challenge    # on a 403 for a scope: RFC 6750's, on routes that take bearer tokens
    cdef public frozenset roles
    cdef public bytes strip_query        # the API key's query parameter name, taken out of the query sent
                                         #   upstream on every admitted request (None: nothing to take out)
    cdef public FailGate failures        # the client address's failure budget, or None
    cdef unsigned long long[::1] mwords   # the worker's metrics region (fastgw.metrics), if counted
    cdef Py_ssize_t mbase                 # index of this route's first auth-failure word, or -1
    cdef list tokens                      # TOKEN_SLOTS tokens (bytes) found in issuer.cache lately, or None
    cdef list keys_seen                   # KEY_SLOTS API-key header values found in key_cache lately

    def __cinit__(self):
        self.mbase = -1
        self.tokens = [None] * TOKEN_SLOTS
        self.keys_seen = [None] * KEY_SLOTS

    def count_failures(self, words, Py_ssize_t base):
        """Count refusals in words[base + reason] (fastgw.metrics.AUTH_REASONS order)."""
        self.mwords = words
        self.mbase = base

    cpdef void fail(self, int reason):
        if self.mbase >= 0:
            self.mwords[self.mbase + reason] += 1

    cpdef object on_request(self, object ex):
        cdef object hit
        cdef bytes v
        if not self.ip_rules:
            if self.first == 1:
                v = _header(ex, self.key_header)
                if v is not None:
                    hit = self.cached_key(v)
                    if hit is not None:
                        return self.known(ex, <Identity>hit)
            elif self.first == 2:
                v = _header(ex, b"authorization")
                if v is not None:
                    hit = self.cached_token(v)
                    if hit is not None:
                        return self.known(ex, <Identity>hit)
        return self.slow(ex)

    def key_verified(self, bytes raw):
        """The Python path put `raw` (the exact header value of a key it verified) in key_cache: keep that
        object in its slot, so that cached_key's lookups find the dict's own key (compared by identity,
        no bytes comparison)."""
        self.keys_seen[_token_slot(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))] = raw

    cdef object cached_key(self, bytes v):
        """key_cache.get(v), without hashing the request's copy of the key (a new bytes object per
        request: siphash over it, ~150 instructions). As cached_token: the value found last in its slot
        (only values found in key_cache, so bounded by the slots and never a guess) is kept, its hash
        computed once; the request's value is compared with it whole, in constant time (a guess sent to
        that slot must not learn how much of a valid key it matched), then looked up with. The lookup
        is still the dict's: a key dropped from key_cache is not found through its slot either."""
        cdef const char* t = PyBytes_AS_STRING(v)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(v)
        cdef Py_ssize_t k = _token_slot(t, n)
        cdef bytes seen = <bytes>self.keys_seen[k]
        if seen is not None and PyBytes_GET_SIZE(seen) == n and _same_secret(PyBytes_AS_STRING(seen), t, n):
            return self.key_cache.get(seen)
        hit = self.key_cache.get(v)
        if hit is not None:
            self.keys_seen[k] = v
        return hit

    cdef object cached_token(self, bytes v):
        """The Identity of the bearer token in the Authorization value `v` when its issuer's cache holds
        it unexpired, else None. The cache is keyed by the token's bytes: a token copied out of each
        request would be hashed whole each time (siphash, ~1,900 instructions for an RS256 token). The
        token seen last in its slot is kept instead (its hash computed once), compared whole with the
        request's in constant time, and looked up with; a slot that holds another token falls back to the
        copy."""
        cdef Py_ssize_t end = 0
        cdef Py_ssize_t start = _bearer(v, &end)
        cdef const char* t
        cdef Py_ssize_t n, k
        cdef bytes seen
        if start < 0:
            return None
        t = PyBytes_AS_STRING(v) + start
        n = end - start
        k = _token_slot(t, n)
        cache = self.issuer.cache
        seen = <bytes>self.tokens[k]
        # (in constant time, as cached_key: a token sent to this slot must not learn, by timing, how much of
        # the valid token kept there it matched)
        if seen is not None and PyBytes_GET_SIZE(seen) == n and _same_secret(PyBytes_AS_STRING(seen), t, n):
            hit = cache.get(seen)
        else:
            seen = PyBytes_FromStringAndSize(t, n)
            hit = cache.get(seen)
            if hit is not None:
                self.tokens[k] = seen        # only tokens that verified: bounded by the slots, never a guess
        if hit is not None and _now(CLOCK_REALTIME) < <double>(<tuple>hit)[0] * 1e9:
            return (<tuple>hit)[2]
        return None

    cdef object known(self, object ex, Identity ident):
        # A cached credential is still a credential check: an address over its failure budget is refused
        # first, or the cache would answer its guesses. Nothing over budget: one load [issue 11 item 20].
        if self.failures is not None and self.failures.table.hdr.blocked_until != 0:
            r = self.throttled(ex)
            if r is not None:
                return r
        return self._admit(ex, ident)

    def slow(self, ex):
        """The full check (Python subclass)."""
        raise NotImplementedError

    cpdef object throttled(self, object ex):
        """The 429 if the client's address is over its failure budget (counted), else None."""
        if self.failures is None:
            return None
        r = self.failures.check(ex)
        if r is not None:
            self.fail(self.failures.reason)
        return r

    def admit(self, ex, Identity ident):
        """Let the request in as `ident` (None), or the 403 its scopes or roles call for."""
        return self._admit(ex, ident)

    cdef object _admit(self, object ex, Identity ident):
        # (a cdef method: a cpdef one, called on the Python subclass, first looks for an override)
        if self.scopes and not self.scopes <= ident.scopes:
            self.fail(3)
            return (403, "forbidden", b"missing required scope", self.scope_challenge)
        if self.roles and not (self.roles & ident.roles):
            self.fail(3)
            return (403, "forbidden", b"missing required role", None)
        lines = ident.header_lines()
        if isinstance(ex, PolicyExchange):
            (<PolicyExchange>ex).identity = ident
            if lines:
                (<PolicyExchange>ex).add_upstream_lines(lines)
        else:
            ex.identity = ident
            if lines:
                ex.add_upstream_lines(lines)
        if self.strip_query is not None:
            q = ex.query
            if q and ((<bytes>q).find(self.strip_query) >= 0 or (<bytes>q).find(b"%") >= 0):
                ex.set_query(_without_param(q, self.strip_query))
        return None


cdef bytes _without_param(bytes query, bytes name):
    """`query` (b"?a=1&...") without the parameters called `name`, also when the name is percent-encoded
    (an upstream that decodes names would read it as `name`); the others keep their order. A credential
    the gateway reads is never forwarded, whichever credential authenticated the request."""
    from urllib.parse import unquote_to_bytes
    rest = []
    for part in query[1:].split(b"&"):
        key = part.partition(b"=")[0]
        if key == name or (key.find(b"%") >= 0 and unquote_to_bytes(key) == name):
            continue
        rest.append(part)
    return b"?" + b"&".join(rest) if rest else b""


INSUFFICIENT_SCOPE = b'WWW-Authenticate: Bearer realm="fastgw", error="insufficient_scope"\r\n'



# ---------------------------------------------------------------------------------------------------
# The response cache

from libc.stdio cimport snprintf

# The cache's state (Gate.state) of a request answered by CacheGate's fast path: its on_response and on_log
# have nothing to decide.
CACHE_HIT = object()


cdef class CacheEntry:
    """A stored response (fastgw/policies/cache/store.py Entry): its prebuilt answer (a Respond, reused by
    every hit), when it was received (monotonic seconds) and its age then, its freshness and stale
    windows, validators, Vary names, size in bytes, its key in the store and the store's bits (a
    background revalidation out; `used`: hit since the eviction hand last passed it)."""
    cdef public object respond
    cdef public double stored
    cdef public double age
    cdef public double lifetime
    cdef public double swr
    cdef public double sie
    cdef public object etag
    cdef public object last_modified
    cdef public tuple vary
    cdef public Py_ssize_t size
    cdef public object key
    cdef public bint revalidating
    cdef public bint used

    def current_age(self, double now):
        return self.age + (now - self.stored)

    def ttl(self, double now):
        """Seconds left fresh (negative: stale for that long)."""
        return self.lifetime - (self.age + (now - self.stored))


cdef class CacheGate(Gate):
    """Fast path of fastgw.policies.cache.policy.CachePolicy: a GET or HEAD whose entry is fresh, with
    no Vary or with its values already known, and no If-None-Match to answer, is answered here (the
    entry's Respond, Age and Cache-Status added, the hit counted); everything else goes to the Python
    `slow_request` (misses, Vary, validators, stale entries, single-flight, unsafe methods).
    `entries` and `vary` are the store's dicts (the same objects: the store mutates them in place)."""
    cdef public str route
    cdef public dict entries
    cdef public dict vary
    cdef public object allowed              # the key's query parameters (frozenset of bytes), or None
    cdef public object query_key            # rules.query_key
    cdef public object normal               # rules.normal
    cdef public bint per_consumer
    cdef public object words                # the worker's cache counters (memoryview "Q"), or None
    cdef public Py_ssize_t hit_word         # index of this route's hit counter in words (-1: none)

    cpdef object on_request(self, object ex):
        cdef CacheEntry e
        cdef double now, ttl
        cdef char buf[96]
        cdef int n
        m = ex.method
        if m != b"GET" and m != b"HEAD":
            return self.slow_request(ex)
        consumer = ""
        if self.per_consumer:
            ident = _identity(ex)
            if ident is not None:
                consumer = (<Identity?>ident).consumer
        host = ex.host
        q = ex.query
        primary = (self.route, host.lower() if host else b"", ex.path,
                   self.query_key(q, self.allowed) if q and self.allowed else b"", consumer)
        names = self.vary.get(primary)
        if names is None:
            return self.slow_request(ex)
        if names:
            values = tuple([self.normal(_header(ex, name)) for name in <tuple>names])
        else:
            values = ()
        hit = self.entries.get((primary, values))
        if hit is None:
            return self.slow_request(ex)
        e = <CacheEntry>hit
        now = _now(CLOCK_MONOTONIC) / 1e9
        ttl = e.lifetime - (e.age + (now - e.stored))
        if ttl <= 0 or (e.etag is not None and _header(ex, b"if-none-match") is not None):
            return self.slow_request(ex)
        e.used = True
        self.set_state(ex, CACHE_HIT)
        n = snprintf(buf, sizeof(buf), b"Age: %lld\r\nCache-Status: fastgw; hit; ttl=%lld\r\n",
                     <long long>(e.age + (now - e.stored)), <long long>ttl)
        _add_response_lines(ex, PyBytes_FromStringAndSize(buf, n))
        return e.respond

    def on_response(self, ex):
        if self.state(ex) is CACHE_HIT:
            return None
        return self.slow_response(ex)

    def on_log(self, ex):
        if self.state(ex) is CACHE_HIT:
            if self.hit_word >= 0:
                self.words[self.hit_word] += 1
            return
        self.slow_log(ex)


cdef extern from *:
    """
    static inline int fgw_cas64(unsigned long long *p, unsigned long long expect, unsigned long long v) {
        return __atomic_compare_exchange_n(p, &expect, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline unsigned long long fgw_load64(unsigned long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void fgw_store64(unsigned long long *p, unsigned long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int fgw_cas64(unsigned long long *p, unsigned long long expect, unsigned long long v) nogil
    unsigned long long fgw_load64(unsigned long long *p) nogil
    void fgw_store64(unsigned long long *p, unsigned long long v) nogil


def shm_cas(unsigned long long[::1] words, Py_ssize_t i, unsigned long long expect, unsigned long long value):
    """Atomically set words[i] to `value` if it holds `expect` (shared memory written by several workers,
    fastgw/policies/cache/flights.py); True when it did."""
    if i < 0 or i >= words.shape[0]:
        raise IndexError(i)
    return fgw_cas64(&words[i], expect, value) != 0


def shm_load(unsigned long long[::1] words, Py_ssize_t i):
    """words[i], read with acquire ordering (what another worker published before it is visible)."""
    if i < 0 or i >= words.shape[0]:
        raise IndexError(i)
    return fgw_load64(&words[i])


def shm_store(unsigned long long[::1] words, Py_ssize_t i, unsigned long long value):
    """words[i] = value with release ordering (what was written before it is visible to its readers)."""
    if i < 0 or i >= words.shape[0]:
        raise IndexError(i)
    fgw_store64(&words[i], value)


# RateGate and its parts, CorsGate and LifecycleGate: their own files, part of this extension.
include "gates_rate.pyx"
include "gates_lines.pyx"
