"""API lifecycle (fastgw/policies/lifecycle/): Deprecation, Sunset and Link on every response of the route
(200, 304, the gateway's 401 and 502), each checked against its RFC's grammar; 410 gone after a sunset set
seconds ahead (the upstream no longer called), or passthrough; fastgw_deprecated_requests_total; the
config checks and the `fastgw check` list of routes sunsetting soon. A real gateway process, the echo
origin, httpx."""
from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
from calendar import timegm
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from fastgw.config.root import ConfigError, loads
from tests.procutil import ROOT, Gateway, admin_get

KEY = "key-a"
# RFC 9745 §2.1: Deprecation is an Item whose value is a Date (RFC 9651 §3.3.7: "@" sf-integer).
SF_DATE = re.compile(r"@-?[0-9]{1,15}")
# RFC 9110 §5.6.7 IMF-fixdate, the form RFC 8594 §3 requires for Sunset.
IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT")
# RFC 8288 §3: link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param ), comma-separated.
LINK_VALUE = re.compile(r'<([^>\s]*)>\s*;\s*rel="([a-z-]+)"')


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def links(r: httpx.Response) -> dict[str, str]:
    out = {}
    for line in r.headers.get_list("link"):
        for part in line.split(","):
            m = LINK_VALUE.fullmatch(part.strip())
            assert m, part
            out[m.group(2)] = m.group(1)
    return out


def config(origin: str, sunset: str, after: str = "410") -> str:
    return f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.echo]
