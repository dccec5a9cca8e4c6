"""Span export ([tracing], fastgw/observe/tracing.py) to a real OTLP/HTTP receiver: a small HTTP server
in the test that decodes each request with the official `opentelemetry-proto` messages. The spans carry
the HTTP semantic-convention attributes and the ids the upstream saw; head sampling keeps its ratio;
errors and slow responses are exported whatever the sampling; a collector that is down or hangs changes
nothing for clients; `incoming` decides whose sampled flag is forwarded.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from conftest import free_port
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from procutil import admin_get, metric

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: every span it decoded, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.posts = 0
        self.lock = threading.Lock()
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:       # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                req = ExportTraceServiceRequest.FromString(body)
                with recv.lock:
                    recv.posts += 1
                    for rs in req.resource_spans:
                        res = attributes(rs.resource.attributes)
                        for ss in rs.scope_spans:
                            for sp in ss.spans:
                                recv.spans.append((res, sp))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_rid(self, rid: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for _, sp in self.spans:
                    if attributes(sp.attributes).get("fastgw.request_id") == rid:
                        return sp
            time.sleep(0.05)
        raise AssertionError(f"no span for request {rid}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


@pytest.fixture(scope="module")
def receiver() -> Any:
    r = Receiver()
    yield r
    r.close()


# The exporter sends a batch at the latest EXPORT_DELAY after its first span (tracing.export_delay, 5 s by
# default): each test would wait 5 s for its spans. What the tests check (which spans, their attributes,
# the counts, the clients' latency) does not depend on how long a span waits.
EXPORT_DELAY = "200ms"


def tracing(endpoint: str, **kw: Any) -> str:
    kw.setdefault("export_delay", EXPORT_DELAY)
    lines = ["", "[tracing]", f'otlp_endpoint = "{endpoint}"']
    for k, v in kw.items():
        lines.append(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}")
    return "\n".join(lines) + "\n"


def start(launcher: Any, origin: Any, extra: str) -> Any:
    down = f"127.0.0.1:{free_port()}"
    ups = {"echo": {"targets": [origin.addr]}, "down": {"targets": [down]}}
    routes = [{"name": "users", "path": "/users/{id}", "upstream": "echo"},
              {"name": "echo", "path": "/echo/*", "upstream": "echo"},
              {"name": "down", "path": "/down/*", "upstream": "down"}]
    return launcher.start(ups, routes, extra=extra)


def metrics(gw: Any) -> str:
    admin = next(e for e in gw.events if e.get("event") == "started")["admin"]
    return admin_get(f"http://{admin}/metrics")[1]


def test_sampled_span_has_the_semantic_convention_attributes(gateway_launcher: Any, echo_origin: Any,
                                                             receiver: Any) -> None:
    gw = start(gateway_launcher, echo_origin, tracing(receiver.url, sample_ratio=1.0, service_name="edge-gw"))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.get("/users/42?x=1", headers={"traceparent": f"00-{TRACE}-{PARENT}-00", "Host": "api.test:8443"})
        assert r.status_code == 200
    # Both requests before the first look at the collector.
    with httpx.Client(base_url=gw.url, http2=True, http1=False, timeout=10) as c:     # h2c prior knowledge
        r2 = c.get("/users/7")
    tp = {n.lower(): v for n, v in r.json()["headers"]}["traceparent"]
    assert tp.startswith(f"00-{TRACE}-") and tp.endswith("-01")      # sampled here (keep-trace-id, ratio 1)
    sp = receiver.by_rid(r.headers["x-request-id"])
    assert sp.trace_id.hex() == TRACE and sp.span_id.hex() == tp[36:52] and sp.parent_span_id.hex() == PARENT
    assert sp.kind == Span.SPAN_KIND_SERVER and sp.name == "GET /users/{id}"
    assert sp.end_time_unix_nano > sp.start_time_unix_nano > (time.time() - 60) * 1e9
    a = attributes(sp.attributes)
    assert a["http.request.method"] == "GET" and a["http.route"] == "/users/{id}" and a["url.path"] == "/users/42"
    assert a["http.response.status_code"] == 200 and a["url.scheme"] == "http"
    assert a["server.address"] == "api.test" and a["server.port"] == 8443
    assert a["client.address"] == "127.0.0.1" and a["network.protocol.version"] == "1.1"
    assert a["fastgw.route"] == "users" and a["fastgw.upstream"] == "echo"
    assert a["fastgw.upstream.target"] == echo_origin.addr
    assert a["fastgw.upstream.duration_ms"] > 0 and a["fastgw.gateway.duration_ms"] > 0
    assert "error.type" not in a and sp.status.code != Status.STATUS_CODE_ERROR
    res = next(res for res, s in receiver.spans if s.span_id == sp.span_id)
    assert res["service.name"] == "edge-gw"
    a2 = attributes(receiver.by_rid(r2.headers["x-request-id"]).attributes)
    assert a2["network.protocol.version"] == "2" and a2["url.path"] == "/users/7" and a2["server.port"] == gw.port
    deadline = time.monotonic() + 5
    while metric(metrics(gw), "fastgw_tracing_spans_total", outcome="exported") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_sampling_ratio_within_statistical_bounds(gateway_launcher: Any, echo_origin: Any,
                                                  receiver: Any) -> None:
    """ratio 0.2 over 600 requests: the exported count and the forwarded sampled flags agree and stay
    within 4.5 standard deviations of 120 (a false failure once in ~150,000 runs)."""
    gw = start(gateway_launcher, echo_origin, tracing(receiver.url, sample_ratio=0.2, export_errors=False))
    n, p = 600, 0.2
    rids, flags = [], 0
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for _ in range(n):
            r = c.get(f"/echo/{uuid.uuid4().hex[:8]}", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
            rids.append(r.headers["x-request-id"])
            flags += {k.lower(): v for k, v in r.json()["headers"]}["traceparent"].endswith("-01")
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(flags - n * p) < 4.5 * sd, flags
    want = set(rids)
    deadline = time.monotonic() + 12
    while True:
        with receiver.lock:
            got = sum(1 for _, sp in receiver.spans if attributes(sp.attributes).get("fastgw.request_id") in want)
        if got >= flags or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == flags            # exactly the requests whose forwarded flag says sampled


def test_errors_and_slow_responses_are_exported_whatever_the_sampling(gateway_launcher: Any,
                                                                      echo_origin: Any, receiver: Any) -> None:
    gw = start(gateway_launcher, echo_origin, tracing(receiver.url, sample_ratio=0.0, slow="200ms"))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        ok = [c.get(f"/echo/{i}").headers["x-request-id"] for i in range(20)]
        bad = c.get("/down/x", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        fail = c.get("/echo/x?status=503")
        slow = c.get("/echo/slow?delay=0.3")
    assert bad.status_code == 502 and fail.status_code == 503 and slow.status_code == 200
    sp = receiver.by_rid(bad.headers["x-request-id"])
    a = attributes(sp.attributes)
    assert sp.status.code == Status.STATUS_CODE_ERROR and a["http.response.status_code"] == 502
    assert a["error.type"] == "connect_refused" or a["error.type"], a
    assert a["fastgw.error_source"] == "upstream_connect" and sp.trace_id.hex() == TRACE
    assert attributes(receiver.by_rid(fail.headers["x-request-id"]).attributes)["http.response.status_code"] == 503
    assert attributes(receiver.by_rid(slow.headers["x-request-id"]).attributes)["fastgw.upstream.duration_ms"] >= 290
    time.sleep(0.6)
    with receiver.lock:
        rids = {attributes(s.attributes).get("fastgw.request_id") for _, s in receiver.spans}
    assert not rids & set(ok)             # the fast 200s were not sampled


def test_incoming_trust_follows_the_callers_flag(gateway_launcher: Any, echo_origin: Any, receiver: Any) -> None:
    gw = start(gateway_launcher, echo_origin, tracing(receiver.url, sample_ratio=0.0, incoming="trust"))
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for flag in ("01", "00"):
            r = c.get("/echo/t", headers={"traceparent": f"00-{TRACE}-{PARENT}-{flag}"})
            tp = {k.lower(): v for k, v in r.json()["headers"]}["traceparent"]
            assert tp.endswith(f"-{flag}")
            if flag == "01":
                assert receiver.by_rid(r.headers["x-request-id"]).parent_span_id.hex() == PARENT


def latencies(gw: Any, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for i in range(n):
            t = time.perf_counter()
            assert c.get(f"/echo/{i}").status_code == 200
            out.append(time.perf_counter() - t)
    return out


class Hanging:
    """A collector that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1/traces"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("collector", ["down", "hanging"])
