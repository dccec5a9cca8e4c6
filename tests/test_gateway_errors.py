"""The gateway's own error responses: `instance` is never empty (408, 414, 431 included), a 403 for a
missing scope challenges with Bearer only where the route takes bearer tokens, and a route's
response_headers.add goes on its errors except the headers that describe the upstream's content."""
from __future__ import annotations

import hashlib
import json
import time

import jwt
from conftest import GatewayLauncher, free_port
from upstreams import assert_raw_problem

KEY = "k-partner-0001"
SECRET = "s" * 32
AUTH = (f'[auth.jwt.app]\nissuer = "https://idp.test"\nalgorithms = ["HS256"]\nsecret = "{SECRET}"\n'
        f'[consumers.partner]\napi_keys_sha256 = ["{hashlib.sha256(KEY.encode()).hexdigest()}"]\n'
        'jwt_subjects = ["user-1"]\nscopes = ["read"]\n')


def _urn(rid: str) -> str:
    return f"urn:fastgw:request:{rid}"


def test_instance_is_the_request_when_the_head_never_parsed(gateway: GatewayLauncher, echo_origin) -> None:
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, [{"name": "all", "path": "/*", "upstream": "echo"}],
                       limits={"header_timeout": "1s", "max_request_line": "1KiB", "max_header_bytes": "2KiB"})
    with gw.raw() as c:                                          # 414: the request line is over the limit
        c.send(b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        r = c.read_response()
        assert_raw_problem(r, 414, "uri-too-long", instance=_urn(r.header("x-request-id")))
    with gw.raw() as c:                                          # 431: the head is over the limit
        c.send(b"GET /x HTTP/1.1\r\nHost: gw.test\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
        r = c.read_response()
        assert_raw_problem(r, 431, "header-too-large", instance=_urn(r.header("x-request-id")))
    with gw.raw() as c:                                          # 408: the head never ends
        c.send(b"GET /x HTTP/1.1\r\nHost: gw.test\r\n")
        r = c.read_response()
        assert_raw_problem(r, 408, "request-timeout", instance=_urn(r.header("x-request-id")))
    gw2 = gateway.start({"echo": {"targets": [echo_origin.addr]}},
                        [{"name": "one", "path": "/one", "upstream": "echo"}])
    with gw2.client() as c:                                      # the others keep the path
        r = c.get("/nowhere")
        assert r.status_code == 404 and r.json()["instance"] == "/nowhere"


def test_missing_scope_challenges_with_bearer_only_on_bearer_routes(gateway: GatewayLauncher, echo_origin) -> None:
    routes = [{"name": "keys", "path": "/keys", "upstream": "echo", "auth": ["api_key"], "scopes": ["admin"]},
              {"name": "tokens", "path": "/tokens", "upstream": "echo", "auth": ["jwt:app"], "scopes": ["admin"]}]
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, routes, extra=AUTH)
    token = jwt.encode({"iss": "https://idp.test", "sub": "user-1", "exp": int(time.time()) + 300,
                        "scope": "read"}, SECRET, algorithm="HS256")
    with gw.client() as c:
        r = c.get("/keys", headers={"X-API-Key": KEY})
        assert r.status_code == 403 and r.json()["detail"] == "missing required scope"
        assert "www-authenticate" not in r.headers           # RFC 6750 is about bearer tokens
        assert c.get("/keys").headers["www-authenticate"] == 'ApiKey realm="fastgw"'      # 401 still challenges
        r = c.get("/tokens", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 403
        assert r.headers["www-authenticate"] == 'Bearer realm="fastgw", error="insufficient_scope"'


def test_route_headers_on_the_gateways_errors(gateway: GatewayLauncher, echo_origin) -> None:
    add = {"Access-Control-Allow-Origin": "*", "Deprecation": "true", "Sunset": "Wed, 01 Jul 2026 00:00:00 GMT",
           "Cache-Control": "public, max-age=3600", "ETag": '"v1"'}
    routes = [{"name": "gone", "path": "/gone", "upstream": "dead", "response_headers": {"add": add}},
              {"name": "locked", "path": "/locked", "upstream": "echo", "auth": ["api_key"],
               "response_headers": {"add": add}},
              {"name": "ok", "path": "/ok", "upstream": "echo", "response_headers": {"add": add}}]
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}, "dead": {"targets": [f"127.0.0.1:{free_port()}"]}},
                       routes, extra=AUTH)
    for http2 in (False, True):
        with gw.client(http1=not http2, http2=http2) as c:
            for path, status in (("/gone", 502), ("/locked", 401)):
                r = c.get(path)
                assert r.status_code == status and r.headers["content-type"] == "application/problem+json"
                # CORS and lifecycle headers belong on errors: a browser needs the CORS header to read
                # the problem, a client the Deprecation/Sunset notice whatever the outcome.
                assert r.headers["access-control-allow-origin"] == "*", (http2, path)
                assert r.headers["deprecation"] == "true" and r.headers["sunset"].startswith("Wed")
                # What describes the upstream's content does not: an error is never cacheable.
                assert r.headers["cache-control"] == "no-store" and "etag" not in r.headers
                assert json.loads(r.content)["instance"] == path
            r = c.get("/ok")
            assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=3600"
            assert r.headers["etag"] == '"v1"'
        with gw.client() as c:                   # no route: no route's headers
            assert "access-control-allow-origin" not in c.get("/nowhere").headers
