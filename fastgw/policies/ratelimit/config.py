"""The traffic policy's config: [plans.NAME], [redis], [ratelimit], routes[].plan and consumers.*.plan;
their schema and checks."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import msgspec

from fastgw.config.checks import NAME, TOKEN
from fastgw.config.schema import Duration, Size, keypath
from fastgw.config.units import parse_quota, parse_rate
from fastgw.store import config as store_config
from fastgw.store.config import RedisSettings

if TYPE_CHECKING:
    from fastgw.config.root import Config

_LIMIT_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,31}")


class PlanLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One limit of a plan: exactly one of rate (token bucket), quota (UTC calendar window) or
    concurrency (requests in flight). See docs/traffic-policy.md."""

    rate: str | None = None              # "100/s", "6000/min": refill rate of a token bucket
    burst: int | None = None             # bucket size (default: the rate's count; 1 = spike arrest)
    quota: str | None = None             # "10000/day": count per UTC minute, hour, day or month
    concurrency: int | None = None       # requests in flight at once (per host)
    key: list[str] = msgspec.field(default_factory=lambda: ["consumer"])   # consumer|ip|route|header:NAME
    enforce: bool = True                 # false: shadow mode, count and log only
    name: str | None = None              # name in RateLimit-Policy (default: rate, minute, hour, day, month)


class RatePlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    limits: list[PlanLimit]
    sync: Literal["local", "lease", "strict"] = "local"
    on_store_error: Literal["local", "open", "closed"] = "local"


