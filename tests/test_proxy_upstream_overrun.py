"""Bytes after the declared end of an upstream response (issue 11 item 14).

A response ends where its framing says (Content-Length reached, the last chunk, or at the head for a
response without a body). Anything the upstream sends after that is not part of any response: the
connection is closed instead of pooled, and counted in fastgw_upstream_overruns_total. Before the fix the
connection went back to the pool with its parser mid-garbage, and the next request on it (another
client's) got a 502, or the smuggled bytes as its response.
"""
from __future__ import annotations

import time
import uuid

import pytest
from procutil import admin_get, metric
from upstreams import OverrunOrigin

SMUGGLED = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-Smuggled: 1\r\n\r\nhijack!"


@pytest.fixture(scope="module")
def origin():
    o = OverrunOrigin().start()
    yield o
    o.stop()
    assert not o.errors, o.errors


@pytest.fixture(scope="module")
def gw(gateway_launcher, origin):
    ups = {"over": {"targets": [origin.addr], "keepalive": 4}}
    return gateway_launcher.start(ups, [{"name": "over", "path": "/over/*", "upstream": "over"}])


def overruns(gw) -> float:
    admin = next(e["admin"] for e in gw.events if e.get("event") == "started")
    return metric(admin_get(f"http://{admin}/metrics")[1], "fastgw_upstream_overruns_total")


CASES = {
    "cl-garbage": "te=cl&extra=" + "Z" * 20,
    "cl-partial-head": "te=cl&extra=HTTP/1.1%202",           # a valid prefix: the parser raises nothing
    "cl-smuggled-response": "te=cl&extra=" + SMUGGLED.replace("\r\n", "%0D%0A").replace(" ", "%20"),
    "chunked-garbage": "te=chunked&extra=" + "Z" * 20,
    "chunked-partial-head": "te=chunked&extra=HTTP/1.",
    "no-body-garbage": "te=none&extra=" + "Z" * 20,
    "late-garbage": "te=cl&later=1&extra=" + "Z" * 20,        # arrives on the idle pooled connection
}


@pytest.mark.parametrize("case", list(CASES))
def test_bytes_after_the_response_close_the_upstream_connection(gw, origin, case):
    before = overruns(gw)
    m = uuid.uuid4().hex[:12]
    with gw.raw() as c:
        c.send(f"GET /over/{m}?{CASES[case]} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
        r = c.read_response()
        assert r.status in (200, 204), r.raw_head
        assert r.body == (b"" if case.startswith("no-body") else b"0123456789")
        assert not r.has("x-smuggled")
    first = origin.heads_for(m)[0].conn
    time.sleep(0.15)
    # Other clients, one request each: every one gets its own response, on a fresh upstream connection.
    for i in range(3):
        with gw.raw() as c:
            c.send(f"GET /over/{m}-next{i} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200 and r.body == b"0123456789" and not r.has("x-smuggled"), (r.raw_head, r.body)
    assert origin.heads_for(f"{m}-next0")[0].conn != first, "the overrun connection was pooled"
    assert origin.wait_for(lambda: first in origin.ended, 2.0), "the overrun connection was left open"
    deadline = time.monotonic() + 2
    while overruns(gw) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert overruns(gw) == before + 1


def test_clean_responses_are_pooled_and_not_counted(gw, origin):
    before = overruns(gw)
    with gw.client() as client:
        for te in ("cl", "chunked", "none", "cl"):
            r = client.get(f"/over/clean-{te}?te={te}")
            assert r.status_code in (200, 204)
    conns = {h.conn for h in origin.heads_for("/over/clean-")}
    assert len(conns) == 1, f"clean keep-alive responses used {len(conns)} upstream connections"
    assert overruns(gw) == before
