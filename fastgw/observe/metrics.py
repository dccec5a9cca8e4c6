"""The metrics section of the per-host shared memory (fastgw/process/shm.py) and the Prometheus view over
all workers.

Metrics section: one region per worker slot, each region a flat array of 64-bit counters. A worker only
ever writes its own region (plain increments from the C data path, fastgw._core.worker.Worker.observe: no
lock, no system call, no allocation); the supervisor sums the regions when /metrics is scraped. Aligned
64-bit loads and stores are atomic on the platforms we ship (x86-64, arm64), so a scrape may see a count a
request old, never a torn one. A region outlives its worker: a restarted worker continues the counts of
its slot, so counters never go backwards.

Region layout, in words (fastgw/_core/stats.pxd declares it for the data path; stats.pyx checks at import that both agree):
  HEADER words   [0] open client connections (a gauge, written by the worker every sweep) [1] pid
                 [2] config generation the worker serves
                 [3] access-log lines dropped because the writer fell behind, [4] lines lost because
                 writing them failed (counters, written by the worker every sweep: fastgw/observe/access.py);
                 [6..7] request header fields dropped for their "_", by HEADER_DROPS (written by
                 Worker.headers_dropped)
                 [5] upstream connections closed for bytes beyond the end of a response (counter, the
                 data path) [8] the worker's max_connections (gauge) [9] times the worker reached it
                 (counter, the data path) [10..12] spans by SPAN_OUTCOMES: exported and failed (counters,
                 written by the exporter thread, fastgw/observe/tracing.py), dropped from a full buffer
                 (the data path); the rest reserved
  then ROUTE words per route slot (slot 0: requests that matched no route; other slots are assigned to
  route names by the supervisor, never reused, so a name keeps its counters across reloads):
  [0..39]  responses by method (8) x status class (5): index method * 5 + class
  [40..53] request duration histogram: counts per bucket (13 bounds + overflow), not cumulative
  [54]     sum of durations in microseconds
  [55..57] upstream errors: bad gateway (502), unavailable (503), timeout (504)
  [58..63] auth failures by AUTH_REASONS (written by the auth policy, fastgw._core.gates.AuthGate)
  [64..78] gateway time: histogram (13 bounds + overflow), then the sum in microseconds
  [79..93] upstream time (only requests that went upstream): likewise
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.process.shm import SharedMemory

HEADER = 16
ROUTE = 96
H_CONNS, H_PID, H_GEN = 0, 1, 2
H_LOG_DROPPED, H_LOG_LOST = 3, 4
LOG_DROP_REASONS = (("backlog", H_LOG_DROPPED), ("write_error", H_LOG_LOST))
H_HDROP = 6
# Why a request header field was dropped (fastgw/headers.py): a name with "_" while
# server.limits.allow_underscores is off; a name with "_" that folds to a header fastgw manages (always).
HEADER_DROPS = ("underscore", "managed_alias")
H_OVERRUNS, H_CONN_LIMIT, H_CONN_FULL = 5, 8, 9      # M_OVERRUNS, M_CONN_FULL in _core/stats.pxd
HIST, NBOUNDS, SUM_US, UPERR, AUTHF = 40, 13, 54, 55, 58
GW_HIST, UP_HIST = 64, 79       # each NBOUNDS + 1 buckets, then the sum in microseconds
H_SPANS = 10
# What became of a finished span chosen for export: sent to the collector (exported), pushed out of the
# worker's full buffer (dropped), or lost with a batch the collector refused or did not answer (failed).
SPAN_OUTCOMES = ("exported", "dropped", "failed")
BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
UPSTREAM_ERRORS = ("bad_gateway", "unavailable", "timeout")
# Why an auth policy refused: no credential (401), a credential that failed (401), an expired token (401),
# authenticated without the route's scope or role (403), the client address refused by IP rules (403),
# the client address over its budget of failed credentials (429, server.limits.auth_failures).
AUTH_REASONS = ("missing", "invalid", "expired", "forbidden", "ip", "throttled")
NO_ROUTE = "(none)"      # not a valid route name, so it cannot collide with one
ROUTE_SLOTS = 1024       # route names one process lifetime can count; later ones count under slot 0

assert len(BOUNDS) == NBOUNDS and HIST + NBOUNDS + 1 == SUM_US and UPERR + 3 <= AUTHF
assert AUTHF + len(AUTH_REASONS) <= GW_HIST and GW_HIST + NBOUNDS + 2 == UP_HIST and UP_HIST + NBOUNDS + 2 <= ROUTE
assert H_HDROP + len(HEADER_DROPS) <= HEADER and H_CONN_FULL < H_SPANS and H_SPANS + len(SPAN_OUTCOMES) <= HEADER


def route_base(slot: int) -> int:
    """Index of the first word of route slot `slot` in a worker region."""
    return HEADER + slot * ROUTE


def region_bytes(routes: int = ROUTE_SLOTS) -> int:
    return (HEADER + routes * ROUTE) * 8


SECTION = "metrics"


def shm_section(workers: int) -> Section:
    """The metrics section of the shared file: one region per worker slot."""
    return Section(SECTION, workers * region_bytes())


def region(shm: SharedMemory, slot: int) -> memoryview:
    """The metrics region of worker `slot`, as raw bytes (for Worker.attach_metrics)."""
    size = region_bytes()
    return shm.section(SECTION)[slot * size:(slot + 1) * size]


def words(shm: SharedMemory, slot: int) -> memoryview:
    """The metrics region of worker `slot` as 64-bit words."""
    return region(shm, slot).cast("Q")



def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items())
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass
class Snapshot:
    """Sums over worker regions, for the route slots in use."""

    requests: dict[tuple[int, int, int], int]      # (slot, method, class) -> count
    hist: dict[int, list[int]]                     # slot -> per-bucket counts (NBOUNDS + 1)
    sum_us: dict[int, int]
    upstream_errors: dict[tuple[int, int], int]    # (slot, kind) -> count
    connections: int
    auth_failures: dict[tuple[int, int], int] = field(default_factory=dict)   # (slot, reason) -> count
    headers_dropped: list[int] = field(default_factory=lambda: [0] * len(HEADER_DROPS))
    connection_limit: int = 0          # sum of live workers' max_connections
    limit_reached: int = 0             # times a worker paused accepting at its cap
    overruns: int = 0                  # upstream connections closed for bytes beyond a response's end
    # slot -> NBOUNDS + 1 bucket counts then the sum in microseconds: the gateway's and the upstream's time
    gateway: dict[int, list[int]] = field(default_factory=dict)
    upstream: dict[int, list[int]] = field(default_factory=dict)
    spans: list[int] = field(default_factory=lambda: [0] * len(SPAN_OUTCOMES))


def snapshot(shm: SharedMemory, workers: int, used_slots: int, live: set[int]) -> Snapshot:
    """Sum the first `used_slots` route slots of every worker region. Only workers in `live` contribute
    to gauges (a dead worker's last gauge value is stale); counters come from every region."""
    requests: dict[tuple[int, int, int], int] = {}
    hist: dict[int, list[int]] = {}
    sum_us: dict[int, int] = {}
    uperr: dict[tuple[int, int], int] = {}
    authf: dict[tuple[int, int], int] = {}
    conns = limit = reached = overruns = 0
    hdrop = [0] * len(HEADER_DROPS)
    spans = [0] * len(SPAN_OUTCOMES)
    gateway: dict[int, list[int]] = {}
    upstream: dict[int, list[int]] = {}
    for w in range(workers):
        ws = words(shm, w)
        if w in live:
            conns += ws[H_CONNS]
            limit += ws[H_CONN_LIMIT]
        for k in range(len(HEADER_DROPS)):
            hdrop[k] += ws[H_HDROP + k]
        reached += ws[H_CONN_FULL]
        for k in range(len(SPAN_OUTCOMES)):
            spans[k] += ws[H_SPANS + k]
        overruns += ws[H_OVERRUNS]
        for slot in range(used_slots):
            base = route_base(slot)
            block = ws[base:base + ROUTE].tolist()
            if not any(block):
                continue
            for i in range(40):
                if block[i]:
                    key = (slot, i // 5, i % 5)
                    requests[key] = requests.get(key, 0) + block[i]
            h = hist.setdefault(slot, [0] * (NBOUNDS + 1))
            for b in range(NBOUNDS + 1):
                h[b] += block[HIST + b]
            sum_us[slot] = sum_us.get(slot, 0) + block[SUM_US]
            for k in range(3):
                if block[UPERR + k]:
                    uperr[(slot, k)] = uperr.get((slot, k), 0) + block[UPERR + k]
            for k in range(len(AUTH_REASONS)):
                if block[AUTHF + k]:
                    authf[(slot, k)] = authf.get((slot, k), 0) + block[AUTHF + k]
            for sums, base in ((gateway, GW_HIST), (upstream, UP_HIST)):
                if any(block[base:base + NBOUNDS + 1]):
                    acc = sums.setdefault(slot, [0] * (NBOUNDS + 2))
                    for b in range(NBOUNDS + 2):
                        acc[b] += block[base + b]
        ws.release()
    return Snapshot(requests, hist, sum_us, uperr, conns, authf, hdrop, limit, reached, overruns,
                    gateway, upstream, spans)


def log_dropped(shm: SharedMemory, workers: int) -> dict[str, int]:
    """Access-log lines not written, over every worker region (counters: dead workers' too), by reason."""
    out = {}
    for reason, word in LOG_DROP_REASONS:
        out[reason] = 0
        for w in range(workers):
            ws = words(shm, w)
            out[reason] += ws[word]
            ws.release()
    return out


def render(snap: Snapshot | None, names: list[str], process: dict[str, object],
           families: Sequence[list[str]] = ()) -> str:
    """Prometheus text format 0.0.4. `names[slot]` is the route label of each slot. `families` are the
    lines of the families other owners register (each policy's, through the registry), appended."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    if snap is not None:
        family("fastgw_requests_total", "counter",
               "Responses sent to clients, by route, method and status class.")
        for (slot, m, c), n in sorted(snap.requests.items()):
            out.append(f"fastgw_requests_total{_labels(route=names[slot], method=METHODS[m], status_class=CLASSES[c])} {n}")
        for name, hists, what in (
                ("fastgw_request_duration_seconds",
                 {slot: [*h, snap.sum_us[slot]] for slot, h in snap.hist.items()},
                 "Time from the request head to the last response byte handed to the kernel, by route."),
                ("fastgw_gateway_duration_seconds", snap.gateway,
                 "The gateway's part of each request, by route: from the request head until the request went "
                 "upstream (routing, policies, their Redis calls), or the whole request when it never did."),
                ("fastgw_upstream_duration_seconds", snap.upstream,
                 "The upstream's part of each request that went upstream, by route: from connecting (or "
                 "taking a pooled connection) to the last byte of its response.")):
            family(name, "histogram", what)
            for slot, h in sorted(hists.items()):      # h: NBOUNDS + 1 bucket counts, the sum in microseconds
                route = names[slot]
                acc = 0
                for b, bound in enumerate(BOUNDS):
                    acc += h[b]
                    out.append(f"{name}_bucket{_labels(route=route, le=_num(bound))} {acc}")
                acc += h[NBOUNDS]
                out.append(f"{name}_bucket{_labels(route=route, le='+Inf')} {acc}")
                out.append(f"{name}_sum{_labels(route=route)} {h[NBOUNDS + 1] / 1e6}")
                out.append(f"{name}_count{_labels(route=route)} {acc}")
        family("fastgw_tracing_spans_total", "counter",
               "Finished spans chosen for export ([tracing]), by outcome: exported to the collector, dropped "
               "from a worker's full buffer, failed with a batch the collector refused or did not answer.")
        for k, outcome in enumerate(SPAN_OUTCOMES):
            out.append(f"fastgw_tracing_spans_total{_labels(outcome=outcome)} {snap.spans[k]}")
        family("fastgw_upstream_errors_total", "counter",
               "Requests that failed because of the upstream, by route and kind "
               "(bad_gateway 502, unavailable 503, timeout 504).")
        for (slot, k), n in sorted(snap.upstream_errors.items()):
            out.append(f"fastgw_upstream_errors_total{_labels(route=names[slot], kind=UPSTREAM_ERRORS[k])} {n}")
        family("fastgw_auth_failures_total", "counter",
               "Requests refused by a route's auth policy, by route and reason (missing, invalid, expired "
               "credentials: 401; forbidden scope or role, ip rules: 403; throttled, too many failed "
               "credentials from the client address: 429).")
        for (slot, k), n in sorted(snap.auth_failures.items()):
            out.append(f"fastgw_auth_failures_total{_labels(route=names[slot], reason=AUTH_REASONS[k])} {n}")
        family("fastgw_headers_dropped_total", "counter",
               'Request header fields dropped because their name has "_" (underscore: '
               "server.limits.allow_underscores is off; managed_alias: it folds to a header fastgw manages).")
        for k, reason in enumerate(HEADER_DROPS):
            out.append(f"fastgw_headers_dropped_total{_labels(reason=reason)} {snap.headers_dropped[k]}")
        family("fastgw_upstream_overruns_total", "counter",
               "Upstream connections closed because bytes followed the end of a response "
               "(its Content-Length, its last chunk, or a head without a body).")
        out.append(f"fastgw_upstream_overruns_total {snap.overruns}")
        family("fastgw_connections", "gauge",
               "Client connections over all workers: open, and the limit (server.limits.max_connections "
               "per worker, summed).")
        out.append(f'fastgw_connections{{state="open"}} {snap.connections}')
        out.append(f'fastgw_connections{{state="limit"}} {snap.connection_limit}')
        family("fastgw_connections_limit_reached_total", "counter",
               "Times a worker reached max_connections and stopped accepting until a connection ended.")
        out.append(f"fastgw_connections_limit_reached_total {snap.limit_reached}")

    reloads = process["reloads"]
    assert isinstance(reloads, dict)
    family("fastgw_config_reloads_total", "counter", "Config reloads (SIGHUP), by result.")
    for result in ("success", "error"):
        out.append(f"fastgw_config_reloads_total{_labels(result=result)} {reloads.get(result, 0)}")
    family("fastgw_config_version_info", "gauge", "The config being served: 12 hex digits of its sha256.")
    out.append(f"fastgw_config_version_info{_labels(hash=str(process['hash']))} 1")
    family("fastgw_workers", "gauge", "Worker processes: configured, running, and ready on the current config.")
    for state in ("configured", "running", "ready"):
        out.append(f"fastgw_workers{_labels(state=state)} {process[state]}")
    family("fastgw_worker_restarts_total", "counter", "Workers restarted after they died.")
    out.append(f"fastgw_worker_restarts_total {process['restarts']}")
    dropped = process.get("log_dropped")
    if isinstance(dropped, dict):
        family("fastgw_log_dropped_total", "counter",
               "Access-log lines not written: the writer fell behind (backlog) or the output failed "
               "(write_error).")
        for reason, n in dropped.items():
            out.append(f"fastgw_log_dropped_total{_labels(reason=reason)} {n}")
    family("fastgw_draining", "gauge", "1 after SIGTERM, while the gateway drains.")
    out.append(f"fastgw_draining {1 if process['draining'] else 0}")
    for lines in families:
        out.extend(lines)
    return "\n".join(out) + "\n"
