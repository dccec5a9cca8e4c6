"""CORS (fastgw/policies/cors/): preflights answered 204 before authentication, other OPTIONS proxied,
exact origins and anchored host patterns, `null` only when listed, credentials, Vary: Origin on every
response (the gateway's 401, 429 and 502 included) and the default exposed headers; the config checks.
A real gateway process, the echo origin, httpx over HTTP/1.1 and HTTP/2."""
from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from conftest import free_port

from fastgw.config.root import ConfigError, loads

KEY = "key-a"
EXTRA = f'''
[cors.web]
origins = ["https://app.bank.example", "https://*.partners.bank.example", "http://localhost:8080"]
methods = ["GET", "POST"]
headers = ["Authorization", "Content-Type", "X-API-Key"]
expose = ["X-Balance"]
credentials = true
max_age = "10m"

[cors.open]
origins = ["*"]

[cors.sandbox]
origins = ["null"]

[plans.tiny]
limits = [{{ rate = "2/h" }}]

[consumers.partner-a]
api_keys_sha256 = ["{hashlib.sha256(KEY.encode()).hexdigest()}"]
'''


@pytest.fixture
def gw(gateway: Any, echo_origin: Any) -> Any:
    routes = [
        {"name": "web", "path": "/web/*", "upstream": "echo", "cors": "web", "auth": ["api_key"]},
        {"name": "limited", "path": "/limited/*", "upstream": "echo", "cors": "web", "plan": "tiny"},
        {"name": "open", "path": "/open/*", "upstream": "echo", "cors": "open"},
        {"name": "sandbox", "path": "/sandbox/*", "upstream": "echo", "cors": "sandbox"},
        {"name": "down", "path": "/down/*", "upstream": "down", "cors": "web"},
        {"name": "plain", "path": "/plain/*", "upstream": "echo"},
        {"name": "small", "path": "/small/*", "upstream": "echo", "cors": "web", "max_body": 10},
        {"name": "strip", "path": "/strip/*", "upstream": "echo", "cors": "web",
         "response_headers": {"remove": ["Access-Control-Allow-Origin"]}},
    ]
    ups = {"echo": {"targets": [echo_origin.addr]}, "down": {"targets": [f"127.0.0.1:{free_port()}"]}}
    return gateway.start(ups, routes, extra=EXTRA)


def clients(gw: Any) -> list[httpx.Client]:
    return [gw.client(), gw.client(http1=False, http2=True)]


def vary(r: httpx.Response) -> set[str]:
    return {v.strip().lower() for line in r.headers.get_list("vary") for v in line.split(",")}


def preflight(c: httpx.Client, path: str, origin: str, method: str = "POST", headers: str = "") -> httpx.Response:
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return c.options(path, headers=h)


def test_preflight_answered_before_auth_and_never_reaches_upstream(gw: Any, echo_origin: Any) -> None:
    for c in clients(gw):
        with c:
            r = preflight(c, "/web/accounts", "https://app.bank.example", headers="x-api-key, content-type")
            assert r.status_code == 204 and r.content == b""           # no credentials sent, no 401
            assert r.headers["access-control-allow-origin"] == "https://app.bank.example"
            assert r.headers["access-control-allow-credentials"] == "true"
            assert r.headers["access-control-allow-methods"] == "GET, POST"
            assert r.headers["access-control-allow-headers"] == "Authorization, Content-Type, X-API-Key"
            assert r.headers["access-control-max-age"] == "600"
            assert {"origin", "access-control-request-method", "access-control-request-headers"} <= vary(r)
            # A disallowed origin: answered too (never upstream), without a grant.
            r = preflight(c, "/web/accounts", "https://evil.example")
            assert r.status_code == 204 and "access-control-allow-origin" not in r.headers
            assert "access-control-allow-methods" not in r.headers and "origin" in vary(r)
    assert echo_origin.heads_for("/web/accounts") == []


def test_other_options_go_upstream(gw: Any, echo_origin: Any) -> None:
    with gw.client() as c:
        r = c.options("/web/opt1", headers={"X-API-Key": KEY})      # no Origin: not a preflight
        assert r.status_code == 200 and r.json()["method"] == "OPTIONS"
        r = c.options("/web/opt2", headers={"X-API-Key": KEY, "Origin": "https://app.bank.example"})
        assert r.status_code == 200 and r.json()["method"] == "OPTIONS"     # no Request-Method
        assert r.headers["access-control-allow-origin"] == "https://app.bank.example"
        r = c.options("/web/opt3", headers={"Access-Control-Request-Method": "GET"})
        assert r.status_code == 401                                  # no Origin: auth applies
    assert len(echo_origin.heads_for("/web/opt1")) == 1 and len(echo_origin.heads_for("/web/opt2")) == 1


@pytest.mark.parametrize(("origin", "granted"), [
    ("https://app.bank.example", True),
    ("https://a.partners.bank.example", True),
    ("https://a.b.partners.bank.example", True),
    ("http://localhost:8080", True),
    ("https://partners.bank.example", False),               # the pattern needs a label before it
    ("https://evilpartners.bank.example", False),            # anchored on a label boundary
    ("https://a.partners.bank.example.evil.example", False),  # anchored at the end
    ("http://a.partners.bank.example", False),                # scheme is part of the origin
    ("https://a.partners.bank.example:8443", False),          # so is the port
    ("https://x,y.partners.bank.example", False),             # a comma-carrying Origin matches nothing
    ("https://app.bank.example.", False),
    ("null", False),                                          # not listed
    ("http://localhost:8081", False),
])
def test_origin_matching_echoes_only_the_matched_origin(gw: Any, origin: str, granted: bool) -> None:
    with gw.client() as c:
        r = c.get("/web/x", headers={"Origin": origin, "X-API-Key": KEY})
        assert r.status_code == 200 and "origin" in vary(r)
        assert r.headers.get("access-control-allow-origin") == (origin if granted else None)
        assert ("access-control-allow-credentials" in r.headers) == granted


