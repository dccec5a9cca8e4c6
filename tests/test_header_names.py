"""Header names the gateway owns (fastgw/headers.py, compiled by fastgw/_core/wire.pyx), end to end: a real
gateway, the echo origin reporting the header lines it received, clients over HTTP/1.1 (raw sockets: names
sent byte for byte) and HTTP/2 (httpx with prior knowledge).

A name with "_" is dropped by default [nginx underscores_in_headers off] and counted; one that folds
("_" read as "-", as CGI/WSGI/PHP upstreams read it) to a managed name is dropped even with
server.limits.allow_underscores. HTTP2-Settings is connection-specific; X-Forwarded-* is the gateway's;
traceparent is the gateway's (continued when well formed).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from procutil import admin_get, metric
from upstreams import assert_raw_problem

from fastgw.headers import REQUEST, role

SECRET = "s3cret-for-hs256-tests-0123456789abcdef"
EXTRA = f"""
[auth.jwt.idp]
issuer = "https://idp.test"
algorithms = ["HS256"]
secret = "{SECRET}"
claims_to_headers = {{ tenant = "X-Tenant" }}

[consumers.partner-a]
api_keys_sha256 = ["{__import__('hashlib').sha256(b'key-a').hexdigest()}"]
"""
ROUTES = [{"name": "echo", "path": "/echo/*", "upstream": "echo"},
          {"name": "keys", "path": "/keys/*", "upstream": "echo", "auth": ["jwt:idp", "api_key"]}]

# Spellings an upstream that folds "_" to "-" reads as headers the gateway owns.
FORGED = [("X_User_ID", "root"), ("X_Roles", "admin"), ("X_Consumer", "admin"), ("X_Tenant", "bank"),
          ("Transfer_Encoding", "chunked"), ("Content_Length", "7"), ("X_Forwarded_For", "203.0.113.9"),
          ("X_Request_ID", "forged"), ("X_API_Key", "key-a"), ("X_Forwarded_Host", "evil.test")]
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def gws(gateway_launcher: Any, echo_origin: Any) -> dict[str, Any]:
    up = {"echo": {"targets": [echo_origin.addr]}}
    return {
        "default": gateway_launcher.start(up, ROUTES, server={"log_level": "debug"}, extra=EXTRA),
        "allow": gateway_launcher.start(up, ROUTES, limits={"allow_underscores": True}, extra=EXTRA),
    }


def mark() -> str:
    return "m" + uuid.uuid4().hex[:12]


def drops(gw: Any) -> dict[str, float]:
    admin = next(e for e in gw.events if e.get("event") == "started")["admin"]
    text = admin_get(f"http://{admin}/metrics")[1]
    return {r: metric(text, "fastgw_headers_dropped_total", reason=r) for r in ("underscore", "managed_alias")}


# What the gateway itself sets on every upstream request (and the values it sets here).
OWN = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent"}


def assert_clean(got: list[tuple[str, str]]) -> None:
    """No header the gateway owns arrived from the client, under any spelling."""
    for n, v in got:
        if role(n) is not None:
            assert n.lower() in OWN and "_" not in n, (n, v)
    low = {n.lower(): v for n, v in got}
    assert low["x-forwarded-for"] == "127.0.0.1" and low["x-request-id"] != "forged"
    assert low["x-forwarded-host"] != "evil.test"


def h1(gw: Any, target: str, headers: list[tuple[str, str]]) -> Any:
    lines = [f"GET {target} HTTP/1.1", "Host: gw.test"] + [f"{n}: {v}" for n, v in headers]
    with gw.raw() as c:
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return c.read_response()


def received(resp: Any) -> list[tuple[str, str]]:
    """The header lines the origin received (echo report)."""
    return [(n, v) for n, v in resp.json()["headers"]]


def test_underscore_names_never_reach_the_upstream_http1(gws: dict) -> None:
    gw = gws["default"]
    before = drops(gw)
    r = h1(gw, f"/echo/{mark()}", FORGED + [("X_Custom", "1"), ("X-Plain", "kept")])
    assert r.status == 200, r.body
    got = received(r)
    assert not [n for n, _ in got if "_" in n], got
    assert ("X-Plain", "kept") in got
    assert_clean(got)
    after = drops(gw)
    assert after["underscore"] - before["underscore"] == 1                  # X_Custom
    assert after["managed_alias"] - before["managed_alias"] == len(FORGED)
    # log_level = "debug": one line naming the dropped fields (names only, never values).
    rid = r.header("x-request-id")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [e for e in gw.events if e.get("event") == "headers_dropped" and e.get("request_id") == rid]
        if lines:
            break
        time.sleep(0.05)
    (line,) = lines
    assert line["level"] == "debug" and line["client"] == "127.0.0.1"
    assert [h["name"] for h in line["headers"]] == [n for n, _ in FORGED] + ["X_Custom"]
    assert {h["reason"] for h in line["headers"]} == {"managed_alias", "underscore"}
    assert "root" not in str(line)


def test_underscore_names_never_reach_the_upstream_http2(gws: dict) -> None:
    gw = gws["default"]
    before = drops(gw)
    with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=10) as c:
        r = c.get(f"/echo/{mark()}", headers=FORGED + [("X_Custom", "1"), ("X-Plain", "kept"),
                                                         ("HTTP2-Settings", "AAMAAABkAAQAAP__")])
    assert r.http_version == "HTTP/2" and r.status_code == 200, r.text
    got = received(r)
    assert not [n for n, _ in got if "_" in n], got
    assert ("x-plain", "kept") in got
    assert_clean(got)
    after = drops(gw)
    assert after["underscore"] - before["underscore"] == 1
    assert after["managed_alias"] - before["managed_alias"] == len(FORGED)


@pytest.mark.parametrize("proto", ["http1", "http2"])
def test_allow_underscores_keeps_only_names_the_gateway_does_not_own(gws: dict, proto: str) -> None:
    gw = gws["allow"]
    before = drops(gw)
    hdrs = FORGED + [("X_Custom", "1")]
    if proto == "http1":
        r = h1(gw, f"/echo/{mark()}", hdrs)
        status, got = r.status, received(r)
    else:
        with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=10) as c:
            resp = c.get(f"/echo/{mark()}", headers=hdrs)
        status, got = resp.status_code, received(resp)
    assert status == 200
    assert [(n, v) for n, v in got if "_" in n] == [("X_Custom" if proto == "http1" else "x_custom", "1")]
    assert_clean(got)
    after = drops(gw)
    assert after["underscore"] == before["underscore"]
    assert after["managed_alias"] - before["managed_alias"] == len(FORGED)
    # log_level "info" (the default): counted, but no debug line.
    assert not [e for e in gw.events if e.get("event") == "headers_dropped"]


def test_connection_specific_and_forwarding_headers_never_cross(gws: dict) -> None:
    """HTTP2-Settings only means something on the connection that carried it: never forwarded, named in
    Connection or not (RFC 7540 3.2.1). The X-Forwarded-* family is the gateway's."""
    gw = gws["default"]
    r = h1(gw, f"/echo/{mark()}", [("Connection", "keep-alive"), ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
                                    ("X-Forwarded-Port", "1"), ("X-Forwarded-Ssl", "on"),
                                    ("X-Forwarded-Prefix", "/admin")])
    assert r.status == 200
    names = {n.lower() for n, _ in received(r)}
    assert "http2-settings" not in names
    assert names & {"x-forwarded-port", "x-forwarded-ssl", "x-forwarded-prefix"} == set()
    assert {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} <= names


