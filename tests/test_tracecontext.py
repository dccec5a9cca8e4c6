"""W3C Trace Context (fastgw/_core/tracecontext.pyx): the parser against the vectors the spec's grammar
gives, and end to end through HTTP/1.1, HTTP/2 and gRPC routes to real origins that report the
traceparent and tracestate they received; the access log's trace_id and span_id are the forwarded ones.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
from h2upstream import H2Origin
from test_grpc import Origin as GrpcOrigin

from fastgw._core import tracecontext as tc

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TP = f"00-{TRACE}-{PARENT}-01"
TS = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

# (traceparent, valid): built from the grammar of W3C Trace Context 3.2 (version, lengths, hex case,
# all-zero ids, version ff, later versions with and without further fields).
VECTORS = [
    (TP, True),
    (f"00-{TRACE}-{PARENT}-00", True),
    (f"00-{TRACE}-{PARENT}-ff", True),                 # flags: any two hex digits
    (TP.upper(), False),                               # uppercase hex
    (f"00-{TRACE.upper()}-{PARENT}-01", False),
    (f"00-{TRACE}-{PARENT.upper()}-01", False),
    (f"00-{TRACE}-{PARENT}-0A", False),
    (f"ff-{TRACE}-{PARENT}-01", False),                # version ff is invalid
    (f"0g-{TRACE}-{PARENT}-01", False),
    (f"00-{'0' * 32}-{PARENT}-01", False),             # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", False),              # all-zero parent id
    (f"00-{TRACE[:-1]}-{PARENT}-01", False),           # lengths
    (f"00-{TRACE}0-{PARENT}-01", False),
    (f"00-{TRACE}-{PARENT[:-1]}-01", False),
    (f"00-{TRACE}-{PARENT}-1", False),
    (f"00-{TRACE}-{PARENT}-011", False),
    (f"00-{TRACE}-{PARENT}-01-extra", False),          # version 00 has exactly four fields
    (f"00_{TRACE}-{PARENT}-01", False),
    (f"00-{TRACE}_{PARENT}-01", False),
    (f" 00-{TRACE}-{PARENT}-01", False),
    ("", False),
    ("garbage", False),
    (f"01-{TRACE}-{PARENT}-01", True),                 # a later version: parsed as 00 by its prefix
    (f"cc-{TRACE}-{PARENT}-01-what-the-future-holds", True),
    (f"cc-{TRACE}-{PARENT}-01.what", False),           # ... but the 55th character must end a field
    (f"cc-{TRACE}-{PARENT}-0", False),
    (f"cc-{'0' * 32}-{PARENT}-01-x", False),
]

# (tracestate, forwarded): W3C Trace Context 3.3 list grammar and the gateway's bounds.
STATES = [
    (TS, True),
    ("congo=t61rcWkgMzE", True),
    ("a=1, b=2 ,\tc=3", True),                         # optional whitespace around members
    ("a=1,,b=2", True),                                # empty members are allowed
    ("tenant@system=v", True),
    ("1tenant@sys=v", True),                           # a tenant id may start with a digit
    ("a=" + "x" * 256, True),
    ("a=" + "x" * 257, False),                         # a value is at most 256 characters
    ("a=x y", True),
    ("a=x ", True),                                    # trailing whitespace belongs to the list, not the value
    ("A=1", False),                                    # keys are lowercase
    ("1a=1", False),                                   # a simple key starts with a letter
    ("a=1,a=2", False),                                # a key twice
    ("a", False),
    ("a=", False),
    ("a=b=c", False),
    ("a=\x7f", False),
    ("t@1sys=v", False),                               # a system id starts with a letter
    ("t@" + "s" * 15 + "=v", False),                   # a system id is at most 14 characters
    (",".join(f"k{i}=v" for i in range(32)), True),    # 32 members
    (",".join(f"k{i}=v" for i in range(33)), False),   # 33: over the bound, dropped whole
    ("a=" + "x" * 250 + ",b=" + "y" * 250, True),      # 505 bytes
    ("a=" + "x" * 254 + ",b=" + "y" * 254 + ",c=1", False),   # 517 bytes: over the bound
]


@pytest.mark.parametrize("value,valid", VECTORS)
def test_traceparent_vectors(value: str, valid: bool) -> None:
    got = tc.parse(value.encode())
    assert (got is not None) == valid, value
    if valid:
        assert got[0] == value[3:35] and got[1] == value[36:52] and got[2] == int(value[53:55], 16)


@pytest.mark.parametrize("value,ok", STATES)
def test_tracestate_vectors(value: str, ok: bool) -> None:
    assert tc.state_ok(value.encode()) == ok, value


def test_continue_or_start_and_the_sampled_flag() -> None:
    out, continued = tc.start(TP.encode(), False, 0.0)
    assert continued and out[:36] == f"00-{TRACE}-".encode() and out[36:52] != PARENT.encode()
    assert out.endswith(b"-00")                     # keep-trace-id: the caller's 01 is not followed
    assert tc.start(TP.encode(), True, 0.0)[0].endswith(b"-01")          # trust follows it
    assert tc.start(TP.replace("-01", "-00").encode(), True, 1.0)[0].endswith(b"-00")
    assert tc.start(TP.replace("-01", "-00").encode(), False, 1.0)[0].endswith(b"-01")
    out, continued = tc.start(b"01" + TP[2:].encode() + b"-later", False, 0.0)
    assert continued and out.startswith(b"00-" + TRACE.encode())       # a later version, forwarded as 00
    out, continued = tc.start(TP.upper().encode(), True, 0.0)
    assert not continued and tc.parse(out) is not None and out[3:35] != TRACE.encode()
    ids = {tc.start(None, False, 0.0)[0][3:52] for _ in range(10000)}
    assert len(ids) == 10000                         # fresh trace and span ids every time
    sampled = sum(tc.start(None, False, 0.25)[0].endswith(b"-01") for _ in range(20000))
    assert abs(sampled - 5000) < 4 * (20000 * 0.25 * 0.75) ** 0.5


# ---------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def h2_origin() -> Any:
    o = H2Origin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def grpc_origin() -> Any:
    o = GrpcOrigin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def gw(gateway_launcher: Any, echo_origin: Any, h2_origin: Any, grpc_origin: Any) -> Any:
    ups = {"echo": {"targets": [echo_origin.addr]},
           "h2": {"targets": [h2_origin.addr], "protocol": "h2"},
           "grpc": {"targets": [grpc_origin.addr], "protocol": "grpc"}}
    routes = [{"name": "echo", "path": "/echo/*", "upstream": "echo"},
              {"name": "h2", "path": "/h2/*", "upstream": "h2"},
              {"name": "grpc", "path": "/test.Echo/*", "upstream": "grpc", "protocol": "grpc"}]
    return gateway_launcher.start(ups, routes, server={"access_log": True})


def received_h1(gw: Any, proto: str, path: str, headers: list[tuple[str, str]]) -> tuple[dict, dict]:
    """(the trace fields the HTTP/1.1 echo origin received, the response headers)."""
    with httpx.Client(base_url=gw.url, http2=proto == "h2", http1=proto != "h2", timeout=10) as c:
        r = c.get(path, headers=headers)
    assert r.status_code == 200, r.text
    got = {n.lower(): v for n, v in r.json()["headers"] if n.lower() in ("traceparent", "tracestate")}
    return got, dict(r.headers)


def received_h2(gw: Any, proto: str, path: str, headers: list[tuple[str, str]]) -> tuple[dict, dict]:
    with httpx.Client(base_url=gw.url, http2=proto == "h2", http1=proto != "h2", timeout=10) as c:
        r = c.get(path, headers=headers)
    assert r.status_code == 200, r.text
    got = {k: r.headers[f"x-seen-{k}"] for k in ("traceparent", "tracestate") if r.headers.get(f"x-seen-{k}")}
    return got, dict(r.headers)


def received_grpc(gw: Any, headers: list[tuple[str, str]]) -> tuple[dict, dict]:
    with grpc.insecure_channel(f"127.0.0.1:{gw.port}", options=[("grpc.enable_retries", 0)]) as ch:
        resp, call = ch.unary_unary("/test.Echo/Meta").with_call(b"", timeout=10, metadata=tuple(headers))
    meta = dict(tuple(x) for x in json.loads(resp))
    return ({k: meta[k] for k in ("traceparent", "tracestate") if k in meta},
            {k: v for k, v in call.initial_metadata()})


PATHS = ["h1 -> h1", "h2 -> h1", "h1 -> h2", "h2 -> h2", "grpc"]


def send(gw: Any, path: str, headers: list[tuple[str, str]]) -> tuple[dict, dict]:
    m = uuid.uuid4().hex[:10]
    if path == "grpc":
        return received_grpc(gw, headers)
    client, up = path.split(" -> ")
    if up == "h1":
        return received_h1(gw, client, f"/echo/{m}", headers)
    return received_h2(gw, client, f"/h2/{m}", headers)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value,valid", VECTORS[:12] + VECTORS[-5:])
def test_vectors_through_every_protocol(gw: Any, path: str, value: str, valid: bool) -> None:
    """A valid traceparent is continued (same trace id, the gateway's span id as the parent, version 00,
    tracestate forwarded unchanged); anything else starts a new trace and drops the tracestate. The
    forwarded flag is the gateway's decision (keep-trace-id, nothing exported: not sampled)."""
    headers = [("traceparent", value)] if value else []
    got, _ = send(gw, path, headers + [("tracestate", TS)])
    out = got.get("traceparent", "")
    parsed = tc.parse(out.encode())
    assert parsed is not None and out.startswith("00-") and len(out) == 55, (value, got)
    assert out.endswith("-00"), got
    if valid:
        assert parsed[0] == value[3:35] and parsed[1] != value[36:52], (value, got)
        assert got.get("tracestate") == TS
    else:
        assert parsed[0] != TRACE and "tracestate" not in got, (value, got)


