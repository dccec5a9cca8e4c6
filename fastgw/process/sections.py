"""The owners of shared-memory sections outside the policy registry, and what the supervisor and the workers
call on them without naming their sections (fastgw/process/shm.py).

Each owner is a module with shm_sections(cfg, workers) -> [Section] (created once by the supervisor) and
attach(shm, slot, services) (run by each worker before it compiles a config: it puts the views its
compiled code needs in `services`). Imported by name, so that an owner may import shm.py itself.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastgw.process.shm import Section, SharedMemory

OWNERS = ("fastgw.upstream.state",)       # the upstream targets' pod-wide records


def owner_sections(cfg: Any, workers: int) -> list[Section]:
    """The sections the OWNERS register."""
    return [s for m in OWNERS for s in importlib.import_module(m).shm_sections(cfg, workers)]


def attach_owners(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    """Each of the OWNERS attaches its sections' views to the worker's services."""
    for m in OWNERS:
        importlib.import_module(m).attach(shm, slot, services)
