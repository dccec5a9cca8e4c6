"""JWT, API key and scope/role decisions of the auth policy, sans-IO: the real AuthPolicy built from a
real config, driven with a stand-in exchange (headers in, rejection tuple or identity out).

Every JWT attack vector of issue 5 is here and must be a 401 with WWW-Authenticate; the RFC 7520 §4
JWS examples must verify with keys parsed by our JWK reader.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fastgw.config.root import loads
from fastgw.policies.auth import jwt as J
from fastgw.policies.auth import policy as A

ISS = "https://idp.test"


class Ex:
    """The part of the exchange the auth policy uses."""

    def __init__(self, headers: dict[str, str] | None = None, peer: bytes = b"127.0.0.1", query: bytes = b"",
                 xff: bytes | None = None, peercert: dict | None = None) -> None:
        self.h = {k.lower().encode(): v.encode() for k, v in (headers or {}).items()}
        self.peer, self.query, self.xff, self.peercert = peer, query, xff, peercert
        self.identity: Any = None
        self.up: list[tuple[bytes, bytes]] = []

    def header(self, name: bytes) -> bytes | None:
        return self.h.get(name)

    def add_upstream_header(self, name: bytes, value: bytes) -> None:
        self.up.append((name, value))

    def set_query(self, query: bytes) -> None:
        self.query = query

    def add_upstream_lines(self, lines: bytes) -> None:
        for line in lines.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b": ")
            self.up.append((name, value))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(pub: Any, kid: str) -> dict:
    d = json.loads(jwt.algorithms.get_default_algorithms()[
        "RS256" if isinstance(pub, rsa.RSAPublicKey) else "ES256" if isinstance(pub, ec.EllipticCurvePublicKey)
        else "EdDSA"].to_jwk(pub))
    d["kid"] = kid
    return d


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1()),
            "ed": ed25519.Ed25519PrivateKey.generate()}


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"iss": ISS, "aud": "api", "sub": "client-7", "iat": now, "exp": now + 300, "scope": "read write",
         "roles": ["teller"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def make_policy(tmp_path: Path, keys: dict[str, Any], route_extra: str = "", issuer_extra: str = "",
                algorithms: str = '["RS256", "ES256", "EdDSA"]') -> A.AuthPolicy:
    jwks = {"keys": [jwk_of(keys["rsa"].public_key(), "rsa-1"), jwk_of(keys["ec"].public_key(), "ec-1"),
                     jwk_of(keys["ed"].public_key(), "ed-1")]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    # The policies here answer batteries of failing credentials from one address; each must get its own
    # verdict, so the failure budget (tests/test_auth_failures.py) is off.
    cfg = loads(f"""
[server.limits]
auth_failures = "off"

[upstreams.u]
targets = ["127.0.0.1:9"]

[[routes]]
name = "r"
path = "/r"
upstream = "u"
auth = ["jwt:idp", "api_key"]
{route_extra}

[auth.jwt.idp]
issuer = "{ISS}"
audiences = ["api"]
algorithms = {algorithms}
jwks_file = "{tmp_path / 'jwks.json'}"
leeway = "5s"
max_lifetime = "1h"
claims_to_headers = {{ sub = "X-User-ID", roles = "X-Roles", tenant = "X-Tenant" }}
{issuer_extra}

