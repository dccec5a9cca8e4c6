"""The catalogue of responses fastgw makes itself: RFC 9457 problem+json, one stable slug each.

Bodies are serialised here once per config load; per request only `instance`, `request_id` and (for
malformed input) `detail` are filled in (see fastgw._core.runtime.Problem). Only slugs some code path sends
are listed: docs/errors.md is the client's view of this table, and tests/test_docs.py keeps both true.
"""
from __future__ import annotations

import json
from typing import NamedTuple

from fastgw._core.runtime import Problem


class Slug(NamedTuple):
    status: int
    title: str
    detail: str


PROBLEMS: dict[str, Slug] = {
    "bad-request": Slug(400, "Bad Request", "The request is malformed."),
    "unauthorized": Slug(401, "Unauthorized", "Valid credentials are required."),
    "forbidden": Slug(403, "Forbidden", "The credentials do not grant access to this resource."),
    "not-found": Slug(404, "Not Found", "No route matches this request."),
    "method-not-allowed": Slug(405, "Method Not Allowed", "The route does not accept this method."),
    "request-timeout": Slug(408, "Request Timeout", "The request was not received in time."),
    "payload-too-large": Slug(413, "Content Too Large", "The request body exceeds the route's limit."),
    "uri-too-long": Slug(414, "URI Too Long", "The request target is too long."),
    "gone": Slug(410, "Gone", "This API was retired at its announced sunset."),
    "validation-failed": Slug(400, "Bad Request", "The request does not match the API's description."),
    "idempotency-key-required": Slug(400, "Bad Request", "This operation requires an Idempotency-Key header."),
    "idempotency-key-invalid": Slug(400, "Bad Request",
                                    "The Idempotency-Key header is malformed: one string of 1 to 255 printable "
                                    "ASCII characters."),
    "idempotency-conflict": Slug(409, "Conflict",
                                 "A request with this Idempotency-Key is still being processed; retry later."),
    "idempotency-mismatch": Slug(422, "Unprocessable Content",
                                 "This Idempotency-Key was used with a different request; use a new key."),
    "header-too-large": Slug(431, "Request Header Fields Too Large", "The request head is too large."),
    "rate-limited": Slug(429, "Too Many Requests", "The rate limit for this consumer is exhausted."),
    "quota-exceeded": Slug(429, "Too Many Requests", "The quota for this consumer is exhausted."),
    "auth-throttled": Slug(429, "Too Many Requests",
                           "Too many failed authentication attempts from this client address."),
    "websocket-version": Slug(426, "Upgrade Required",
                              "This route speaks WebSocket version 13 (Sec-WebSocket-Version: 13)."),
    "websocket-origin": Slug(403, "Forbidden", "The Origin of this WebSocket handshake is not allowed."),
    "websocket-limit": Slug(429, "Too Many Requests", "Too many WebSocket connections are open."),
    "websocket-unavailable": Slug(503, "Service Unavailable",
                                  "The gateway accepts no more WebSocket connections now."),
    "not-implemented": Slug(501, "Not Implemented", "This method cannot be called over HTTP/JSON."),
    "internal-error": Slug(500, "Internal Server Error", "The gateway failed to process the request."),
    "bad-gateway": Slug(502, "Bad Gateway", "The upstream sent an invalid or incomplete response."),
    "store-unavailable": Slug(503, "Service Unavailable", "The shared limit store is unavailable."),
    "upstream-unavailable": Slug(503, "Service Unavailable", "No target of the upstream is in service."),
    "upstream-overloaded": Slug(503, "Service Unavailable",
                                "The upstream is at its limit of concurrent requests or connections; retry later."),
    "upstream-timeout": Slug(504, "Gateway Timeout", "The upstream did not answer in time."),
    "http2-required": Slug(505, "HTTP Version Not Supported",
                           "This route serves gRPC, which needs HTTP/2 (prior knowledge, or ALPN h2 over TLS)."),
}

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
            413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content", 426: "Upgrade Required",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
            501: "Not Implemented", 505: "HTTP Version Not Supported"}


def _j(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


def build_problem(slug: str) -> Problem:
    s = PROBLEMS[slug]
    p = Problem()
    p.status = s.status
    p.head = (f"HTTP/1.1 {s.status} {_REASONS[s.status]}\r\n"
              "Content-Type: application/problem+json\r\nCache-Control: no-store\r\n").encode()
    p.body_a = b'{"type":' + _j(f"urn:fastgw:problem:{slug}") + b',"title":' + _j(s.title) + \
        b',"status":%d,"detail":"' % s.status
    p.detail = _j(s.detail)[1:-1]
    p.body_b = b'","instance":"'
    p.body_c = b'","request_id":"'
    p.body_d = b'"'
    p.extra = b""
    return p


def build_problems() -> dict[str, Problem]:
    return {slug: build_problem(slug) for slug in PROBLEMS}
