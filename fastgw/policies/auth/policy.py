"""The auth route policy: identity at the edge. It runs first in the chain (fastgw/policies/chain.py).

Order on a route: IP rules (403, fastgw/policies/auth/iprules.py) -> the client address's budget of
failed credentials (429, fastgw/policies/auth/failbudget.py) -> credentials (`auth = [...]`, any one
listed method suffices: apikey.py, jwt.py, mtls.py; none presented or all failing: 401) -> scopes/roles
(403). On success `ex.identity` is an `Identity` (the rate limiter reads `consumer` and `plan`), and the
identity headers (X-Consumer, claims_to_headers) are added for the upstream. The client's own copies of
those headers never reach the upstream: the request readers drop them (the wire table, fastgw/headers.py,
with every claims_to_headers target added by fastgw/compile.py), under any spelling an upstream might
fold to the same name.

Costs on the request path: the policy derives from fastgw._core.gates.AuthGate, whose compiled `check`
admits, without entering Python, a request whose first method's credential is already known: an API key
in the verified-key cache (exact header value -> identity; filled after one sha256 and one dict lookup by
digest), or a bearer JWT in its issuer's verified-token cache. Everything else runs `slow` below.
"""
from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import INSUFFICIENT_SCOPE, AuthGate, Identity
from fastgw.clientaddr import ClientAddress, nets
from fastgw.observe.metrics import AUTH_REASONS, AUTHF, route_base
from fastgw.policies.auth import failbudget
from fastgw.policies.auth.apikey import ApiKeys
from fastgw.policies.auth.identity import EXPIRED, AuthError
from fastgw.policies.auth.iprules import FORBIDDEN_IP, IpRules
from fastgw.policies.auth.jwt import Issuer, issuer
from fastgw.policies.auth.mtls import CertSubjects
from fastgw.policies.contract import Rejection
from fastgw.process.shm import Section, SharedMemory

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route

_BEARER = b'WWW-Authenticate: Bearer realm="fastgw"\r\n'
_INVALID = b'WWW-Authenticate: Bearer realm="fastgw", error="invalid_token"\r\n'
F_MISSING, F_INVALID, F_EXPIRED, F_IP = (AUTH_REASONS.index(r) for r in ("missing", "invalid", "expired", "ip"))
KEY_CACHE = 4096                 # verified API keys remembered by exact header value (per route policy)


class AuthPolicy(AuthGate):
    def __init__(self, cfg: Config, route: Route, services: dict[str, Any] | None = None) -> None:
        services = services if services is not None else {}
        s = cfg.server
        self.client = ClientAddress(nets(s.trusted_proxies))
        self.rules = IpRules(cfg, route)
        self.ip_rules = self.rules.active
        self.key_cache: dict[bytes, Identity] = {}
        self.methods: list[tuple[str, Any]] = []
        for m in route.auth:
            if m.startswith("jwt:"):
                self.methods.append(("jwt", issuer(cfg, m[4:], services)))
            else:
                self.methods.append((m, None))
        self.api_keys = ApiKeys(cfg)
        self.certs = CertSubjects(cfg)
        ak = cfg.auth.api_key
        self.key_header = self.api_keys.header
        # The query-string key is read on routes that accept API keys: it is then taken out of the query
        # sent upstream whichever credential authenticated the request (AuthGate.admit), unless forward.
        self.strip_query = ak.query.encode() if ak.query and not ak.forward and "api_key" in route.auth else None
        self.scopes = frozenset(route.scopes)
        self.roles = frozenset(route.roles)
        bearer = any(k == "jwt" for k, _ in self.methods)
        self.challenge = _BEARER if bearer else b'WWW-Authenticate: ApiKey realm="fastgw"\r\n'
        # RFC 6750's insufficient_scope names a bearer-token scheme: an API-key route's 403 has no challenge.
        self.scope_challenge = INSUFFICIENT_SCOPE if bearer else None
        # The compiled fast path (AuthGate.on_request) for the route's first method.
        self.first = 0
        if self.methods and self.methods[0][0] == "api_key":
            self.first = 1
        elif self.methods and self.methods[0][0] == "jwt":
            iss = self.methods[0][1]
            if iss.header is None and iss.cookie is None:
                self.first, self.issuer = 2, iss
        # Failed credentials per client address (server.limits.auth_failures): only where some are checked.
        self.budget = failbudget.budget(cfg, services, self.client) if self.methods else None
        self.failures = self.budget           # the compiled check (AuthGate.throttled)

    def slow(self, ex: Any) -> Rejection | Awaitable[Rejection | None] | None:
        if self.ip_rules and not self.rules.admits(self.client(ex)):
            self.fail(F_IP)
            return FORBIDDEN_IP
        if not self.methods:
            return None
        r = self.throttled(ex)             # the failure budget (compiled, AuthGate.throttled)
        if r is not None:
            return r
        return self.authenticate(ex, True)

    def authenticate(self, ex: Any, allow_fetch: bool) -> Rejection | Awaitable[Rejection | None] | None:
        failure: str | None = None
        for kind, iss in self.methods:
            try:
                if kind == "jwt":
                    tok = iss.token(ex)
                    if tok is None:
                        continue
                    ident = iss.verify(tok, allow_fetch)
                    if ident is None:
                        return self._after_fetch(ex, iss)
                elif kind == "api_key":
                    key = self.api_keys.read(ex)
                    if key is None:
                        continue
                    ident = self.api_keys.identity(key)
                    raw = ex.header(self.key_header)
                    if raw is not None:                 # remember the exact header value (AuthGate.on_request)
                        if len(self.key_cache) >= KEY_CACHE:
                            del self.key_cache[next(iter(self.key_cache))]
                        self.key_cache[raw] = ident
                        self.key_verified(raw)
                else:  # mtls
                    cert = ex.peercert
                    if not cert:
                        continue
                    ident = self.certs.identity(cert)
            except AuthError as e:
                failure = failure or str(e)
                continue
            except Exception:    # a library surprise is still a failed credential, never a 500
                failure = failure or "invalid credentials"
                continue
            return self.admit(ex, ident)
        if failure is None:
            self.fail(F_MISSING)
            return (401, "unauthorized", None, self.challenge)
        self.fail(F_EXPIRED if failure == EXPIRED else F_INVALID)
        if self.budget is not None:
            self.budget.failed(ex)
        return (401, "unauthorized", failure.encode(), _INVALID if self.challenge is _BEARER else self.challenge)

    async def _after_fetch(self, ex: Any, iss: Issuer) -> Rejection | None:
        await iss.refetch()
        r = self.authenticate(ex, False)
        return r  # type: ignore[return-value]  # allow_fetch=False never returns an awaitable


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> AuthPolicy | None:
    if not (route.auth or route.ip_allow or route.ip_deny or cfg.server.ip_allow or cfg.server.ip_deny):
        return None
    pol = AuthPolicy(cfg, route, services)
    words = services.get("metrics_words")
    if words is not None and 0 <= mslot and route_base(mslot + 1) <= len(words):
        pol.count_failures(words, route_base(mslot) + AUTHF)
    return pol


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------

def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return [failbudget.SHM_SECTION]


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    failbudget.attach(shm, services)


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    """None of its own: refusals are counted per route in the metrics region (fastgw_auth_failures_total,
    fastgw/observe/metrics.py)."""
    return []
