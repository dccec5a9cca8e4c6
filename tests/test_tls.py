"""TLS termination with real certificates (made here with cryptography) and real clients (ssl, httpx,
curl): SNI, ALPN, TLS 1.2 floor, mTLS required/optional with a consumer mapped from the certificate,
and certificate reload on SIGHUP."""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from certs import CA, write_pair
from conftest import Gateway, GatewayLauncher, free_port


class Pki:
    def __init__(self, d: Path) -> None:
        self.dir = d
        self.ca = CA("fastgw test CA")
        self.other_ca = CA("someone else")
        (d / "ca.pem").write_bytes(self.ca.pem())
        self.ca_file = str(d / "ca.pem")
        self.api = write_pair(d, "api", self.ca.issue("api.test", ["api.test"], ips=["127.0.0.1"]))
        self.partners = write_pair(d, "partners", self.ca.issue("partners.test", ["*.partners.test"]))
        self.client = write_pair(d, "client", self.ca.issue("partner-a", client=True))
        self.stranger = write_pair(d, "stranger", self.other_ca.issue("partner-a", client=True))
        self.unmapped = write_pair(d, "unmapped", self.ca.issue("nobody", client=True))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_gw(gateway_launcher: GatewayLauncher, echo_origin: Any, pki: Pki) -> Iterator[tuple[Gateway, int, int]]:
    p_req, p_opt = free_port(), free_port()
    extra = f"""
[[server.tls]]
listen = ["127.0.0.1:{p_req}"]
cert = "{pki.api[0]}"
key = "{pki.api[1]}"
sni = [{{ cert = "{pki.partners[0]}", key = "{pki.partners[1]}" }}]
client_ca = "{pki.ca_file}"
client_auth = "required"

[[server.tls]]
listen = ["127.0.0.1:{p_opt}"]
cert = "{pki.api[0]}"
key = "{pki.api[1]}"
client_ca = "{pki.ca_file}"
client_auth = "optional"
alpn = ["http/1.1"]

[consumers.partner-a]
cert_subjects = ["CN=partner-a"]
"""
    routes = [{"name": "open", "path": "/open", "upstream": "echo"},
              {"name": "mtls", "path": "/mtls", "upstream": "echo", "auth": ["mtls"]}]
    gw = gateway_launcher.start({"echo": {"targets": [echo_origin.addr]}}, routes, extra=extra)
    yield gw, p_req, p_opt


def client_ctx(pki: Pki, cert: tuple[str, str] | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    if cert:
        ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, name: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=name)


def get(s: ssl.SSLSocket, path: str, host: str = "api.test") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while True:
        data = s.recv(65536)
        if not data:
            return out
        out += data


