"""The auth policy's config: [auth.api_key], [auth.jwt.NAME], the identity keys of [consumers.NAME] and
of [[routes]] (auth, scopes, roles, ip_allow, ip_deny); their schema and checks, and the request headers
the config gives a role. (The server-wide defaults server.ip_allow, server.ip_deny, server.trusted_proxies
and server.limits.auth_failures are [server] keys: fastgw/config/server.py.)"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from fastgw import headers
from fastgw.config.checks import NAME, TOKEN, check_cidrs
from fastgw.config.schema import Duration, FilePath, keypath
from fastgw.policies.contract import RequestHeaders

if TYPE_CHECKING:
    from fastgw.config.root import Config

# Algorithms a JWT issuer may pin. "none" is never accepted; HMAC and public-key algorithms may not be
# mixed in one issuer (the classic confusion: an HS256 token "signed" with the RSA public key).
JWT_HMAC = frozenset({"HS256", "HS384", "HS512"})
JWT_PUBLIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ApiKeyAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[auth.api_key]: where the key is read and whether it travels on."""

    header: str = "X-API-Key"
    query: str | None = None
    forward: bool = False


class JwtIssuer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[auth.jwt.NAME]: one token issuer (fastgw/policies/auth/jwt.py)."""

    issuer: str
    algorithms: list[str]
    audiences: list[str] = msgspec.field(default_factory=list)
    required_claims: list[str] = msgspec.field(default_factory=list)
    leeway: Duration = 30.0
    max_lifetime: Duration | None = None
    jwks_file: FilePath | None = None
    jwks_url: str | None = None
    public_key: str | None = None           # inline PEM
    secret: str | None = None               # HS*: inline shared secret
    secret_env: str | None = None           # HS*: name of an environment variable holding it
    refresh: Duration = 300.0
    refetch_min_interval: Duration = 10.0
    fetch_timeout: Duration = 5.0
    header: str | None = None               # read the token from this header instead of Authorization
    cookie: str | None = None               # or from this cookie
    consumer_claim: str = "sub"
    plan_claim: str | None = None
    scopes_claim: str = "scope"
    roles_claim: str = "roles"
    claims_to_headers: dict[str, str] = msgspec.field(default_factory=dict)
    cache_size: int = 10000


class Auth(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    api_key: ApiKeyAuth = msgspec.field(default_factory=ApiKeyAuth)
    jwt: dict[str, JwtIssuer] = msgspec.field(default_factory=dict)


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The policy's top-level keys (composed into the root Config)."""

    auth: Auth = msgspec.field(default_factory=Auth)


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The policy's keys in [[routes]]."""

    auth: list[str] = msgspec.field(default_factory=list)        # methods: "api_key", "jwt:NAME", "mtls"
    scopes: list[str] = msgspec.field(default_factory=list)
    roles: list[str] = msgspec.field(default_factory=list)
    ip_allow: list[str] = msgspec.field(default_factory=list)
    ip_deny: list[str] = msgspec.field(default_factory=list)


class ConsumerKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The policy's keys in [consumers.NAME]: the credentials that name the consumer, its scopes and roles."""

    api_keys_sha256: list[str] = msgspec.field(default_factory=list)
    jwt_subjects: list[str] = msgspec.field(default_factory=list)
    cert_subjects: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)
    roles: list[str] = msgspec.field(default_factory=list)


def check(cfg: Config, errors: list[str]) -> None:
    s = cfg.server
    ak = cfg.auth.api_key
    if not TOKEN.fullmatch(ak.header):
        errors.append(f'auth.api_key.header: invalid header name "{ak.header}"')
    elif headers.why(ak.header):
        errors.append(f"auth.api_key.header: {ak.header} cannot carry an API key ({headers.why(ak.header)})")
    elif "_" in ak.header and not s.limits.allow_underscores:
        errors.append(f"auth.api_key.header: {ak.header} contains \"_\": such request headers are dropped "
                      "(server.limits.allow_underscores = false)")
    if ak.query is not None and not re.fullmatch(r"[A-Za-z0-9_.~-]+", ak.query):
        errors.append(f'auth.api_key.query: invalid query parameter name "{ak.query}"')

    for name, iss in cfg.auth.jwt.items():
        _check_issuer(name, iss, keypath("auth.jwt", name), errors, s.limits.allow_underscores)

    hashes: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for name, c in cfg.consumers.items():
        p = keypath("consumers", name)
        for i, h in enumerate(c.api_keys_sha256):
            if not _SHA256_HEX.fullmatch(h):
                errors.append(f"{p}.api_keys_sha256[{i}]: expected 64 lowercase hex digits (sha256 of the key)")
            elif h in hashes:
                errors.append(f'{p}.api_keys_sha256[{i}]: the same key hash is also held by consumer "{hashes[h]}"')
            hashes.setdefault(h, name)
        for i, sub in enumerate(c.jwt_subjects):
            if sub in subjects:
                errors.append(f'{p}.jwt_subjects[{i}]: "{sub}" is also mapped to consumer "{subjects[sub]}"')
            subjects.setdefault(sub, name)

    mtls = any(t.client_ca for t in s.tls)
    for i, r in enumerate(cfg.routes):
        p = f"routes[{i}]"
        check_cidrs(r.ip_allow, f"{p}.ip_allow", errors)
        check_cidrs(r.ip_deny, f"{p}.ip_deny", errors)
        for j, method in enumerate(r.auth):
            kind, _, ref = method.partition(":")
            if method in ("api_key", "mtls"):
                if method == "mtls" and not mtls:
                    errors.append(f'{p}.auth[{j}]: "mtls" needs a [[server.tls]] listener with client_ca')
            elif kind == "jwt" and ref:
                if ref not in cfg.auth.jwt:
                    known = ", ".join(sorted(cfg.auth.jwt)) or "none"
                    errors.append(f'{p}.auth[{j}]: unknown JWT issuer "{ref}" (known: {known})')
            else:
                errors.append(f'{p}.auth[{j}]: unknown method "{method}" (use "api_key", "jwt:NAME" or "mtls")')
        if (r.scopes or r.roles) and not r.auth:
            errors.append(f"{p}.scopes: scopes and roles need auth methods on the route")


