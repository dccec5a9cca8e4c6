"""Usage metering, separate from rate limiting: when an exchange ends (on_log, whatever its outcome), the
route's MeterGate (compiled: fastgw/_core/meter.pyx) counts it for its consumer.

  always ([metering] present)  the per-worker tally in shared memory (tally.py):
                               fastgw_consumer_requests_total{consumer,route,status_class} (every status),
                               and on a deprecated route, from its deprecation instant on,
                               fastgw_deprecated_consumer_requests_total{route,consumer}
  sink = "redis"               the billable requests (`billable`: non5xx | 2xx | all) aggregated per
                               (consumer, plan, route, status class, minute) with their request and
                               response body bytes, flushed as batches (sink.py); read back by the admin
                               path GET /usage (usage.py)

Without [metering] no route gets the policy: nothing is counted and nothing runs.
The consumer is the verified identity's, when the config lists it (a JWT consumer claim the config does
not know counts as "(unlisted)": labels and keys stay bounded by the config); no identity: "(anonymous)".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastgw.policies.lifecycle.config import instant
from fastgw.policies.metering import tally as T

if TYPE_CHECKING:
    from fastgw._core.meter import MeterGate
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.metering.sink import RedisSink
    from fastgw.process.shm import SharedMemory

# The compiled gate, the sink and the admin read-back are imported on first use: a gateway without
# [metering] loads none of them (loaded anyway, they cost `plain` ~80 instructions per request in
# bench/callgrind.py, the registry's runtime modules being imported by every worker).

# billable -> the lowest and highest status counted in the usage records
BILLABLE = {"all": (0, 999), "non5xx": (0, 499), "2xx": (200, 299)}


def _sink(cfg: Config, services: dict[str, Any], tally: T.Tally) -> RedisSink | None:
    """The worker's sink (made on first use; its settings follow a reload; closed when the sink goes)."""
    m = cfg.metering
    old = services.get("metering_sink")
    if m is None or m.sink != "redis" or cfg.redis is None or services.get("loop") is None:
        return None
    if old is not None and old.rd == cfg.redis:
        old.configure(m)
        return old
    if old is not None:         # [redis] changed: the old client flushes what it has, then goes
        services["loop"].create_task(old.close())
    from fastgw.policies.metering.sink import RedisSink

    sink = services["metering_sink"] = RedisSink(m, cfg.redis, services["loop"], tally)
    stops = services.setdefault("at_stop", [])
    stops[:] = [fn for fn in stops if old is None or fn != old.close] + [sink.close]
    return sink


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> MeterGate | None:
    m = cfg.metering
    if m is None:
        return None
    tally = services.get("metering_tally")
    if tally is None:
        tally = services["metering_tally"] = T.Tally(None)
    lc = route.lifecycle
    dep = instant(lc.deprecated) if lc is not None and lc.deprecated is not None else None
    from fastgw._core.meter import MeterGate

    lo, hi = BILLABLE[m.billable]
    return MeterGate(route.name, tally, _sink(cfg, services, tally), frozenset(cfg.consumers), lo, hi, dep or 0)


# -- registered hooks (fastgw/policies/contract.py Runtime, AdminRuntime) -------------------------------

shm_sections = T.shm_sections
metrics = T.metrics
methods = frozenset({"GET"})


def admin_action(cfg: Config, method: str, query: str) -> Any:
    """GET /usage (fastgw/policies/metering/usage.py)."""
    from fastgw.policies.metering import usage

    return usage.admin_action(cfg, method, query)


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    words = T.region(shm, slot) if shm is not None and T.SECTION in shm.layout.sections else None
    services["metering_tally"] = T.Tally(words)


def control(msg: dict[str, Any], services: dict[str, Any]) -> dict[str, Any]:
    return {}
