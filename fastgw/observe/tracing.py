"""Span export: a worker's finished spans, batched and sent to an OTLP/HTTP collector from a thread.

The request path only appends a tuple of the span's fields to the worker's buffer (Worker.export_span,
fastgw/_core/worker.pyx), a deque with a bound (`tracing.queue`): when it is full the oldest span goes
and is counted (`fastgw_tracing_spans_total{outcome="dropped"}`). This thread, started in the worker
process (never before a fork: the OpenTelemetry SDK's batch processor breaks across fork for that
reason), takes up to 512 spans at a time, at the latest every `tracing.export_delay` (5 s: the SDK's
BatchSpanProcessor defaults), encodes them with the official OTLP protobuf messages
(`opentelemetry-proto`, imported here only when an endpoint is configured) and POSTs them. A batch the collector refuses, or does not answer
within `tracing.timeout`, is dropped and counted (`outcome="failed"`): never retried, never waited for
by a request. A collector that is down costs the event loop nothing; one that hangs holds this thread
for `timeout` per batch while the buffer drops its oldest spans.

Attributes follow the stable HTTP semantic conventions for a server span (name "{method} {http.route}",
http.request.method, url.path, url.scheme, http.route, http.response.status_code, server.address,
server.port, client.address, network.protocol.version, error.type; a server span is an error only for
5xx), plus fastgw.* for what the conventions do not name (route, request id, upstream, target, consumer,
error source, the gateway's and the upstream's share of the time).
"""
from __future__ import annotations

import collections
import http.client
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastgw import __version__
from fastgw._core.gateway_error import SOURCES
from fastgw.observe.metrics import H_SPANS, SPAN_OUTCOMES

if TYPE_CHECKING:
    from fastgw.config.tracing import Tracing

BATCH = 512              # spans per export request [OpenTelemetry SDK BatchSpanProcessor max_export_batch_size]
POLL = 0.25              # how often the thread looks at the buffer
SHAPES = 4096            # encoded span shapes kept for reuse (SpanExporter.shared); then the cache starts over
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
EXPORTED, FAILED = H_SPANS + SPAN_OUTCOMES.index("exported"), H_SPANS + SPAN_OUTCOMES.index("failed")