def test_collector_down_or_hanging_changes_nothing_for_clients(gateway_launcher: Any, echo_origin: Any,
                                                               collector: str) -> None:
    """Every request sampled, to a collector that refuses connections or never answers: client latency is
    that of a gateway without export (medians within 2 ms), spans are dropped or failed and counted."""
    hang = Hanging() if collector == "hanging" else None
    url = hang.url if hang else f"http://127.0.0.1:{free_port()}/v1/traces"
    try:
        plain = start(gateway_launcher, echo_origin, "")
        gw = start(gateway_launcher, echo_origin, tracing(url, sample_ratio=1.0, queue=64, timeout="3s"))
        latencies(plain, 50)
        latencies(gw, 50)                       # warm both
        base = statistics.median(latencies(plain, 300))
        with_export = statistics.median(latencies(gw, 300))
        assert with_export - base < 0.002, (base, with_export)
        # The exporter tries every export_delay (200 ms, during the measurement above too): the attempt is
        # refused (counted failed) or held by the hanging collector.
        deadline = time.monotonic() + 10
        while not (hang.conns if hang else metric(metrics(gw), "fastgw_tracing_spans_total", outcome="failed")):
            assert time.monotonic() < deadline, "the exporter never tried"
            time.sleep(0.05)
        text = metrics(gw)
        lost = metric(text, "fastgw_tracing_spans_total", outcome="dropped") + \
            metric(text, "fastgw_tracing_spans_total", outcome="failed")
        assert lost >= 64 and metric(text, "fastgw_tracing_spans_total", outcome="exported") == 0, text
    finally:
        if hang:
            hang.close()


