"""TLS to upstreams: verified by default, optional client certificate (issue 5, item 6).

A real TLS origin on loopback with certificates made in the test (tests/certs.py); the gateway is a real
process; the client is httpx.
"""
from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from certs import CA, write_pair

from fastgw.config.root import ConfigError, loads


class TLSOrigin:
    """Answers every request with 200 "tls-ok" (keep-alive), over TLS; optionally requires a client
    certificate signed by `client_ca` and reports its CN in X-Client-CN."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.port = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            srv = self.loop.run_until_complete(asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.ctx))
            self.port = srv.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "-")
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                body = b"tls-ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Client-CN: %s\r\n\r\n%s"
                             % (len(body), cn.encode(), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    ca = CA("upstream-ca")
    (d / "ca.pem").write_bytes(ca.pem())
    other = CA("someone-else")
    (d / "other-ca.pem").write_bytes(other.pem())
    server_cert, server_key = write_pair(d, "server", ca.issue("origin.internal", dns=["origin.internal"],
                                                              ips=["127.0.0.1"]))
    client_cert, client_key = write_pair(d, "client", ca.issue("fastgw-gateway", client=True))
    return {"dir": str(d), "ca": str(d / "ca.pem"), "other_ca": str(d / "other-ca.pem"), "server_cert": server_cert,
            "server_key": server_key, "client_cert": client_cert, "client_key": client_key}


def server_ctx(pki: dict[str, str], require_client: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    if require_client:
        ctx.load_verify_locations(pki["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture(scope="module")
def tls_origin(pki: dict[str, str]) -> Iterator[TLSOrigin]:
    o = TLSOrigin(server_ctx(pki, False))
    yield o
    o.stop()


@pytest.fixture(scope="module")
def mtls_origin(pki: dict[str, str]) -> Iterator[TLSOrigin]:
    o = TLSOrigin(server_ctx(pki, True))
    yield o
    o.stop()


ROUTE = [{"name": "r", "path": "/*", "upstream": "up"}]


def get(gw) -> httpx.Response:
    return httpx.get(gw.url + "/x", timeout=10)


def test_verified_with_the_configured_ca(gateway, tls_origin: TLSOrigin, pki: dict[str, str]) -> None:
    gw = gateway.start({"up": {"targets": [f"127.0.0.1:{tls_origin.port}"], "tls": {"ca": pki["ca"]}}}, ROUTE)
    for _ in range(3):                               # and the pooled TLS connection is reused
        r = get(gw)
        assert r.status_code == 200 and r.text == "tls-ok"


def test_verification_is_on_by_default(gateway, tls_origin: TLSOrigin, pki: dict[str, str]) -> None:
    # The origin's CA is not in the system store, and another CA does not vouch for it: 502, never 200.
    for tls in ({}, {"ca": pki["other_ca"]}):
        gw = gateway.start({"up": {"targets": [f"127.0.0.1:{tls_origin.port}"], "tls": tls}}, ROUTE)
        r = get(gw)
        assert r.status_code == 502
        assert r.headers["content-type"] == "application/problem+json"
        assert "TLS" in r.json()["detail"]


def test_server_name_is_what_gets_verified(gateway, tls_origin: TLSOrigin, pki: dict[str, str]) -> None:
    ok = gateway.start({"up": {"targets": [f"127.0.0.1:{tls_origin.port}"],
                               "tls": {"ca": pki["ca"], "server_name": "origin.internal"}}}, ROUTE)
    assert get(ok).status_code == 200
    wrong = gateway.start({"up": {"targets": [f"127.0.0.1:{tls_origin.port}"],
                                  "tls": {"ca": pki["ca"], "server_name": "evil.example"}}}, ROUTE)
    assert get(wrong).status_code == 502


def test_verify_false_is_explicit(gateway, tls_origin: TLSOrigin) -> None:
    gw = gateway.start({"up": {"targets": [f"127.0.0.1:{tls_origin.port}"], "tls": {"verify": False}}}, ROUTE)
    assert get(gw).text == "tls-ok"


def test_client_certificate(gateway, mtls_origin: TLSOrigin, pki: dict[str, str]) -> None:
    with_cert = gateway.start({"up": {"targets": [f"127.0.0.1:{mtls_origin.port}"],
                                      "tls": {"ca": pki["ca"], "cert": pki["client_cert"],
                                              "key": pki["client_key"]}}}, ROUTE)
    r = get(with_cert)
    assert r.status_code == 200 and r.headers["x-client-cn"] == "fastgw-gateway"
    without = gateway.start({"up": {"targets": [f"127.0.0.1:{mtls_origin.port}"], "tls": {"ca": pki["ca"]}}},
                            ROUTE)
    assert get(without).status_code == 502


def test_config_errors_name_the_key(pki: dict[str, str], tmp_path: Path) -> None:
    base = '[upstreams.up]\ntargets = ["127.0.0.1:1"]\n{tls}\n[[routes]]\nname = "r"\npath = "/*"\nupstream = "up"\n'
    cases = {
        f'tls = {{ cert = "{pki["client_cert"]}" }}': "upstreams.up.tls: cert and key go together",
        'tls = { ca = "/nonexistent/ca.pem" }': 'upstreams.up.tls.ca: no such file "/nonexistent/ca.pem"',
        f'tls = {{ ca = "{pki["client_key"]}" }}': "upstreams.up.tls: unusable certificate or key",
        'tls = { verify = "no" }': "upstreams.up.tls.verify",
    }
    for tls, expected in cases.items():
        with pytest.raises(ConfigError) as e:
            loads(base.format(tls=tls))
        assert any(expected in line for line in e.value.errors), (tls, e.value.errors)
