"""fastgw_auth_failures_total{route,reason}: every refusal of an auth policy is counted once, under the
reason the client was given (2 workers, so the per-worker counters are summed by the supervisor)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import jwt
import rlutil
from procutil import metric

SECRET = "0123456789abcdef0123456789abcdef"
ROUTES = f'''
[[routes]]
name = "keys"
path = "/keys/*"
upstream = "origin"
auth = ["api_key", "jwt:idp"]
roles = ["teller"]

[[routes]]
name = "office"
path = "/office/*"
upstream = "origin"
ip_allow = ["10.0.0.0/8"]

[auth.jwt.idp]
issuer = "https://idp.test"
algorithms = ["HS256"]
secret = "{SECRET}"

[consumers.teller]
api_keys_sha256 = ["{hashlib.sha256(b"key-teller").hexdigest()}"]
roles = ["teller"]

[consumers.viewer]
api_keys_sha256 = ["{hashlib.sha256(b"key-viewer").hexdigest()}"]
'''


def token(exp_in: int) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "https://idp.test", "sub": "teller", "iat": now - 120, "exp": now + exp_in},
                      SECRET, algorithm="HS256")


def test_auth_failures_counted_by_route_and_reason(tmp_path: Path, echo_origin) -> None:
    gw = rlutil.start(tmp_path, rlutil.config(echo_origin.addr, ROUTES, ""), workers=2)
    try:
        # Separate connections, so both workers serve some of them.
        def get(path: str, **headers: str) -> int:
            return httpx.get(gw.base + path, headers=headers, timeout=5).status_code

        for _ in range(4):
            assert get("/keys/a") == 401                                           # missing
        for _ in range(3):
            assert get("/keys/a", **{"X-API-Key": "wrong"}) == 401                 # invalid
        assert get("/keys/a", Authorization="Bearer " + token(-60)) == 401         # expired
        for _ in range(5):
            assert get("/keys/a", **{"X-API-Key": "key-viewer"}) == 403            # forbidden (role)
        for _ in range(2):
            assert get("/office/a") == 403                                         # ip
        for _ in range(6):                                                         # admitted: not counted
            assert get("/keys/a", **{"X-API-Key": "key-teller"}) == 200
        text = rlutil.metrics(gw)
        got = {reason: metric(text, "fastgw_auth_failures_total", route=route, reason=reason)
               for route, reason in (("keys", "missing"), ("keys", "invalid"), ("keys", "expired"),
                                     ("keys", "forbidden"), ("office", "ip"))}
        assert got == {"missing": 4, "invalid": 3, "expired": 1, "forbidden": 5, "ip": 2}, got
        assert metric(text, "fastgw_auth_failures_total", route="office", reason="missing") == 0
        assert "# TYPE fastgw_auth_failures_total counter" in text
    finally:
        gw.close()


DUP_ROUTES = f'''
[[routes]]
name = "keys"
path = "/keys/*"
upstream = "origin"
auth = ["api_key"]

[[routes]]
name = "tok"
path = "/tok/*"
upstream = "origin"
auth = ["jwt:hdr"]

[[routes]]
name = "cookie"
path = "/cookie/*"
upstream = "origin"
auth = ["jwt:ck"]

[auth.jwt.hdr]
issuer = "https://idp.test"
algorithms = ["HS256"]
secret = "{SECRET}"
header = "X-Token"

[auth.jwt.ck]
issuer = "https://idp.test"
algorithms = ["HS256"]
secret = "{SECRET}"
cookie = "jwt"

[consumers.teller]
api_keys_sha256 = ["{hashlib.sha256(b"key-teller").hexdigest()}"]
'''


def test_credential_headers_are_never_ambiguous(tmp_path: Path, echo_origin) -> None:
    """Two copies of a header the config reads a credential from (here the API-key header and an
    issuer's own header) are refused before routing, like two Authorization fields: 400, and nothing
    reaches the upstream; a token cookie sent twice is a 401. One copy works."""
    import http.client
    gw = rlutil.start(tmp_path, rlutil.config(echo_origin.addr, DUP_ROUTES, ""), workers=1)
    host, port = gw.listen.rsplit(":", 1)
    good = token(600)
    try:
        def raw(path: str, headers: list[tuple[str, str]]) -> int:
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            c.putrequest("GET", path)
            for n, v in headers:
                c.putheader(n, v)
            c.endheaders()
            status = c.getresponse().status
            c.close()
            return status
        before = len(echo_origin.requests_for("/dup-"))
        assert raw("/keys/dup-1", [("X-API-Key", "key-teller"), ("x-api-key", "forged")]) == 400
        assert raw("/tok/dup-2", [("X-Token", good), ("X-Token", "forged.forged.forged")]) == 400
        assert raw("/cookie/dup-3", [("Cookie", f"jwt={good}; jwt=forged.forged.forged")]) == 401
        assert len(echo_origin.requests_for("/dup-")) == before
        assert raw("/keys/ok-1", [("X-API-Key", "key-teller")]) == 200
        assert raw("/tok/ok-2", [("X-Token", good)]) == 200
        assert raw("/cookie/ok-3", [("Cookie", f"a=1; jwt={good}")]) == 200
    finally:
        gw.close()
