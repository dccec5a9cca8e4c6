"""Downstream HTTP/2 end to end: a real gateway process, the real echo origin, real clients (httpx with
http2, curl --http2-prior-knowledge, h2load) and raw frames (h2 as a client, hyperframe) for the limits
and flood defences (docs/http2.md).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from h2client import (
    BASE,
    CALM,
    CANCEL,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Raw,
    done,
    drained,
    headers_frame,
    read_frames,
    rst,
)
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
)
from upstreams import pattern


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin):
    routes = [
        {"name": "echo", "path": "/echo/*", "upstream": "echo",
         "response_headers": {"add": {"X-Resp": "yes"}}},
        {"name": "small", "path": "/small/*", "upstream": "echo", "max_body": "1KiB"},
    ]
    return gateway_launcher.start({"echo": {"targets": [echo_origin.addr], "timeout": "10s"}}, routes)


# ---------------------------------------------------------------------------------------------------
# Real clients

def test_httpx_get_post_and_problem(gw):
    with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=10) as c:
        r = c.get("/echo/a?x=1", headers={"X-Thing": "v", "Cookie": "a=1"})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        assert r.headers["x-resp"] == "yes"
        rid = r.headers["x-request-id"]
        rep = r.json()
        assert rep["target"] == "/echo/a?x=1"
        hdrs = {k.lower(): v for k, v in rep["headers"]}
        assert hdrs["x-thing"] == "v"
        assert hdrs["x-request-id"] == rid
        assert hdrs["x-forwarded-for"] == "127.0.0.1"
        assert rep["version"] == "HTTP/1.1"            # streams go to the HTTP/1.1 upstream pools
        body = pattern(0, 300_000)
        r = c.post("/echo/up", content=body)
        assert r.status_code == 200
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        r = c.get("/nothing")
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "urn:fastgw:problem:not-found"
        assert r.json()["request_id"] == r.headers["x-request-id"]


def test_streamed_upload_and_large_download(gw):
    """A 1 MB upload of unknown length (chunked upstream) and a 4 MiB download: both exceed every
    flow-control window many times over, so they only complete if acknowledgements and window updates
    flow."""
    body = pattern(0, 1_000_000)

    def gen():
        for i in range(0, len(body), 100_000):
            yield body[i:i + 100_000]

    with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=20) as c:
        r = c.post("/echo/stream", content=gen())
        rep = r.json()
        assert rep["body_chunked"] is True
        assert rep["body_sha256"] == hashlib.sha256(body).hexdigest()
        r = c.get("/echo/big?size=4194304")
        assert r.status_code == 200
        assert len(r.content) == 4194304
        assert r.content == pattern(0, 4194304)


def test_multiplexed_streams_on_one_connection(gw):
    async def main():
        async with httpx.AsyncClient(base_url=gw.url, http2=True, http1=False, timeout=20) as c:
            rs = await asyncio.gather(*(c.get(f"/echo/m{i}?delay=0.2") for i in range(40)))
        return rs

    t0 = time.monotonic()
    rs = asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert [r.status_code for r in rs] == [200] * 40
    assert {r.json()["target"] for r in rs} == {f"/echo/m{i}?delay=0.2" for i in range(40)}
    assert elapsed < 3.0, elapsed          # concurrent, not 40 x 0.2 s in sequence


def test_curl_prior_knowledge(gw):
    out = subprocess.run(["curl", "-sS", "-i", "--http2-prior-knowledge", gw.url + "/echo/curl"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/2 200")
    assert "x-request-id:" in out.stdout


def test_several_urls_on_one_connection_with_nghttp(gw):
    """Ten requests of different paths multiplexed on one connection, as `curl --parallel
    --http2-prior-knowledge URL...` sends them (that curl, 7.88, fails them itself: docs/http2.md): every
    stream is answered, each with its own response."""
    urls = [f"{gw.url}/echo/par{i}" + ("?size=300000" if i % 3 == 0 else "") for i in range(10)]
    out = subprocess.run(["nghttp", "-n", "--stat", *urls], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"\s*\d+\s+\+", line)]
    assert len(rows) == 10, out.stdout
    assert all(r[4] == "200" for r in rows), out.stdout
    assert sorted(r[-1] for r in rows) == sorted(u[len(gw.url):] for u in urls)


def test_h2load(gw):
    out = subprocess.run(["h2load", "-n", "3000", "-c", "4", "-m", "10", gw.url + "/echo/load"],
                         capture_output=True, text=True, timeout=60)
    assert "3000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout[-1500:]
    assert "3000 2xx" in out.stdout


def test_http1_still_served_and_upgrade_refused(gw):
    r = httpx.get(gw.url + "/echo/h1", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                                  "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
    assert r.http_version == "HTTP/1.1"
    assert r.status_code == 200
    names = {k.lower() for k, _ in r.json()["headers"]}
    assert "upgrade" not in names and "http2-settings" not in names


def test_body_limit_and_request_id(gw):
    c = Raw(gw.port)
    sid = c.request("/small/x", method="POST", end=False)
    c.h2.send_data(sid, b"x" * 5000, end_stream=True)
    c.out()
    assert c.pump(done(sid))
    head, body, _ = c.response(sid)
    assert head[":status"] == "413"
    assert json.loads(body)["type"] == "urn:fastgw:problem:payload-too-large"
    # The connection stays usable.
    sid2 = c.request("/echo/after", headers=[(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"gw.test"),
                                             (b":path", b"/echo/after"), (b"x-request-id", b"my-id-1")])
    assert c.pump(done(sid2))
    head, body, _ = c.response(sid2)
    assert head[":status"] == "200" and head["x-request-id"] == "my-id-1"
    c.close()


def test_upstream_failures_on_streams(gateway, echo_origin, midbody_origin):
    """The HTTP/1.1 upstream rules hold per stream: a refused upstream is a 502 problem on that stream; an
    upstream that dies mid-body resets that stream (INTERNAL_ERROR: never a truncated response presented
    as complete) while the connection and its other streams go on."""
    from conftest import free_port
    g = gateway.start({"echo": {"targets": [echo_origin.addr]}, "mid": {"targets": [midbody_origin.addr]},
                       "dead": {"targets": [f"127.0.0.1:{free_port()}"]}},
                      [{"name": "echo", "path": "/echo/*", "upstream": "echo"},
                       {"name": "mid", "path": "/mid/*", "upstream": "mid"},
                       {"name": "dead", "path": "/dead/*", "upstream": "dead"}])
    c = Raw(g.port)
    slow = c.request("/echo/slow?delay=0.5")
    dead = c.request("/dead/x")
    mid = c.request("/mid/x")
    assert c.pump(lambda r: all(done(s)(r) for s in (slow, dead, mid)), timeout=10)
    head, body, _ = c.response(dead)
    assert head[":status"] == "502" and json.loads(body)["type"] == "urn:fastgw:problem:bad-gateway"
    assert c.reset_code(mid) == 2                     # INTERNAL_ERROR
    assert c.response(mid)[0][":status"] == "200" and not c.response(mid)[2]
    assert c.response(slow)[0][":status"] == "200" and c.response(slow)[2]
    assert not c.closed
    c.close()


# ---------------------------------------------------------------------------------------------------
# Malformed requests: reset with PROTOCOL_ERROR, never forwarded



@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"gw.test")],           # no :path
    BASE + [(b":path", b"/echo/twice")],                                                    # two :path
    [(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"http"), (b":path", b"/echo/x")],  # pseudo after regular
    BASE + [(b":foo", b"bar")],                                                             # unknown pseudo
    BASE + [(b"X-Upper", b"1")],                                                            # uppercase name
    BASE + [(b"connection", b"keep-alive")],                                                # connection-specific
    BASE + [(b"transfer-encoding", b"chunked")],
    BASE + [(b"te", b"gzip")],
    BASE + [(b"x-smuggle", b"a\r\nInjected: 1")],                                          # CRLF in a value
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"gw.test"), (b":path", b"/echo/../admin")],
    BASE + [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")],              # two credentials
], ids=["no-path", "two-path", "pseudo-after", "unknown-pseudo", "uppercase", "connection", "te-chunked",
        "te-gzip", "crlf", "dot-segment", "two-authorization"])
def test_malformed_requests_are_reset(gw, echo_origin, headers):
    before = len(echo_origin.requests_for("/echo/"))
    c = Raw(gw.port)
    sid = c.request("", headers=headers)
    assert c.pump(done(sid))
    assert c.reset_code(sid) == PROTOCOL_ERROR
    assert len(echo_origin.requests_for("/echo/")) == before
    c.close()


@pytest.mark.parametrize("length, bodies", [
    (1, [b"test"]),                  # h2spec http2/8.1.2.6/1: more than announced, in one DATA frame
    (1, [b"test", b"test"]),         # h2spec http2/8.1.2.6/2: more than announced, over several
    (10, [b"test"]),                 # less than announced
    (0, [b"x"]),                     # a body after content-length: 0
], ids=["longer", "longer-in-two-frames", "shorter", "zero"])
def test_body_that_disagrees_with_content_length_is_reset(gw, echo_origin, length, bodies):
    """RFC 9113 8.1.1: a request whose DATA adds up to more or less than its content-length is malformed,
    a stream error PROTOCOL_ERROR, and is not forwarded (before, the origin answered 200 to the first
    content-length bytes of it). The connection and the upstream pool stay usable."""
    marker = f"/echo/cl-{length}-{len(bodies)}"
    violations = len(echo_origin.violations)
    c = Raw(gw.port)
    sid = c.h2.get_next_available_stream_id()
    c.h2.send_headers(sid, [*BASE[:3], (b":path", marker.encode()), (b"content-length", b"%d" % length)])
    out = c.h2.data_to_send()                    # the head and the body in one write: no answer between
    for i, body in enumerate(bodies):
        f = DataFrame(sid, data=body)
        if i == len(bodies) - 1:
            f.flags.add("END_STREAM")
        out += f.serialize()
    c.raw(out)
    assert c.pump(done(sid))
    assert c.reset_code(sid) == PROTOCOL_ERROR
    assert c.response(sid)[0] == {}
    after = c.request("/echo/after-content-length")
    assert c.pump(done(after))
    assert c.response(after)[0][":status"] == "200"
    # No byte of the malformed body reaches the origin as part of a request. (With content-length: 0 the
    # head alone is a whole HTTP/1.1 request, which may be upstream before the DATA is read; its answer is
    # not sent.)
    assert [r.body_len for r in echo_origin.requests_for(marker)] in ([], [0] if length == 0 else [])
    assert echo_origin.requests_for("/echo/after-content-length")[-1].body_len == 0
    assert len(echo_origin.violations) == violations
    c.close()


def test_too_many_headers_is_431(gw):
    c = Raw(gw.port)
    sid = c.request("", headers=BASE + [(b"x-h%d" % i, b"v") for i in range(101)])
    assert c.pump(done(sid))
    head, body, _ = c.response(sid)
    assert head[":status"] == "431"
    assert json.loads(body)["type"] == "urn:fastgw:problem:header-too-large"
    c.close()


def test_oversized_header_list_is_refused(gw, echo_origin):
    """More than server.limits.max_header_bytes (32 KiB) of decoded fields: the connection is closed with
    GOAWAY before anything reaches the upstream (HPACK bomb class)."""
    before = len(echo_origin.requests_for("/echo/big-head"))
    c = Raw(gw.port)
    c.pump(lambda r: False, timeout=0.2)
    f = HeadersFrame(1)
    f.data = c.h2.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"gw.test"),
                                  (b":path", b"/echo/big-head")] + [(b"x-big%d" % i, b"v" * 8000)
                                                                     for i in range(5)])
    frames = []
    data = f.data
    first = HeadersFrame(1, data=data[:16000])
    frames.append(first.serialize())
    rest = data[16000:]
    while rest:
        cf = ContinuationFrame(1, data=rest[:16000])
        rest = rest[16000:]
        if not rest:
            cf.flags.add("END_HEADERS")
        frames.append(cf.serialize())
    c.raw(b"".join(frames))
    assert c.pump(lambda r: r.closed, timeout=5)
    assert c.goaway() is not None and int(c.goaway().error_code) == CALM
    assert len(echo_origin.requests_for("/echo/big-head")) == before
    c.close()


# ---------------------------------------------------------------------------------------------------
# Floods: GOAWAY and the connection closed

def assert_calm(c: Raw) -> None:
    assert c.pump(lambda r: r.goaway() is not None and r.closed, timeout=5)
    assert int(c.goaway().error_code) == CALM


def test_rapid_reset(gw):
    c = Raw(gw.port)
    c.pump(lambda r: False, timeout=0.2)
    sid = 1
    for _ in range(14):                          # 50 open-and-reset per write: under the per-read cap
        try:
            c.raw(b"".join(headers_frame(sid + 2 * i, c) + rst(sid + 2 * i) for i in range(50)))
        except OSError:
            break
        sid += 100
        time.sleep(0.02)
        if c.closed:
            break
    assert_calm(c)
    c.close()


def test_new_streams_per_read(gw):
    c = Raw(gw.port)
    c.pump(lambda r: False, timeout=0.2)
    c.raw(b"".join(headers_frame(1 + 2 * i, c) + rst(1 + 2 * i) for i in range(150)))
    assert_calm(c)
    c.close()


def test_ping_flood(gw):
    c = Raw(gw.port)
    c.raw(b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(1200)))
    assert_calm(c)
    c.close()


def test_empty_data_flood(gw):
    c = Raw(gw.port)
    sid = c.request("/echo/slow?delay=2", method="POST", end=False)
    c.raw(b"".join(DataFrame(sid, data=b"").serialize() for _ in range(20)))
    assert_calm(c)
    c.close()


def test_continuation_flood(gw):
    c = Raw(gw.port)
    f = HeadersFrame(1)
    f.data = c.h2.encoder.encode(BASE)[:5]
    frames = [f.serialize()]
    for _ in range(100):
        frames.append(ContinuationFrame(1, data=b"\x40\x01a\x01b").serialize())
    c.raw(b"".join(frames))
    assert c.pump(lambda r: r.closed, timeout=5)
    assert c.goaway() is not None and int(c.goaway().error_code) != 0
    c.close()


def test_concurrent_stream_limit(gw):
    c = Raw(gw.port)
    c.pump(lambda r: r.h2.remote_settings.max_concurrent_streams == 100, timeout=2)
    assert c.h2.remote_settings.max_concurrent_streams == 100
    # Stream 101 is one too many: it alone is refused (RST_STREAM REFUSED_STREAM, safe to retry), the
    # connection and the 100 open streams go on (RFC 9113 5.1.2).
    c.raw(b"".join(headers_frame(1 + 2 * i, c, end=False) for i in range(100)))
    time.sleep(0.3)                     # (separate reads: more than 100 new streams in one read is a flood)
    c.raw(headers_frame(201, c, end=False) + DataFrame(1, b"", flags=["END_STREAM"]).serialize())
    frames = read_frames(c.sock, 1.5)
    assert {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)} == {201: REFUSED_STREAM}
    assert not [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == 1]
    # Stream 1 finished: a new stream is served on the same connection.
    c.raw(headers_frame(203, c, end=True))
    frames = read_frames(c.sock, 1.5)
    assert [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == 203]
    assert not [f for f in frames if isinstance(f, (GoAwayFrame, RstStreamFrame))]
    c.close()


def test_stream_flood_far_over_the_limit_is_a_connection_error(gw):
    c = Raw(gw.port)
    c.pump(lambda r: r.h2.remote_settings.max_concurrent_streams == 100, timeout=2)
    c.raw(b"".join(headers_frame(1 + 2 * i, c, end=False) for i in range(201)))
    assert c.pump(lambda r: r.closed, timeout=5)
    assert c.goaway() is not None and int(c.goaway().error_code) == PROTOCOL_ERROR
    c.close()


def test_output_not_read_is_bounded(gw):
    """PINGs whose answers the client never reads: the gateway stops at its output bound or the control
    budget and drops the connection instead of buffering without end."""
    c = Raw(gw.port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ping = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(900))
    for _ in range(40):
        try:
            c.raw(ping)
        except OSError:
            break
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    assert c.pump(lambda r: r.closed, timeout=10)
    c.close()


def test_slow_reader_with_huge_windows_is_served(gw):
    """A client that opens its windows wide (2 GiB) but reads slowly gets every byte of 6 concurrent
    1 MB responses: the output bound counts only what is written while the client is not reading (when
    no DATA goes out), so a legitimate slow reader is never mistaken for a flood."""
    c = Raw(gw.port, window=2**31 - 1)
    c.h2.increment_flow_control_window(2**31 - 1 - 65535)
    c.out()
    sids = [c.request(f"/echo/wide{i}?size=1000000") for i in range(6)]
    time.sleep(0.5)                                  # let the gateway fill the socket buffers first
    assert c.pump(lambda r: all(done(s)(r) for s in sids), timeout=30)
    for s in sids:
        head, body, ended = c.response(s)
        assert head[":status"] == "200" and ended and len(body) == 1000000
    assert not c.closed
    c.close()


# ---------------------------------------------------------------------------------------------------
# Flow control: a stream stalled on a zero window is reset; other streams and the connection go on


def test_stalled_stream_is_reset(gateway, echo_origin, monkeypatch):
    import conftest
    render = conftest.render_config
    monkeypatch.setattr(conftest, "render_config",
                        lambda *a, **k: render(*a, **k) + '\n[server.http2]\nstall_timeout = "1s"\n')
    g = gateway.start({"echo": {"targets": [echo_origin.addr]}},
                      [{"name": "echo", "path": "/echo/*", "upstream": "echo"}])
    assert 'stall_timeout = "1s"' in g.config_text
    port = g.port
    c = Raw(port, window=16384)
    sid = c.request("/echo/big?size=1000000")
    t0 = time.monotonic()
    c.read_unacked(lambda r: r.reset_code(sid) is not None, 6)
    assert c.reset_code(sid) == CANCEL
    assert 0.8 < time.monotonic() - t0 < 5
    sid2 = c.request("/echo/next")
    assert c.pump(done(sid2))
    assert c.response(sid2)[0][":status"] == "200"
    c.close()


# ---------------------------------------------------------------------------------------------------
# Drain and ALPN


def test_drain_sends_goaway_and_finishes_streams(gateway, echo_origin):
    g = gateway.start({"echo": {"targets": [echo_origin.addr]}},
                      [{"name": "echo", "path": "/echo/*", "upstream": "echo"}])
    c = Raw(g.port)
    assert c.pump(lambda r: r.h2.remote_settings.max_concurrent_streams == 100, timeout=2)
    sid = c.request("/echo/slow?delay=1")
    time.sleep(0.3)
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    frames = read_frames(c.sock, 8)
    kinds = [(type(f).__name__, f.stream_id) for f in frames]
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    # The two-step GOAWAY (RFC 9113 6.8): 2^31-1 first, then, once the PING round trip is over (this client
    # does not answer the PING: after the wait's bound), the last stream taken.
    assert [(f.last_stream_id, f.error_code) for f in goaway] == [(2**31 - 1, 0), (sid, 0)], kinds
    # After the GOAWAY, the stream in flight is answered in full, then the connection closes.
    heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == sid]
    assert heads and frames.index(goaway[0]) < frames.index(heads[0]), kinds
    assert tuple(c.h2.decoder.decode(heads[0].data)[0]) == (":status", "200")
    assert any("END_STREAM" in f.flags for f in frames if f.stream_id == sid), kinds
    assert time.monotonic() - t0 < 5
    c.close()
    drained(gateway, g)


def test_alpn_h2_over_tls(tmp_path):
    """ALPN "h2" on a TLS transport selects the HTTP/2 engine (ClientConn.connection_made), "http/1.1"
    keeps HTTP/1.1: a worker's protocol factory behind an SSLContext of the test's own."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", tmp_path / "k.pem",
                    "-out", tmp_path / "c.pem", "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    script = tmp_path / "alpn_server.py"
    script.write_text(ALPN_SERVER)
    from upstreams import EchoOrigin
    origin = EchoOrigin().start()
    root = Path(__file__).parents[1]          # import this checkout's fastgw, not an installed one
    proc = subprocess.Popen(["python3", str(script), str(tmp_path), origin.addr], stdout=subprocess.PIPE,
                            cwd=root, text=True, env=dict(os.environ, PYTHONPATH=str(root)))
    try:
        port = int(proc.stdout.readline())
        ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        with httpx.Client(http2=True, verify=ctx, timeout=10) as c:
            r = c.get(f"https://localhost:{port}/echo/tls")
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200
            hdrs = {k.lower(): v for k, v in r.json()["headers"]}
            assert hdrs["x-forwarded-proto"] == "https"
        with httpx.Client(http2=False, verify=ctx, timeout=10) as c:
            r = c.get(f"https://localhost:{port}/echo/tls1")
            assert r.http_version == "HTTP/1.1" and r.status_code == 200
    finally:
        proc.kill()
        proc.wait()
        origin.stop()


