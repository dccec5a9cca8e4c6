"""`[upstreams.NAME] protocol = "h2"`: any route on an HTTP/2 upstream, from HTTP/1.1 and HTTP/2 clients.

The upstream is a real HTTP/2 server on loopback (tests/h2upstream.py, the h2 library's server side), over
h2c with prior knowledge and over TLS with ALPN h2 (certificates from tests/certs.py); the clients are
httpx (HTTP/1.1) and curl (HTTP/1.1 and HTTP/2 with prior knowledge).
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from certs import CA, write_pair
from h2upstream import H2Origin
from upstreams import pattern

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def origin():
    o = H2Origin().start()
    yield o
    o.stop()


def h2_gateway(gateway, o: H2Origin, **up):
    return gateway.start({"h2": {"targets": [o.addr], "protocol": "h2", **up}},
                         [{"name": "r", "path": "/*", "upstream": "h2", "max_body": "64MiB"}])


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def test_http1_client_through_h2c_upstream(gateway, origin):
    gw = h2_gateway(gateway, origin)
    with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", headers={"host": "api.test"}) as c:
        r = c.get("/hello/there?x=1", headers={"x-custom": "v", "connection": "keep-alive",
                                               "keep-alive": "timeout=5", "te": "gzip"})
        assert r.status_code == 200, r.text
        assert r.http_version == "HTTP/1.1"
        assert r.headers["x-seen-method"] == "GET"
        assert r.headers["x-seen-path"] == "/hello/there?x=1"
        assert r.headers["x-seen-authority"] == "api.test"          # Host became :authority
        assert r.headers["x-seen-scheme"] == "http"
        fields = r.headers["x-seen-fields"].split(",")
        assert "x-custom" in fields and "x-request-id" in fields and "x-forwarded-for" in fields
        for hop in ("host", "connection", "keep-alive", "te", "transfer-encoding"):
            assert hop not in fields, fields
        assert r.headers["x-request-id"]
        for _ in range(5):
            assert c.get("/again").status_code == 200
    assert origin.connections == 1                              # one multiplexed connection, reused


def test_http1_chunked_body_streams_as_data(gateway, origin):
    gw = h2_gateway(gateway, origin)
    pieces = [pattern(i * 70001, 70001) for i in range(5)]

    def gen():
        yield from pieces

    r = httpx.post(f"http://127.0.0.1:{gw.port}/upload", content=gen(), timeout=20)
    assert r.status_code == 200
    body = b"".join(pieces)
    assert r.headers["x-body-len"] == str(len(body))
    assert r.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
    assert r.content == body                                      # echoed back through the windows
    fields = r.headers["x-seen-fields"].split(",")
    assert "transfer-encoding" not in fields and "content-length" not in fields


def test_curl_http1_and_http2_clients(gateway, origin, tmp_path):
    gw = h2_gateway(gateway, origin)
    url = f"http://127.0.0.1:{gw.port}/curl/path"
    r1 = curl("--http1.1", "-D", "-", "-o", "/dev/null", "-H", "Host: one.test", url)
    assert r1.returncode == 0, r1.stderr
    head = r1.stdout.decode().lower()
    assert head.startswith("http/1.1 200") and "x-seen-authority: one.test" in head
    body = tmp_path / "body"
    body.write_bytes(pattern(0, 300000))
    r2 = curl("--http2-prior-knowledge", "-D", "-", "-o", str(tmp_path / "out"), "--data-binary", f"@{body}", url)
    assert r2.returncode == 0, r2.stderr
    head = r2.stdout.decode().lower()
    assert head.startswith("http/2 200"), head
    assert "x-seen-method: post" in head
    assert f"x-body-sha256: {hashlib.sha256(body.read_bytes()).hexdigest()}" in head
    assert (tmp_path / "out").read_bytes() == body.read_bytes()


def test_large_bodies_both_ways(gateway, origin, tmp_path):
    """Several MiB each way, over the upstream's flow-control windows (256 KiB stream, 4 MiB connection)
    and the client's: nothing lost, repeated or reordered."""
    gw = h2_gateway(gateway, origin)
    sent = pattern(5, 6 << 20)
    r = httpx.post(f"http://127.0.0.1:{gw.port}/big/{9 << 20}", content=sent, timeout=60)
    assert r.status_code == 200
    assert r.headers["x-body-sha256"] == hashlib.sha256(sent).hexdigest()
    assert r.headers["content-length"] == str(9 << 20)
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(pattern(0, 9 << 20)).hexdigest()
    # The same through an HTTP/2 client (its own windows on the client side).
    up = tmp_path / "up"
    up.write_bytes(sent)
    res = curl("--http2-prior-knowledge", "-o", str(tmp_path / "down"), "-w", "%{http_code}",
               "--data-binary", f"@{up}", f"http://127.0.0.1:{gw.port}/big/{7 << 20}")
    assert res.stdout == b"200", res.stderr
    assert (tmp_path / "down").read_bytes() == pattern(0, 7 << 20)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2-pki")
    ca = CA("h2-upstream-ca")
    (d / "ca.pem").write_bytes(ca.pem())
    cert, key = write_pair(d, "server", ca.issue("origin.internal", dns=["origin.internal"], ips=["127.0.0.1"]))
    return {"ca": str(d / "ca.pem"), "cert": cert, "key": key}


