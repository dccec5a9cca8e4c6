"""The policy phases (fastgw/policies/contract.py): on_request answering with a Respond, on_upstream_request,
on_response rewriting or replacing responses (the upstream's and the gateway's own problems), on_log, and
the per-request ctx, through HTTP/1.1 and HTTP/2 clients.

The gateway runs in-process (a uvloop server in a thread, the real Worker and compiled Runtime) so that a
test can install its own policies on a route, compiled into the route's phases as the registry's are
(fastgw/policies/chain.py install_phases); the origin is the real echo origin, the clients httpx.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import free_port
from inprocess import InProcessWorker
from upstreams import EchoOrigin

from fastgw._core.gates import CorsGate, Gate
from fastgw._core.phases import Respond
from fastgw.compile import compile_config
from fastgw.config.root import loads
from fastgw.policies.chain import install_phases, phase

ROUTES = ("answer", "edit", "limited", "down", "open")


class Gateway(InProcessWorker):
    """An in-process gateway; `policies` maps a route name to its test policies (None: the unrouted
    phases, for answers made before a route is chosen)."""

    def __init__(self, origin: EchoOrigin, policies: dict[str | None, list[Gate]]) -> None:
        cfg = loads(f"""
[upstreams.echo]
targets = ["{origin.addr}"]

[upstreams.down]
targets = ["127.0.0.1:{free_port()}"]

[[routes]]
name = "answer"
path = "/answer/*"
upstream = "echo"

[[routes]]
name = "edit"
path = "/edit/*"
upstream = "echo"
response_headers = {{ add = {{ "X-Route" = "cfg" }} }}

[[routes]]
name = "limited"
path = "/limited/*"
upstream = "echo"

[[routes]]
name = "down"
path = "/down/*"
upstream = "down"