targets = ["{origin}"]
[upstreams.down]
targets = ["127.0.0.1:{free_port()}"]
[consumers.partner-a]
api_keys_sha256 = ["{hashlib.sha256(KEY.encode()).hexdigest()}"]
[[routes]]
name = "v1"
path = "/v1/*"
upstream = "echo"
auth = ["api_key"]
[routes.lifecycle]
deprecated = "2026-09-15T00:00:00Z"
sunset = "{sunset}"
link = "https://dev.bank.example/migrate"
successor = "/v2/accounts"
after_sunset = "{after}"
[[routes]]
name = "v1-down"
path = "/v1down/*"
upstream = "down"
lifecycle = {{ deprecated = "2026-09-15T00:00:00Z" }}
[[routes]]
name = "future"
path = "/future/*"
upstream = "echo"
lifecycle = {{ deprecated = "2099-01-01T00:00:00Z" }}
[[routes]]
name = "v2"
path = "/v2/*"
upstream = "echo"
'''


def start(tmp_path: Path, text: str) -> Gateway:
    cfg = tmp_path / "fastgw.toml"
    cfg.write_text(text)
    gw = Gateway(cfg, workers=1)
    gw.wait_ready()
    return gw


def metric(gw: Gateway, route: str) -> int:
    text = admin_get(gw.admin_base + "/metrics")[1]
    m = re.search(rf'^fastgw_deprecated_requests_total\{{route="{re.escape(route)}"\}} ([0-9]+)$', text, re.M)
    assert m, text
    return int(m.group(1))


def assert_lifecycle_headers(r: httpx.Response, sunset: int) -> None:
    assert SF_DATE.fullmatch(r.headers["deprecation"]) and r.headers["deprecation"] == "@1789430400"
    assert IMF_FIXDATE.fullmatch(r.headers["sunset"])
    assert parsedate_to_datetime(r.headers["sunset"]).timestamp() == sunset
    assert links(r) == {"deprecation": "https://dev.bank.example/migrate",
                        "sunset": "https://dev.bank.example/migrate", "successor-version": "/v2/accounts"}


def test_headers_on_every_response_of_the_route(tmp_path: Path, echo_origin: Any) -> None:
    sunset = timegm((2099, 3, 15, 0, 0, 0))
    gw = start(tmp_path, config(echo_origin.addr, utc(sunset)))
    try:
        for c in (httpx.Client(base_url=gw.base, timeout=5),
                  httpx.Client(base_url=gw.base, timeout=5, http1=False, http2=True)):
            with c:
                auth = {"X-API-Key": KEY}
                r = c.get("/v1/x", headers=auth)
                assert r.status_code == 200
                assert_lifecycle_headers(r, sunset)
                r = c.get("/v1/x", params={"status": "304"}, headers=auth)
                assert r.status_code == 304
                assert_lifecycle_headers(r, sunset)
                r = c.get("/v1/x")                                       # the gateway's own 401
                assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
                assert_lifecycle_headers(r, sunset)
                r = c.get("/v1down/x")                                   # and its 502
                assert r.status_code == 502 and r.headers["deprecation"] == "@1789430400"
                assert "sunset" not in r.headers and "link" not in r.headers   # no link configured
                r = c.get("/v2/x")
                assert "deprecation" not in r.headers and "link" not in r.headers
                assert c.get("/future/x").headers["deprecation"] == "@4070908800"
        # Requests after the deprecation instant are counted; the route deprecated in 2099 not yet.
        assert metric(gw, "v1") == 6 and metric(gw, "v1-down") == 2 and metric(gw, "future") == 0
    finally:
        gw.close()


def test_410_gone_after_the_sunset_instant(tmp_path: Path, echo_origin: Any) -> None:
    # The gateway starts with the sunset an hour off and is reloaded with one 4 s away: a start takes a few
    # seconds on a busy machine, a reload well under one, so the sunset need not leave room for a start.
    gw = start(tmp_path, config(echo_origin.addr, utc(time.time() + 3600)))
    try:
        mark = len(gw.events)
        sunset = int(time.time()) + 4
        gw.cfg_path.write_text(config(echo_origin.addr, utc(sunset)))
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_applied", after=mark)
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            assert time.time() < sunset - 1
            assert c.get("/v1/before", headers={"X-API-Key": KEY}).status_code == 200
            time.sleep(max(0.0, sunset - time.time()) + 0.05)
            r = c.get("/v1/after", headers={"X-API-Key": KEY})
            assert r.status_code == 410 and r.headers["content-type"] == "application/problem+json"
            body = r.json()
            assert body["type"] == "urn:fastgw:problem:gone" and body["status"] == 410
            assert "/v2/accounts" in body["detail"] and body["request_id"] == r.headers["x-request-id"]
            assert_lifecycle_headers(r, sunset)
            assert c.get("/v1/after").status_code == 410          # before authentication
        assert metric(gw, "v1") == 3
    finally:
        gw.close()
    assert len(echo_origin.heads_for("/v1/before")) == 1 and echo_origin.heads_for("/v1/after") == []


def test_passthrough_after_the_sunset(tmp_path: Path, echo_origin: Any) -> None:
    gw = start(tmp_path, config(echo_origin.addr, "2026-10-01T00:00:00Z", after="passthrough"))
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            r = c.get("/v1/pass", headers={"X-API-Key": KEY})
            assert r.status_code == 200 and r.headers["sunset"] == "Thu, 01 Oct 2026 00:00:00 GMT"
    finally:
        gw.close()


BASE = '[upstreams.u]\ntargets = ["127.0.0.1:9"]\n\n[[routes]]\nname = "r"\npath = "/r"\nupstream = "u"\n'


@pytest.mark.parametrize(("lifecycle", "message"), [
    ('{ deprecated = "2027-01-01T00:00:00Z", sunset = "2026-01-01T00:00:00Z", link = "https://d" }',
     "routes[0].lifecycle.sunset: before deprecated"),
    ('{ deprecated = "2027-01-01T00:00:00+02:00" }', "routes[0].lifecycle.deprecated: '2027-01-01T00:00:00+02:00': "
     "an RFC 3339 instant in UTC"),
    ('{ deprecated = "2027-01-01" }', "routes[0].lifecycle.deprecated"),
    ('{ sunset = "2027-02-30T00:00:00Z", link = "https://d" }', "routes[0].lifecycle.sunset"),
    ('{ sunset = "2027-01-01T00:00:00Z" }', "routes[0].lifecycle.link: a sunset needs a link"),
    ('{ link = "https://d" }', "routes[0].lifecycle: give deprecated, sunset or both"),
    ('{ deprecated = "2027-01-01T00:00:00Z", successor = "/v2 x" }', "routes[0].lifecycle.successor"),
    ('{ deprecated = "2027-01-01T00:00:00Z", after_sunset = "308" }', "routes[0].lifecycle.after_sunset"),
])
def test_check_rejects(lifecycle: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(BASE + f"lifecycle = {lifecycle}\n")
    assert message in str(e.value)


def test_check_lists_routes_sunsetting_within_30_days(tmp_path: Path) -> None:
    soon, later = utc(time.time() + 10 * 86400 + 3600), utc(time.time() + 40 * 86400)
    text = BASE + f'lifecycle = {{ sunset = "{soon}", link = "https://d" }}\n' + \
        f'\n[[routes]]\nname = "s"\npath = "/s"\nupstream = "u"\nlifecycle = {{ sunset = "{later}", link = "https://d" }}\n'
    path = tmp_path / "gw.toml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "lifecycle: routes sunsetting within 30 days:" in out.stdout
    assert f"route r: sunsets in 10 days ({soon}; after it: 410)" in out.stdout
    assert "route s:" not in out.stdout