class RedisStore(RedisSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[redis]: the store shared by every instance (fastgw/store/config.py), with the traffic policy's
    settings for sync = "lease" / "strict" plans."""

    lease_period: Duration = 0.1          # a lease covers about this much of a worker's traffic
    lease_max: int = 1000                 # most tokens one worker takes per refill, for one key
    lease_ttl: Duration = 1.0             # unspent leased tokens expire after this
    heartbeat: Duration = 1.0             # instance liveness (for on_store_error = "local")
    expected_instances: int | None = None  # on_store_error = "local": divide limits by at least this many


class RateLimitTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[ratelimit]: the per-host bucket table in shared memory."""

    table_size: Size = 16 * 1024 * 1024


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The policy's top-level keys (composed into the root Config)."""

    redis: RedisStore | None = None
    plans: dict[str, RatePlan] = msgspec.field(default_factory=dict)
    ratelimit: RateLimitTable = msgspec.field(default_factory=RateLimitTable)


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The policy's key in [[routes]]."""

    plan: str | None = None                  # rate plan; a consumer's own plan overrides it


class ConsumerKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The policy's key in [consumers.NAME]."""

    plan: str | None = None                 # rate plan of this consumer ([plans.NAME]); overrides the route's


def check(cfg: Config, errors: list[str]) -> None:
    known = ", ".join(sorted(cfg.plans)) or "none"
    for pname, plan in cfg.plans.items():
        pp = keypath("plans", pname)
        if not NAME.fullmatch(pname):
            errors.append(f'{pp}: invalid plan name "{pname}" (use letters, digits, "_", ".", "-")')
        if not plan.limits:
            errors.append(f"{pp}.limits: at least one limit is required")
        if len(plan.limits) > 16:
            errors.append(f"{pp}.limits: at most 16 limits per plan")
        names: set[str] = set()
        for i, lim in enumerate(plan.limits):
            lp = f"{pp}.limits[{i}]"
            given = [k for k, v in (("rate", lim.rate), ("quota", lim.quota), ("concurrency", lim.concurrency))
                     if v is not None]
            if len(given) != 1:
                errors.append(f"{lp}: set exactly one of rate, quota or concurrency"
                              + (f" (got {', '.join(given)})" if given else ""))
            if lim.rate is not None:
                try:
                    parse_rate(lim.rate)
                except ValueError as e:
                    errors.append(f"{lp}.rate: {e}")
            if lim.quota is not None:
                try:
                    parse_quota(lim.quota)
                except ValueError as e:
                    errors.append(f"{lp}.quota: {e}")
            if lim.burst is not None:
                if lim.rate is None:
                    errors.append(f"{lp}.burst: only valid with rate")
                elif lim.burst < 1:
                    errors.append(f"{lp}.burst: must be at least 1 (1 is spike arrest)")
            if lim.concurrency is not None and lim.concurrency < 1:
                errors.append(f"{lp}.concurrency: must be at least 1")
            if not lim.key:
                errors.append(f'{lp}.key: must not be empty (e.g. ["consumer"])')
            for j, part in enumerate(lim.key):
                name = part[7:] if part.startswith("header:") else None
                if part not in ("consumer", "ip", "route") and not (name and TOKEN.fullmatch(name)):
                    errors.append(f'{lp}.key[{j}]: invalid key part "{part}" '
                                  '(use "consumer", "ip", "route" or "header:NAME")')
            if lim.name is not None and not _LIMIT_NAME.fullmatch(lim.name):
                errors.append(f'{lp}.name: invalid name "{lim.name}" (lowercase letters, digits, "_.-", at most 32)')
            label = limit_name(lim)
            if label in names and lim.concurrency is None:
                errors.append(f'{lp}.name: two limits of the plan are called "{label}" (set name to tell them apart)')
            names.add(label)
    for i, r in enumerate(cfg.routes):
        if r.plan is not None and r.plan not in cfg.plans:
            errors.append(f'routes[{i}].plan: unknown plan "{r.plan}" (known: {known})')
    for cname, consumer in cfg.consumers.items():
        cplan = consumer.plan
        if cplan is not None and cplan not in cfg.plans:
            errors.append(f'{keypath(keypath("consumers", cname), "plan")}: unknown plan "{cplan}" (known: {known})')
    if cfg.redis is not None:
        rd = cfg.redis
        store_config.check(rd, errors)
        if rd.mode == "cluster":
            # Every key of one script call in one slot, with this config's plan names in the keys.
            from fastgw.policies.ratelimit.scripts import SCRIPTS
            from fastgw.store.keys import check_templates

            check_templates(SCRIPTS, list(cfg.plans), errors)
        for field, seconds in (("lease_period", rd.lease_period), ("lease_ttl", rd.lease_ttl),
                               ("heartbeat", rd.heartbeat)):
            if seconds <= 0:
                errors.append(f"redis.{field}: must be greater than 0")
        if rd.lease_max < 1:
            errors.append("redis.lease_max: must be at least 1")
        if rd.expected_instances is not None and not 1 <= rd.expected_instances <= 10000:
            errors.append("redis.expected_instances: must be between 1 and 10000")
    # 64-byte slots; fewer than 64 slots would evict live keys constantly.
    if cfg.ratelimit.table_size < 64 * 65:
        errors.append("ratelimit.table_size: must be at least 4KiB")


def limit_name(lim: PlanLimit) -> str:
    """The limit's name in RateLimit-Policy: `name`, else its window ("minute" ... "month"), "rate" or
    "concurrency"."""
    if lim.name:
        return lim.name
    if lim.quota is not None:
        return lim.quota.rpartition("/")[2]
    return "rate" if lim.rate is not None else "concurrency"


def summary(cfg: Config, workers: int) -> list[str]:
    """Lines for `fastgw check`: where each plan's state lives and, in lease mode, the worst case."""
    out = store_config.summary(cfg.redis) if cfg.redis is not None else []
    if cfg.redis is not None and cfg.redis.mode == "cluster":
        from fastgw.policies.ratelimit.scripts import SCRIPTS

        out.append(f"  cluster: the keys of each of {len(SCRIPTS)} scripts share one hash tag (checked)")
    if not cfg.plans:
        return out
    out += ["", f"plans ({len(cfg.plans)}):"]
    for name, plan in cfg.plans.items():
        sync = plan.sync if cfg.redis is not None else "local"
        note = "" if sync == plan.sync else f" (sync = {plan.sync}, but no [redis]: enforced per host)"
        out.append(f"  {name}: sync={sync}, on_store_error={plan.on_store_error}{note}")
        if sync == "local" or cfg.redis is None:
            continue
        rd = cfg.redis
        if plan.on_store_error == "local":
            floor = (f"redis.expected_instances = {rd.expected_instances}" if rd.expected_instances else
                     "redis.expected_instances unset: an instance that starts while Redis is down enforces "
                     "the whole limit until it sees a heartbeat")
            out.append(f"    while Redis is unavailable: limits / the larger of the live instances last seen in "
                       f"Redis and {floor}")
        if sync != "lease":
            continue
        for i, lim in enumerate(plan.limits):
            if lim.concurrency is not None:
                continue
            cap = rd.lease_max
            if lim.rate is not None:
                count, period = parse_rate(lim.rate)
                rates = [parse_rate(x.rate) for x in plan.limits if x.rate is not None and x.enforce]
                tight = min(c / p for c, p in rates) if rates else count / period
                cap = max(1, min(cap, int(tight * rd.lease_period)))
            held = 2 * cap                  # the rest of the batch being spent + the next one (prefetched)
            per_host = held * workers
            out.append(f"    {limit_name(lim)} (limits[{i}]): lease worst-case overshoot per key: {held} requests "
                       f"per worker (2 batches of at most {cap}) = {per_host} per instance ({workers} workers), "
                       f"times the number of instances "
                       f"(leased tokens spent up to lease_ttl = {rd.lease_ttl:g}s after they were granted)")
    return out