def _check_issuer(name: str, iss: JwtIssuer, p: str, errors: list[str], allow_underscores: bool) -> None:
    if not NAME.fullmatch(name):
        errors.append(f'{p}: invalid issuer name "{name}" (use letters, digits, "_", ".", "-")')
    if not iss.algorithms:
        errors.append(f"{p}.algorithms: at least one algorithm is required (pin what the issuer signs with)")
    for i, a in enumerate(iss.algorithms):
        if a not in JWT_HMAC | JWT_PUBLIC:
            errors.append(f'{p}.algorithms[{i}]: unsupported algorithm "{a}" '
                          f'(known: {", ".join(sorted(JWT_HMAC | JWT_PUBLIC))})')
    hmac = [a for a in iss.algorithms if a in JWT_HMAC]
    public = [a for a in iss.algorithms if a in JWT_PUBLIC]
    if hmac and public:
        errors.append(f"{p}.algorithms: HMAC ({', '.join(hmac)}) and public-key algorithms "
                      f"({', '.join(public)}) cannot be mixed in one issuer")
    sources = [k for k, v in (("jwks_file", iss.jwks_file), ("jwks_url", iss.jwks_url), ("public_key", iss.public_key),
                              ("secret", iss.secret), ("secret_env", iss.secret_env)) if v]
    if len(sources) != 1:
        errors.append(f"{p}: exactly one key source is required: jwks_file, jwks_url, public_key, secret or "
                      f"secret_env (got {', '.join(sources) or 'none'})")
    if (iss.secret or iss.secret_env) and public:
        errors.append(f"{p}.algorithms: a shared secret only verifies HS256/384/512")
    if iss.public_key and hmac:
        errors.append(f"{p}.algorithms: a public key cannot verify {', '.join(hmac)}")
    if iss.jwks_file is not None:
        try:
            doc = json.loads(Path(iss.jwks_file).read_bytes())
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
                errors.append(f'{p}.jwks_file: "{iss.jwks_file}" is not a JWK Set (no "keys" array)')
        except OSError as e:
            errors.append(f'{p}.jwks_file: cannot read "{iss.jwks_file}": {e.strerror or e}')
        except ValueError:
            errors.append(f'{p}.jwks_file: "{iss.jwks_file}" is not JSON')
    if iss.jwks_url is not None and not re.match(r"https?://[^/\s]+", iss.jwks_url):
        errors.append(f'{p}.jwks_url: "{iss.jwks_url}" is not an http:// or https:// URL')
    if iss.public_key is not None and "-----BEGIN" not in iss.public_key:
        errors.append(f"{p}.public_key: expected a PEM block (-----BEGIN PUBLIC KEY-----)")
    if not 0 <= iss.leeway <= 60:
        errors.append(f"{p}.leeway: must be between 0s and 60s (clock skew, not a grace period)")
    if iss.max_lifetime is not None and iss.max_lifetime <= 0:
        errors.append(f"{p}.max_lifetime: must be greater than 0")
    for key, seconds in (("refresh", iss.refresh), ("refetch_min_interval", iss.refetch_min_interval),
                         ("fetch_timeout", iss.fetch_timeout)):
        if seconds <= 0:
            errors.append(f"{p}.{key}: must be greater than 0")
    if iss.cache_size < 0:
        errors.append(f"{p}.cache_size: must not be negative (0 disables the cache)")
    if iss.header is not None:
        if not TOKEN.fullmatch(iss.header):
            errors.append(f'{p}.header: invalid header name "{iss.header}"')
        elif headers.why(iss.header):
            errors.append(f"{p}.header: {iss.header} cannot carry a token ({headers.why(iss.header)})")
        elif "_" in iss.header and not allow_underscores:
            errors.append(f'{p}.header: {iss.header} contains "_": such request headers are dropped '
                          "(server.limits.allow_underscores = false)")
    if iss.cookie is not None and not TOKEN.fullmatch(iss.cookie):
        errors.append(f'{p}.cookie: invalid cookie name "{iss.cookie}"')
    for claim, header in iss.claims_to_headers.items():
        kp = keypath(f"{p}.claims_to_headers", claim)
        if not TOKEN.fullmatch(header):
            errors.append(f'{kp}: invalid header name "{header}"')
        elif headers.role(header) not in (None, headers.IDENTITY):
            errors.append(f"{kp}: {header} cannot carry a claim ({headers.why(header)})")


def request_headers(cfg: Config) -> RequestHeaders:
    """- identity: every claims_to_headers target (the client's copy is dropped, like X-Consumer's);
    - credentials: every header the config reads a credential from (the API-key header, JWT issuers'
      `header`, and Cookie when an issuer reads a cookie): with two copies the gateway would check one
      and the upstream might read the other;
    - strip: the API key header, unless auth.api_key.forward."""
    jwt = cfg.auth.jwt.values()
    identity = [h for i in jwt for h in i.claims_to_headers.values()]
    credentials = [cfg.auth.api_key.header] + [i.header for i in jwt if i.header]
    if any(i.cookie for i in jwt):
        credentials.append("Cookie")
    return RequestHeaders(identity, credentials, [] if cfg.auth.api_key.forward else [cfg.auth.api_key.header])