class SpanExporter:
    """One worker's exporter: the buffer the data path fills and the thread that empties it."""

    def __init__(self, words: memoryview | None) -> None:
        self.words = words
        self.spans: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=2048)
        self.endpoint = ""
        self.timeout = 5.0
        self.delay = float("inf")          # tracing.export_delay, from configure() (which starts the thread)
        self.service = "fastgw"
        self.paths: dict[str, str] = {}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.conn: http.client.HTTPConnection | None = None
        self.conn_key: tuple[str, str, int] | None = None
        self.shapes: dict[tuple[Any, ...], bytes] = {}     # see `shared`

    def configure(self, t: Tracing, route_paths: dict[str, str]) -> collections.deque[tuple[Any, ...]]:
        """Apply a config's [tracing] (and each route's path, the span's http.route); returns the buffer
        the worker fills (a new one only when the queue size changed)."""
        if self.spans.maxlen != t.queue:
            old = self.spans
            self.spans = collections.deque(old, maxlen=t.queue)
        self.endpoint, self.timeout, self.service = t.otlp_endpoint, t.timeout, t.service_name
        self.delay = t.export_delay
        self.paths = route_paths
        if self.thread is None:
            # The OTLP messages are imported here, while the worker applies its config, not by the
            # thread's first export: an import holds the GIL for tens of milliseconds, which the event
            # loop would wait out mid-traffic.
            import opentelemetry.proto.collector.trace.v1.trace_service_pb2  # noqa: F401
            self.thread = threading.Thread(target=self.run, name="fastgw-span-export", daemon=True)
            self.thread.start()
        return self.spans

    def close(self, wait: float = 1.0) -> None:
        """Stop the thread; what is buffered gets one last export attempt within `wait` seconds."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(wait)

    # -- the thread ------------------------------------------------------------------------------------
    def run(self) -> None:
        last = time.monotonic()
        while True:
            stopping = self.stop.wait(POLL)
            now = time.monotonic()
            while self.spans and (len(self.spans) >= BATCH or now - last >= self.delay or stopping):
                batch: list[tuple[Any, ...]] = []
                while self.spans and len(batch) < BATCH:
                    try:
                        batch.append(self.spans.popleft())
                    except IndexError:
                        break
                self.export(batch)
                last = now
            if not self.spans:
                last = now
            if stopping:
                return

    def export(self, batch: list[tuple[Any, ...]]) -> None:
        if not batch:
            return
        try:
            body = self.encode(batch)
            ok = self.post(self.endpoint, body)
        except Exception:             # an encoding bug must not kill the thread: the batch is lost, counted
            ok = False
        self.count(EXPORTED if ok else FAILED, len(batch))

    def count(self, word: int, n: int) -> None:
        if self.words is not None:
            self.words[word] += n      # this thread is the only writer of these two words

    def post(self, endpoint: str, body: bytes) -> bool:
        """One POST of an ExportTraceServiceRequest; True on a 2xx. The connection is kept for the next
        batch and dropped on any failure."""
        u = urlsplit(endpoint)
        key = (u.scheme, u.hostname or "", u.port or (443 if u.scheme == "https" else 80))
        if self.conn is None or self.conn_key != key:
            self.drop_conn()
            if u.scheme == "https":
                self.conn = http.client.HTTPSConnection(key[1], key[2], timeout=self.timeout,
                                                        context=ssl.create_default_context())
            else:
                self.conn = http.client.HTTPConnection(key[1], key[2], timeout=self.timeout)
            self.conn_key = key
        try:
            self.conn.request("POST", u.path or "/v1/traces", body=body,
                              headers={"Content-Type": "application/x-protobuf"})
            resp = self.conn.getresponse()
            resp.read()
            if resp.getheader("connection", "").lower() == "close":
                self.drop_conn()
            return 200 <= resp.status < 300
        except (OSError, http.client.HTTPException):
            self.drop_conn()
            return False

    def drop_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def shared(self, method: str, status: int, proto: bytes, version: str, host: bytes | None, peer: bytes,
               route: str | None, upstream: str | None, target: bytes | None, retried: bool, consumer: str | None,
               grpc: int | None, source: int | None, kind: str | None) -> bytes:
        """The serialized Span fields that spans of one shape share (name, kind, status, every attribute
        but the request's own), encoded once per shape with the official messages and kept
        (`SHAPES` at most, then the cache starts over)."""
        key = (method, status, proto, version, host, peer, route, upstream, target, retried, consumer, grpc,
               source, kind)
        got = self.shapes.get(key)
        if got is not None:
            return got
        from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

        known = method if method in KNOWN_METHODS else "_OTHER"
        http_route = self.paths.get(route) if route is not None else None
        a: dict[str, Any] = {"http.request.method": known, "http.response.status_code": status,
                             "url.scheme": proto.decode("latin-1"), "network.protocol.version": version}
        if known != method:
            a["http.request.method_original"] = method
        if host:
            name, port = split_host(host.decode("latin-1"))
            a["server.address"] = name
            if port:
                a["server.port"] = port
        if peer:
            a["client.address"] = peer.decode("latin-1")
        if http_route:
            a["http.route"] = http_route
        if route is not None:
            a["fastgw.route"] = route
        if upstream is not None and target is not None:
            a["fastgw.upstream"] = upstream
            a["fastgw.upstream.target"] = target.decode("latin-1")
        if retried:
            a["http.request.resend_count"] = 1
        if consumer:
            a["fastgw.consumer"] = consumer
        if grpc is not None:
            a["rpc.grpc.status_code"] = grpc
        if source is not None:
            a["fastgw.error_source"] = SOURCES[source]
            if kind:
                a["fastgw.upstream_error"] = kind
        if status >= 500:
            a["error.type"] = kind or str(status)
        got = Span(name=f"{known} {http_route}" if http_route else known, kind=Span.SPAN_KIND_SERVER,
                   attributes=key_values(a),
                   status=Status(code=Status.STATUS_CODE_ERROR if status >= 500 else Status.STATUS_CODE_UNSET)
                   ).SerializeToString()
        if len(self.shapes) >= SHAPES:
            self.shapes.clear()
        self.shapes[key] = got
        return got

    def encode(self, batch: list[tuple[Any, ...]]) -> bytes:
        """The OTLP ExportTraceServiceRequest of `batch` (tuples from Worker.export_span).

        Every message is encoded by the official classes; the batch is assembled from their bytes. Two
        serialized messages of one type concatenate into their merge (protobuf's wire format), so a span
        is its shape's shared bytes (`shared`) followed by its own (ids, times, request id, path, the split
        of the time), and a repeated field is its entries, each framed as the field (tag, length). Built
        as message objects instead, a span cost ~136k instructions (callgrind: nested messages built and
        parsed in Python); this way it costs a third of that."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource
        from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

        wall_minus_mono = time.time_ns() - time.monotonic_ns()
        shared = self.shared
        out = [ScopeSpans(scope=InstrumentationScope(name="fastgw", version=__version__)).SerializeToString()]
        spans_tag = field_tag(ScopeSpans, "spans")
        for (end, dur, up, hi, lo, span_id, parent, flags, status, head, proto, h2, peer, rid, route,
             upstream, target, retried, err, identity, grpc) in batch:
            method = head.method.decode("latin-1") if head is not None and head.method else "_OTHER"
            sp = Span(trace_id=hi.to_bytes(8, "big") + lo.to_bytes(8, "big"), span_id=span_id.to_bytes(8, "big"),
                      parent_span_id=parent.to_bytes(8, "big") if parent else b"",
                      flags=0x100 | (0x200 if parent else 0) | (flags & 0xff),   # W3C flags; "is remote" known
                      start_time_unix_nano=end - dur + wall_minus_mono, end_time_unix_nano=end + wall_minus_mono)
            attrs = sp.attributes
            attrs.add(key="fastgw.request_id").value.string_value = rid.decode("latin-1")
            if head is not None and head.path is not None:
                attrs.add(key="url.path").value.string_value = head.path.decode("latin-1")
            attrs.add(key="fastgw.gateway.duration_ms").value.double_value = (dur - max(up, 0)) / 1e6
            if up >= 0:
                attrs.add(key="fastgw.upstream.duration_ms").value.double_value = up / 1e6
            body = shared(method, status, proto, "2" if h2 else f"1.{head.minor}" if head is not None else "1.1",
                          head.host if head is not None else None, peer, route, upstream, target, retried,
                          getattr(identity, "consumer", None) if identity is not None else None, grpc,
                          err.source if err is not None else None, err.kind if err is not None else None
                          ) + sp.SerializeToString()
            out.append(spans_tag + varint(len(body)))
            out.append(body)
        scope = b"".join(out)
        resource = ResourceSpans(resource=Resource(attributes=key_values(
            {"service.name": self.service, "service.version": __version__}))).SerializeToString()
        resource += field_tag(ResourceSpans, "scope_spans") + varint(len(scope)) + scope
        return field_tag(ExportTraceServiceRequest, "resource_spans") + varint(len(resource)) + resource


def field_tag(message: Any, name: str) -> bytes:
    """The key of length-delimited field `name` of `message` (its number from the official descriptor)."""
    return varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


def varint(n: int) -> bytes:
    """n as a protobuf base-128 varint (the length of a framed entry; the protobuf package keeps its
    encoder private)."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def split_host(host: str) -> tuple[str, int | None]:
    """A Host field's name (an IPv6 address without its brackets) and port, None when it has none."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (name.endswith("]") or ":" not in name):
        return name.strip("[]"), int(port)
    return host.strip("[]") if host.endswith("]") else host, None


def key_values(values: dict[str, Any]) -> list[Any]:
    """OTLP KeyValues from a dict (str, bool, int or float values)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    out = []
    for k, v in values.items():
        if isinstance(v, bool):
            val = AnyValue(bool_value=v)
        elif isinstance(v, int):
            val = AnyValue(int_value=v)
        elif isinstance(v, float):
            val = AnyValue(double_value=v)
        else:
            val = AnyValue(string_value=str(v))
        out.append(KeyValue(key=k, value=val))
    return out