[[routes]]
name = "open"
path = "/open/*"
upstream = "echo"
""")
        rt = compile_config(cfg)
        for name in ROUTES:
            status, route, _ = rt.router.match(b"GET", b"h", f"/{name}/x".encode())
            assert status == 0
            install_phases(route, policies.get(name, []))
        unrouted = policies.get(None, [])
        rt.unrouted_response = phase(unrouted, "on_response")
        rt.unrouted_log = phase(unrouted, "on_log")
        super().__init__(rt)


@pytest.fixture
def echo() -> Iterator[EchoOrigin]:
    o = EchoOrigin().start()
    yield o
    o.stop()


@pytest.fixture
def serve(echo: EchoOrigin) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(policies: dict[str | None, list[Gate]]) -> Gateway:
        started.append(Gateway(echo, policies))
        return started[-1]

    yield start
    for g in started:
        g.stop()


def clients() -> list[httpx.Client]:
    """An HTTP/1.1 client and an HTTP/2 (h2c, prior knowledge) one; each checks every response came in
    its version."""
    def speaks(version: str) -> dict[str, list]:
        def check(r: httpx.Response) -> None:
            assert r.http_version == version
        return {"response": [check]}
    return [httpx.Client(timeout=5, event_hooks=speaks("HTTP/1.1")),
            httpx.Client(http1=False, http2=True, timeout=5, event_hooks=speaks("HTTP/2"))]


def test_respond_answers_both_protocols_and_the_upstream_is_never_contacted(serve: Any, echo: EchoOrigin) -> None:
    class Preflight(Gate):
        def on_request(self, ex: Any) -> Any:
            if ex.method == b"GET":
                ex.add_response_header(b"X-From-Request", b"1")     # added before answering: kept
            return Respond(203, [("X-Answered", "policy"), (b"Cache-Control", b"no-store")], b"hello, client")

    gw = serve({"answer": [Preflight()]})
    for c in clients():
        with c:
            r = c.get(gw.base + "/answer/x")
            assert r.status_code == 203 and r.content == b"hello, client"
            assert r.headers["x-answered"] == "policy" and r.headers["cache-control"] == "no-store"
            assert r.headers["x-from-request"] == "1" and r.headers["content-length"] == "13"
            assert r.headers["x-request-id"]
            h = c.head(gw.base + "/answer/x")
            assert h.status_code == 203 and h.content == b"" and "x-from-request" not in h.headers
            # The connection stays usable: the next request is proxied.
            assert c.get(gw.base + "/open/after").status_code == 200
    assert echo.heads_for("/answer/") == [] and len(echo.heads_for("/open/after")) == 2


def test_on_response_adds_removes_and_replaces_headers_of_upstream_responses(serve: Any) -> None:
    class Edit(Gate):
        def on_response(self, ex: Any) -> None:
            assert ex.response_status == 200
            assert ex.response_header(b"server") == b"test-origin"
            assert ex.response_header(b"content-length") is None        # framing is the gateway's
            ex.add_response_header(b"X-Added", b"yes")
            ex.remove_response_header("x-route")                        # the route's own added header
            ex.set_response_header("Server", "fastgw-policy")           # the upstream's
            assert (b"Server", b"fastgw-policy") in ex.response_headers
            assert isinstance(ex.response_headers, tuple)               # a snapshot: edits are checked
            with pytest.raises(ValueError):
                ex.set_response_header("Transfer-Encoding", "chunked")

    gw = serve({"edit": [Edit()]})
    for c in clients():
        with c:
            for query in ("", "?te=chunked"):
                r = c.get(gw.base + "/edit/x" + query)
                assert r.status_code == 200 and r.json()["target"] == "/edit/x" + query
                assert r.headers["x-added"] == "yes"
                assert r.headers.get_list("server") == ["fastgw-policy"]
                assert "x-route" not in r.headers and r.headers["content-type"] == "application/json"
            # A route without an on_response policy keeps the upstream's response as it was.
            r = c.get(gw.base + "/open/x")
            assert r.headers["server"] == "test-origin" and "x-added" not in r.headers


def test_on_response_sees_the_gateways_own_404_429_and_502(serve: Any) -> None:
    class Mark(Gate):
        def on_response(self, ex: Any) -> None:
            ex.add_response_header(b"X-Status-Seen", b"%d" % ex.response_status)

    class Limit(Gate):
        def on_request(self, ex: Any) -> Any:
            ex.add_response_header(b"RateLimit", b'"default";r=0;t=7')
            return (429, "rate-limited", None, b"Retry-After: 3\r\n")

        def on_response(self, ex: Any) -> None:
            assert ex.response_header(b"ratelimit") == b'"default";r=0;t=7'
            ex.set_response_header(b"Retry-After", b"7")
            ex.remove_response_header(b"RateLimit")

    gw = serve({None: [Mark()], "limited": [Limit(), Mark()], "down": [Mark()]})
    for c in clients():
        with c:
            r = c.get(gw.base + "/nowhere")
            assert r.status_code == 404 and r.headers["x-status-seen"] == "404"
            assert r.json()["type"] == "urn:fastgw:problem:not-found"
            r = c.get(gw.base + "/limited/x")
            assert r.status_code == 429 and r.headers["x-status-seen"] == "429"
            assert r.headers.get_list("retry-after") == ["7"] and "ratelimit" not in r.headers
            assert r.headers["content-type"] == "application/problem+json"
            r = c.get(gw.base + "/down/x")
            assert r.status_code == 502 and r.headers["x-status-seen"] == "502"
            assert r.json()["upstream"] == "down"


def test_on_response_replaces_the_response_and_later_policies_see_the_replacement(
        serve: Any, echo: EchoOrigin) -> None:
    class Replace(Gate):
        def on_response(self, ex: Any) -> Any:
            if ex.response_status == 418:
                return Respond(200, [("X-Replaced", "418")], b"teapot hidden")
            return None

    class After(Gate):
        def on_response(self, ex: Any) -> None:
            ex.add_response_header(b"X-After", b"%d" % ex.response_status)

    gw = serve({"edit": [Replace(), After()]})
    for c in clients():
        with c:
            r = c.get(gw.base + "/edit/tea?status=418")
            assert r.status_code == 200 and r.content == b"teapot hidden"
            assert r.headers["x-replaced"] == "418" and r.headers["x-after"] == "200"
            assert "server" not in r.headers
            r = c.get(gw.base + "/edit/plain")                 # the connection goes on
            assert r.status_code == 200 and r.headers["x-after"] == "200" and r.headers["server"] == "test-origin"
    assert len(echo.heads_for("/edit/tea")) == 2


def test_awaitable_on_request_and_ctx_carried_to_on_response_and_on_log(serve: Any, echo: EchoOrigin) -> None:
    logged: list[tuple[Any, int]] = []

    class Lookup(Gate):
        def on_request(self, ex: Any) -> Any:
            async def wait() -> Any:
                await asyncio.sleep(0.02)                    # as a store lookup would
                ex.ctx = {"looked-up": ex.path}
                if ex.header(b"x-answer") == b"now":
                    return Respond(200, [("X-Via", "await")], b"awaited answer")
                return None
            assert ex.ctx is None                            # nobody set it yet
            return wait()

        def on_response(self, ex: Any) -> None:
            ex.add_response_header(b"X-Ctx", ex.ctx["looked-up"])

        def on_log(self, ex: Any) -> None:
            logged.append((ex.ctx, ex.response_status))

    gw = serve({"edit": [Lookup()]})
    for c in clients():
        with c:
            r = c.get(gw.base + "/edit/one")
            assert r.status_code == 200 and r.headers["x-ctx"] == "/edit/one" and r.headers["x-route"] == "cfg"
            r = c.get(gw.base + "/edit/two", headers={"X-Answer": "now"})
            assert r.status_code == 200 and r.content == b"awaited answer"
            assert r.headers["x-via"] == "await" and r.headers["x-ctx"] == "/edit/two"
    assert logged == [({"looked-up": b"/edit/one"}, 200), ({"looked-up": b"/edit/two"}, 200)] * 2
    assert len(echo.heads_for("/edit/one")) == 2 and echo.heads_for("/edit/two") == []


def test_read_body_holds_the_whole_body_and_on_response_body_taps_the_upstreams(serve: Any,
                                                                                echo: EchoOrigin) -> None:
    """read_body: the whole request body in on_request before any upstream work (larger than the pending
    limit and than an HTTP/2 stream window, chunked or not), still forwarded as sent; over the limit the
    policy answers 413. on_response_body: every chunk of an upstream's body, then one end; nothing for the
    gateway's own answer (502)."""
    import hashlib
    held: list[bytes] = []
    tapped: list[tuple[bytes, bytes, bool]] = []

    class Tap(Gate):
        def on_request(self, ex: Any) -> Any:
            if ex.method != b"POST":
                return None

            async def whole() -> Any:
                body = await ex.read_body(400_000)
                if body is None:
                    return (413, "payload-too-large", None, None)
                held.append(body)
                return None
            return whole()

        def on_response_body(self, ex: Any, chunk: bytes, end: bool) -> None:
            tapped.append((ex.path, chunk, end))

    gw = serve({"edit": [Tap()], "down": [Tap()]})
    body = bytes(range(256)) * 1200                          # 307,200 bytes
    for c in clients():
        with c:
            tapped.clear()
            r = c.get(gw.base + "/edit/big?size=300000")
            assert r.status_code == 200 and len(r.content) == 300000
            assert b"".join(ch for _, ch, _ in tapped) == r.content
            assert [end for *_, end in tapped].count(True) == 1 and tapped[-1] == (b"/edit/big", b"", True)
            tapped.clear()
            assert c.get(gw.base + "/down/x").status_code == 502 and tapped == []
            for content in (body, iter([body[:1000], body[1000:]])):
                held.clear()
                r = c.post(gw.base + "/edit/post", content=content)
                assert r.status_code == 200 and held == [body]
                assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
            r = c.post(gw.base + "/edit/post", content=b"x" * 400_001)
            assert r.status_code == 413
    assert len(echo.heads_for("/edit/post")) == 4
    # A client that waits for 100 Continue before its body is told to go on while the policy waits.
    import socket
    host, port = gw.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), 5) as sock:
        sock.sendall(b"POST /edit/expect HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        held.clear()
        sock.sendall(b"hello")
        got = b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 200 ") and held == [b"hello"]


class Lines(CorsGate):
    """A compiled line-giving policy (gates.pyx CorsGate) granting every origin; `boom`: its Python half
    raises."""

    def __init__(self, boom: bool = False) -> None:
        self.granted, self.more, self.tail, self.boom = (), True, b"\r\nVary: Origin\r\n", boom

    def allowed(self, origin: bytes) -> bool:
        if self.boom:
            raise RuntimeError("a bug in the policy")
        return True


def test_compiled_response_lines_on_every_answer_and_a_raising_policy_gives_none(serve: Any) -> None:
    """A compiled line-giving policy (gates.pyx CorsGate): its lines on the upstream's response and on the
    gateway's own 502; one whose Python half raises is reported and the request goes on without them."""
    gw = serve({"edit": [Lines(True)], "answer": [Lines(False)], "down": [Lines(False)]})
    for c in clients():
        with c:
            r = c.get(gw.base + "/answer/x", headers={"Origin": "https://a.example"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://a.example"
            r = c.get(gw.base + "/down/x", headers={"Origin": "https://a.example"})
            assert r.status_code == 502 and r.headers["access-control-allow-origin"] == "https://a.example"
            r = c.get(gw.base + "/edit/x", headers={"Origin": "https://a.example"})
            assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
            # Its request phase in C (head_request: a preflight) raising -- Lines has no `preflight` -- is
            # reported and answered 500, as an on_request that raises; the lines are still on it.
            r = c.options(gw.base + "/answer/x", headers={"Origin": "https://a.example",
                                                          "Access-Control-Request-Method": "GET"})
            assert r.status_code == 500 and r.json()["type"] == "urn:fastgw:problem:internal-error"
            assert r.headers["access-control-allow-origin"] == "https://a.example"


def test_on_upstream_request_adds_and_removes_request_headers(serve: Any) -> None:
    class Upstream(Gate):
        def on_request(self, ex: Any) -> None:
            ex.add_upstream_header(b"X-Internal", b"from-on-request")

        def on_upstream_request(self, ex: Any) -> None:
            ex.remove_upstream_header("x-secret")
            ex.remove_upstream_header("X-Internal")
            ex.add_upstream_header(b"X-Up", b"1")
            with pytest.raises(ValueError):
                ex.remove_upstream_header("Content-Length")

    gw = serve({"edit": [Upstream()]})
    for c in clients():
        with c:
            r = c.post(gw.base + "/edit/x", headers={"X-Secret": "s", "X-Kept": "k"}, content=b"body")
            assert r.status_code == 200
            names = {k.lower(): v for k, v in r.json()["headers"]}
            assert names["x-up"] == "1" and names["x-kept"] == "k" and r.json()["body_len"] == 4
            assert "x-secret" not in names and "x-internal" not in names


def test_a_policy_raising_in_a_phase_is_a_500_problem(serve: Any) -> None:
    class Broken(Gate):
        def on_response(self, ex: Any) -> None:
            raise RuntimeError("bug in on_response")

    class BrokenUp(Gate):
        def on_upstream_request(self, ex: Any) -> None:
            raise RuntimeError("bug in on_upstream_request")

    # The 500 keeps the route's compiled response lines (CORS: a browser reads the 500 like any error),
    # not what the policies added ([issue 14]: it had none of them).
    gw = serve({"edit": [Lines(), Broken()], "limited": [Lines(), BrokenUp()]})
    for c in clients():
        with c:
            for path in ("/edit/x", "/limited/x"):
                r = c.get(gw.base + path, headers={"Origin": "https://a.example"})
                assert r.status_code == 500 and r.json()["type"] == "urn:fastgw:problem:internal-error"
                assert r.headers["access-control-allow-origin"] == "https://a.example", r.headers
                assert r.headers.get_list("vary") == ["Origin"]
            assert c.get(gw.base + "/open/x").status_code == 200


def test_each_policy_keeps_its_own_state(serve: Any) -> None:
    """Gate.state: two policies of one route each keep their own per-request state from on_request to
    on_log (the cache and the Idempotency-Key share routes); a route whose policies keep none has no
    list (ex.states stays None)."""
    seen: list[tuple[str, Any, Any]] = []

    class Keeper(Gate):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_request(self, ex: Any) -> None:
            assert self.state(ex) is None
            if ex.header(b"x-keep") is not None:
                self.set_state(ex, (self.name, ex.path))

        def on_response(self, ex: Any) -> None:
            ex.add_response_header(b"X-" + self.name.encode(), repr(self.state(ex)).encode())

        def on_log(self, ex: Any) -> None:
            seen.append((self.name, self.state(ex), ex.states))

    gw = serve({"edit": [Keeper("a"), Keeper("b")]})
    for c in clients():
        with c:
            seen.clear()
            r = c.get(gw.base + "/edit/1", headers={"X-Keep": "1"})
            assert r.headers["x-a"] == "('a', b'/edit/1')" and r.headers["x-b"] == "('b', b'/edit/1')"
            r = c.get(gw.base + "/edit/2")
            assert r.headers["x-a"] == r.headers["x-b"] == "None"
            assert seen == [("a", ("a", b"/edit/1"), [("a", b"/edit/1"), ("b", b"/edit/1")]),
                            ("b", ("b", b"/edit/1"), [("a", b"/edit/1"), ("b", b"/edit/1")]),
                            ("a", None, None), ("b", None, None)]


def test_respond_checks_what_it_would_put_on_the_wire() -> None:
    with pytest.raises(ValueError):
        Respond(101)
    with pytest.raises(ValueError):
        Respond(200, [("Content-Length", "3")])
    with pytest.raises(ValueError):
        Respond(200, [("X-Split", "a\r\nX-Injected: 1")])
    with pytest.raises(ValueError):
        Respond(200, [("Bad Name", "v")])
    r = Respond(204, [("x-a", "1")])
    assert (r.status, r.headers, r.body) == (204, [(b"x-a", b"1")], b"")


def test_grpc_routes_run_the_same_phases() -> None:
    """A grpc route (HTTP/2 upstream streams): on_response adds metadata to the upstream's head, and to the
    gateway's own trailers-only answer to a rejected call; on_log sees both."""
    import grpc
    from test_grpc import Origin as GrpcOrigin

    logged: list[tuple[str, int]] = []

    class Meta(Gate):
        def on_request(self, ex: Any) -> Any:
            ex.ctx = ex.path.decode()
            if ex.header(b"x-deny") is not None:
                return (429, "rate-limited", None, b"Retry-After: 3\r\n")
            return None

        def on_response(self, ex: Any) -> None:
            ex.add_response_header(b"X-Phase", b"%d" % ex.response_status)
            if ex.response_status == 429:
                ex.set_response_header(b"Retry-After", b"9")

        def on_log(self, ex: Any) -> None:
            logged.append((ex.ctx, ex.response_status))

    origin = GrpcOrigin().start()
    cfg = loads(f"""
[upstreams.grpc]
targets = ["127.0.0.1:{origin.port}"]

[[routes]]
name = "echo"
path = "/test.Echo/*"
upstream = "grpc"
protocol = "grpc"
""")
    rt = compile_config(cfg)
    _, route, _ = rt.router.match(b"POST", b"h", b"/test.Echo/Unary")
    install_phases(route, [Meta()])
    gw = InProcessWorker(rt)
    ch = grpc.insecure_channel(gw.base.removeprefix("http://"), options=[("grpc.enable_retries", 0)])
    try:
        resp, c = ch.unary_unary("/test.Echo/Unary").with_call(b"hi", timeout=10)
        assert resp == b"hi" and dict(c.initial_metadata())["x-phase"] == "200"
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/test.Echo/Unary")(b"hi", timeout=10, metadata=(("x-deny", "1"),))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        meta = dict(e.value.trailing_metadata())
        assert meta["x-phase"] == "429" and meta["retry-after"] == "9"
        assert len(origin.peers) >= 1
    finally:
        ch.close()
        gw.stop()
        origin.stop()
    assert logged == [("/test.Echo/Unary", 200), ("/test.Echo/Unary", 429)]
