"""The policy interface of the data path (route.gate): what traffic policy and identity build on.

The gateway runs in-process here (a uvloop server in a thread, the real Worker and compiled Runtime)
so that the test can install gates directly; the origin is the real echo origin, the client httpx.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from inprocess import InProcessWorker
from upstreams import EchoOrigin

from fastgw.compile import compile_config
from fastgw.config.root import loads


class InProcessGateway(InProcessWorker):
    def __init__(self, origin: EchoOrigin, gates: dict[str, Callable]) -> None:
        cfg = loads(f"""
[upstreams.echo]
targets = ["{origin.addr}"]

[[routes]]
name = "open"
path = "/open/*"
upstream = "echo"

[[routes]]
name = "gated"
path = "/gated/*"
upstream = "echo"
""")
        rt = compile_config(cfg)
        self.rt = rt
        for route in self._routes():
            route.gate = gates.get(route.name)
        self.completed: list[str] = []
        super().__init__(rt)

    def _routes(self) -> Iterator:
        for name in ("open", "gated"):
            status, route, _ = self.rt.router.match(b"GET", b"h", f"/{name}/x".encode())
            assert status == 0
            yield route


@pytest.fixture
def echo() -> Iterator[EchoOrigin]:
    o = EchoOrigin().start()
    yield o
    o.stop()


def serve(echo: EchoOrigin, **gates: Callable) -> InProcessGateway:
    return InProcessGateway(echo, gates)


def test_gate_sees_the_request_and_adds_headers_both_ways(echo: EchoOrigin) -> None:
    seen = {}
    done = []

    def gate(ex):
        seen.update(method=ex.method, path=ex.path, query=ex.query, route=ex.route_name,
                    key=ex.header(b"x-api-key"), missing=ex.header(b"x-nope"), rid=ex.request_id)
        ex.add_upstream_header(b"X-Consumer", b"acme")
        ex.add_response_header(b"RateLimit", b'"default";r=9;t=1')
        ex.on_complete(lambda e: done.append(e.route_name))
        return None

    gw = serve(echo, gated=gate)
    try:
        r = httpx.get(gw.base + "/gated/a?b=1", headers={"X-Api-Key": "k1", "X-Consumer": "forged"})
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"default";r=9;t=1'
        got = r.json()
        consumers = [v for k, v in got["headers"] if k.lower() == "x-consumer"]
        assert consumers == ["acme"]            # the client's forged copy was stripped, ours added
        assert seen == {"method": b"GET", "path": b"/gated/a", "query": b"?b=1", "route": "gated",
                        "key": b"k1", "missing": None, "rid": r.headers["x-request-id"].encode()}
        assert done == ["gated"]
        # Routes without a gate are untouched.
        r2 = httpx.get(gw.base + "/open/a")
        assert r2.status_code == 200 and "ratelimit" not in r2.headers
    finally:
        gw.stop()


def test_rejection_is_problem_json_with_extra_headers_and_never_forwarded(echo: EchoOrigin) -> None:
    def gate(ex):
        ex.add_response_header(b"RateLimit", b'"default";r=0;t=3')
        return (429, "rate-limited", None, b"Retry-After: 3\r\n")

    gw = serve(echo, gated=gate)
    try:
        with httpx.Client() as c:
            r = c.get(gw.base + "/gated/x", headers={"X-Marker": "rejected"})
            assert r.status_code == 429
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["retry-after"] == "3" and r.headers["ratelimit"] == '"default";r=0;t=3'
            body = r.json()
            assert body["type"] == "urn:fastgw:problem:rate-limited" and body["instance"] == "/gated/x"
            # The connection stays usable and the rejected request never reached the origin.
            assert c.get(gw.base + "/open/y").status_code == 200
        assert not any(h.target.startswith("/gated/") for h in echo.heads)
    finally:
        gw.stop()


def test_async_gate_holds_the_request_and_its_body(echo: EchoOrigin) -> None:
    async def gate(ex):
        await asyncio.sleep(0.05)
        if ex.header(b"x-allow") == b"no":
            return (403, "forbidden", b"not today", None)
        ex.add_upstream_header(b"X-Checked", b"async")
        return None

    gw = serve(echo, gated=lambda ex: gate(ex))
    try:
        body = b"z" * 300_000                      # more than the pending buffer's pause threshold
        r = httpx.post(gw.base + "/gated/up", content=body)
        assert r.status_code == 200
        got = r.json()
        assert got["body_len"] == len(body)
        assert ["X-Checked", "async"] in [list(h) for h in got["headers"]]
        r = httpx.get(gw.base + "/gated/no", headers={"X-Allow": "no"})
        assert r.status_code == 403 and json.loads(r.content)["detail"] == "not today"
    finally:
        gw.stop()


def test_a_failing_policy_is_a_500_problem_not_a_dead_connection(echo: EchoOrigin) -> None:
    def gate(ex):
        raise RuntimeError("bug in a policy")

    async def agate(ex):
        raise KeyError("bug in an async policy")

    gw = serve(echo, gated=gate, open=lambda ex: agate(ex))
    try:
        with httpx.Client() as c:
            for path in ("/gated/a", "/open/b"):
                r = c.get(gw.base + path)
                assert r.status_code == 500
                assert r.json()["type"] == "urn:fastgw:problem:internal-error"
    finally:
        gw.stop()
