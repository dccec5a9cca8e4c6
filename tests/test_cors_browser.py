"""CORS through a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) loads a page
from one origin that fetches from the gateway on another with a custom request header, so the browser
sends a preflight first; the page reads a 200 and then a 429's Retry-After, RateLimit-Policy and
X-Request-ID (exposed by default) and its problem+json body. A page on an origin the policy does not
grant gets a network error, as the Fetch standard requires. No driver: the page writes what it saw into
its DOM and `chromium --dump-dom` prints it."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const q = new URLSearchParams(location.search), gw = q.get("gw") + q.get("p");
  const out = {};
  try {
    const r1 = await fetch(`${gw}`, {headers: {"X-Probe": "1"}});
    out.first = r1.status;
    const r2 = await fetch(`${gw}`, {headers: {"X-Probe": "1"}});
    out.second = r2.status;
    out.retry_after = r2.headers.get("Retry-After");
    out.ratelimit_policy = r2.headers.get("RateLimit-Policy");
    out.request_id = r2.headers.get("X-Request-ID");
    out.type = (await r2.json()).type;
  } catch (e) { out.error = String(e); }
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>"""


class Pages:
    """Serves PAGE on 127.0.0.1:<port> (the page's origin is http://127.0.0.1:<port>); the page reads the
    gateway's address and the path to fetch from its query (?gw=...&p=...)."""

    def __init__(self) -> None:
        body = PAGE.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def browse(url: str) -> dict[str, Any]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: .ci/run installs Debian's chromium package"
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-dev-shm-usage", "--virtual-time-budget=15000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=90)
    m = re.search(r'<pre id="out">(.*?)</pre>', r.stdout, re.S)
    assert m and m.group(1) != "pending", r.stdout + r.stderr[-2000:]
    return json.loads(html.unescape(m.group(1)))


@pytest.fixture
def pages() -> Iterator[list[Pages]]:
    made: list[Pages] = []
    yield made
    for p in made:
        p.close()


def start(gateway: Any, echo_origin: Any, origins: list[str]) -> Any:
    extra = f'''
[cors.web]
origins = {json.dumps(origins)}
headers = ["X-Probe"]

[plans.one]
limits = [{{ rate = "1/h" }}]
'''
    routes = [{"name": "api", "path": "/api/*", "upstream": "echo", "cors": "web", "plan": "one"}]
    return gateway.start({"echo": {"targets": [echo_origin.addr]}}, routes, extra=extra)


def test_browser_preflight_then_reads_a_429s_headers(gateway: Any, echo_origin: Any, pages: list[Pages]) -> None:
    page = Pages()
    pages.append(page)
    gw = start(gateway, echo_origin, [page.origin, "https://*.partners.bank.example"])
    seen = browse(f"{page.origin}/page.html?gw={gw.url}&p=/api/granted")
    assert "error" not in seen, seen
    assert seen["first"] == 200                 # readable at all: the browser accepted the granted origin
    assert seen["second"] == 429 and seen["type"] == "urn:fastgw:problem:rate-limited"
    assert int(seen["retry_after"]) > 0 and seen["ratelimit_policy"] and seen["request_id"]
    # The preflight never reached the upstream; the one admitted GET did, with the custom header.
    heads = echo_origin.heads_for("/api/granted")
    assert [h.method for h in heads] == ["GET"] and heads[0].values("x-probe") == ["1"]


def test_browser_on_an_origin_not_granted_gets_a_network_error(gateway: Any, echo_origin: Any,
                                                               pages: list[Pages]) -> None:
    page = Pages()
    pages.append(page)
    gw = start(gateway, echo_origin, ["https://app.bank.example"])
    seen = browse(f"{page.origin}/page.html?gw={gw.url}&p=/api/refused")
    assert seen.get("error", "").startswith("TypeError"), seen
    assert echo_origin.heads_for("/api/refused") == []               # the preflight failed: no request sent