def test_http1_client_through_tls_alpn_h2_upstream(gateway, pki):
    o = H2Origin(tls=(pki["cert"], pki["key"])).start()
    try:
        gw = h2_gateway(gateway, o, tls={"ca": pki["ca"]})
        r = httpx.post(f"http://127.0.0.1:{gw.port}/over/tls", content=b"secret body")
        assert r.status_code == 200, r.text
        assert r.headers["x-seen-scheme"] == "https"
        assert r.content == b"secret body"
        res = curl("--http1.1", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{gw.port}/c")
        assert res.stdout == b"200"
    finally:
        o.stop()


def test_tls_upstream_unverified_is_502(gateway, pki):
    o = H2Origin(tls=(pki["cert"], pki["key"])).start()
    try:
        gw = h2_gateway(gateway, o, tls={})                       # the system store does not know the CA
        r = httpx.get(f"http://127.0.0.1:{gw.port}/x")
        assert r.status_code == 502
        assert r.json()["upstream_error"].startswith("tls failed")
    finally:
        o.stop()


def test_trailers_reach_an_http2_client(gateway, origin):
    gw = h2_gateway(gateway, origin)
    res = curl("--http2-prior-knowledge", "-v", "-o", "/dev/null", f"http://127.0.0.1:{gw.port}/trailers/t")
    assert res.returncode == 0, res.stderr
    assert b"x-trailer: yes" in res.stderr.lower()


def test_body_stalling_after_the_head_hits_the_upstream_timeout(gateway, origin):
    """The upstream's `timeout` bounds its silence while the body comes, not only the wait for the head:
    the response started, so the client's connection is cut (never a truncated response presented as
    complete), and the access log names the timeout."""
    gw = h2_gateway(gateway, origin, timeout="1s")
    t0 = time.monotonic()
    with httpx.Client(timeout=15) as c:
        with c.stream("GET", f"http://127.0.0.1:{gw.port}/stall/x") as r:
            assert r.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                r.read()
    assert time.monotonic() - t0 < 6
    res = curl("--http2-prior-knowledge", "-o", "/dev/null", f"http://127.0.0.1:{gw.port}/stall/y")
    assert res.returncode != 0                                   # the stream was reset, not ended
    assert time.monotonic() - t0 < 12


def test_trailers_reach_an_http1_client_that_takes_them(gateway, origin):
    """An HTTP/1.1 client that sent TE: trailers gets an HTTP/2 upstream's trailers in the chunked body's
    trailer section; one that did not gets the body without them."""
    import socket
    gw = h2_gateway(gateway, origin)

    def raw(te: bytes) -> bytes:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(b"GET /trailers/t HTTP/1.1\r\nHost: a\r\n" + te + b"Connection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        s.close()
        return out

    taken = raw(b"TE: trailers\r\n")
    assert taken.startswith(b"HTTP/1.1 200"), taken
    assert b"transfer-encoding: chunked" in taken.lower()
    assert taken.endswith(b"\r\n0\r\nx-trailer: yes\r\n\r\n"), taken
    plain = raw(b"")
    assert plain.startswith(b"HTTP/1.1 200"), plain
    assert plain.endswith(b"\r\n0\r\n\r\n") and b"x-trailer" not in plain, plain


def test_goaway_mid_load_replays_unprocessed_streams(gateway):
    """The upstream sends GOAWAY naming its 5th stream while 40 are in flight: the ones after it were not
    processed and are sent again on a new connection; every client request succeeds."""
    o = H2Origin(goaway_after=5).start()
    try:
        gw = h2_gateway(gateway, o)
        urls = [f"http://127.0.0.1:{gw.port}/load/{i}" for i in range(40)]
        # h2load: one HTTP/2 client connection with all 40 streams open at once.
        res = subprocess.run(["h2load", "-n", "40", "-c", "1", "-m", "40", *urls], capture_output=True, timeout=60)
        out = res.stdout.decode()
        assert "40 succeeded, 0 failed, 0 errored" in out and "40 2xx" in out, out
        assert o.goaways == 1 and o.connections >= 2
        assert sorted(set(o.answered)) == sorted(f"/load/{i}".encode() for i in range(40))
        assert len(o.seen) > 40                                     # some streams were sent twice
    finally:
        o.stop()


def test_refused_stream_is_retried(gateway, origin):
    gw = gateway.start({"h2": {"targets": [origin.addr], "protocol": "h2"}},
                       [{"name": "r", "path": "/*", "upstream": "h2"}], server={"access_log": True})
    r = httpx.get(f"http://127.0.0.1:{gw.port}/a-refuse-once", headers={"x-request-id": "refused-once"})
    assert r.status_code == 200
    assert origin.seen.count(b"/a-refuse-once") == 2
    assert origin.answered == [b"/a-refuse-once"]
    # The access log names the retryable failure the request was sent again after.
    deadline = time.monotonic() + 5
    lines: list[dict] = []
    while time.monotonic() < deadline and not lines:
        lines = [e for e in gw.events if e.get("type") == "access" and e.get("request_id") == "refused-once"]
        time.sleep(0.1)
    assert lines and lines[0]["status"] == 200
    assert lines[0]["retried_after"] == "upstream_response", lines[0]


def test_upstream_down_is_502_problem(gateway):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    gw = gateway.start({"h2": {"targets": [f"127.0.0.1:{port}"], "protocol": "h2"}},
                       [{"name": "r", "path": "/*", "upstream": "h2"}])
    r = httpx.get(f"http://127.0.0.1:{gw.port}/x")
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["upstream_error"] == "connect refused"


def test_bad_protocol_is_a_config_error_with_its_key_path(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nlisten = ["127.0.0.1:1"]\n[upstreams.api]\ntargets = ["127.0.0.1:2"]\n'
                   'protocol = "http2"\n[[routes]]\nname = "r"\npath = "/*"\nupstream = "api"\n')
    res = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], capture_output=True,
                         cwd=ROOT, timeout=30)
    assert res.returncode == 2
    out = (res.stdout + res.stderr).decode()
    assert "upstreams.api.protocol" in out and '"h2"' in out, out


