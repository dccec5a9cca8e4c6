"""HTTP/JSON to gRPC on a route with `transcode`: which method a request calls (the bindings of
descriptors.py, the most literal template first), checked before any upstream work, and the call's codec
(codec.py) that the gateway's transcoding call (fastgw/_core/transcode.pyx) uses on the request body and
the response messages.

A request no binding matches is a 404 (never passed on untranscoded); an unknown query parameter is a 400;
a client-streaming method is a 501 (a JSON request is one message). The transcoding policy runs last, after
authentication and the rate limits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastgw._core.gates import Gate
from fastgw.policies.transcode import codec
from fastgw.policies.transcode.descriptors import Binding

if TYPE_CHECKING:
    from fastgw.policies.contract import Rejection


class Call:
    """One request's method and what the path and the query gave; used by fastgw/_core/transcode.pyx."""

    __slots__ = ("b", "groups", "query", "path", "streaming", "timeout", "ctype", "sse")

    def __init__(self, b: Binding, groups: tuple[str, ...], query: bytes, timeout: float, sse: bool) -> None:
        self.b = b
        self.groups = groups
        self.query = query
        self.path = b.path                       # the gRPC :path
        self.streaming = b.server_streaming
        self.timeout = b"%dm" % max(1, int(timeout * 1000))     # grpc-timeout (the route's upstream timeout)
        # A server-streaming answer: one JSON line per message, or Server-Sent Events when the client
        # asked for text/event-stream (a browser's EventSource).
        self.sse = sse
        self.ctype = b"text/event-stream" if sse else b"application/x-ndjson"

    def request(self, body: bytes) -> bytes:
        """The gRPC request message (5-byte prefix and message) for the JSON body; codec.BadRequest."""
        msg = codec.request(self.b, self.groups, self.query, body)
        return b"\0" + len(msg).to_bytes(4, "big") + msg

    def response(self, payload: bytes) -> bytes:
        return codec.response(self.b, payload)

    def item(self, payload: bytes) -> bytes:
        """One message of a server-streaming answer, framed: an NDJSON line or an SSE event."""
        doc = codec.response(self.b, payload)
        return b"data: " + doc + b"\n\n" if self.sse else doc + b"\n"

    def last_error(self, code: int, message: bytes, details: bytes, instance: bytes, rid: bytes) -> bytes:
        """The error that ended a stream after its first message, as its last line or event."""
        doc = self.problem(code, message, details, instance, rid)[1]
        return b"event: error\ndata: " + doc + b"\n\n" if self.sse else doc + b"\n"

    def problem(self, code: int, message: bytes, details: bytes, instance: bytes,
                rid: bytes) -> tuple[int, bytes]:
        return codec.problem(code, message.decode("utf-8", "replace"), instance, rid,
                             codec.status_details(self.b, details))


class TranscodePolicy(Gate):
    transcodes = True              # compile.py: the client speaks HTTP/JSON (problem+json), the upstream gRPC

    def __init__(self, bindings: list[Binding], timeout: float) -> None:
        self.bindings = bindings
        self.timeout = timeout

    def on_request(self, ex: Any) -> Rejection | None:
        path = ex.path.decode("utf-8", "replace")
        verb = ex.method.decode("latin-1")
        for b in self.bindings:
            if b.verb != verb:
                continue
            m = b.regex.fullmatch(path)
            if m is None:
                continue
            if b.client_streaming:
                return (501, "not-implemented", b"a client-streaming method cannot be called with JSON", None)
            query = ex.query
            if query:
                try:
                    for key, _ in parse_qsl(query[1:].decode("utf-8", "replace"), keep_blank_values=True):
                        codec._field(b.method.input_type, key)
                except codec.BadRequest as e:
                    return (400, "bad-request", f"unknown query parameter: {e}".encode(), None)
            accept = ex.header(b"accept")
            ex.transcode = Call(b, m.groups(), query, self.timeout,
                                b.server_streaming and accept is not None and b"text/event-stream" in accept)
            return None
        return (404, "not-found", b"no gRPC method is bound to this method and path", None)
