"""How an upstream failure is named, for the access log and for the client.

Each cause has one short kind (the access log's and the problem body's `upstream_error`); a kind that has
a reason carries it after a colon ("connect failed: No route to host"). The client is told the upstream's
configured name and the kind, in the problem+json body (members `upstream`, `upstream_error` and the
`detail` sentence) or, on grpc routes, in grpc-message. The client is never told the target's address:
in front of a bank's services an internal address in a client-visible body is an information leak. The
address is in the access log line (`target`), which the body's request_id points to.
"""
from __future__ import annotations

import errno
import ssl

CONNECT_REFUSED = "connect refused"       # the target answered the SYN with RST
CONNECT_FAILED = "connect failed"         # any other connect error (unreachable, DNS): with the reason
CONNECT_TIMEOUT = "connect timeout"       # no connection within the upstream's connect_timeout
TLS_FAILED = "tls failed"                 # TLS handshake (or ALPN) failed: with the reason
TIMEOUT = "timeout"                       # no response (head) within the upstream's timeout
INVALID_RESPONSE = "invalid response"     # the response is not valid HTTP
CLOSED = "closed"                         # the upstream closed the connection before the response ended
RESET = "reset"                           # the upstream reset the connection (RST)
STREAM_REFUSED = "stream refused"         # HTTP/2: GOAWAY below the stream, or the stream refused
STREAM_RESET = "stream reset"             # HTTP/2: the upstream reset the stream
PROTOCOL_ERROR = "protocol error"         # HTTP/2: the upstream broke the protocol
NO_TARGET = "no usable target"            # every target ejected and on_panic = "fail"
OVERLOADED = "overloaded"                  # circuit breaking: a limit of the upstream reached (which one)

# The sentence for the problem's `detail` (and grpc-message): {u} is the upstream name, {r} the reason.
SENTENCES = {
    CONNECT_REFUSED: 'cannot connect to upstream "{u}": connection refused',
    CONNECT_FAILED: 'cannot connect to upstream "{u}": {r}',
    CONNECT_TIMEOUT: 'cannot connect to upstream "{u}": connect timed out',
    TLS_FAILED: 'upstream "{u}": TLS handshake failed: {r}',
    TIMEOUT: 'upstream "{u}" did not answer in time',
    INVALID_RESPONSE: 'invalid HTTP from upstream "{u}": {r}',
    CLOSED: 'upstream "{u}" closed the connection',
    RESET: 'upstream "{u}" reset the connection',
    STREAM_REFUSED: 'upstream "{u}" refused the stream (GOAWAY)',
    STREAM_RESET: 'upstream "{u}" reset the stream',
    PROTOCOL_ERROR: 'upstream "{u}" broke the HTTP/2 protocol',
    NO_TARGET: 'no target of upstream "{u}" is in service (all ejected after failures)',
    OVERLOADED: 'upstream "{u}" is at its limit: {r}',
}

# The kind of a failure whose reporter named none (by the status it answers).
BY_STATUS = {502: INVALID_RESPONSE, 503: "unavailable", 504: TIMEOUT}


def connect_error(exc: BaseException) -> tuple[str, str]:
    """(kind, reason) of an exception raised while connecting to a target (loop.create_connection)."""
    if isinstance(exc, ssl.SSLError):
        return TLS_FAILED, str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return CONNECT_REFUSED, ""
    if isinstance(exc, OSError):
        return CONNECT_FAILED, exc.strerror or str(exc)
    return CONNECT_FAILED, type(exc).__name__


def lost_error(exc: BaseException | None) -> str:
    """The kind of a connection lost while a request was on it (asyncio connection_lost's exc)."""
    return RESET if isinstance(exc, ConnectionResetError) else CLOSED


def describe(upstream: str, kind: str, reason: str = "") -> tuple[str, bytes]:
    """(upstream_error, detail sentence) for a failure of `upstream` of `kind`."""
    label = f"{kind}: {reason}" if reason else kind
    sentence = SENTENCES.get(kind)
    if sentence is None:
        return label, f'upstream "{upstream}": {label}'.encode()
    if "{r}" not in sentence or not reason:
        sentence = sentence.replace(": {r}", "")
    return label, sentence.format(u=upstream, r=reason).encode()