# -- retries (the exchange's one decision, as for HTTP/1.1 upstreams) ------------------------------------
def _closed_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_stream_reset_before_its_response_is_retried_for_an_idempotent_request(gateway, origin):
    """RST_STREAM INTERNAL_ERROR before any response byte: a GET (HTTP/1.1 or HTTP/2 client) is sent again on a
    new stream and answered; a POST, which the upstream may have acted on, is not (502)."""
    from test_outlier import admin_get
    gw = h2_gateway(gateway, origin)
    r = httpx.get(f"http://127.0.0.1:{gw.port}/a-reset-once")
    assert r.status_code == 200 and r.headers["x-seen-path"] == "/a-reset-once"
    assert origin.seen.count(b"/a-reset-once") == 2 and origin.answered == [b"/a-reset-once"]
    res = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{gw.port}/b-reset-once")
    assert res.stdout == b"200" and origin.seen.count(b"/b-reset-once") == 2
    r = httpx.post(f"http://127.0.0.1:{gw.port}/c-reset-once", content=b"pay once")
    assert r.status_code == 502 and r.json()["upstream_error"] == "stream reset"
    assert origin.seen.count(b"/c-reset-once") == 1
    text = admin_get(gw, "/metrics")
    assert 'fastgw_upstream_retries_total{upstream="h2",reason="reset-before-response"} 2' in text


def test_a_refused_connection_is_retried_on_another_target(gateway, origin):
    """connect-failure on an HTTP/2 upstream: nothing was sent, so any method goes to another target."""
    gw = gateway.start({"h2": {"targets": [f"127.0.0.1:{_closed_port()}", origin.addr], "protocol": "h2"}},
                       [{"name": "r", "path": "/*", "upstream": "h2"}])
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        codes = [c.get(f"/g{i}").status_code for i in range(10)] + [c.delete(f"/d{i}").status_code for i in range(4)]
    assert codes == [200] * 14, codes
