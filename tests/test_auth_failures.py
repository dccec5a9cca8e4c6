"""The budget of failed credentials per client address (server.limits.auth_failures, default "20/min"):
credential stuffing meets a 429 after the budget, before any credential is verified, with real gateway
processes, real sockets and the client address the IP rules use (here: a trusted X-Forwarded-For)."""
from __future__ import annotations

import hashlib
import http.client
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import rlutil
from procutil import metric

from fastgw.config.root import ConfigError, loads

GOOD = "good-key-0123456789"
ROUTES = '''
[[routes]]
name = "keyed"
path = "/*"
upstream = "origin"
auth = ["api_key"]
'''
CONSUMERS = f'''
[consumers.partner]
api_keys_sha256 = ["{hashlib.sha256(GOOD.encode()).hexdigest()}"]
'''
TRUSTED = '[server]\nlisten = ["127.0.0.1:0"]\ntrusted_proxies = ["127.0.0.1/32"]\n'


def _config(origin: str) -> str:
    return rlutil.config(origin, ROUTES, CONSUMERS).replace('[server]\nlisten = ["127.0.0.1:0"]\n', TRUSTED)


def _request(key: str, client: str) -> bytes:
    path = "/ok" if key == GOOD else "/stuffing"
    return f"GET {path} HTTP/1.1\r\nHost: api\r\nX-API-Key: {key}\r\nX-Forwarded-For: {client}\r\n\r\n".encode()


def _read(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    r = http.client.HTTPResponse(sock)
    r.begin()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def _once(addr: str, key: str, client: str) -> tuple[int, dict[str, str], bytes]:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(_request(key, client))
        return _read(s)


def test_credential_stuffing_meets_429_before_verification(tmp_path: Path, echo_origin) -> None:
    gw = rlutil.start(tmp_path, _config(echo_origin.addr), workers=2)
    try:
        host, port = gw.listen.rsplit(":", 1)
        attacker = "203.0.113.7"
        # A keep-alive connection from the attacker's address with the right key: its worker caches the
        # key (the compiled fast path answers it from now on, without verifying).
        primed = socket.create_connection((host, int(port)), timeout=5)
        primed.sendall(_request(GOOD, attacker))
        assert _read(primed)[0] == 200

        # 40 wrong keys at once, one connection each (spread over both workers, which share one budget).
        socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
        for i, s in enumerate(socks):
            s.sendall(_request(f"wrong-{i}", attacker))
        answers = [_read(s) for s in socks]
        for s in socks:
            s.close()
        codes = [a[0] for a in answers]
        checked = codes.count(401)
        # 20 failures fit the budget; a race between the two workers may let one more through.
        assert 20 <= checked <= 21 and codes.count(429) == 40 - checked, codes
        for status, headers, body in answers:
            if status == 429:
                assert headers["content-type"] == "application/problem+json"
                assert json.loads(body)["type"] == "urn:fastgw:problem:auth-throttled"
                assert 1 <= int(headers["retry-after"]) <= 3       # 20/min: a token every 3 s

        # Over budget, the right key is refused too, even from the worker's cache (else the cache would
        # answer the attacker's guesses).
        primed.sendall(_request(GOOD, attacker))
        status, headers, body = _read(primed)
        assert status == 429 and json.loads(body)["type"] == "urn:fastgw:problem:auth-throttled"
        primed.close()
        # Another address is not affected; an IPv6 client counts by its /64.
        assert _once(gw.listen, GOOD, "203.0.113.8")[0] == 200
        # The same over HTTP/2 (h2c, curl): the budget is the address's, whatever the protocol.
        for client, want in ((attacker, "429"), ("203.0.113.8", "200")):
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                                  "--http2-prior-knowledge", "-H", f"X-API-Key: {GOOD}", "-H",
                                  f"X-Forwarded-For: {client}", gw.base + "/ok"], capture_output=True, text=True)
            assert out.stdout == f"{want} 2", (client, out.stdout, out.stderr)
        for i in range(20):
            assert _once(gw.listen, f"wrong-{i}", f"2001:db8:1:2::{i + 1:x}")[0] == 401
        assert _once(gw.listen, "wrong", "2001:db8:1:2::ffff")[0] == 429
        assert _once(gw.listen, GOOD, "2001:db8:1:3::1")[0] == 200

        # A token is back after 3 s: one more credential is checked, and the next is refused again.
        time.sleep(3.1)
        assert _once(gw.listen, "wrong-again", attacker)[0] == 401
        assert _once(gw.listen, "wrong-again", attacker)[0] == 429

        text = rlutil.metrics(gw)
        # Checked: the burst, the IPv6 /64's 20, the one after the refill. Throttled: the rest of the burst,
        # then the cached key, its HTTP/2 twin, the /64's 21st, the one after the refill.
        assert metric(text, "fastgw_auth_failures_total", route="keyed", reason="invalid") == checked + 20 + 1
        assert metric(text, "fastgw_auth_failures_total", route="keyed", reason="throttled") == (40 - checked) + 4
        # Nothing that was refused reached the origin.
        assert echo_origin.heads_for("/stuffing") == []
    finally:
        gw.close()


def test_auth_failures_key() -> None:
    base = '[upstreams.a]\ntargets = ["127.0.0.1:9000"]\n[[routes]]\nname = "r"\npath = "/r"\nupstream = "a"\n'
    assert loads(base).server.limits.auth_failures == "20/min"
    assert loads('[server.limits]\nauth_failures = "off"\n' + base).server.limits.auth_failures == "off"
    with pytest.raises(ConfigError) as info:
        loads('[server.limits]\nauth_failures = "often"\n' + base)
    assert info.value.errors == ['server.limits.auth_failures: invalid rate "often" (use "<count>/<s|min|h|day>", '
                                 'e.g. "100/s", "6000/min") (or "off")']