def test_gateway_and_upstream_histograms(gateway_launcher: Any, echo_origin: Any) -> None:
    """fastgw_gateway_duration_seconds and fastgw_upstream_duration_seconds split the request histogram:
    a 0.3 s upstream lands in the upstream's 0.5 s bucket, not the gateway's; a 404 has gateway time only."""
    gw = start(gateway_launcher, echo_origin, "")
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/echo/x?delay=0.3").status_code == 200
        assert c.get("/nowhere").status_code == 404
    text = metrics(gw)
    assert metric(text, "fastgw_upstream_duration_seconds_count", route="echo") == 1
    assert metric(text, "fastgw_upstream_duration_seconds_bucket", route="echo", le="0.25") == 0
    assert metric(text, "fastgw_upstream_duration_seconds_bucket", route="echo", le="0.5") == 1
    assert metric(text, "fastgw_gateway_duration_seconds_bucket", route="echo", le="0.05") == 1
    assert metric(text, "fastgw_gateway_duration_seconds_count", route="(none)") == 1
    assert metric(text, "fastgw_upstream_duration_seconds_count", route="(none)") == 0
    assert metric(text, "fastgw_request_duration_seconds_count", route="echo") == 1


def test_tracing_config_errors_name_the_key() -> None:
    from fastgw.config.root import ConfigError, loads

    base = '[upstreams.u]\ntargets = ["127.0.0.1:9000"]\n[[routes]]\nname = "r"\npath = "/r"\nupstream = "u"\n'
    cfg = loads(base)
    assert cfg.tracing.otlp_endpoint == "" and cfg.tracing.incoming == "keep-trace-id"
    assert cfg.tracing.export_delay == 5.0          # the OpenTelemetry SDK's schedule_delay
    assert loads(base + '[tracing]\notlp_endpoint = "https://otel.example/v1/traces"\n').tracing.sample_ratio == 0.01
    with pytest.raises(ConfigError) as e:
        loads(base + '[tracing]\notlp_endpoint = "https://user:pw@otel.example/v1/traces"\nsample_ratio = 1.5\n'
              'incoming = "always"\nqueue = 0\nexport_delay = "0s"\n')
    errs = "\n".join(e.value.errors)
    assert "tracing.otlp_endpoint" in errs and "credentials in the URL are refused" in errs and "pw" not in errs
    assert 'tracing.incoming' in errs and "tracing.queue: must be between 1 and 1000000" in errs
    assert "tracing.export_delay: must be positive" in errs
    for bad in ("otel:4318/v1/traces", "ftp://otel/v1/traces", "http://otel:x/v1/traces", "http://otel/v1?k=v"):
        with pytest.raises(ConfigError) as e:
            loads(base + f'[tracing]\notlp_endpoint = "{bad}"\n')
        assert e.value.errors[0].startswith("tracing.otlp_endpoint:"), e.value.errors
    with pytest.raises(ConfigError) as e:
        loads(base + '[tracing]\nsample_ratio = -0.1\n')
    assert e.value.errors == ["tracing.sample_ratio: must be between 0 and 1, got -0.1"]


def test_check_summary_names_the_export(tmp_path: Any) -> None:
    import subprocess
    import sys

    from conftest import ROOT

    cfg = tmp_path / "t.toml"
    cfg.write_text('[upstreams.u]\ntargets = ["127.0.0.1:9000"]\n[[routes]]\nname = "r"\npath = "/r"\nupstream = "u"\n'
                   '[tracing]\notlp_endpoint = "http://otel:4318/v1/traces"\nsample_ratio = 0.05\n')
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "tracing: spans to http://otel:4318/v1/traces  sample_ratio 0.05  incoming keep-trace-id" in out.stdout
