"""The request validation policy's config: routes[].validate; its schema and checks (no compiled code of
fastgw's core: the OpenAPI document is read and its schemas compiled by openapi.py, so `fastgw check`
reports a document that does not load, and every route whose path no operation of it describes).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from fastgw.config.checks import route_settings
from fastgw.config.schema import FilePath, Size

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.policies.validate.openapi import Operation

MAX_ERRORS_CAP = 100
MAX_DEPTH_CAP = 256


class Validate(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """routes[].validate: requests checked against an OpenAPI 3.0 / 3.1 document before the upstream."""

    openapi: FilePath                 # YAML or JSON (.json), relative to the config file's folder
    max_body: Size = 2**20            # a JSON body larger than this: 413 (it is parsed whole)
    max_depth: int = 32               # JSON nesting deeper than this: 400 (before any schema runs)
    max_errors: int = 10              # the errors listed in the 400, at most


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    validate: Validate | None = None


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """No top-level keys."""


_ROUTE_PARAM = re.compile(r"\{[^{}/]+\}")


def sample_path(route_path: str) -> str:
    """A concrete request path of a route (its {params} as "1", its trailing * dropped)."""
    return _ROUTE_PARAM.sub("1", route_path.rstrip("*"))


def describes(ops: list[Operation], route_path: str) -> bool:
    """Some operation can match a request of the route: for an exact path, its sample; for a prefix
    route (ending in *), a template under the prefix."""
    sample = sample_path(route_path)
    if route_path.endswith("*"):
        prefix = _ROUTE_PARAM.sub("{}", route_path[:-1])
        return any(_ROUTE_PARAM.sub("{}", o.template).startswith(prefix) for o in ops)
    return any(o.regex.fullmatch(sample) for o in ops)


def check(cfg: Config, errors: list[str]) -> None:
    from fastgw.policies.validate.openapi import DocumentError, cached
    for p, v, r in route_settings(cfg.routes, "validate", lambda r: r.validate):
        if not 0 < v.max_errors <= MAX_ERRORS_CAP:
            errors.append(f"{p}.max_errors: between 1 and {MAX_ERRORS_CAP}")
        if not 0 < v.max_depth <= MAX_DEPTH_CAP:
            errors.append(f"{p}.max_depth: between 1 and {MAX_DEPTH_CAP}")
        try:
            ops = cached(v.openapi)
        except DocumentError as exc:
            errors.append(f"{p}.openapi: {v.openapi}: {exc}")
            continue
        if not describes(ops, r.path):
            errors.append(f"{p}.openapi: no operation of {v.openapi} describes the route's path {r.path!r}")