@pytest.mark.parametrize("proto", ["http1", "http2"])
def test_traceparent_is_the_gateways(gws: dict, proto: str) -> None:
    """A well-formed traceparent is continued (its trace id, the gateway's span as the parent), anything
    else replaced by a new trace; tracestate only with a continued one (tests/test_tracecontext.py has the
    vectors)."""
    gw = gws["default"]

    def send(headers: list[tuple[str, str]]) -> dict[str, str]:
        if proto == "http1":
            got = received(h1(gw, f"/echo/{mark()}", headers))
        else:
            with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=10) as c:
                got = received(c.get(f"/echo/{mark()}", headers=headers))
        assert sum(1 for n, _ in got if n.lower() == "traceparent") == 1, got
        return {n.lower(): v for n, v in got if n.lower() in ("traceparent", "tracestate")}

    got = send([("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")])
    assert got["traceparent"][:36] == TP[:36] and got["traceparent"][36:52] != TP[36:52]
    assert got["tracestate"] == "congo=t61rcWkgMzE"
    for bad in (TP.upper(), "ff" + TP[2:], TP[:3] + "0" * 32 + TP[35:], "garbage"):
        got = send([("traceparent", bad), ("tracestate", "congo=t61rcWkgMzE")])
        assert got["traceparent"][3:35] not in (TP[3:35], "0" * 32) and "tracestate" not in got, (bad, got)
    got = send([("traceparent", TP), ("traceparent", TP)])
    assert got["traceparent"][3:35] != TP[3:35]