ALPN_SERVER = r'''
import asyncio, ssl, sys
import uvloop
from fastgw.config.root import loads
from fastgw.compile import compile_config
from fastgw._core.worker import Worker

d, origin = sys.argv[1], sys.argv[2]
cfg = loads(f"""
[upstreams.echo]
targets = ["{origin}"]
[[routes]]
name = "echo"
path = "/echo/*"
upstream = "echo"
""")

async def main():
    loop = asyncio.get_running_loop()
    w = Worker(compile_config(cfg), loop, b"t-")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{d}/c.pem", f"{d}/k.pem")
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    srv = await loop.create_server(w.tls_protocol, "127.0.0.1", 0, ssl=ctx)
    print(srv.sockets[0].getsockname()[1], flush=True)
    import time
    while True:
        w.sweep(loop.time(), b"Date: x\r\n")
        await asyncio.sleep(0.25)

uvloop.run(main())
'''


def test_response_encoder_round_trips_through_hpack():
    """fastgw's response field encoder (literal without indexing, static-table names) decodes with a
    standard HPACK decoder, long names and values included, and acknowledges a table size change."""
    import hpack

    from fastgw._core.hpack import H2Encoder
    enc = H2Encoder()
    dec = hpack.Decoder()
    fields = [(b":status", b"200"), (b":status", b"418"), (b"content-type", b"application/json"),
              (b"x-long-" + b"n" * 200, b"v" * 5000), (b"x-request-id", b"abc"), (b"server", b"")]
    for _ in range(3):                              # the second and third pass come from the cache
        assert dec.decode(enc.encode(fields), raw=True) == fields
    assert len(dec.header_table.dynamic_entries) == 0   # nothing was inserted into the dynamic table
    enc.header_table_size = 0
    block = enc.encode([(b":status", b"204")])
    assert block[0] == 0x20                         # size update first (RFC 7541 4.2)
    assert dec.decode(block, raw=True) == [(b":status", b"204")]


