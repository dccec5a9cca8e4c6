"""The policy registry: every route policy, in the order it runs on a route, with what it registers.

A policy is a package, fastgw/policies/NAME/: its config module (the keys it adds to the config file and
their checks; it imports no compiled code, so `fastgw check` works before a build), its logic, and a
runtime module with the hooks of fastgw/policies/contract.py `Runtime` (build the route's policy; its
shared-memory sections; its resources in a worker; its metric families). The rest of the gateway reaches a
policy only through this registry:

  fastgw/config/         composes the root Config from each policy's `sections`, [[routes]] from its
                         `route` keys and [consumers.NAME] from its `consumer` keys, and runs its `check`
  fastgw/compile.py      builds each route's phases from its policies (fastgw/policies/chain.py: a
                         policy implements a phase by defining its method, fastgw/policies/contract.py)
                         and the wire table's policy-given header roles (`headers`)
  fastgw/process/        the supervisor creates the registered shared-memory sections, renders the
                         registered metric families and serves each policy's `admin` path (its
                         admin_action; the workers apply the resulting message with its control hook);
                         a worker attaches each policy's resources
  fastgw/cli.py          `fastgw check` prints each policy's `summary`

Adding a policy is a new package and one entry in POLICIES.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from fastgw.policies.auth import config as auth
from fastgw.policies.cache import config as cache
from fastgw.policies.contract import AdminRuntime, RequestHeaders, Runtime
from fastgw.policies.cors import config as cors
from fastgw.policies.idempotency import config as idempotency
from fastgw.policies.lifecycle import config as lifecycle
from fastgw.policies.metering import config as metering
from fastgw.policies.ratelimit import config as ratelimit
from fastgw.policies.transcode import config as transcode
from fastgw.policies.validate import config as validate
from fastgw.policies.websocket import config as websocket


@dataclass(frozen=True)
class Registration:
    name: str
    sections: type[msgspec.Struct]                    # its top-level keys
    route: type[msgspec.Struct] | None                # its keys in [[routes]]
    consumer: type[msgspec.Struct] | None             # its keys in [consumers.NAME]
    check: Callable[[Any, list[str]], None]           # (config, errors): appends "key.path: reason" lines
    runtime: str                                      # the module of its Runtime hooks (compiled code allowed)
    headers: Callable[[Any], RequestHeaders] | None = None    # request headers its config gives a role
    summary: Callable[[Any, int], list[str]] | None = None    # (config, workers) -> `fastgw check` lines
    admin: str | None = None                          # its admin path (runtime hooks admin_action, control)


# In the order a route runs them: CORS first (a browser's preflight carries no credentials, so it is
# answered before authentication), the lifecycle (a retired route answers 410 whoever calls), then identity
# (the rate limiter reads the consumer and its plan), then the WebSocket handshake (its caps count per
# consumer; the upgrade has counted as one request), validation (a malformed request costs no idempotency
# record), Idempotency-Key (its record key names the consumer; a request refused by an earlier policy never
# takes a key's lock; it fingerprints the body as the client sent it), then the transcoding (which gRPC
# method a JSON request calls: the last check before the upstream), then the cache last: a hit is served only to
# a caller that passed every check, and the cache stores the response's own fields (ex.response_lines),
# never what the policies before it add. Metering runs last (its only phase is on_log: it counts what the
# client got, whichever policy answered).
POLICIES: tuple[Registration, ...] = (
    Registration("cors", cors.Sections, cors.RouteKeys, None, cors.check, "fastgw.policies.cors.policy"),
    Registration("lifecycle", lifecycle.Sections, lifecycle.RouteKeys, None, lifecycle.check,
                 "fastgw.policies.lifecycle.policy", summary=lifecycle.summary),
    Registration("auth", auth.Sections, auth.RouteKeys, auth.ConsumerKeys, auth.check,
                 "fastgw.policies.auth.policy", headers=auth.request_headers),
    Registration("ratelimit", ratelimit.Sections, ratelimit.RouteKeys, ratelimit.ConsumerKeys, ratelimit.check,
                 "fastgw.policies.ratelimit.policy", summary=ratelimit.summary),
    Registration("websocket", websocket.Sections, websocket.RouteKeys, None, websocket.check,
                 "fastgw.policies.websocket.policy", summary=websocket.summary),
    Registration("validate", validate.Sections, validate.RouteKeys, None, validate.check,
                 "fastgw.policies.validate.policy"),
    Registration("idempotency", idempotency.Sections, idempotency.RouteKeys, None, idempotency.check,
                 "fastgw.policies.idempotency.policy", summary=idempotency.summary),
    Registration("transcode", transcode.Sections, transcode.RouteKeys, None, transcode.check,
                 "fastgw.policies.transcode.policy", summary=transcode.summary),
    Registration("cache", cache.Sections, cache.RouteKeys, None, cache.check, "fastgw.policies.cache.policy",
                 summary=cache.summary, admin="/cache"),
    Registration("metering", metering.Sections, None, None, metering.check, "fastgw.policies.metering.policy",
                 summary=metering.summary, admin="/usage"),
)


def runtime(p: Registration) -> Runtime:
    """The policy's runtime module (imported on first use: it may load compiled code)."""
    return cast(Runtime, importlib.import_module(p.runtime))


def admin_runtime(p: Registration) -> AdminRuntime:
    """The runtime module of a policy with an admin path (Registration.admin)."""
    return cast(AdminRuntime, importlib.import_module(p.runtime))