def test_credential_headers_once_each_with_the_right_detail(gws: dict) -> None:
    gw = gws["default"]
    m = mark()
    with gw.raw() as c:
        c.send(f"GET /keys/{m} HTTP/1.1\r\nHost: gw.test\r\nX-API-Key: key-a\r\nX-API-Key: key-b\r\n\r\n".encode())
        r = c.read_response()
        body = assert_raw_problem(r, 400, "bad-request")
        assert body["detail"] == "duplicate X-API-Key header"
    # The key header under two spellings is still one credential sent twice (the spelling the config gives,
    # looked up as sent, and any other, folded).
    with gw.raw() as c:
        c.send(f"GET /keys/{mark()} HTTP/1.1\r\nHost: gw.test\r\nx-api-KEY: key-a\r\nX-API-Key: key-b\r\n\r\n".encode())
        body = assert_raw_problem(c.read_response(), 400, "bad-request")
        assert body["detail"].startswith("duplicate ")
    # One Authorization and one API key are two credentials, not a duplicate: the key authenticates.
    r = h1(gw, f"/keys/{mark()}", [("Authorization", "Bearer not.a.token"), ("X-API-Key", "key-a")])
    assert r.status == 200, r.body
    assert dict((n.lower(), v) for n, v in received(r))["x-consumer"] == "partner-a"


def test_every_declared_name_is_managed_under_every_spelling() -> None:
    """The table itself: each declared name, in any case and with "_" for "-", has a role."""
    for name in REQUEST:
        for spelling in (name, name.upper(), name.replace("-", "_"), name.title().replace("-", "_")):
            assert role(spelling) == REQUEST[name], spelling
    assert role("X-Forwarded-Whatever") == "forwarded" and role("X_Forwarded_Port") == "forwarded"
    assert role("X-Custom") is None


def test_a_credential_name_is_found_as_configured_and_folded() -> None:
    """The wire table holds a credential header under the spelling its config gives (no lower() per request
    for the spelling clients are told to send), and still under every other; never over a managed name."""
    from fastgw._core.wire import ACTIONS, HeaderTable
    t = HeaderTable((), ["X-API-Key", "Host"])
    cred = t.action(b"X-API-Key")
    assert cred >= ACTIONS["credential"]
    for spelling in (b"x-api-key", b"X-Api-Key", b"X-API-KEY", b"x-API-key"):
        assert t.action(spelling) == cred, spelling
    assert t.action(b"Host") == t.action(b"host") == ACTIONS["host"]


def test_the_compiled_lookup_answers_as_the_name_dict() -> None:
    """classify reads a C table of the lowercase names (no dict lookup, no hash of each request's name
    object); it must answer what a lookup of the name, lowercased, in the table's dict answers, then the
    underscore and X-Forwarded-* rules: for every known name in random case, near misses (one byte changed,
    added or removed) and random tokens."""
    import random

    from fastgw._core.wire import ACTIONS, HeaderTable
    t = HeaderTable(["X-Consumer", "X-User-Id"], ["X-API-Key", "X-Partner-Token"])
    names = {k.lower(): v for k, v in t.names().items()}
    tchar = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"

    def reference(name: bytes) -> int:
        low = name.lower()
        if low in names:
            return names[low]
        if b"_" in name:
            folded = low.replace(b"_", b"-")
            if folded in names or folded.startswith(b"x-forwarded-"):
                return ACTIONS["alias"]
            return ACTIONS["underscore"]
        return ACTIONS["drop"] if len(name) > 12 and low.startswith(b"x-forwarded-") else ACTIONS["forward"]

    rnd = random.Random(20261205)
    cases = []
    for name in names:
        for _ in range(4):
            cases.append(bytes(c ^ 32 if 97 <= c <= 122 and rnd.random() < 0.5 else c for c in name))
        i = rnd.randrange(len(name))
        cases += [name[:i] + bytes([rnd.choice(tchar)]) + name[i + 1:], name[:i] + name[i + 1:],
                  name[:i] + bytes([rnd.choice(tchar)]) + name[i:]]
    cases += [bytes(rnd.choice(tchar) for _ in range(rnd.randrange(1, 70))) for _ in range(3000)]
    assert len(names) > 20
    for name in cases:
        assert t.action(name) == reference(name), name


def test_case_insensitive_compare_is_bytes_lower() -> None:
    """The wire table's name compare (eight or four bytes at a time, overlapping words at the end) answers
    name.lower() == low for every length up to 40, with all 256 byte values, near misses at every position
    and the bytes around the capitals ('@', '[', '`', '{', and 0xC1..0xDA, capitals with bit 7 set)."""
    import random

    from fastgw._core.wire import case_equal
    rnd = random.Random(5)
    edge = b"@AZ[`az{\xc1\xda\xe1\xfa\x00\x7f\x80\xff-_^~"
    checked = 0
    for n in range(41):
        for _ in range(60):
            low = bytes(rnd.choice(edge) if rnd.random() < 0.3 else rnd.randrange(256) for _ in range(n)).lower()
            name = bytes(c - 32 if 97 <= c <= 122 and rnd.random() < 0.5 else c for c in low)
            variants = [name]
            for i in range(n):
                variants.append(name[:i] + bytes([rnd.choice(edge)]) + name[i + 1:])
                variants.append(name[:i] + bytes([name[i] ^ 0x20]) + name[i + 1:])
            for v in variants:
                assert case_equal(v, low) == (v.lower() == low), (v, low)
                checked += 1
    assert checked > 40000