def test_star_without_credentials_and_null_only_when_listed(gw: Any) -> None:
    with gw.client() as c:
        r = c.get("/open/x", headers={"Origin": "https://anyone.example"})
        assert r.headers["access-control-allow-origin"] == "https://anyone.example"
        assert "access-control-allow-credentials" not in r.headers and "origin" in vary(r)
        r = c.get("/open/x", headers={"Origin": "null"})             # "*" does not admit "null"
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/sandbox/x", headers={"Origin": "null"})
        assert r.headers["access-control-allow-origin"] == "null"


def test_vary_and_default_exposed_headers_on_every_response(gw: Any) -> None:
    o = {"Origin": "https://app.bank.example"}
    for c in clients(gw):
        with c:
            r = c.get("/web/x", headers={**o, "X-API-Key": KEY})
            exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
            assert exposed == {"RateLimit-Policy", "RateLimit", "Retry-After", "X-Request-ID", "Deprecation",
                               "Sunset", "Link", "X-Balance"}
            r = c.get("/web/x")                                        # no Origin: Vary all the same
            assert r.status_code == 401 and "origin" in vary(r) and "access-control-allow-origin" not in r.headers
            r = c.get("/plain/x", headers=o)                          # a route without CORS: untouched
            assert "access-control-allow-origin" not in r.headers and "origin" not in vary(r)


def test_upstream_cors_fields_stripped_by_the_route_and_its_vary_kept(gw: Any) -> None:
    with gw.client() as c:
        r = c.get("/strip/x", params=[("hdr", "Access-Control-Allow-Origin: *"), ("hdr", "Vary: Accept")],
                  headers={"Origin": "https://app.bank.example"})
        assert r.headers.get_list("access-control-allow-origin") == ["https://app.bank.example"]
        assert {"accept", "origin"} <= vary(r)


def test_a_413_answered_before_any_policy_ran_carries_them_too(gw: Any, echo_origin: Any) -> None:
    """A Content-Length over the route's max_body is refused when the route is chosen, before its
    policies' request phase: the CORS lines are there all the same (they are known from the request)."""
    for c in clients(gw):
        with c:
            r = c.post("/small/x", content=b"x" * 11, headers={"Origin": "https://app.bank.example"})
            assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
            assert r.headers["access-control-allow-origin"] == "https://app.bank.example" and "origin" in vary(r)
    assert echo_origin.heads_for("/small/x") == []


def test_gateway_errors_carry_cors_headers_401_429_502(gw: Any) -> None:
    o = {"Origin": "https://x.partners.bank.example"}
    for c in clients(gw):
        with c:
            r = c.get("/web/x", headers=o)
            assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
            assert r.headers["access-control-allow-origin"] == o["Origin"] and "origin" in vary(r)
            r = c.get("/down/x", headers=o)
            assert r.status_code == 502 and r.headers["access-control-allow-origin"] == o["Origin"]
    with gw.client() as c:
        statuses = [c.get("/limited/x", headers=o) for _ in range(3)]
        r = statuses[-1]
        assert r.status_code == 429 and r.headers["retry-after"]
        assert r.headers["access-control-allow-origin"] == o["Origin"]
        assert "Retry-After" in r.headers["access-control-expose-headers"]


BASE = '''
[upstreams.u]
targets = ["127.0.0.1:9"]
'''


@pytest.mark.parametrize(("cors", "route", "message"), [
    ('origins = ["*"]\ncredentials = true', "", "cors.p.credentials: \"*\" in origins with credentials"),
    ('origins = ["https://*.a.example/"]', "", "cors.p.origins[0]"),
    ('origins = ["https://a.*.example"]', "", "cors.p.origins[0]"),
    ('origins = ["https://A.example"]', "", "cors.p.origins[0]: 'https://A.example': an origin is lowercase"),
    ('origins = ["^https://.*$"]', "", "cors.p.origins[0]"),
    ('origins = ["https://a.example"]\nmax_age = "3h"', "", "cors.p.max_age"),
    ('origins = ["https://a.example"]', 'methods = ["GET"]', "routes[0].methods: a CORS route answers preflights"),
])
def test_check_rejects(cors: str, route: str, message: str) -> None:
    text = BASE + f'[cors.p]\n{cors}\n\n[[routes]]\nname = "r"\npath = "/r"\nupstream = "u"\ncors = "p"\n{route}\n'
    with pytest.raises(ConfigError) as e:
        loads(text)
    assert message in str(e.value)


def test_check_rejects_an_unknown_policy() -> None:
    with pytest.raises(ConfigError) as e:
        loads(BASE + '[[routes]]\nname = "r"\npath = "/r"\nupstream = "u"\ncors = "nope"\n')
    assert "routes[0].cors: no [cors.nope] (known: none)" in str(e.value)
