"""Identity end to end: a real `fastgw run`, the real echo origin, httpx and raw sockets as clients, and a
local HTTP server playing the IdP's JWKS endpoint (rotation, removal, outage)."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from conftest import GatewayLauncher
from cryptography.hazmat.primitives.asymmetric import rsa

ISS = "https://idp.test"


class Jwks:
    """A JWKS endpoint whose key set and availability the test controls."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.down = False
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits += 1
                if outer.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/jwks.json"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def set(self, *keys: tuple[str, rsa.RSAPrivateKey]) -> None:
        out = []
        for kid, k in keys:
            d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
            d.update(kid=kid, use="sig", alg="RS256")
            out.append(d)
        self.doc = {"keys": out}

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    j = Jwks()
    yield j
    j.close()


def token(key: rsa.RSAPrivateKey, kid: str, **over: Any) -> str:
    now = int(time.time())
    c = {"iss": ISS, "aud": "api", "sub": "client-7", "exp": now + 300, "iat": now, "roles": ["teller", "auditor"]}
    c.update(over)
    return jwt.encode(c, key, algorithm="RS256", headers={"kid": kid})


def headers_of(resp: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, v in resp.json()["headers"]:
        out.setdefault(n.lower(), []).append(v)
    return out


def start(gateway: GatewayLauncher, echo: Any, jwks_url: str, server: dict | None = None,
          limits: dict | None = None) -> Any:
    routes = [
        {"name": "open", "path": "/open", "upstream": "echo"},
        {"name": "any", "path": "/any", "upstream": "echo", "auth": ["jwt:idp", "api_key"]},
        {"name": "keys", "path": "/keys", "upstream": "echo", "auth": ["api_key"]},
        {"name": "admin", "path": "/admin", "upstream": "echo", "auth": ["jwt:idp"], "roles": ["admin"]},
        {"name": "local", "path": "/local", "upstream": "echo", "ip_allow": ["10.0.0.0/8", "::1/128"]},
    ]
    extra = f"""
[auth.jwt.idp]
issuer = "{ISS}"
audiences = ["api"]
algorithms = ["RS256"]
jwks_url = "{jwks_url}"
refresh = "1s"
refetch_min_interval = "200ms"
fetch_timeout = "1s"
claims_to_headers = {{ sub = "X-User-ID", roles = "X-Roles", tenant = "X-Tenant" }}

[auth.api_key]
query = "api_key"

[consumers.partner-a]
api_keys_sha256 = ["{hashlib.sha256(b'secret-key-a').hexdigest()}"]
jwt_subjects = ["client-7"]
"""
    return gateway.start({"echo": {"targets": [echo.addr]}}, routes, limits=limits, server=server, extra=extra)


def test_api_keys_jwt_and_identity_headers_cannot_be_forged(gateway: GatewayLauncher, echo_origin: Any,
                                                            jwks: Jwks) -> None:
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.set(("k1", k1))
    gw = start(gateway, echo_origin, jwks.url)
    forged = {"X-User-ID": "admin", "X-Roles": "admin", "X-Consumer": "bank", "X-Tenant": "other",
              "x-user-id": "admin2"}
    with gw.client() as c:
        # No credentials, bad credentials: 401 problem+json with a challenge.
        for hdrs in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer not.a.token"}):
            r = c.get("/any", headers=hdrs)
            assert r.status_code == 401, (hdrs, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "urn:fastgw:problem:unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
        # API key: consumer header set, the key itself and forged identity headers never forwarded.
        r = c.get("/keys", headers={"X-API-Key": "secret-key-a", **forged})
        assert r.status_code == 200, r.text
        h = headers_of(r)
        assert h["x-consumer"] == ["partner-a"]
        assert "x-api-key" not in h and "x-user-id" not in h and "x-roles" not in h and "x-tenant" not in h
        # The same key in the query string: accepted, and removed from the target sent upstream.
        r = c.get("/keys?a=1&api_key=secret-key-a&b=2")
        assert r.status_code == 200, r.text
        assert r.json()["target"] == "/keys?a=1&b=2" and headers_of(r)["x-consumer"] == ["partner-a"]
        # Repeated requests take the compiled path (verified-key cache): same identity, same headers.
        for _ in range(3):
            h = headers_of(c.get("/keys", headers={"X-API-Key": "secret-key-a", **forged}))
            assert h["x-consumer"] == ["partner-a"] and "x-user-id" not in h
        # JWT: claims become headers; the client's copies are gone.
        r = c.get("/any", headers={"Authorization": f"Bearer {token(k1, 'k1', tenant='t1')}", **forged})
        assert r.status_code == 200, r.text
        h = headers_of(r)
        assert h["x-consumer"] == ["partner-a"] and h["x-user-id"] == ["client-7"]
        assert h["x-roles"] == ["teller,auditor"] and h["x-tenant"] == ["t1"]
        assert len(h["authorization"]) == 1 and h["authorization"][0].startswith("Bearer ")   # forwarded, once
        # An open route forwards none of the identity headers a client made up either.
        h = headers_of(c.get("/open", headers=forged))
        assert not {"x-consumer", "x-user-id", "x-roles", "x-tenant"} & set(h)
        # Roles: authenticated but not an admin.
        r = c.get("/admin", headers={"Authorization": f"Bearer {token(k1, 'k1')}"})
        assert r.status_code == 403 and r.json()["type"] == "urn:fastgw:problem:forbidden"
        assert c.get("/admin", headers={"Authorization": f"Bearer {token(k1, 'k1', roles=['admin'])}"}).status_code == 200
        # IP rules on the real peer address (127.0.0.1 is not in 10/8 or ::1).
        assert c.get("/local").status_code == 403


def test_cached_api_key_is_compared_whole(gateway: GatewayLauncher, echo_origin: Any, jwks: Jwks) -> None:
    """The compiled path keeps the API keys it verified in slots picked by their last bytes: a key that
    shares a cached key's slot (same length, same last 8 bytes) but not its other bytes is refused, every
    time, and the cached key keeps working in between; the key header, under any spelling, is not sent on."""
    gw = start(gateway, echo_origin, jwks.url)
    with gw.client() as c:
        for _ in range(2):
            r = c.get("/keys", headers={"X-API-Key": "secret-key-a"})
            assert r.status_code == 200 and headers_of(r)["x-consumer"] == ["partner-a"], r.text
        # (the first three share the cached key's slot, the last two do not)
        for guess in ("Xecret-key-a", "zecret-key-a", "seXret-key-a", "secreT-key-a", "secret-key-b"):
            for _ in range(2):
                r = c.get("/keys", headers={"X-API-Key": guess})
                assert r.status_code == 401, (guess, r.text)
            assert c.get("/keys", headers={"X-API-Key": "secret-key-a"}).status_code == 200
        for name in ("x-api-key", "X-API-KEY", "X-Api-Key", "x-API-key"):
            r = c.get("/keys", headers={name: "secret-key-a"})
            assert r.status_code == 200, (name, r.text)
            assert "x-api-key" not in headers_of(r), name


def test_query_api_key_is_never_forwarded(gateway: GatewayLauncher, echo_origin: Any, jwks: Jwks) -> None:
    """?api_key=... leaves the target sent upstream whichever credential authenticated the request: the
    header key (first request: the policy; then the compiled key cache) or a JWT on a JWT-or-key route."""
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.set(("k1", k1))
    gw = start(gateway, echo_origin, jwks.url)
    with gw.client() as c:
        for _ in range(3):
            r = c.get("/keys?a=1&api_key=secret-key-a&b=2", headers={"X-API-Key": "secret-key-a"})
            assert r.status_code == 200 and r.json()["target"] == "/keys?a=1&b=2", r.text
        for _ in range(2):
            r = c.get("/any?api_key=secret-key-a&x=1", headers={"Authorization": f"Bearer {token(k1, 'k1')}"})
            assert r.status_code == 200 and r.json()["target"] == "/any?x=1", r.text
            assert headers_of(r)["x-user-id"] == ["client-7"]
    with gw.raw() as c:            # a percent-encoded name reads as api_key to an upstream that decodes it
        c.send(b"GET /keys?api%5Fkey=secret-key-a HTTP/1.1\r\nHost: gw.test\r\nX-API-Key: secret-key-a\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"] == "/keys"
    # A route that does not take API keys leaves the query alone (it is not a credential there).
    with gw.client() as c:
        assert c.get("/open?api_key=abc").json()["target"] == "/open?api_key=abc"


def test_jwks_rotation_removal_and_outage(gateway: GatewayLauncher, echo_origin: Any, jwks: Jwks) -> None:
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.set(("k1", k1))
    gw = start(gateway, echo_origin, jwks.url)
    t1, t2 = token(k1, "k1"), token(k2, "k2")
    with gw.client() as c:
        def status(tok: str) -> int:
            return c.get("/any", headers={"Authorization": f"Bearer {tok}"}).status_code

        assert status(t1) == 200
        assert status(t2) == 401                      # k2 unknown to the IdP so far
        # Rotation: the IdP publishes k2 (and retires k1). The unknown kid triggers a refetch.
        jwks.set(("k2", k2))
        time.sleep(0.25)                              # past refetch_min_interval
        assert status(t2) == 200
        # k1 left the set: its token (cached as verified earlier) is refused now.
        assert status(t1) == 401
        # IdP outage: fetches fail, the last good key set stays in use.
        jwks.down = True
        hits = jwks.hits
        deadline = time.monotonic() + 5
        while jwks.hits < hits + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert jwks.hits >= hits + 2, "the gateway did not retry the JWKS"
        assert status(t2) == 200
        assert status(token(k2, "k2", sub="client-8")) == 200   # a new token, verified with the kept key
        assert status(token(k1, "k3")) == 401
    assert "jwks_fetch_failed" in gw.stderr_text() or any(
        e.get("event") == "jwks_fetch_failed" for e in gw.events)


def test_unknown_kid_flood_is_rate_limited(gateway: GatewayLauncher, echo_origin: Any, jwks: Jwks) -> None:
    k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.set(("k1", k1))
    # 40 failing tokens from one address: without the failure budget (its own test: test_auth_failures.py),
    # so that every one of them reaches the kid lookup this test is about.
    gw = start(gateway, echo_origin, jwks.url, limits={"auth_failures": "off"})
    with gw.client() as c:
        assert c.get("/any", headers={"Authorization": f"Bearer {token(k1, 'k1')}"}).status_code == 200
        before = jwks.hits
        t0 = time.monotonic()
        for i in range(40):
            assert c.get("/any", headers={"Authorization": f"Bearer {token(k1, f'made-up-{i}')}"}).status_code == 401
        elapsed = time.monotonic() - t0
    # At most one refetch per refetch_min_interval (200 ms) plus the 1 s background refresh.
    assert jwks.hits - before <= elapsed / 0.2 + elapsed / 1.0 + 2, (jwks.hits - before, elapsed)