[consumers.partner-a]
api_keys_sha256 = ["{hashlib.sha256(b'key-a').hexdigest()}"]
jwt_subjects = ["client-7"]
scopes = ["read"]
roles = ["partner"]
""")
    pol = A.build(cfg, cfg.routes[0], {})
    assert pol is not None
    return pol


def bearer(token: str | bytes) -> Ex:
    return Ex({"Authorization": "Bearer " + (token.decode() if isinstance(token, bytes) else token)})


def assert_401(pol: A.AuthPolicy, ex: Ex, detail: bytes | None = None) -> None:
    r = pol.check(ex)
    assert isinstance(r, tuple), r
    assert r[0] == 401 and r[1] == "unauthorized", r
    assert r[3] is not None and r[3].startswith(b"WWW-Authenticate: "), r
    if detail is not None:
        assert r[2] == detail, r
    assert ex.identity is None and not ex.up


def test_valid_rs256_es256_eddsa_map_to_consumer_and_headers(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    for alg, key, kid in (("RS256", keys["rsa"], "rsa-1"), ("ES256", keys["ec"], "ec-1"), ("EdDSA", keys["ed"], "ed-1")):
        ex = bearer(jwt.encode(claims(tenant="t9"), key, algorithm=alg, headers={"kid": kid}))
        assert pol.check(ex) is None
        assert ex.identity.consumer == "partner-a" and ex.identity.method == "jwt:idp"
        assert dict(ex.up) == {b"X-Consumer": b"partner-a", b"X-User-ID": b"client-7", b"X-Roles": b"teller",
                               b"X-Tenant": b"t9"}


def test_cache_hit_is_the_same_identity_and_expires(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    tok = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    a, b = bearer(tok), bearer(tok)
    assert pol.check(a) is None and pol.check(b) is None
    assert a.identity is b.identity
    iss = pol.methods[0][1]
    entry = iss.cache[tok.encode()]
    iss.cache[tok.encode()] = (time.time() - 1, entry[1], entry[2], entry[3])   # as if exp (+ leeway) had passed
    # The cached entry is dropped; the token itself is still valid, so it verifies again (fresh entry).
    assert pol.check(bearer(tok)) is None and iss.cache[tok.encode()][0] > time.time()


def test_cached_token_lookup_is_exact(tmp_path: Path, keys: dict) -> None:
    """The compiled cache lookup keeps the token seen last in a slot chosen by the token's tail and length
    (gates.pyx AuthGate.cached_token): a token with the same length and signature but another payload
    lands in that slot and must still be verified (refused), and either order leaves the real one
    admitted. Blanks around the token and the scheme's case do not change what is looked up."""
    pol = make_policy(tmp_path, keys)
    tok = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    h, p, sig = tok.split(".")
    other = b64(json.dumps({**claims(), "sub": "client-8"}, separators=(",", ":")).encode())
    assert len(other) == len(p)
    twin = ".".join([h, other, sig])
    assert_401(pol, bearer(twin))                      # nothing cached yet
    first = bearer(tok)
    assert pol.check(first) is None                    # verified, cached
    assert pol.check(bearer(tok)) is None              # the slot is filled from the cache
    assert pol.check(bearer(tok)) is None              # ...and answers from it
    assert_401(pol, bearer(twin))                      # same slot, other bytes: verified, refused
    ex = Ex({"Authorization": "bEaReR  " + tok + " "})
    assert pol.check(ex) is None and ex.identity is first.identity
    assert tok.encode() in pol.methods[0][1].cache and twin.encode() not in pol.methods[0][1].cache


@pytest.mark.parametrize("with_kid", [True, False], ids=["same-kid", "same-position-no-kid"])
def test_cached_token_dropped_when_its_key_material_changes(tmp_path: Path, keys: dict, with_kid: bool) -> None:
    """An IdP that reuses a kid (or, in a JWK Set without kids, a position) for a new key: tokens signed
    by the old key leave the cache, compiled fast path included, and no longer verify."""
    pol = make_policy(tmp_path, keys)
    iss = pol.methods[0][1]

    def jwks_of(k: Any) -> bytes:
        jwk = jwk_of(k.public_key(), "rsa-1")
        if not with_kid:
            del jwk["kid"]
        return json.dumps({"keys": [jwk]}).encode()
    iss.set_keys(J.parse_jwks(jwks_of(keys["rsa"])))
    tok = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"} if with_kid else None)
    assert pol.check(bearer(tok)) is None and tok.encode() in iss.cache
    iss.set_keys(J.parse_jwks(jwks_of(keys["rsa"])))          # a refetch of the same set: the entry stays
    assert tok.encode() in iss.cache
    iss.set_keys(J.parse_jwks(jwks_of(keys["rsa2"])))         # same name, new material
    assert tok.encode() not in iss.cache
    assert_401(pol, bearer(tok))


def forged(header: dict, payload: dict, sig: bytes = b"x") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(sig)])


