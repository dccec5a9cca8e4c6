"""The owners of shared-memory sections outside the policy registry, and what the supervisor and the workers
call on them without naming their sections (fastgw/process/shm.py).

Each owner is a module with shm_sections(cfg, workers) -> [Section] (created once by the supervisor),
attach(shm, slot, services) (run by each worker before it compiles a config: it puts the views its
compiled code needs in `services`), metrics(shm, cfg) -> Prometheus lines, and PAGES: admin paths ->
page(shm, cfg) -> (status, content type, body). Imported by name, so that an owner may import shm.py.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
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


def owner_metrics(shm: SharedMemory | None, cfg: Any) -> list[str]:
    return [line for m in OWNERS for line in importlib.import_module(m).metrics(shm, cfg)]


def owner_pages(shm: Callable[[], SharedMemory | None], cfg: Callable[[], Any]) -> dict[str, Callable[[], tuple[int, str, str]]]:
    """The owners' admin pages, bound to the supervisor's current shared memory and config."""
    pages: dict[str, Callable[[], tuple[int, str, str]]] = {}
    for m in OWNERS:
        for path, fn in importlib.import_module(m).PAGES.items():
            pages[path] = functools.partial(_page, fn, shm, cfg)
    return pages


def _page(fn: Callable[[Any, Any], tuple[int, str, str]], shm: Callable[[], SharedMemory | None],
          cfg: Callable[[], Any]) -> tuple[int, str, str]:
    return fn(shm(), cfg())
