"""The transcoding policy's config: routes[].transcode (a descriptor set and a service, on a route whose
upstream speaks gRPC); its checks, which load the descriptors, and the `fastgw check` list of transcoded
routes (no compiled code of fastgw: the protobuf package only).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fastgw.config.schema import FilePath

if TYPE_CHECKING:
    from fastgw.config.root import Config


class Transcode(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """routes[].transcode: HTTP/JSON requests to the gRPC methods of `service`."""

    descriptors: FilePath        # a binary FileDescriptorSet (protoc --descriptor_set_out --include_imports)
    service: str                 # the full name, "bank.accounts.v1.Accounts"


class RouteKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    transcode: Transcode | None = None


class Sections(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """No top-level keys."""


def check(cfg: Config, errors: list[str]) -> None:
    for i, r in enumerate(cfg.routes):
        if r.transcode is None:
            continue
        # (the protobuf runtime is loaded only for a config that transcodes)
        from fastgw.policies.transcode.descriptors import DescriptorError, load
        up = cfg.upstreams.get(r.upstream)
        if up is not None and up.protocol != "grpc":
            errors.append(f'routes[{i}].transcode: the upstream must have protocol = "grpc" '
                          f'(upstream "{r.upstream}" has "{up.protocol}")')
        if r.websocket:
            errors.append(f"routes[{i}].transcode: not with websocket")
        try:
            svc = load(r.transcode.descriptors, r.transcode.service)
        except DescriptorError as e:
            errors.append(f"routes[{i}].transcode: {e}")
            continue
        for c in svc.conflicts:
            errors.append(f"routes[{i}].transcode: template conflict: {c}")


def summary(cfg: Config, workers: int) -> list[str]:
    out = []
    for r in cfg.routes:
        if r.transcode is None:
            continue
        from fastgw.policies.transcode.descriptors import load
        svc = load(r.transcode.descriptors, r.transcode.service)
        out.append(f"transcoded route {r.name} ({svc.name}):")
        for b in sorted(svc.bindings, key=lambda b: (b.template, b.verb)):
            kind = " (server streaming)" if b.server_streaming else " (client streaming: 501)" \
                if b.client_streaming else ""
            out.append(f"  {b.verb} {b.template} -> {b.method.name}{kind}")
    return out
