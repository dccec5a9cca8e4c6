"""The header names fastgw owns, and the role of each: the one declaration of them.

Everything else reads this table. `fastgw/_core/wire.pyx` compiles it into what the data path uses (the
request readers' action table for HTTP/1.1 and HTTP/2, the upstream response-head walk, the gRPC relay);
config validation (fastgw/config/) asks it which names a route, an issuer or the API key may use. It is
plain Python on purpose: `fastgw check` runs before anything is compiled.

Request headers (client -> gateway), by role:

  host            validated; exactly one on HTTP/1.1 (RFC 9112 3.2); passed on as Host
  framing         Content-Length, Transfer-Encoding: validated, then rebuilt per hop (RFC 9112 6)
  connection      Connection: hop-by-hop, and the names it lists are hop-by-hop too (RFC 9110 7.6.1)
  hop-by-hop      never crosses the gateway (RFC 9110 7.6.1, RFC 9113 8.2.2, RFC 7540 3.2.1 for
                  HTTP2-Settings, which only means something on the connection that carried it)
  te              hop-by-hop; on HTTP/2 only "trailers" is valid (RFC 9113 8.2.2)
  expect          answered by the gateway (100-continue), never forwarded
  request-id      X-Request-ID: kept when safe, else generated, then set by the gateway
  forwarded-for   X-Forwarded-For: the client's list, to which the gateway appends the peer
  forwarded       the rest of X-Forwarded-*: set by the gateway only [the client's would be believed]
  trace           traceparent: always set by the gateway, continuing a valid one (W3C Trace Context
                  3.2; fastgw/_core/tracecontext.pyx); tracestate only with a continued trace, when valid
  identity        set by the gateway from verified credentials only (plus every claims_to_headers target)
  credential      read by the gateway: forwarded once, never twice (plus the API-key header, issuers'
                  headers and, with a cookie issuer, Cookie: see compile.header_actions)

A client header whose name, case-folded with "_" read as "-", is one of these never reaches the upstream
under that spelling: many upstream stacks (CGI/WSGI, PHP, some Java servers) fold "_" and "-" to the
same variable, so `X_User_ID` would arrive as the identity header the gateway promised no client can set.
By default every name with "_" is dropped [nginx underscores_in_headers off];
`server.limits.allow_underscores = true` keeps the others.
"""
from __future__ import annotations

HOST = "host"
FRAMING = "framing"
CONNECTION = "connection"
HOP_BY_HOP = "hop-by-hop"
TE = "te"
EXPECT = "expect"
REQUEST_ID = "request-id"
FORWARDED_FOR = "forwarded-for"
FORWARDED = "forwarded"
TRACE = "trace"
IDENTITY = "identity"
CREDENTIAL = "credential"

# Lowercase name -> role.
REQUEST: dict[str, str] = {
    "host": HOST,
    "content-length": FRAMING,
    "transfer-encoding": FRAMING,
    "connection": CONNECTION,
    "keep-alive": HOP_BY_HOP,
    "proxy-connection": HOP_BY_HOP,
    "upgrade": HOP_BY_HOP,
    "trailer": HOP_BY_HOP,
    "proxy-authorization": HOP_BY_HOP,
    "http2-settings": HOP_BY_HOP,
    "te": TE,
    "expect": EXPECT,
    "x-request-id": REQUEST_ID,
    "x-forwarded-for": FORWARDED_FOR,
    "x-forwarded-proto": FORWARDED,
    "x-forwarded-host": FORWARDED,
    "traceparent": TRACE,
    "tracestate": TRACE,
    "x-consumer": IDENTITY,
    "x-user-id": IDENTITY,
    "x-roles": IDENTITY,
    "authorization": CREDENTIAL,
}

# Every other name starting with this is a member of the X-Forwarded-* family: set by the gateway only.
FORWARDED_PREFIX = "x-forwarded-"

# Fields that are specific to one connection (RFC 9113 8.2.2): a malformed HTTP/2 request when a client
# sends one, never relayed from an HTTP/2 upstream. (TE is allowed on HTTP/2 requests as "trailers".)
CONNECTION_SPECIFIC = ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te")

# Response headers (upstream -> gateway) the gateway acts on: framing is re-emitted by fastgw, the rest
# never reaches the client (RFC 9110 7.6.1).
RESPONSE: dict[str, str] = {
    "content-length": FRAMING,
    "transfer-encoding": FRAMING,
    "connection": CONNECTION,
    "keep-alive": HOP_BY_HOP,
    "proxy-connection": HOP_BY_HOP,
    "te": HOP_BY_HOP,
    "trailer": HOP_BY_HOP,
    "upgrade": HOP_BY_HOP,
}

# Roles whose headers the gateway itself produces on the upstream request: a route may neither add nor
# remove them, and no credential or claim may be carried in them.
SET_BY_GATEWAY = frozenset({HOST, FRAMING, CONNECTION, HOP_BY_HOP, TE, EXPECT, REQUEST_ID, FORWARDED_FOR,
                            FORWARDED, TRACE})

_MANAGED = "fastgw manages framing and hop-by-hop headers itself"
_WHAT = {
    HOST: _MANAGED,
    FRAMING: _MANAGED,
    CONNECTION: _MANAGED,
    HOP_BY_HOP: _MANAGED,
    TE: _MANAGED,
    EXPECT: "fastgw answers Expect itself",
    REQUEST_ID: "fastgw sets X-Request-ID",
    FORWARDED_FOR: "fastgw sets X-Forwarded-*",
    FORWARDED: "fastgw sets X-Forwarded-*",
    TRACE: "fastgw sets trace context (it continues a valid traceparent)",
    IDENTITY: "identity headers are set by fastgw from verified credentials",
    CREDENTIAL: "fastgw reads credentials from it",
}


def fold(name: str) -> str:
    """The name as a folding upstream sees it: lowercase, "_" read as "-"."""
    return name.lower().replace("_", "-")


def role(name: str) -> str | None:
    """The role of a request header name (case-insensitive, "_" read as "-"), or None."""
    low = fold(name)
    r = REQUEST.get(low)
    if r is None and low.startswith(FORWARDED_PREFIX):
        return FORWARDED
    return r


def owned(name: str) -> str | None:
    """Why a route may not add or remove `name`, or None when it may."""
    r = role(name)
    return _WHAT[r] if r in SET_BY_GATEWAY else None


# Response headers a route adds (response_headers.add) that describe the upstream's content: they are not
# put on the gateway's own errors, which are never cacheable (Cache-Control: no-store) and carry no
# representation of the resource [a route's "Cache-Control: max-age=3600" on a 502 would let caches keep
# the outage]. Every other added header goes on the route's errors too: CORS (a browser cannot read an
# error without Access-Control-Allow-Origin), lifecycle (Deprecation, Sunset, Link), security headers.
CONTENT_DESCRIBING = frozenset({"cache-control", "expires", "pragma", "age", "etag", "last-modified", "vary",
                                "accept-ranges", "set-cookie"})


def on_errors(name: str) -> bool:
    """Whether a header a route adds to its responses also goes on the gateway's errors on that route."""
    low = name.lower()
    return low not in CONTENT_DESCRIBING and not low.startswith("content-")


def owned_response(name: str) -> str | None:
    """Why a route may not add or remove response header `name`, or None when it may."""
    return _MANAGED if name.lower() in RESPONSE else None


def why(name: str) -> str | None:
    """Why `name` cannot carry a credential or a claim (any managed role), or None."""
    r = role(name)
    return _WHAT[r] if r is not None else None
