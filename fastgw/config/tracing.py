"""[tracing]: where finished spans are exported and which ones (docs/logs-and-metrics.md "Traces").

Trace context itself needs no config: every request continues or starts a W3C trace and forwards its
traceparent (fastgw/_core/tracecontext.pyx). This section decides the sampling and the export.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import msgspec

from fastgw.config.checks import parse_hostport
from fastgw.config.schema import Duration

if TYPE_CHECKING:
    from fastgw.config.root import Config


class Tracing(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Sampling and OTLP/HTTP export; the defaults follow the OpenTelemetry SDK's batch processor
    (batch 512, every 5 s, queue 2048) and Kong's sampling rate (0.01)."""

    # OTLP/HTTP protobuf endpoint ("http://collector:4318/v1/traces"); "" exports nothing.
    otlp_endpoint: str = ""
    sample_ratio: float = 0.01
    # "keep-trace-id": keep the caller's trace id, decide sampling here (a client can neither force nor
    # suppress it); "trust": follow the caller's sampled flag (a caller you run).
    incoming: Literal["keep-trace-id", "trust"] = "keep-trace-id"
    export_errors: bool = True          # every 5xx and every response slower than `slow` is exported too
    slow: Duration = 1.0
    service_name: str = "fastgw"
    queue: int = 2048                   # finished spans a worker holds for export; beyond, the oldest go
    timeout: Duration = 5.0             # one export request to the collector, connecting included
    # The longest a finished span waits for a full batch [OpenTelemetry SDK BatchSpanProcessor
    # schedule_delay, OTEL_BSP_SCHEDULE_DELAY: 5 s]. Shorter: traces show sooner, more export requests.
    export_delay: Duration = 5.0


def check(cfg: Config, errors: list[str]) -> None:
    t = cfg.tracing
    if t.otlp_endpoint:
        err = endpoint_error(t.otlp_endpoint)
        if err:
            errors.append(f'tracing.otlp_endpoint: {err}')
    if not 0.0 <= t.sample_ratio <= 1.0:
        errors.append(f"tracing.sample_ratio: must be between 0 and 1, got {t.sample_ratio}")
    if not t.service_name:
        errors.append("tracing.service_name: must not be empty")
    if not 1 <= t.queue <= 1_000_000:
        errors.append(f"tracing.queue: must be between 1 and 1000000, got {t.queue}")
    if t.slow <= 0:
        errors.append("tracing.slow: must be positive")
    if t.timeout <= 0:
        errors.append("tracing.timeout: must be positive")
    if t.export_delay <= 0:
        errors.append("tracing.export_delay: must be positive")


def endpoint_error(url: str) -> str | None:
    """Why `url` is not an OTLP/HTTP endpoint fastgw posts to, or None. No credentials in the URL: a
    secret is never written inline in the config."""
    u = urlsplit(url)
    if "@" in u.netloc:                 # never repeated: the error would print the secret
        url = u._replace(netloc="***@" + u.netloc.rpartition("@")[2]).geturl()
    if u.scheme not in ("http", "https"):
        return f'"{url}": must start with http:// or https://'
    if u.username is not None or u.password is not None:
        return f'"{url}": credentials in the URL are refused (secrets never go in the config file)'
    if u.query or u.fragment:
        return f'"{url}": no query or fragment'
    try:
        parse_hostport(u.netloc if u.port is not None else f"{u.netloc}:{443 if u.scheme == 'https' else 80}")
    except ValueError as e:          # (u.port raises it too, for a port that is not a number)
        return f'"{url}": {e}'
    return None
