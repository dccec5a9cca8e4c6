"""Which origin a CORS route answers and how: a preflight (OPTIONS with Origin and
Access-Control-Request-Method) is answered 204 here, before authentication (a browser sends a preflight
without credentials, so an authenticated route would otherwise refuse every one); any other OPTIONS goes
upstream. Every response of the route, the gateway's own problems included (401/403/429/5xx), gets
`Vary: Origin` and, for an allowed origin, the matched origin echoed, so a page can read why it was
refused. Those lines depend on the request alone: the compiled request phase (fastgw._core.gates.CorsGate)
adds them to the lines every answer of the exchange carries, and the route runs no response phase (one in
Python cost a CORS route 8,046 instructions per request over a plain route, +31.6%: bench/callgrind.py).
The policy only adds lines; an upstream that sends its own Access-Control-* fields is stripped by the
route's compiled `response_headers.remove`.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import CorsGate
from fastgw._core.phases import Respond

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.cors.config import CorsPolicy
    from fastgw.process.shm import Section, SharedMemory

# Exposed on every CORS route whatever `expose` says: what a client needs to back off (RateLimit*,
# Retry-After), to report a failure (X-Request-ID) and to learn of an API's retirement (Deprecation, Sunset,
# Link). Listed by name: `*` is literal when credentials are allowed.
EXPOSED_ALWAYS = ("RateLimit-Policy", "RateLimit", "Retry-After", "X-Request-ID", "Deprecation", "Sunset", "Link")
_LABELS = re.compile(rb"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


class Cors(CorsGate):
    def __init__(self, pol: CorsPolicy) -> None:
        # "*" admits any origin but "null"; the origin is echoed all the same (with Vary: Origin).
        self.any = "*" in pol.origins                      # never with credentials (config check)
        self.exact = frozenset(o.encode() for o in pol.origins if o != "*")
        self.more = self.any or any("://*." in o for o in pol.origins)
        # "https://*.x.example:8443" -> (b"https://", b".x.example:8443"): the labels between are checked.
        self.patterns = tuple((o[:o.index("*")].encode(), o[o.index("*") + 1:].encode())
                              for o in pol.origins if "://*." in o)
        cred = b"Access-Control-Allow-Credentials: true\r\n" if pol.credentials else b""
        expose = ", ".join(dict.fromkeys([*EXPOSED_ALWAYS, *pol.expose])).encode()
        self.tail = b"\r\n" + cred + b"Access-Control-Expose-Headers: " + expose + b"\r\nVary: Origin\r\n"
        self.granted = tuple((o, b"Access-Control-Allow-Origin: " + o + self.tail) for o in sorted(self.exact))
        self.preflight_ok = [
            (b"Access-Control-Allow-Methods", ", ".join(pol.methods).encode()),
            *([(b"Access-Control-Allow-Headers", ", ".join(pol.headers).encode())] if pol.headers else []),
            (b"Access-Control-Max-Age", b"%d" % int(pol.max_age)),
            (b"Vary", b"Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
        self.preflight_no = [(b"Vary", b"Access-Control-Request-Method, Access-Control-Request-Headers")]
        self.answer_ok = Respond(204, self.preflight_ok, b"")
        self.answer_no = Respond(204, self.preflight_no, b"")

    def allowed(self, origin: bytes) -> bool:
        if origin in self.exact:
            return True
        for head, tail in self.patterns:
            if origin.startswith(head) and origin.endswith(tail) and len(origin) > len(head) + len(tail) \
                    and _LABELS.fullmatch(origin, len(head), len(origin) - len(tail)):
                return True
        return self.any and origin != b"null"

    def preflight(self, granted: bool) -> Respond:
        """The answer to a preflight (the CORS lines of the origin are already added)."""
        return self.answer_ok if granted else self.answer_no


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> Cors | None:
    if route.cors is None:
        return None
    return Cors(cfg.cors[route.cors])


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return []


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    return None


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    return []
