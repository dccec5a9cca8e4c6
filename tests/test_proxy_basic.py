"""The HTTP/1.1 data path end to end: a real gateway process between real clients and a real origin.

Routing and problem responses, header rules, forwarding headers, request ids, hop-by-hop stripping,
keep-alive, pipelining, Expect: 100-continue, bodiless responses, HTTP/1.0, and streamed bodies.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import re
import time
import uuid

import pytest
from upstreams import (
    REQUEST_ID_OK,
    EchoOrigin,
    Head,
    assert_problem,
    assert_raw_problem,
    pattern,
    request,
)

HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection", "proxy-authorization"}


@pytest.fixture(scope="module")
def setup(gateway_launcher, echo_origin):
    def route(name: str, path: str, **kw) -> dict:
        r = {"name": name, "path": path, "upstream": "echo"}
        r.update(kw)
        rh = r.setdefault("request_headers", {})
        rh.setdefault("add", {})["X-Route"] = name
        return r

    routes = [
        route("hello", "/hello", methods=["GET"]),
        route("user", "/users/{id}", methods=["GET", "PUT", "DELETE"]),
        route("api", "/api/*", strip_prefix=True),
        route("raw", "/raw/*"),
        route("hosted-a", "/hosted", host="api.example.test"),
        route("hosted-any", "/hosted"),
        route("headers", "/headers",
              request_headers={"add": {"X-Gateway": "fastgw", "X-Replace": "gw"},
                               "remove": ["Cookie", "X-Drop-Me"]},
              response_headers={"add": {"Cache-Control": "no-store"}, "remove": ["X-Powered-By"]}),
        route("submit", "/submit", methods=["POST"]),
        route("echo", "/echo/*"),
        route("small", "/small/*", max_body="1KiB"),
    ]
    gw = gateway_launcher.start({"echo": {"targets": [echo_origin.addr], "timeout": "5s"}}, routes)
    return gw, echo_origin


@pytest.fixture
def gw(setup):
    return setup[0]


@pytest.fixture
def origin(setup) -> EchoOrigin:
    return setup[1]


@pytest.fixture
def client(gw):
    with gw.client() as c:
        yield c


def seen(resp) -> Head:
    """The request as the origin reported it (the echo JSON body)."""
    doc = json.loads(resp.body if hasattr(resp, "body") else resp.content)
    return Head(doc["method"], doc["target"], doc["version"], [tuple(h) for h in doc["headers"]],
                doc["conn"], doc["seq"])


def report(resp) -> dict:
    return json.loads(resp.body if hasattr(resp, "body") else resp.content)


def mark() -> str:
    return uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------------------------------
# Routing and problem responses

def test_not_found_is_problem_json(client, origin):
    m = mark()
    r = client.get(f"/nowhere/{m}?q=1")
    assert_problem(r.status_code, r.headers, r.content, 404, "not-found", instance=f"/nowhere/{m}")
    assert not origin.heads_for(m)


def test_problem_request_id_is_the_clients_when_valid(client):
    r = client.get("/nowhere", headers={"X-Request-ID": "client-id-123"})
    doc = assert_problem(r.status_code, r.headers, r.content, 404, "not-found")
    assert doc["request_id"] == "client-id-123"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/submit", "POST"),
    ("POST", "/users/7", "DELETE, GET, HEAD, PUT"),
    ("PATCH", "/hello", "GET, HEAD"),
])
def test_method_not_allowed_has_allow(client, origin, method, path, allow):
    r = client.request(method, path)
    assert_problem(r.status_code, r.headers, r.content, 405, "method-not-allowed", instance=path)
    assert r.headers["allow"] == allow
    assert not [h for h in origin.heads if h.method == method and h.target == path]


def test_exact_route_forwards_path_and_query(client):
    r = client.get("/hello?a=1&b=%20x")
    assert r.status_code == 200
    h = seen(r)
    assert (h.method, h.target, h.values("x-route")) == ("GET", "/hello?a=1&b=%20x", ["hello"])
    # a trailing slash is a different path
    assert client.get("/hello/").status_code == 404


def test_get_route_serves_head(client):
    r = client.head("/hello")
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) > 0


def test_param_route(client):
    r = client.get("/users/42")
    assert r.status_code == 200
    assert (seen(r).target, seen(r).values("x-route")) == ("/users/42", ["user"])
    r = client.put("/users/alice", content=b"{}")
    assert r.status_code == 200 and seen(r).method == "PUT" and report(r)["body"] == "{}"
    for path in ("/users", "/users/", "/users/42/orders"):
        r = client.get(path)
        assert_problem(r.status_code, r.headers, r.content, 404, "not-found", instance=path)


@pytest.mark.parametrize(("path", "upstream"), [
    ("/api/v1/things?x=1", "/v1/things?x=1"),
    ("/api/v1/", "/v1/"),
    ("/api/", "/"),
    ("/api", "/"),
    ("/api?x=2", "/?x=2"),
])
def test_prefix_route_strips_prefix(client, path, upstream):
    r = client.get(path)
    assert r.status_code == 200
    assert (seen(r).target, seen(r).values("x-route")) == (upstream, ["api"])


def test_prefix_route_keeps_path_without_strip(client):
    r = client.post("/raw/a/b?c=d", content=b"x")
    assert r.status_code == 200
    assert (seen(r).target, seen(r).values("x-route")) == ("/raw/a/b?c=d", ["raw"])
    r = client.get("/rawx")
    assert_problem(r.status_code, r.headers, r.content, 404, "not-found")


@pytest.mark.parametrize(("host", "route"), [
    ("api.example.test", "hosted-a"),
    ("API.Example.TEST:8443", "hosted-a"),
    ("other.example.test", "hosted-any"),
])
def test_host_routes(client, host, route):
    r = client.get("/hosted", headers={"Host": host})
    assert r.status_code == 200
    assert seen(r).values("x-route") == [route]


def test_route_header_rules(client):
    r = client.get("/headers?hdr=X-Powered-By:%20php&hdr=Cache-Control:%20public&hdr=X-Origin:%20yes",
                   headers={"Cookie": "session=1", "X-Drop-Me": "1", "X-Replace": "client", "X-Keep": "kept"})
    assert r.status_code == 200
    h = seen(r)
    assert h.values("x-gateway") == ["fastgw"]
    assert h.values("x-replace") == ["gw"]
    assert h.values("cookie") == [] and h.values("x-drop-me") == []
    assert h.values("x-keep") == ["kept"]
    assert r.headers.get_list("cache-control") == ["no-store"]
    assert "x-powered-by" not in r.headers
    assert r.headers["x-origin"] == "yes"


# ---------------------------------------------------------------------------------------------------
# Headers the gateway sets, keeps and removes

def test_forwarded_headers_set(gw, client):
    r = client.get("/echo/fwd", headers={"Host": "public.example.test"})
    h = seen(r)
    assert h.values("x-forwarded-for") == ["127.0.0.1"]
    assert h.values("x-forwarded-proto") == ["http"]
    assert h.values("x-forwarded-host") == ["public.example.test"]


def test_forwarded_headers_not_spoofable(client):
    r = client.get("/echo/fwd2", headers={"Host": "public.example.test", "X-Forwarded-For": "203.0.113.7",
                                          "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.test"})
    h = seen(r)
    xff = h.values("x-forwarded-for")
    assert len(xff) == 1 and [p.strip() for p in xff[0].split(",")][-1] == "127.0.0.1", xff
    assert h.values("x-forwarded-proto") == ["http"]
    assert h.values("x-forwarded-host") == ["public.example.test"]


@pytest.mark.parametrize("rid", ["abc-123_x.y:z", "A" * 128, "0"])
def test_request_id_kept_when_valid(client, rid):
    r = client.get("/echo/rid", headers={"X-Request-ID": rid})
    assert seen(r).values("x-request-id") == [rid]
    assert r.headers.get_list("x-request-id") == [rid]


@pytest.mark.parametrize("rid", ["has space", "A" * 129, 'quote"d', "semi;colon", "slash/", "é"])
def test_request_id_replaced_when_invalid(gw, rid):
    with gw.raw() as c:
        c.send(request("GET", "/echo/rid-bad", headers=[("X-Request-ID", rid)]).replace(
            rid.encode("latin-1"), rid.encode("utf-8")))
        r = c.read_response()
    assert r.status == 200
    up = seen(r).values("x-request-id")
    assert len(up) == 1 and up[0] != rid and 0 < len(up[0]) <= 128 and set(up[0]) <= REQUEST_ID_OK, up
    assert r.values("x-request-id") == up


def test_request_id_generated_when_missing_and_unique(client):
    ids = []
    for _ in range(3):
        r = client.get("/echo/rid-none")
        up = seen(r).values("x-request-id")
        assert len(up) == 1 and set(up[0]) <= REQUEST_ID_OK and 0 < len(up[0]) <= 128
        assert r.headers.get_list("x-request-id") == up
        ids.append(up[0])
    assert len(set(ids)) == 3, ids


def test_identity_headers_from_client_are_removed(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/identity", headers=[
            ("X-User-ID", "admin"), ("x-consumer", "partner-a"), ("X-ROLES", "root"), ("X-Roles", "admin"),
            ("X-Unrelated", "ok")]))
        r = c.read_response()
    h = seen(r)
    assert h.values("x-user-id") == [] and h.values("x-consumer") == [] and h.values("x-roles") == []
    assert h.values("x-unrelated") == ["ok"]


def test_hop_by_hop_request_headers_not_forwarded(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/hop", headers=[
            ("Connection", "keep-alive, X-Conn-Listed, x-other-listed"), ("X-Conn-Listed", "secret"),
            ("X-Other-Listed", "secret2"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
            ("Upgrade", "h2c"), ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Trailer", "X-T"), ("X-End-To-End", "yes")]))
        r = c.read_response()
    assert r.status == 200
    h = seen(r)
    names = {n.lower() for n, _ in h.headers}
    assert not names & (HOP_BY_HOP | {"x-conn-listed", "x-other-listed"}), names
    assert h.values("x-end-to-end") == ["yes"]


def test_upgrade_request_is_not_forwarded_as_upgrade(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/upgrade", headers=[
            ("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]))
        r = c.read_response()
    assert r.status == 200, r.raw_head
    names = {n.lower() for n, _ in seen(r).headers}
    assert "upgrade" not in names and "connection" not in names


def test_hop_by_hop_response_headers_not_relayed(gw):
    hdrs = ["Connection: X-Secret", "X-Secret: 1", "Keep-Alive: timeout=5", "Proxy-Connection: keep-alive",
            "Upgrade: h2c", "Trailer: X-T", "X-Fine: yes"]
    q = "&".join("hdr=" + h.replace(" ", "%20") for h in hdrs)
    with gw.raw() as c:
        c.send(request("GET", f"/echo/hop-resp?{q}"))
        r = c.read_response()
    assert r.status == 200
    names = {n.lower() for n, _ in r.headers}
    assert not names & {"x-secret", "keep-alive", "proxy-connection", "upgrade", "trailer"}, r.raw_head
    assert r.conn_tokens <= {"close", "keep-alive"}, r.raw_head
    assert r.header("x-fine") == "yes"


# ---------------------------------------------------------------------------------------------------
# Connections: keep-alive, pipelining, Connection: close, HTTP/1.0

def test_keep_alive_reuses_client_connection(gw):
    with gw.raw() as c:
        for i in range(3):
            c.send(request("GET", f"/echo/ka{i}"))
            r = c.read_response()
            assert r.status == 200 and seen(r).target == f"/echo/ka{i}"
            assert "close" not in r.conn_tokens
        assert c.closed_by_server(0.2) is None


def test_upstream_connection_is_pooled(client):
    conns = {seen(client.get(f"/echo/pool{i}")).conn for i in range(4)}
    assert len(conns) == 1, conns


def test_pipelined_requests_answered_in_order(gw):
    reqs = [request("GET", "/echo/p1?delay=0.2"), request("POST", "/echo/p2", body=b"second body"),
            request("GET", "/echo/p3?size=5000"), request("HEAD", "/echo/p4?size=7"),
            request("GET", "/echo/p5")]
    with gw.raw() as c:
        c.send(b"".join(reqs))
        r1 = c.read_response()
        r2 = c.read_response()
        r3 = c.read_response()
        r4 = c.read_response("HEAD")
        r5 = c.read_response()
        assert c.closed_by_server(0.1) is None
    assert seen(r1).target == "/echo/p1?delay=0.2"
    assert seen(r2).target == "/echo/p2" and report(r2)["body"] == "second body"
    assert r3.body == pattern(0, 5000)
    assert r4.status == 200 and r4.header("content-length") == "7" and r4.body == b""
    assert seen(r5).target == "/echo/p5"


def test_pipelined_requests_split_across_writes(gw):
    data = request("GET", "/echo/s1") + request("GET", "/echo/s2") + request("GET", "/echo/s3")
    with gw.raw() as c:
        for i in range(0, len(data), 7):
            c.send(data[i:i + 7])
        assert [seen(c.read_response()).target for _ in range(3)] == ["/echo/s1", "/echo/s2", "/echo/s3"]


def test_connection_close_from_client(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/cc", headers=[("Connection", "close")]))
        r = c.read_response()
        assert r.status == 200
        assert "close" in r.conn_tokens, r.raw_head
        assert c.closed_by_server(2) is not None


def test_http10_without_keep_alive_closes(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/h10", host=None, version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200 and seen(r).target == "/echo/h10"
        assert "keep-alive" not in r.conn_tokens, r.raw_head
        assert c.closed_by_server(2) is not None


def test_http10_keep_alive(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/h10ka", host=None, version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
        r = c.read_response()
        assert r.status == 200 and "keep-alive" in r.conn_tokens, r.raw_head
        c.send(request("GET", "/echo/h10ka2", host=None, version="HTTP/1.0", headers=[("Connection", "keep-alive")]))
        r = c.read_response()
        assert r.status == 200 and seen(r).target == "/echo/h10ka2"


def test_http10_client_gets_no_chunked_response(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/h10c?te=chunked&size=70000", version="HTTP/1.0"))
        r = c.read_response()
        assert r.status == 200
        assert not r.has("transfer-encoding"), r.raw_head
        assert r.body == pattern(0, 70000)
        assert c.eof or c.closed_by_server(2) is not None


# ---------------------------------------------------------------------------------------------------
# Expect: 100-continue, HEAD, 204, 304, interim responses

def test_expect_100_continue(gw):
    body = b"hello world"
    with gw.raw() as c:
        c.send(request("POST", "/echo/expect", headers=[("Expect", "100-continue"),
                                                        ("Content-Length", str(len(body)))]))
        interim = c.read_head()
        assert interim.status == 100, interim.raw_head
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    assert report(r)["body"] == "hello world"
    assert seen(r).values("expect") == []


def test_expect_100_continue_refused_by_body_limit(gw, origin):
    m = mark()
    with gw.raw() as c:
        c.send(request("POST", f"/small/{m}", headers=[("Expect", "100-continue"), ("Content-Length", "5000")]))
        r = c.read_response(interim=True)
        assert_raw_problem(r, 413, "payload-too-large")
        assert c.closed_by_server(2) is not None
    assert not origin.heads_for(m)


def test_expect_100_continue_not_sent_for_unrouted(gw):
    with gw.raw() as c:
        c.send(request("POST", "/nowhere", headers=[("Expect", "100-continue"), ("Content-Length", "5")]))
        r = c.read_response(interim=True)
        assert_raw_problem(r, 404, "not-found")


@pytest.mark.parametrize("te", ["cl", "chunked"])
def test_head_response_has_no_body(gw, te):
    with gw.raw() as c:
        c.send(request("HEAD", f"/echo/head?size=5000&te={te}"))
        r = c.read_response("HEAD")
        assert r.status == 200
        if te == "cl":
            assert r.header("content-length") == "5000"
        c.send(request("GET", "/echo/after-head"))       # a stray body byte would corrupt this response
        r2 = c.read_response()
        assert r2.status == 200 and seen(r2).target == "/echo/after-head"


@pytest.mark.parametrize("te", ["cl", "chunked"])
def test_head_response_keeps_the_upstream_connection(gw, origin, te):
    """RFC 9112 6.3 rule 1: a response to HEAD ends with its head whatever its framing fields say. The
    response reader knows the method, so the connection goes back to the pool (before, llhttp could not be
    told, and fastgw closed it) and the next request on it gets its own answer."""
    m = uuid.uuid4().hex[:12]
    with gw.raw() as c:
        c.send(request("HEAD", f"/echo/{m}-head?size=5000&te={te}"))
        assert c.read_response("HEAD").status == 200
        c.send(request("GET", f"/echo/{m}-get?size=7"))
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == pattern(0, 7)
    assert origin.heads_for(f"{m}-get")[0].conn == origin.heads_for(f"{m}-head")[0].conn


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status(gw, status):
    with gw.raw() as c:
        c.send(request("GET", f"/echo/nobody?status={status}&hdr=ETag:%20%22v1%22"))
        r = c.read_response()
        assert r.status == status and r.body == b""
        assert not r.has("transfer-encoding"), r.raw_head
        if status == 204:
            assert not r.has("content-length"), r.raw_head
        assert r.header("etag") == '"v1"'
        c.send(request("GET", "/echo/after-nobody"))
        r2 = c.read_response()
        assert r2.status == 200 and seen(r2).target == "/echo/after-nobody"


def test_interim_response_from_origin_not_relayed(gw):
    with gw.raw() as c:
        c.send(request("GET", "/echo/interim?interim=103"))
        r = c.read_response(interim=True)
        assert r.status == 200 and not r.has("x-interim")
        assert seen(r).target == "/echo/interim?interim=103"


# ---------------------------------------------------------------------------------------------------
# Bodies

def test_chunked_request_body_is_streamed(gw, origin):
    m = mark()
    target = f"/echo/stream-in-{m}"
    first, second = pattern(0, 3000), pattern(3000, 5000)
    with gw.raw() as c:
        c.send(request("POST", target, headers=[("Transfer-Encoding", "chunked")]) + b"bb8\r\n" + first + b"\r\n")
        # The origin receives the first chunk while the client is still sending: no buffering to the end.
        assert origin.wait_for(lambda: origin.progress.get(target, 0) >= 3000, 5), origin.progress.get(target)
        c.send(b"%x\r\n" % len(second) + second + b"\r\n0\r\n\r\n")
        r = c.read_response()
    doc = report(r)
    assert doc["body_len"] == 8000 and doc["body_chunked"] is True
    assert doc["body_sha256"] == hashlib.sha256(first + second).hexdigest()


def test_chunked_response_is_streamed(gw, origin):
    gate = mark()
    with gw.raw() as c:
        c.send(request("GET", f"/echo/stream-out?te=chunked&size=4096&gate={gate}"))
        head = c.read_head()
        assert head.status == 200 and head.header("transfer-encoding") == "chunked"
        got = bytearray()
        # The first 1 KiB arrives while the origin is still holding the rest back.
        while len(got) < 1024:
            size = int(c.take_until(b"\r\n")[:-2], 16)
            assert size > 0
            got += c.take(size)
            assert c.take(2) == b"\r\n"
        origin.open_gate(gate)
        while size := int(c.take_until(b"\r\n")[:-2], 16):
            got += c.take(size)
            assert c.take(2) == b"\r\n"
        assert c.take(2) == b"\r\n"
    assert bytes(got) == pattern(0, 4096)


def test_chunked_upload_from_generator(client):
    pieces = [pattern(i * 10_000, 10_000) for i in range(30)]
    r = client.post("/echo/upload-gen", content=iter(pieces))
    doc = report(r)
    assert doc["body_len"] == 300_000 and doc["body_chunked"] is True
    assert doc["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_content_length_upload(client):
    body = pattern(0, 200_000)
    r = client.post("/echo/upload-cl", content=body)
    doc = report(r)
    assert doc["body_len"] == 200_000 and doc["body_chunked"] is False
    assert seen(r).values("content-length") == ["200000"]
    assert doc["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("te", ["cl", "chunked", "close"])
def test_response_bodies_relayed(gw, te):
    with gw.raw() as c:
        c.send(request("GET", f"/echo/resp?size=150000&te={te}"))
        r = c.read_response()
        assert r.status == 200 and r.body == pattern(0, 150_000)
        if te == "cl":
            assert r.header("content-length") == "150000" and not r.chunked
        else:
            assert r.chunked, r.raw_head          # an HTTP/1.1 client gets the unknown length chunked
        c.send(request("GET", "/echo/after-resp"))
        assert seen(c.read_response()).target == "/echo/after-resp"


def test_body_at_route_limit_accepted(client):
    r = client.post("/small/at-limit", content=b"x" * 1024)
    assert r.status_code == 200 and report(r)["body_len"] == 1024


def test_response_date_header(client):
    r = client.get("/nowhere")
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT", r.headers["date"])
    assert abs(time.time() - calendar.timegm(time.strptime(r.headers["date"], "%a, %d %b %Y %H:%M:%S GMT"))) < 5


def test_origin_saw_only_well_formed_requests(origin):
    # Every request the gateway sent this module's origin was well-formed HTTP/1.1 (runs last here).
    assert origin.violations == []


# ---------------------------------------------------------------------------------------------------
# Settings that need a gateway of their own

def test_max_requests_per_connection(gateway, origin):
    gw = gateway.start({"echo": {"targets": [origin.addr]}}, [{"name": "all", "path": "/*", "upstream": "echo"}],
                       {"max_requests_per_connection": 2})
    with gw.raw() as c:
        c.send(request("GET", "/one"))
        r1 = c.read_response()
        assert r1.status == 200 and "close" not in r1.conn_tokens
        c.send(request("GET", "/two"))
        r2 = c.read_response()
        assert r2.status == 200 and "close" in r2.conn_tokens, r2.raw_head
        assert c.closed_by_server(2) is not None


def test_upstream_keepalive_zero_disables_pooling(gateway, origin):
    gw = gateway.start({"echo": {"targets": [origin.addr], "keepalive": 0}},
                       [{"name": "all", "path": "/*", "upstream": "echo"}])
    with gw.client() as client:
        conns = [seen(client.get(f"/nopool{i}")).conn for i in range(3)]
    assert len(set(conns)) == 3, conns


def test_hostless_request_carries_its_own_targets_address(gateway):
    # An HTTP/1.0 request without Host is forwarded with the address of the target it reaches as Host:
    # the target is picked once per request (two targets, round-robin, so a second pick would differ).
    a, b = EchoOrigin().start(), EchoOrigin().start()
    try:
        gw = gateway.start({"two": {"targets": [a.addr, b.addr]}}, [{"name": "all", "path": "/*", "upstream": "two"}])
        for i in range(4):
            with gw.raw() as c:
                c.send(request("GET", f"/hostless{i}", host=None, version="HTTP/1.0"))
                assert c.read_response().status == 200
        for origin in (a, b):
            assert origin.heads, "round-robin reaches both targets"
            for h in origin.heads:
                assert h.values("host") == [origin.addr], (origin.addr, h.target, h.headers)
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("filler", [0, 61, 62, 63, 64, 90])
def test_route_removes_fields_at_any_position(gw, filler):
    """The route's removed names and the Connection tokens leave the head wherever they stand (first, among
    many fields, last), in any case; every other field reaches the origin once, in order."""
    fill = [(f"X-Fill-{i}", str(i)) for i in range(filler)]
    sent = [("X-Drop-Me", "first"), *fill[:60], ("Cookie", "a=1"), *fill[60:], ("X-Conn-Token", "dropped"),
            ("X-Keep", "kept"), ("x-drop-me", "last")]
    with gw.raw() as c:
        c.send(request("GET", "/headers", headers=[*sent, ("Connection", "X-Conn-Token")]))
        r = c.read_response()
    assert r.status == 200, r.body
    want = [(n.lower(), v) for n, v in sent if n.lower() not in ("x-drop-me", "cookie", "x-conn-token")]
    got = [(n.lower(), v) for n, v in seen(r).headers if n.lower().startswith(("x-fill-", "x-keep", "x-drop",
                                                                           "cookie", "x-conn"))]
    assert got == want


@pytest.mark.parametrize(("status", "reason"), [(200, "OK"), (418, "I'm a Teapot"), (299, "Unknown"),
                                                (599, "Unknown"), (999, "Unknown")])
def test_status_line_is_the_gateways(gw, status, reason):
    """Any three-digit status reaches the client with the gateway's own reason phrase: the standard one of
    a named code, "Unknown" for any other (the origin's phrase is never relayed)."""
    with gw.raw() as c:
        c.send(request("GET", f"/echo/status?status={status}"))
        raw = c.sock.recv(65536)
    assert raw.startswith(f"HTTP/1.1 {status} {reason}\r\n".encode()), raw[:60]