def test_sni_picks_the_certificate(tls_gw: tuple, pki: Pki) -> None:
    _, p_req, _ = tls_gw
    for name, want in (("api.test", "api.test"), ("x.partners.test", "partners.test"), ("other.test", "api.test")):
        ctx = client_ctx(pki, pki.client)
        if name == "other.test":
            ctx.check_hostname = False     # the default certificate does not name it; we only look at it
        with handshake(p_req, ctx, name) as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            assert subject["commonName"] == want, name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_alpn_and_tls_versions(tls_gw: tuple, pki: Pki) -> None:
    _, p_req, p_opt = tls_gw
    with handshake(p_req, client_ctx(pki, pki.client, ["h2", "http/1.1"]), "api.test") as s:
        assert s.selected_alpn_protocol() == "h2"
        assert s.version() in ("TLSv1.2", "TLSv1.3")
    with handshake(p_req, client_ctx(pki, pki.client, ["http/1.1"]), "api.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    with handshake(p_opt, client_ctx(pki, None, ["h2", "http/1.1"]), "api.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"     # that listener advertises http/1.1 only
    old = client_ctx(pki, pki.client)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")      # the client would speak TLS 1.1; the server must not
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(p_req, old, "api.test").close()
    weak = client_ctx(pki, pki.client)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA")          # RSA key exchange, CBC: not offered by fastgw
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(p_req, weak, "api.test").close()
    strong = client_ctx(pki, pki.client)
    strong.maximum_version = ssl.TLSVersion.TLSv1_2
    with handshake(p_req, strong, "api.test") as s:
        assert s.version() == "TLSv1.2" and "ECDHE" in s.cipher()[0] and ("GCM" in s.cipher()[0] or "CHACHA" in s.cipher()[0])


def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True if the server refuses: at the handshake (TLS 1.2) or with an alert at the first read (1.3)."""
    try:
        with handshake(port, ctx, "api.test") as s:
            return not get(s, "/open").startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, OSError):
        return True


def test_mtls_required(tls_gw: tuple, pki: Pki) -> None:
    gw, p_req, _ = tls_gw
    assert _refused(p_req, client_ctx(pki))                    # no client certificate
    assert _refused(p_req, client_ctx(pki, pki.stranger))      # signed by another CA
    with httpx.Client(verify=client_ctx(pki, pki.client), timeout=5) as c:
        r = c.get(f"https://127.0.0.1:{p_req}/mtls", headers={"Host": "api.test", "X-Consumer": "forged"})
        assert r.status_code == 200, r.text
        h = {n.lower(): v for n, v in r.json()["headers"]}
        assert h["x-consumer"] == "partner-a" and h["x-forwarded-proto"] == "https"


def test_mtls_optional(tls_gw: tuple, pki: Pki) -> None:
    _, _, p_opt = tls_gw
    with httpx.Client(verify=client_ctx(pki), timeout=5) as c:
        assert c.get(f"https://127.0.0.1:{p_opt}/open", headers={"Host": "api.test"}).status_code == 200
        r = c.get(f"https://127.0.0.1:{p_opt}/mtls", headers={"Host": "api.test"})
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    with httpx.Client(verify=client_ctx(pki, pki.unmapped), timeout=5) as c:
        r = c.get(f"https://127.0.0.1:{p_opt}/mtls", headers={"Host": "api.test"})
        assert r.status_code == 401 and r.json()["detail"] == "client certificate not mapped to a consumer"
    with httpx.Client(verify=client_ctx(pki, pki.client), timeout=5) as c:
        r = c.get(f"https://127.0.0.1:{p_opt}/mtls", headers={"Host": "api.test"})
        assert r.status_code == 200
        assert {n.lower(): v for n, v in r.json()["headers"]}["x-consumer"] == "partner-a"


def test_curl_client(tls_gw: tuple, pki: Pki) -> None:
    _, p_req, _ = tls_gw
    out = subprocess.run(
        ["curl", "-sS", "--http1.1", "--cacert", pki.ca_file, "--cert", pki.client[0], "--key", pki.client[1],
         "--resolve", f"api.test:{p_req}:127.0.0.1", "-w", "\n%{http_code} %{ssl_verify_result}",
         f"https://api.test:{p_req}/mtls"], capture_output=True, text=True, timeout=20)
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "200 0", (out.stdout, out.stderr)
    assert ["X-Consumer", "partner-a"] in json.loads(body)["headers"]
    out = subprocess.run(["curl", "-sS", "--http1.1", "--cacert", pki.ca_file, "--resolve",
                          f"api.test:{p_req}:127.0.0.1", f"https://api.test:{p_req}/open"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0                                 # no client certificate: refused


@pytest.mark.parametrize("proxied", [False, True], ids=["plain-tls", "proxy-protocol-tls"])
def test_certificates_reload_on_sighup(gateway: GatewayLauncher, echo_origin: Any, pki: Pki, tmp_path: Path,
                                       proxied: bool) -> None:
    """Also behind PROXY protocol (worker.ProxiedTLS), where the listener is not an asyncio server."""
    port = free_port()
    cert, key = write_pair(tmp_path, "live", pki.ca.issue("api.test", ["api.test"]))
    extra = f'\n[[server.tls]]\nlisten = ["127.0.0.1:{port}"]\ncert = "{cert}"\nkey = "{key}"\n'
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, [{"name": "open", "path": "/open", "upstream": "echo"}],
                       extra=extra, server={"proxy_protocol": True} if proxied else None)

    def handshake(port: int, ctx: ssl.SSLContext, name: str) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        if proxied:
            raw.sendall(b"PROXY TCP4 203.0.113.1 10.0.0.1 40000 443\r\n")
        return ctx.wrap_socket(raw, server_hostname=name)

    def serial() -> int:
        with handshake(port, client_ctx(pki), "api.test") as s:
            der = s.getpeercert(binary_form=True)
        from cryptography import x509
        return x509.load_der_x509_certificate(der).serial_number

    first = serial()
    kept = handshake(port, client_ctx(pki), "api.test")          # an established connection survives
    write_pair(tmp_path, "live", pki.ca.issue("api.test", ["api.test"]))
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(e.get("event") == "tls_reloaded" for e in gw.events) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(e.get("event") == "tls_reloaded" for e in gw.events), gw.events[-5:]
    assert serial() != first
    assert get(kept, "/open", "api.test").startswith(b"HTTP/1.1 200")
    kept.close()
    # A reload that drops the [[server.tls]] table: the address change needs a restart (logged), the
    # listener keeps serving its last certificate, nothing crashes.
    path = gateway.directory / f"fastgw-{len(gateway.started) - 1}.toml"
    path.write_text(gw.config_text.replace(extra, "\n"))
    n = len(gw.events)
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(e.get("event") == "config_applied" for e in gw.events[n:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(e.get("event") == "config_needs_restart" and e.get("key") == "server.tls[].listen"
               for e in gw.events[n:]), gw.events[n:]
    time.sleep(0.3)
    with handshake(port, client_ctx(pki), "api.test") as s:
        assert get(s, "/open").startswith(b"HTTP/1.1 200")


def _complete(resp: bytes) -> bool:
    head, sep, body = resp.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def test_proxy_protocol_before_tls(gateway: GatewayLauncher, echo_origin: Any, pki: Pki) -> None:
    """Behind an NLB with proxy protocol on a TLS target group: the PROXY header precedes the handshake.
    The client address comes from it (also for HTTP/2 via ALPN), sent in one segment with the
    ClientHello or alone; a connection without a header is closed without a handshake."""
    port = free_port()
    extra = f"""
[[server.tls]]
listen = ["127.0.0.1:{port}"]
cert = "{pki.api[0]}"
key = "{pki.api[1]}"
"""
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, [{"name": "open", "path": "/open", "upstream": "echo"}],
                       server={"proxy_protocol": True}, extra=extra)

    def xff_over_tls(preface: bytes, together: bool) -> str:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        ctx = client_ctx(pki)
        if together:
            # The header and the ClientHello in one write, as a balancer may coalesce them.
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = ctx.wrap_bio(inc, out, server_hostname="api.test")
            with pytest.raises(ssl.SSLWantReadError):
                obj.do_handshake()
            raw.sendall(preface + out.read())
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if out.pending:
                        raw.sendall(out.read())
                    inc.write(raw.recv(65536))
            if out.pending:
                raw.sendall(out.read())
            obj.write(b"GET /open HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
            raw.sendall(out.read())
            data = b""
            while not _complete(data):
                d = raw.recv(65536)
                if not d:
                    break
                inc.write(d)
                try:
                    while chunk := obj.read(65536):
                        data += chunk
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
            raw.close()
        else:
            raw.sendall(preface)
            time.sleep(0.05)                        # the header alone first
            with ctx.wrap_socket(raw, server_hostname="api.test") as s:
                data = get(s, "/open")
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        return dict((n.lower(), v) for n, v in json.loads(body)["headers"])["x-forwarded-for"]

    assert xff_over_tls(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n", together=False) == "203.0.113.7"
    assert xff_over_tls(b"PROXY TCP4 198.51.100.9 10.0.0.1 51000 443\r\n", together=True) == "198.51.100.9"
    # HTTP/2 over the same listener (ALPN h2), with httpx on a socket that already sent the header is not
    # possible; curl can: --haproxy-protocol sends a v1 header with the real peer (127.0.0.1).
    out = subprocess.run(["curl", "-s", "--http2", "--haproxy-protocol", "--cacert", pki.ca_file,
                          "--resolve", f"api.test:{port}:127.0.0.1", f"https://api.test:{port}/open",
                          "-w", "\n%{http_version}"], capture_output=True, text=True, timeout=10)
    body, _, version = out.stdout.rpartition("\n")
    assert version == "2", out
    assert dict((n.lower(), v) for n, v in json.loads(body)["headers"])["x-forwarded-for"] == "127.0.0.1"
    # No PROXY header: closed without a TLS handshake.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            client_ctx(pki).wrap_socket(raw, server_hostname="api.test").do_handshake()
    assert gw.worker_exits() == []


def test_proxy_protocol_tls_stalled_headers_cost_nothing(gateway: GatewayLauncher, echo_origin: Any, pki: Pki) -> None:
    """Clients that send part of a PROXY header and stop: the worker does not spin on them (their bytes are
    consumed, so the sockets are not readable again), and they are closed after limits.header_timeout."""
    port = free_port()
    extra = f'\n[[server.tls]]\nlisten = ["127.0.0.1:{port}"]\ncert = "{pki.api[0]}"\nkey = "{pki.api[1]}"\n'
    gw = gateway.start({"echo": {"targets": [echo_origin.addr]}}, [{"name": "open", "path": "/open", "upstream": "echo"}],
                       limits={"header_timeout": "2s"}, server={"proxy_protocol": True}, extra=extra)
    stalled = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"PROXY TCP4 198.51.100." if i % 2 else b"\r\n\r\n\x00\r\nQUIT\n\x21\x11")   # v1 / v2, cut
        stalled.append(s)
    time.sleep(0.3)

    def cpu() -> float:
        fields = Path(f"/proc/{gw.serving_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    before = cpu()
    time.sleep(1.0)
    assert cpu() - before < 0.2                   # was ~200 wake-ups/s per stalled connection
    for s in stalled:                             # closed by the gateway at header_timeout (2 s)
        s.settimeout(5)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    # A well-behaved client is still served.
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n")
    with client_ctx(pki).wrap_socket(raw, server_hostname="api.test") as s:
        assert get(s, "/open").startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------------------------------------------
# Every auth method over HTTP/2 (ALPN h2): the streams of a TLS connection see its verified certificate.

SECRET = "hs256-secret-for-the-h2-auth-tests-0123456789"


@pytest.fixture(scope="module")
def h2_auth_gw(gateway_launcher: GatewayLauncher, echo_origin: Any, pki: Pki) -> tuple[Gateway, int]:
    import hashlib
    port = free_port()
    extra = f"""
[[server.tls]]
listen = ["127.0.0.1:{port}"]
cert = "{pki.api[0]}"
key = "{pki.api[1]}"
client_ca = "{pki.ca_file}"
client_auth = "optional"

[auth.jwt.idp]
issuer = "https://idp.test"
algorithms = ["HS256"]
secret = "{SECRET}"

[consumers.partner-a]
cert_subjects = ["CN=partner-a"]
api_keys_sha256 = ["{hashlib.sha256(b'key-a').hexdigest()}"]
jwt_subjects = ["client-7"]
"""
    routes = [{"name": m, "path": f"/{m}/*", "upstream": "echo", "auth": [a]}
              for m, a in (("mtls", "mtls"), ("key", "api_key"), ("jwt", "jwt:idp"))]
    gw = gateway_launcher.start({"echo": {"targets": [echo_origin.addr]}}, routes, extra=extra)
    return gw, port


def _credentials(method: str, pki: Pki) -> tuple[tuple[str, str] | None, dict[str, str]]:
    """(client certificate, request headers) presenting `method`'s credential, and only that one."""
    import jwt
    if method == "mtls":
        return pki.client, {}
    if method == "key":
        return None, {"X-API-Key": "key-a"}
    tok = jwt.encode({"iss": "https://idp.test", "sub": "client-7", "exp": int(time.time()) + 300}, SECRET,
                     algorithm="HS256")
    return None, {"Authorization": f"Bearer {tok}"}


@pytest.mark.parametrize("method", ["mtls", "key", "jwt"])
def test_every_auth_method_over_http2_httpx(h2_auth_gw: tuple, pki: Pki, method: str) -> None:
    _, port = h2_auth_gw
    cert, headers = _credentials(method, pki)
    with httpx.Client(http2=True, verify=client_ctx(pki, cert), timeout=5) as c:
        for i in range(3):                       # several streams on one connection
            r = c.get(f"https://127.0.0.1:{port}/{method}/{i}", headers=headers)
            assert r.http_version == "HTTP/2" and r.status_code == 200, (r.http_version, r.text)
            h = {n.lower(): v for n, v in r.json()["headers"]}
            assert h["x-consumer"] == "partner-a" and h["x-forwarded-proto"] == "https"
    # Without the credential: 401 on HTTP/2 as on HTTP/1.1.
    with httpx.Client(http2=True, verify=client_ctx(pki), timeout=5) as c:
        r = c.get(f"https://127.0.0.1:{port}/{method}/none")
        assert r.http_version == "HTTP/2" and r.status_code == 401


@pytest.mark.parametrize("method", ["mtls", "key", "jwt"])
def test_every_auth_method_over_http2_curl(h2_auth_gw: tuple, pki: Pki, method: str) -> None:
    _, port = h2_auth_gw
    cert, headers = _credentials(method, pki)
    argv = ["curl", "-sS", "--http2", "--cacert", pki.ca_file, "--resolve", f"api.test:{port}:127.0.0.1",
            "-w", "\n%{http_code} %{http_version}"]
    if cert:
        argv += ["--cert", cert[0], "--key", cert[1]]
    for n, v in headers.items():
        argv += ["-H", f"{n}: {v}"]
    out = subprocess.run(argv + [f"https://api.test:{port}/{method}/curl"], capture_output=True, text=True,
                         timeout=20)
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "200 2", (out.stdout, out.stderr)
    assert {n.lower(): v for n, v in json.loads(body)["headers"]}["x-consumer"] == "partner-a"
