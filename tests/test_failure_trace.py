"""An upstream failure leaves a trace (issue 11, item 22): the access log names the upstream, the target
and the failure; the problem+json body names the upstream and the failure but never the target's
address; the access log's `client` is the address the IP rules use (PROXY protocol, trusted
X-Forwarded-For) and `peer` the TCP peer. Real origins on loopback, real gateway processes."""
from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest
from conftest import free_port
from upstreams import request

TIMEOUT_MS = 500


@pytest.fixture(scope="module")
def dead_addr() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin, reset_origin, garbage_origin, slow_origin, midbody_origin, dead_addr):
    ups = {
        "ok": {"targets": [echo_origin.addr]},
        "accounts": {"targets": [dead_addr]},
        "ledger": {"targets": [reset_origin.addr]},
        "cards": {"targets": [garbage_origin.addr]},
        "payments": {"targets": [slow_origin.addr], "timeout": f"{TIMEOUT_MS}ms"},
        "statements": {"targets": [midbody_origin.addr]},
    }
    routes = [{"name": f"r-{name}", "path": f"/{name}/*", "upstream": name} for name in ups]
    return gateway_launcher.start(ups, routes, server={"access_log": True})


def access_line(gw, rid: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [e for e in list(gw.events) if e.get("type") == "access" and e.get("request_id") == rid]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {rid}")


def rid() -> str:
    return "t-" + uuid.uuid4().hex[:16]


FAILURES = [
    # upstream, status, slug, upstream_error (prefix), words of the detail sentence
    ("accounts", 502, "bad-gateway", "connect refused", "cannot connect"),
    ("ledger", 502, "bad-gateway", "reset", "reset the connection"),
    ("cards", 502, "bad-gateway", "invalid response", "invalid HTTP"),
    ("payments", 504, "upstream-timeout", "timeout", "did not answer in time"),
]


@pytest.mark.parametrize(("upstream", "status", "slug", "kind", "words"), FAILURES,
                         ids=[f[0] for f in FAILURES])
def test_failure_named_in_body_and_log(gw, upstream, status, slug, kind, words, request):
    target = {"accounts": request.getfixturevalue("dead_addr"),
              "ledger": request.getfixturevalue("reset_origin").addr,
              "cards": request.getfixturevalue("garbage_origin").addr,
              "payments": request.getfixturevalue("slow_origin").addr}[upstream]
    r_id = rid()
    r = httpx.get(f"{gw.url}/{upstream}/x", headers={"X-Request-ID": r_id}, timeout=10)
    assert r.status_code == status
    body = r.json()
    assert body["type"] == f"urn:fastgw:problem:{slug}" and body["request_id"] == r_id
    assert body["upstream"] == upstream
    assert body["upstream_error"].startswith(kind)
    assert f'"{upstream}"' in body["detail"] and words in body["detail"]
    # The client never sees the target's address (an internal address is an information leak).
    host, port = target.rsplit(":", 1)
    assert port not in r.text and host not in r.text
    line = access_line(gw, r_id)
    assert line["status"] == status and line["route"] == f"r-{upstream}"
    assert line["upstream"] == upstream and line["target"] == target
    assert line["upstream_error"] == body["upstream_error"]
    assert line["client"] == "127.0.0.1" and line["peer"] == "127.0.0.1"


def test_failure_named_over_http2(gw, dead_addr):
    r_id = rid()
    with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=10) as c:
        r = c.get("/accounts/h2", headers={"X-Request-ID": r_id})
    assert r.http_version == "HTTP/2" and r.status_code == 502
    body = r.json()
    assert body["upstream"] == "accounts" and body["upstream_error"] == "connect refused"
    assert body["request_id"] == r_id and dead_addr.rsplit(":", 1)[1] not in r.text
    line = access_line(gw, r_id)
    assert line["target"] == dead_addr and line["upstream_error"] == "connect refused"


def test_response_cut_by_upstream_is_logged(gw, midbody_origin):
    """The upstream closes after 1000 of 100000 body bytes: the client connection is closed (never a
    silently truncated response) and the access log says what happened."""
    r_id = rid()
    with gw.raw() as c:
        c.send(request("GET", "/statements/cut", headers=[("X-Request-ID", r_id)]))
        data = b""
        with pytest.raises(OSError):
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    raise ConnectionAbortedError("closed")
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    line = access_line(gw, r_id)
    assert line["status"] == 200 and line["upstream"] == "statements"
    assert line["target"] == midbody_origin.addr and line["upstream_error"] == "closed"


def test_success_names_the_target(gw, echo_origin):
    r_id = rid()
    r = httpx.get(f"{gw.url}/ok/fine", headers={"X-Request-ID": r_id}, timeout=10)
    assert r.status_code == 200
    line = access_line(gw, r_id)
    assert line["upstream"] == "ok" and line["target"] == echo_origin.addr
    assert "upstream_error" not in line


# ---------------------------------------------------------------------------------------------------
# `client` is the address the IP rules use; `peer` is the TCP peer

def test_client_from_trusted_x_forwarded_for(gateway, echo_origin):
    gw = gateway.start({"ok": {"targets": [echo_origin.addr]}},
                       [{"name": "office", "path": "/office/*", "upstream": "ok", "ip_allow": ["198.51.100.0/24"]}],
                       server={"access_log": True, "trusted_proxies": ["127.0.0.0/8"]})
    ok, refused = rid(), rid()
    r = httpx.get(f"{gw.url}/office/a", timeout=10,
                  headers={"X-Request-ID": ok, "X-Forwarded-For": "192.0.2.1, 198.51.100.9"})
    assert r.status_code == 200              # the IP rules saw 198.51.100.9 ...
    line = access_line(gw, ok)
    assert line["client"] == "198.51.100.9" and line["peer"] == "127.0.0.1"   # ... and so does the log
    r = httpx.get(f"{gw.url}/office/b", timeout=10,
                  headers={"X-Request-ID": refused, "X-Forwarded-For": "198.51.100.9, 192.0.2.1"})
    assert r.status_code == 403
    line = access_line(gw, refused)
    assert line["client"] == "192.0.2.1" and line["peer"] == "127.0.0.1" and line["status"] == 403


def test_untrusted_x_forwarded_for_is_not_the_client(gateway, echo_origin):
    gw = gateway.start({"ok": {"targets": [echo_origin.addr]}}, [{"name": "all", "path": "/*", "upstream": "ok"}],
                       server={"access_log": True, "trusted_proxies": ["10.0.0.0/8"]})
    r_id = rid()
    r = httpx.get(f"{gw.url}/x", headers={"X-Request-ID": r_id, "X-Forwarded-For": "198.51.100.9"}, timeout=10)
    assert r.status_code == 200
    line = access_line(gw, r_id)
    assert line["client"] == "127.0.0.1" and line["peer"] == "127.0.0.1"


def test_client_from_proxy_protocol(gateway, echo_origin):
    gw = gateway.start({"ok": {"targets": [echo_origin.addr]}}, [{"name": "all", "path": "/*", "upstream": "ok"}],
                       server={"access_log": True, "proxy_protocol": True})
    r_id = rid()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n"
                  + request("GET", "/pp", headers=[("X-Request-ID", r_id), ("Connection", "close")]))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    line = access_line(gw, r_id)
    assert line["client"] == "203.0.113.7" and line["peer"] == "127.0.0.1"
    assert b'"headers"' in data                      # (the echo origin answered)