def raw_rs256(header: dict, payload: dict, key: rsa.RSAPrivateKey) -> str:
    """A signed token PyJWT would refuse to produce."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(key.sign(head.encode(), padding.PKCS1v15(), hashes.SHA256()))


def test_attack_vectors_are_401(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    rsa_pub_pem = keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = claims()
    vectors: dict[str, str | bytes] = {
        "alg none": forged({"alg": "none", "typ": "JWT"}, good, b""),
        "alg none with a signature": forged({"alg": "none"}, good, b"sig"),
        "alg None spelled differently": forged({"alg": "None"}, good, b"sig"),
        "HS256 signed with the RSA public key": forged(
            {"alg": "HS256", "kid": "rsa-1"}, good, b""),
        "kid path traversal": jwt.encode(good, attacker, algorithm="RS256", headers={"kid": "../../../../dev/null"}),
        "kid sql injection": jwt.encode(good, attacker, algorithm="RS256", headers={"kid": "x' OR '1'='1' --"}),
        "jku header": jwt.encode(good, attacker, algorithm="RS256",
                                 headers={"kid": "evil", "jku": "http://127.0.0.1:1/jwks.json"}),
        "x5u header": jwt.encode(good, attacker, algorithm="RS256", headers={"x5u": "http://127.0.0.1:1/cert.pem"}),
        "embedded jwk header": jwt.encode(good, attacker, algorithm="RS256",
                                          headers={"jwk": jwk_of(attacker.public_key(), "evil")}),
        "expired": jwt.encode(claims(exp=int(time.time()) - 60, iat=int(time.time()) - 120), keys["rsa"],
                              algorithm="RS256", headers={"kid": "rsa-1"}),
        "nbf in the future": jwt.encode(claims(nbf=int(time.time()) + 600), keys["rsa"], algorithm="RS256",
                                        headers={"kid": "rsa-1"}),
        "wrong aud": jwt.encode(claims(aud="other"), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}),
        "wrong iss": jwt.encode(claims(iss="https://evil.test"), keys["rsa"], algorithm="RS256",
                                headers={"kid": "rsa-1"}),
        "crit header": jwt.encode(good, keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1", "crit": ["exp"]}),
        "oversized": jwt.encode(claims(pad="x" * 9000), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}),
        "malformed base64": "eyJhbGciOiJSUzI1NiJ9!.eyJzdWIiOiJ4In0.c2ln",
        "not three parts": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0",
        "header not json": b64(b"{nope") + "." + b64(b"{}") + ".c2ln",
        "header is a list": b64(b"[1]") + "." + b64(b"{}") + ".c2ln",
        "wrong key type (ES256 token, RSA kid)": jwt.encode(good, keys["ec"], algorithm="ES256",
                                                            headers={"kid": "rsa-1"}),
        "exp as a string": jwt.encode(claims(exp=str(int(time.time()) + 300)), keys["rsa"], algorithm="RS256",
                                      headers={"kid": "rsa-1"}),
        "exp as a list": jwt.encode(claims(exp=[1]), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}),
        "no exp": jwt.encode(claims(exp=None), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}),
        "lifetime over max_lifetime": jwt.encode(claims(exp=int(time.time()) + 7200), keys["rsa"],
                                                 algorithm="RS256", headers={"kid": "rsa-1"}),
        "kid not a string": raw_rs256({"alg": "RS256", "kid": 5}, good, keys["rsa"]),
        "signature by another key": jwt.encode(good, attacker, algorithm="RS256", headers={"kid": "rsa-1"}),
        "sub not a string": jwt.encode(claims(sub=["a"]), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}),
    }
    # The HS256 token "signed" with the RSA public key, built by hand (PyJWT refuses to make one).
    import hmac
    head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()) + "." + b64(json.dumps(good).encode())
    vectors["HS256 signed with the RSA public key"] = head + "." + b64(
        hmac.new(rsa_pub_pem, head.encode(), hashlib.sha256).digest())
    for name, tok in vectors.items():
        ex = bearer(tok)
        r = pol.check(ex)
        assert isinstance(r, tuple) and r[0] == 401 and r[3] and b"invalid_token" in r[3], (name, r)
        assert ex.identity is None and not ex.up, name
    assert pol.check(bearer(vectors["oversized"]))[2] == b"token too large"  # type: ignore[index]


def test_oversized_token_is_refused_before_any_crypto(tmp_path: Path, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pol = make_policy(tmp_path, keys)
    tok = jwt.encode(claims(pad="x" * 9000), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    calls = []
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1))
    assert_401(pol, bearer(tok), b"token too large")
    assert calls == []


def test_library_exception_is_401_not_500(tmp_path: Path, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pol = make_policy(tmp_path, keys)

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("surprise")

    monkeypatch.setattr(jwt, "decode", boom)
    assert_401(pol, bearer(jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})))


def test_no_credentials_is_401_with_challenge(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    r = pol.check(Ex())
    assert r == (401, "unauthorized", None, b'WWW-Authenticate: Bearer realm="fastgw"\r\n')
    r = pol.check(Ex({"Authorization": "Basic dXNlcjpwYXNz"}))
    assert isinstance(r, tuple) and r[0] == 401 and r[2] is None


def test_api_keys(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    ex = Ex({"X-API-Key": "key-a"})
    assert pol.check(ex) is None
    assert ex.identity.consumer == "partner-a" and ex.identity.method == "api_key"
    assert ex.up == [(b"X-Consumer", b"partner-a")]
    assert_401(pol, Ex({"X-API-Key": "key-b"}), b"unknown API key")
    assert_401(pol, Ex({"X-API-Key": ""}), b"unknown API key")


def test_api_key_from_query_when_configured(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys, issuer_extra='\n[auth.api_key]\nquery = "api_key"\n')
    ex = Ex(query=b"?a=1&api_key=key-a")
    assert pol.check(ex) is None and ex.identity.consumer == "partner-a"
    assert ex.query == b"?a=1"                      # the key is not forwarded upstream
    ex = Ex(query=b"?api_key=key-a")
    assert pol.check(ex) is None and ex.query == b""
    assert pol.check(Ex(query=b"?api_key=nope"))[0] == 401  # type: ignore[index]


def test_query_key_is_never_forwarded_whichever_credential_authenticated(tmp_path: Path, keys: dict) -> None:
    """The query-string key is a credential the gateway reads: it leaves the query sent upstream also when
    the header key (the slow path, then the compiled cache) or a JWT authenticated the request, and under
    a percent-encoded name (an upstream that decodes names reads it as api_key)."""
    pol = make_policy(tmp_path, keys, issuer_extra='\n[auth.api_key]\nquery = "api_key"\n')
    for _ in range(2):
        ex = Ex({"X-API-Key": "key-a"}, query=b"?a=1&api_key=someone-elses&b=2")
        assert pol.check(ex) is None and ex.identity.method == "api_key"
        assert ex.query == b"?a=1&b=2"
    for _ in range(2):
        ex = bearer(jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}))
        ex.query = b"?api_key=key-a"
        assert pol.check(ex) is None and ex.identity.method == "jwt:idp"
        assert ex.query == b""
    ex = Ex({"X-API-Key": "key-a"}, query=b"?api%5Fkey=k1&x=api_key&api%5fkey=k2&api_keys=1")
    assert pol.check(ex) is None and ex.query == b"?x=api_key&api_keys=1"
    # forward = true: the key travels on, in the header and in the query.
    pol = make_policy(tmp_path, keys, issuer_extra='\n[auth.api_key]\nquery = "api_key"\nforward = true\n')
    ex = Ex({"X-API-Key": "key-a"}, query=b"?api_key=key-a")
    assert pol.check(ex) is None and ex.query == b"?api_key=key-a"


def test_unknown_kid_is_refused_with_a_jwks_file(tmp_path: Path, keys: dict) -> None:
    """A kid the issuer's JWK Set does not hold is refused even when the token is signed by one of the
    set's keys: the kid is not a hint to try the others (docs/identity.md "JWT")."""
    pol = make_policy(tmp_path, keys)
    for kid in ("unknown", "ec-1"):
        tok = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": kid})
        r = pol.check(bearer(tok))
        assert isinstance(r, tuple) and r[0] == 401, (kid, r)
    assert_401(pol, bearer(jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "unknown"})),
               b"unknown signing key")
    # The right kid, and no kid at all (every key of the set is tried), still verify.
    assert pol.check(bearer(jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"}))) is None
    assert pol.check(bearer(jwt.encode(claims(sub="client-7", jti="x"), keys["rsa"], algorithm="RS256"))) is None


def test_one_failing_credential_does_not_block_another(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    ex = Ex({"Authorization": "Bearer garbage.garbage.garbage", "X-API-Key": "key-a"})
    assert pol.check(ex) is None and ex.identity.method == "api_key"


def test_scopes_and_roles_403(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys, route_extra='scopes = ["write"]\nroles = ["admin", "teller"]')
    ok = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    assert pol.check(bearer(ok)) is None
    no_scope = jwt.encode(claims(scope="read"), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    r = pol.check(bearer(no_scope))
    assert isinstance(r, tuple) and r[:3] == (403, "forbidden", b"missing required scope")
    no_role = jwt.encode(claims(roles=["clerk"]), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    r = pol.check(bearer(no_role))
    assert isinstance(r, tuple) and r[:3] == (403, "forbidden", b"missing required role")
    # An API key consumer has scopes ["read"] only: authenticated, but not allowed here.
    r = pol.check(Ex({"X-API-Key": "key-a"}))
    assert isinstance(r, tuple) and r[0] == 403


def test_claim_values_cannot_inject_header_lines(tmp_path: Path, keys: dict) -> None:
    pol = make_policy(tmp_path, keys)
    ex = bearer(jwt.encode(claims(tenant="a\r\nX-Admin: 1", roles=["r\n"]), keys["rsa"], algorithm="RS256",
                           headers={"kid": "rsa-1"}))
    assert pol.check(ex) is None
    names = [n for n, _ in ex.up]
    assert b"X-Tenant" not in names and b"X-Roles" not in names
    assert all(b"\r" not in v and b"\n" not in v for _, v in ex.up)


def test_token_from_cookie_or_header(tmp_path: Path, keys: dict) -> None:
    tok = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "rsa-1"})
    pol = make_policy(tmp_path, keys, issuer_extra='cookie = "session"')
    assert pol.check(Ex({"Cookie": f"a=b; session={tok}; c=d"})) is None
    assert pol.check(bearer(tok)) == (401, "unauthorized", None, b'WWW-Authenticate: Bearer realm="fastgw"\r\n')
    pol = make_policy(tmp_path, keys, issuer_extra='header = "X-Token"')
    assert pol.check(Ex({"X-Token": tok})) is None


def test_hs256_secret_issuer(tmp_path: Path) -> None:
    cfg = loads("""
[upstreams.u]
targets = ["127.0.0.1:9"]
[[routes]]
name = "r"
path = "/r"
upstream = "u"
auth = ["jwt:hs"]
[auth.jwt.hs]
issuer = "me"
algorithms = ["HS256"]
secret = "0123456789abcdef0123456789abcdef"
""")
    pol = A.build(cfg, cfg.routes[0], {})
    assert pol is not None
    good = jwt.encode({"iss": "me", "sub": "s", "exp": int(time.time()) + 60}, "0123456789abcdef0123456789abcdef",
                      algorithm="HS256")
    assert pol.check(bearer(good)) is None
    bad = jwt.encode({"iss": "me", "sub": "s", "exp": int(time.time()) + 60}, "another-secret-another-secret-xx",
                     algorithm="HS256")
    assert pol.check(bearer(bad))[0] == 401  # type: ignore[index]


# RFC 7520 §3.1 (P-521 public key), §3.5 (HMAC key) and the §4.3 / §4.4 compact JWS examples: published
# test vectors. The payload is the Figure 7 text (not a claims set), so the signature layer is checked
# with keys read by our JWK parser.
RFC7520_PAYLOAD = ("It\u2019s a dangerous business, Frodo, going out your door. You step onto the road, and if you "
                   "don't keep your feet, there\u2019s no knowing where you might be swept off to.").encode()
RFC7520_PAYLOAD_B64 = ("SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IH"
                       "lvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBk"
                       "b24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcm"
                       "UgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4")
RFC7520_EC = {"kty": "EC", "kid": "bilbo.baggins@hobbiton.example", "use": "sig", "crv": "P-521",
              "x": "AHKZLLOsCOzz5cY97ewNUajB957y-C-U88c3v13nmGZx6sYl_oJXu9A5RkTKqjqvjyekWF-7ytDyRXYgCF5cj0Kt",
              "y": "AdymlHvOiLxXkEhayXQnNCvDX4h9htZaCJN34kfmC6pV5OhQHiraVySsUdaQkAgDPrwQrJmbnX9cwlGfP-HqHZR1"}
RFC7520_OCT = {"kty": "oct", "kid": "018c0ae5-4d9b-471b-bfd6-eef314bc7037", "use": "sig", "alg": "HS256",
               "k": "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg"}
RFC7520_43 = ("eyJhbGciOiJFUzUxMiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9." + RFC7520_PAYLOAD_B64 + "."
              "AE_R_YZCChjn4791jSQCrdPZCNYqHXCTZH0-JZGYNlaAjP2kqaluUIIUnC9qvbu9Plon7KRTzoNEuT4Va2cmL1eJAQy3mtPBu_u_sDDy"
              "YjnAMDxXPn7XrT0lw-kvAD890jl8e2puQens_IEKBpHABlsbEPX6sFY8OcGDqoRuBomu9xQ2")
RFC7520_44 = ("eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9." + RFC7520_PAYLOAD_B64
              + ".s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0")


@pytest.mark.parametrize("jwk,token,alg", [(RFC7520_EC, RFC7520_43, "ES512"), (RFC7520_OCT, RFC7520_44, "HS256")],
                         ids=["4.3-ES512", "4.4-HS256"])
def test_rfc7520_jws_examples_verify(jwk: dict, token: str, alg: str) -> None:
    assert base64.urlsafe_b64decode(RFC7520_PAYLOAD_B64 + "==") == RFC7520_PAYLOAD
    key = J.parse_jwk(jwk)
    assert J.key_fits(key, alg)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["kid"] == jwk["kid"]
    assert jwt.PyJWS().decode(token, key.key, algorithms=[alg]) == RFC7520_PAYLOAD
    # One flipped signature byte must fail.
    bad = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.PyJWS().decode(bad, key.key, algorithms=[alg])


def test_jwk_parser_refuses_non_signature_keys() -> None:
    for bad in ({**RFC7520_OCT, "use": "enc"}, {"kty": "weird"}, {**RFC7520_OCT, "kid": 7}, {"kty": "oct", "k": "!!"}):
        with pytest.raises(ValueError):
            J.parse_jwk(bad)
    # Private members are never kept: the key is public.
    key = J.parse_jwk({**RFC7520_EC, "d": "AAhRON2r9cqXX1hg-RoI6R1tX5p2rUAYdmpHZoC1XNM56KtscrX6zbKipQrCW9CGZH3T4ubpnoTKLDYJ_fF3_rJt"})
    assert isinstance(key.key, ec.EllipticCurvePublicKey)


def test_client_address_and_ip_rules(tmp_path: Path, keys: dict) -> None:
    cfg = loads("""
[server]
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
ip_deny = ["192.0.2.66/32"]
[upstreams.u]
targets = ["127.0.0.1:9"]
[[routes]]
name = "r"
path = "/r"
upstream = "u"
ip_allow = ["192.0.2.0/24", "2001:db8::/32"]
""")
    pol = A.build(cfg, cfg.routes[0], {})
    assert pol is not None
    assert pol.check(Ex(peer=b"192.0.2.7")) is None
    assert pol.check(Ex(peer=b"2001:db8::1")) is None
    assert pol.check(Ex(peer=b"::ffff:192.0.2.7")) is None                   # v4-mapped v6 peer
    assert pol.check(Ex(peer=b"198.51.100.1"))[0] == 403                     # type: ignore[index]
    assert pol.check(Ex(peer=b"2001:db9::1"))[0] == 403                      # type: ignore[index]
    assert pol.check(Ex(peer=b"192.0.2.66"))[0] == 403                       # deny wins  # type: ignore[index]
    # X-Forwarded-For counts only from a trusted proxy, right-most untrusted entry.
    assert pol.check(Ex(peer=b"10.1.1.1", xff=b"198.51.100.9, 192.0.2.7")) is None
    assert pol.check(Ex(peer=b"10.1.1.1", xff=b"192.0.2.7, 198.51.100.9"))[0] == 403  # type: ignore[index]
    assert pol.check(Ex(peer=b"10.1.1.1", xff=b"192.0.2.7, 10.2.2.2")) is None       # skips trusted hops
    assert pol.check(Ex(peer=b"fd00::5", xff=b"2001:db8::9")) is None
    assert pol.check(Ex(peer=b"198.51.100.1", xff=b"192.0.2.7"))[0] == 403   # untrusted peer: XFF ignored  # type: ignore[index]
    assert pol.check(Ex(peer=b"10.1.1.1", xff=b"garbage"))[0] == 403          # type: ignore[index]


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from fastgw.config.root import ConfigError
    base = """
[upstreams.u]
targets = ["127.0.0.1:9"]
[[routes]]
name = "r"
path = "/r"
upstream = "u"
"""
    cases = {
        'auth = ["jwt:nope"]\n': 'routes[0].auth[0]: unknown JWT issuer "nope" (known: none)',
        'auth = ["basic"]\n': 'routes[0].auth[0]: unknown method "basic" (use "api_key", "jwt:NAME" or "mtls")',
        'ip_allow = ["10.0.0.300/8"]\n': 'routes[0].ip_allow[0]: "10.0.0.300/8" is not an IP address or CIDR block',
        'auth = ["mtls"]\n': 'routes[0].auth[0]: "mtls" needs a [[server.tls]] listener with client_ca',
    }
    for extra, want in cases.items():
        with pytest.raises(ConfigError) as e:
            loads(base + extra)
        assert any(err.startswith(want) for err in e.value.errors), (want, e.value.errors)
    with pytest.raises(ConfigError) as e:
        loads(base + '\n[auth.jwt.x]\nissuer = "i"\nalgorithms = ["HS256", "RS256", "none"]\nleeway = "2m"\n'
              'secret = "s"\njwks_url = "ftp://x"\n[consumers.c]\napi_keys_sha256 = ["abc"]\n')
    errs = "\n".join(e.value.errors)
    for want in ('auth.jwt.x.algorithms[2]: unsupported algorithm "none"',
                 "auth.jwt.x.algorithms: HMAC (HS256) and public-key algorithms (RS256) cannot be mixed",
                 "auth.jwt.x: exactly one key source is required",
                 "auth.jwt.x.leeway: must be between 0s and 60s",
                 'auth.jwt.x.jwks_url: "ftp://x" is not an http:// or https:// URL',
                 "consumers.c.api_keys_sha256[0]: expected 64 lowercase hex digits"):
        assert want in errs, (want, errs)


def test_issuers_belong_to_the_worker_services_not_the_module() -> None:
    """An issuer (its fetched keys, its token cache) lives in the `services` of the worker that compiled
    the config: kept across that worker's reloads while its settings do not change, never shared with
    another compilation (no module-level state on the request path)."""
    text = """
[upstreams.u]
targets = ["127.0.0.1:9"]
[[routes]]
name = "r"
path = "/r"
upstream = "u"
auth = ["jwt:hs"]
[auth.jwt.hs]
issuer = "me"
algorithms = ["HS256"]
secret = "0123456789abcdef0123456789abcdef"
"""
    cfg = loads(text)
    worker_a: dict[str, object] = {}
    worker_b: dict[str, object] = {}
    iss_a = A.build(cfg, cfg.routes[0], worker_a).methods[0][1]  # type: ignore[union-attr]
    iss_b = A.build(cfg, cfg.routes[0], worker_b).methods[0][1]  # type: ignore[union-attr]
    assert iss_a is not iss_b
    again = loads(text)                      # a reload with the same settings keeps the issuer
    assert A.build(again, again.routes[0], worker_a).methods[0][1] is iss_a  # type: ignore[union-attr]
    changed = loads(text.replace('issuer = "me"', 'issuer = "you"'))
    assert A.build(changed, changed.routes[0], worker_a).methods[0][1] is not iss_a  # type: ignore[union-attr]