@pytest.mark.parametrize("path", PATHS)
def test_no_traceparent_starts_one_and_a_bad_tracestate_is_dropped(gw: Any, path: str) -> None:
    first, _ = send(gw, path, [])
    second, _ = send(gw, path, [("tracestate", TS)])
    assert tc.parse(first["traceparent"].encode()) and tc.parse(second["traceparent"].encode())
    assert first["traceparent"][3:35] != second["traceparent"][3:35]
    assert "tracestate" not in second                  # no trace to belong to
    for bad in ("a=1,a=2", ",".join(f"k{i}=v" for i in range(33)), "UPPER=1"):
        got, _ = send(gw, path, [("traceparent", TP), ("tracestate", bad)])
        assert got["traceparent"][3:35] == TRACE and "tracestate" not in got, (bad, got)
    if path != "grpc":            # (grpcio sends one field of a metadata key given twice)
        got, _ = send(gw, path, [("traceparent", TP), ("traceparent", TP)])     # twice: refused, restarted
        assert got["traceparent"][3:35] != TRACE and "tracestate" not in got


def test_access_log_names_the_forwarded_trace(gw: Any) -> None:
    """trace_id and span_id in the access line are the trace id and the parent id the upstream got; its
    gateway_ms and upstream_ms split the duration (the origin waits 0.3 s: upstream time)."""
    m = uuid.uuid4().hex[:10]
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.get(f"/echo/{m}?delay=0.3", headers={"traceparent": TP})
        rid = r.headers["x-request-id"]
        tp = {n.lower(): v for n, v in r.json()["headers"]}["traceparent"]
        assert c.get(f"/nowhere/{m}").status_code == 404
    deadline = time.monotonic() + 5
    while not (lines := [e for e in gw.events if e.get("type") == "access" and m in (e.get("path") or "")]) \
            or len(lines) < 2:
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    line = next(e for e in lines if e["request_id"] == rid)
    assert (line["trace_id"], line["span_id"]) == (tp[3:35], tp[36:52]) and line["trace_id"] == TRACE
    assert line["upstream_ms"] >= 290 and line["gateway_ms"] < 100
    assert abs(line["gateway_ms"] + line["upstream_ms"] - line["duration_ms"]) <= 0.002
    nf = next(e for e in lines if e["status"] == 404)
    assert len(nf["trace_id"]) == 32 and len(nf["span_id"]) == 16 and nf["upstream_ms"] is None
    assert nf["gateway_ms"] == nf["duration_ms"]
