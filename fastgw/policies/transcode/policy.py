"""The transcoding policy's registered hooks: a route with `transcode` gets the gate of call.py (which
loads the protobuf runtime only then: a gateway without transcoded routes never imports it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.transcode.call import TranscodePolicy
    from fastgw.process.shm import Section, SharedMemory


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> TranscodePolicy | None:
    if route.transcode is None:
        return None
    from fastgw.policies.transcode.call import TranscodePolicy
    from fastgw.policies.transcode.descriptors import load
    svc = load(route.transcode.descriptors, route.transcode.service)
    return TranscodePolicy(svc.bindings, cfg.upstreams[route.upstream].timeout)


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return []


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    return None


def metrics(shm: SharedMemory, workers: int, live: list[int], cfg: Config) -> list[str]:
    return []