def test_alpn_h2_on_the_gateway_tls_listener(gateway, echo_origin, tmp_path):
    """The gateway's own [[server.tls]] listener (fastgw/tls.py) offers h2 by ALPN: httpx and curl get
    HTTP/2, a client offering only http/1.1 gets HTTP/1.1, on the same port."""
    from certs import CA, write_pair
    from conftest import free_port
    ca = CA("fastgw h2 test CA")
    (tmp_path / "ca.pem").write_bytes(ca.pem())
    cert, key = write_pair(tmp_path, "api", ca.issue("api.test", ["api.test"], ips=["127.0.0.1"]))
    port = free_port()
    g = gateway.start({"echo": {"targets": [echo_origin.addr]}},
                      [{"name": "echo", "path": "/echo/*", "upstream": "echo"}],
                      extra=f'\n[[server.tls]]\nlisten = ["127.0.0.1:{port}"]\ncert = "{cert}"\nkey = "{key}"\n')
    assert g.alive()
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with httpx.Client(http2=True, verify=ctx, timeout=10) as c:
        r = c.get(f"https://127.0.0.1:{port}/echo/alpn")
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert {k.lower(): v for k, v in r.json()["headers"]}["x-forwarded-proto"] == "https"
    with httpx.Client(http2=False, verify=ctx, timeout=10) as c:
        r = c.get(f"https://127.0.0.1:{port}/echo/alpn1")
        assert r.http_version == "HTTP/1.1" and r.status_code == 200
    out = subprocess.run(["curl", "-sS", "-i", "--http2", "--cacert", str(tmp_path / "ca.pem"),
                          f"https://127.0.0.1:{port}/echo/curl-tls"], capture_output=True, text=True, timeout=20)
    assert out.stdout.startswith("HTTP/2 200"), out.stdout + out.stderr


def test_h2c_after_a_proxy_protocol_header(gateway, echo_origin):
    """server.proxy_protocol: the PROXY header is read first, then the h2c preface selects HTTP/2, and the
    client address from the header is the one forwarded."""
    g = gateway.start({"echo": {"targets": [echo_origin.addr]}},
                      [{"name": "echo", "path": "/echo/*", "upstream": "echo"}], server={"proxy_protocol": True})
    c = Raw(g.port, prefix=b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
    sid = c.request("/echo/pp")
    assert c.pump(done(sid))
    head, body, _ = c.response(sid)
    assert head[":status"] == "200"
    hdrs = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert hdrs["x-forwarded-for"] == "203.0.113.7"
    c.close()
