"""The metering policy's config: [metering]; its schema and checks (no compiled code).

Absent, nothing is metered and no route pays for it. Present, every route counts its requests per consumer
(fastgw_consumer_requests_total, the per-worker tally) and, with sink = "redis", the billable ones are
flushed to the shared store every flush_every (fastgw/policies/metering/sink.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from fastgw.config.schema import Duration

if TYPE_CHECKING:
    from fastgw.config.root import Config

# flush_every bounds: below 100ms the flushes cost more than the requests they count; above 60s a SIGKILL
# loses more than a minute of billing (the loss bound is one flush interval of one worker).
FLUSH_MIN, FLUSH_MAX = 0.1, 60.0
# buffer bounds: batches kept while the store is down (one batch per flush_every).
BUFFER_MAX = 86400


class Metering(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[metering]: usage per (consumer, plan, route, status class, minute)."""

    sink: Literal["memory", "redis"] = "memory"     # memory: metrics only; redis: flushed batches
    flush_every: Duration = 1.0
    billable: Literal["non5xx", "2xx", "all"] = "non5xx"
    buffer: int = 900                               # unflushed batches kept per worker while Redis is down
    retention: Duration = 172800.0                  # minute buckets in Redis (hour: 35 days, day: 400 days)


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    metering: Metering | None = None


def check(cfg: Config, errors: list[str]) -> None:
    m = cfg.metering
    if m is None:
        return
    if m.sink == "redis" and cfg.redis is None:
        errors.append("metering.sink: \"redis\" needs [redis] (the store the batches are flushed to)")
    if not FLUSH_MIN <= m.flush_every <= FLUSH_MAX:
        errors.append(f"metering.flush_every: between {FLUSH_MIN:g}s and {FLUSH_MAX:g}s (a SIGKILLed worker "
                      "loses at most one interval)")
    if not 1 <= m.buffer <= BUFFER_MAX:
        errors.append(f"metering.buffer: between 1 and {BUFFER_MAX} batches")
    if m.retention < 3600:
        errors.append("metering.retention: at least 1h (the minute buckets /usage reads)")


def summary(cfg: Config, workers: int) -> list[str]:
    m = cfg.metering
    if m is None:
        return []
    out = [f"metering: sink {m.sink}, billable {m.billable}"]
    if m.sink == "redis":
        out.append(f"  flushed every {m.flush_every:g}s; a SIGKILLed worker loses at most {m.flush_every:g}s of its "
                   f"usage; Redis down: {m.buffer} batches ({m.buffer * m.flush_every:g}s) kept per worker")
    return out
