"""JWT: issuers ([auth.jwt.NAME]) with their keys (a JWK Set from a file or a URL kept fresh in the
background, a PEM public key, or a shared secret), local verification, and the verified-token cache the
compiled fast path reads (fastgw._core.gates.AuthGate: exact token bytes; bounded, honouring exp;
entries whose key left the JWKS are dropped). Only a token signed with a kid the gateway has not seen
makes a request wait (a rate-limited JWKS refetch).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Identity
from fastgw.fetch import http_get
from fastgw.observe.log import log
from fastgw.policies.auth.identity import EXPIRED, AuthError, consumer_plan

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.policies.auth.config import JwtIssuer

# PyJWT and cryptography are imported when an issuer is built, not with this module: the worker (which
# imports it through fastgw.compile) starts faster when no route uses JWT, and a restarted worker is back
# sooner.

MAX_TOKEN = 8192                 # larger tokens are refused before any crypto (a client-controlled size)
MAX_JWKS = 1024 * 1024           # a JWK Set larger than this is not a JWK Set
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# Which key type (and curve) each algorithm needs: a token never chooses how its key is interpreted.
_ALG_KEY: dict[str, tuple[str, str | None]] = {
    **{a: ("oct", None) for a in ("HS256", "HS384", "HS512")},
    **{a: ("RSA", None) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _header_value(v: Any) -> bytes | None:
    """A claim as a header value: strings, numbers, booleans and lists of those (comma-joined); visible
    ASCII only, so a claim can never smuggle CR/LF or anything a downstream parser reads differently."""
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, str | int | float):
        s = str(v)
    elif isinstance(v, list) and all(isinstance(x, str | int | float) and not isinstance(x, bool) for x in v):
        s = ",".join(str(x) for x in v)
    else:
        return None
    if len(s) > 4096 or not all(0x20 <= ord(c) < 0x7F for c in s):
        return None
    return s.encode()


def _strset(v: Any) -> frozenset[str]:
    if isinstance(v, str):
        return frozenset(v.split())
    if isinstance(v, list):
        return frozenset(x for x in v if isinstance(x, str))
    return frozenset()


# ---------------------------------------------------------------------------------------------------
# Keys

class Key:
    """A verification key. `fp` fingerprints its material: a cached token stays valid only while the key
    installed under the same name has the same fingerprint (an IdP may reuse a kid, or a position in a
    JWK Set without kids, for new key material)."""
    __slots__ = ("kid", "kty", "crv", "alg", "key", "fp")

    def __init__(self, kid: str | None, kty: str, crv: str | None, alg: str | None, key: Any,
                 material: bytes = b"") -> None:
        self.kid, self.kty, self.crv, self.alg, self.key = kid, kty, crv, alg, key
        self.fp = hashlib.sha256(kty.encode() + b"\0" + material).digest()


def _material(jwk: dict[str, Any]) -> bytes:
    """The public members that define a JWK's key (RFC 7638's choice), canonical JSON."""
    return json.dumps({k: jwk[k] for k in ("crv", "e", "k", "kty", "n", "x", "y") if k in jwk},
                      sort_keys=True, separators=(",", ":")).encode()


def _b64(s: Any) -> bytes:
    if not isinstance(s, str) or not s or not set(s.encode()) <= _B64URL:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_jwk(jwk: Any) -> Key:
    """One JWK (RFC 7517) as a verification key; raises ValueError for anything unusable for signatures."""
    if not isinstance(jwk, dict):
        raise ValueError("a JWK must be an object")
    kty, kid, alg, use = jwk.get("kty"), jwk.get("kid"), jwk.get("alg"), jwk.get("use")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid must be a string")
    if use is not None and use != "sig":
        raise ValueError(f"use {use!r} is not sig")
    if alg is not None and alg not in _ALG_KEY:
        raise ValueError(f"unsupported alg {alg!r}")
    if kty == "oct":
        return Key(kid, "oct", None, alg, _b64(jwk.get("k")), _material(jwk))
    import jwt
    if kty not in ("RSA", "EC", "OKP"):
        raise ValueError(f"unsupported kty {kty!r}")
    pub = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}  # public part only
    curve_alg = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(jwk.get("crv", ""), "ES256")
    pyjwk = jwt.PyJWK(pub, algorithm=alg or {"RSA": "RS256", "EC": curve_alg, "OKP": "EdDSA"}[kty])
    crv = jwk.get("crv") if kty in ("EC", "OKP") else None
    return Key(kid, kty, crv, alg, pyjwk.key, _material(jwk))


def parse_jwks(data: bytes) -> dict[str, Key]:
    """A JWK Set as {kid or "#n": Key}; keys that are not signature keys (or unusable) are skipped."""
    if len(data) > MAX_JWKS:
        raise ValueError("JWK Set larger than 1 MiB")
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK Set (no "keys" array)')
    out: dict[str, Key] = {}
    for i, jwk in enumerate(doc["keys"]):
        try:
            k = parse_jwk(jwk)
        except Exception:
            continue
        out[k.kid if k.kid is not None else f"#{i}"] = k
    return out


def pem_key(text: str) -> Key:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    k = load_pem_public_key(text.encode())
    pem = text.encode()
    if isinstance(k, rsa.RSAPublicKey):
        return Key(None, "RSA", None, None, k, pem)
    if isinstance(k, ec.EllipticCurvePublicKey):
        return Key(None, "EC", _CURVES.get(k.curve.name), None, k, pem)
    if isinstance(k, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return Key(None, "OKP", None, None, k, pem)
    raise ValueError("unsupported public key type")


def key_fits(key: Key, alg: str) -> bool:
    kty, crv = _ALG_KEY[alg]
    if key.kty != kty or (key.alg is not None and key.alg != alg):
        return False
    return crv is None or key.crv == crv


# ---------------------------------------------------------------------------------------------------
# JWT issuers

class Issuer:
    """One [auth.jwt.NAME]: its keys (static, or a JWKS kept fresh in the background with the last
    known good set kept on failure) and its verified-token cache."""

    def __init__(self, name: str, c: JwtIssuer, cfg: Config) -> None:
        import jwt
        self.jwt = jwt
        self.name = name
        self.c = c
        self.algorithms = frozenset(c.algorithms)
        self.audience = list(c.audiences) or None
        self.require = ["exp", *c.required_claims]
        self.keys: dict[str, Key] = {}
        self.cache: dict[bytes, tuple[float, str, Identity, bytes]] = {}   # token -> (exp, key name, identity, key fp)
        self.subjects = {s: n for n, cons in cfg.consumers.items() for s in cons.jwt_subjects}
        self.cfg = cfg
        self.fetching: asyncio.Future[None] | None = None
        self.last_fetch = -1e18
        self.loaded = False
        self.task: asyncio.Task[None] | None = None
        self.cookie = c.cookie.encode() + b"=" if c.cookie else None
        self.header = c.header.lower().encode() if c.header else None
        if c.jwks_file:
            self.set_keys(parse_jwks(Path(c.jwks_file).read_bytes()))
        elif c.public_key:
            self.set_keys({"#pem": pem_key(c.public_key)})
        elif c.secret is not None or c.secret_env:
            secret = c.secret if c.secret is not None else os.environ.get(c.secret_env or "")
            if secret is None:
                raise ValueError(f"auth.jwt.{name}.secret_env: environment variable {c.secret_env} is not set")
            self.set_keys({"#secret": Key(None, "oct", None, None, secret.encode(), secret.encode())})

    # -- keys ------------------------------------------------------------------------------------------
    def set_keys(self, keys: dict[str, Key]) -> None:
        """Install a key set; cached tokens whose key left it are dropped."""
        self.keys = keys
        self.loaded = True
        # In place: the compiled gate reads this dict through the issuer.
        for t in [t for t, e in self.cache.items() if e[1] not in keys or keys[e[1]].fp != e[3]]:
            del self.cache[t]

    def start(self) -> None:
        """Begin background JWKS refreshes (jwks_url only) on the running loop, if there is one."""
        if not self.c.jwks_url or (self.task is not None and not self.task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.task = loop.create_task(self._refresher())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _refresher(self) -> None:
        while True:
            ok = await self.refetch()
            # After a failure retry sooner, but never faster than refetch_min_interval.
            await asyncio.sleep(self.c.refresh if ok else max(self.c.refetch_min_interval, min(self.c.refresh, 30.0)))

    async def refetch(self) -> bool:
        """Fetch the JWKS once (concurrent callers share the fetch). A failure keeps the current keys."""
        if self.fetching is not None:
            await asyncio.shield(self.fetching)
            return True
        loop = asyncio.get_running_loop()
        self.fetching = loop.create_future()
        self.last_fetch = time.monotonic()
        ok = False
        try:
            assert self.c.jwks_url
            keys = parse_jwks(await http_get(self.c.jwks_url, self.c.fetch_timeout, MAX_JWKS))
            if not keys:
                raise ValueError("no usable signature keys")
            if set(keys) != set(self.keys):
                log("jwks_updated", issuer=self.name, kids=sorted(keys))
            self.set_keys(keys)
            ok = True
        except Exception as e:
            log("jwks_fetch_failed", level="warning", issuer=self.name, url=self.c.jwks_url,
                error=f"{type(e).__name__}: {e}", keeping=len(self.keys))
        finally:
            fut, self.fetching = self.fetching, None
            fut.set_result(None)
        return ok

    def may_refetch(self) -> bool:
        """An unknown kid triggers a refetch at most once per refetch_min_interval (a flood of made-up
        kids must not become a flood of requests to the IdP)."""
        if not self.c.jwks_url:
            return False
        if self.fetching is not None or not self.loaded:
            return True
        return time.monotonic() - self.last_fetch >= self.c.refetch_min_interval

    # -- tokens ----------------------------------------------------------------------------------------
    def token(self, ex: Any) -> bytes | None:
        if self.header is not None:
            return ex.header(self.header)
        if self.cookie is not None:
            raw = ex.header(b"cookie")
            if not raw:
                return None
            found = [p[len(self.cookie):] for p in (q.strip() for q in raw.split(b";")) if p.startswith(self.cookie)]
            if len(found) > 1:                  # which one would the upstream read? refuse the ambiguity
                raise AuthError("token cookie sent more than once")
            return found[0] if found else None
        auth = ex.header(b"authorization")
        if auth is None or len(auth) < 7 or auth[:7].lower() != b"bearer ":
            return None
        return auth[7:].strip()

    def verify(self, token: bytes, allow_fetch: bool) -> Identity | None:
        """The identity for `token`; None when its kid is unknown and a refetch may help (the caller
        awaits `refetch()` and calls again with allow_fetch=False). Raises AuthError otherwise."""
        hit = self.cache.get(token)
        if hit is not None:
            if time.time() < hit[0]:
                return hit[2]
            del self.cache[token]
        if len(token) > MAX_TOKEN:
            raise AuthError("token too large")
        parts = token.split(b".")
        if len(parts) != 3 or not all(parts) or not all(set(p) <= _B64URL for p in parts):
            raise AuthError("malformed token")
        try:
            header = json.loads(_b64(parts[0].decode()))
        except (ValueError, binascii.Error):
            raise AuthError("malformed token header") from None
        if not isinstance(header, dict):
            raise AuthError("malformed token header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("algorithm not allowed")
        if "crit" in header:
            raise AuthError("unsupported critical header")   # RFC 7515 §4.1.11: we understand no extension
        if "b64" in header:
            raise AuthError("unsupported header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed kid")
        # jku, x5u, jwk and x5c are never followed: keys come from configuration only. A kid names a key of
        # the issuer's JWK Set (jwks_file or jwks_url): one the set does not hold is refused, never tried
        # against the other keys (RFC 7515 4.1.4; the set is what the IdP publishes). A single configured
        # key (public_key, secret) has no kid to match.
        if kid is not None and (self.c.jwks_url is not None or self.c.jwks_file is not None):
            key = self.keys.get(kid)
            if key is None:
                if allow_fetch and self.may_refetch():
                    return None
                raise AuthError("unknown signing key")
            candidates = [key]
        else:
            candidates = list(self.keys.values())
            if not candidates and allow_fetch and self.may_refetch():
                return None
        candidates = [k for k in candidates if key_fits(k, alg)]
        if not candidates:
            raise AuthError("no key of the right type for this algorithm")
        claims = None
        used = ""
        for k in candidates:
            try:
                claims = self.jwt.decode(token, k.key, algorithms=[alg], audience=self.audience, issuer=self.c.issuer,
                                    leeway=self.c.leeway, options={"require": self.require, "verify_signature": True})
                used = k.kid if k.kid is not None else next(n for n, v in self.keys.items() if v is k)
                break
            except self.jwt.ExpiredSignatureError:
                raise AuthError(EXPIRED) from None
            except self.jwt.ImmatureSignatureError:
                raise AuthError("token not yet valid") from None
            except self.jwt.InvalidAudienceError:
                raise AuthError("wrong audience") from None
            except self.jwt.InvalidIssuerError:
                raise AuthError("wrong issuer") from None
            except self.jwt.MissingRequiredClaimError as e:
                raise AuthError(f"missing claim {e.claim}") from None
            except self.jwt.InvalidSignatureError:
                continue
            except Exception:
                raise AuthError("invalid token") from None
        if claims is None:
            raise AuthError("invalid signature")
        exp = self.check_claims(claims)
        ident = self.identity(claims)
        if self.c.cache_size:
            if len(self.cache) >= self.c.cache_size:
                del self.cache[next(iter(self.cache))]
            self.cache[token] = (exp + self.c.leeway, used, ident, self.keys[used].fp)
        return ident

    def check_claims(self, claims: dict[str, Any]) -> float:
        """Claim types (PyJWT accepts "exp": "123" because int() does) and the maximum lifetime."""
        for name in ("exp", "nbf", "iat"):
            v = claims.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise AuthError(f"claim {name} is not a number")
        for name in ("iss", "sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise AuthError(f"claim {name} is not a string")
        aud = claims.get("aud")
        if aud is not None and not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
            raise AuthError("claim aud is not a string or an array of strings")
        exp = float(claims["exp"])
        if self.c.max_lifetime is not None:
            start = float(claims["iat"]) if "iat" in claims else time.time()
            if exp - start > self.c.max_lifetime + self.c.leeway:
                raise AuthError("token lifetime too long")
        if "iat" in claims and float(claims["iat"]) > time.time() + self.c.leeway:
            raise AuthError("token issued in the future")
        return exp

    def identity(self, claims: dict[str, Any]) -> Identity:
        c = self.c
        who = claims.get(c.consumer_claim)
        if not isinstance(who, str | int) or isinstance(who, bool) or who == "":
            raise AuthError(f"claim {c.consumer_claim} missing")
        who = str(who)
        consumer = self.subjects.get(who, who if who in self.cfg.consumers else None)
        plan = claims.get(c.plan_claim) if c.plan_claim else None
        if not isinstance(plan, str):
            plan = consumer_plan(self.cfg, consumer) if consumer else None
        cons = self.cfg.consumers.get(consumer) if consumer else None
        scopes = _strset(claims.get(c.scopes_claim)) | (frozenset(cons.scopes) if cons else frozenset())
        roles = _strset(claims.get(c.roles_claim)) | (frozenset(cons.roles) if cons else frozenset())
        ident = Identity(consumer or who, f"jwt:{self.name}", plan, claims, scopes, roles)
        hv = _header_value(ident.consumer)
        if hv is not None:
            ident.headers.append((b"X-Consumer", hv))
        for claim, header in c.claims_to_headers.items():
            v = _header_value(claims.get(claim)) if claim in claims else None
            if v is not None:
                ident.headers.append((header.encode(), v))
        return ident


def issuer(cfg: Config, name: str, services: dict[str, Any]) -> Issuer:
    """The issuer [auth.jwt.NAME] of `cfg`, kept in the worker's `services` (not in this module: each
    worker, and each compilation without a worker, has its own). Issuers survive reloads while their
    settings do not change, so a reload keeps the fetched keys and the token cache. Keyed by name; the
    stored settings (JSON) decide reuse."""
    import msgspec
    issuers: dict[str, tuple[bytes, Issuer]] = services.setdefault("jwt_issuers", {})
    c = cfg.auth.jwt[name]
    sig = msgspec.json.encode(c) + msgspec.json.encode(cfg.consumers)
    old = issuers.get(name)
    if old is not None and old[0] == sig and not c.jwks_file:
        old[1].cfg = cfg
        return old[1]
    if old is not None:
        old[1].stop()
    iss = Issuer(name, c, cfg)
    issuers[name] = (sig, iss)
    iss.start()
    return iss
