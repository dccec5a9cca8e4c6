"""Per-host shared memory: one file cut into named sections, created by the supervisor and mapped by every
worker.

The supervisor creates one shared-memory file (memfd: anonymous, gone when the last process holding it
exits, nothing to clean up in /dev/shm) and hands its descriptor to every worker it spawns. The file is cut
into named sections (`Layout`): "metrics" (fastgw/observe/metrics.py), the traffic policy's "ratelimit"
(the per-host bucket table, fastgw/_core/buckets.pyx) and "rlstats" (its per-worker decision counters,
fastgw/policies/ratelimit/stats.py), and "authfail" (the failed-credential budget per client address,
fastgw/policies/auth/failbudget.py). Workers map it and write; the supervisor maps it and reads.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from fastgw.observe.metrics import ROUTE_SLOTS, region_bytes


@dataclass
class Layout:
    """Named sections of the shared file: name -> (offset, size). Passed to workers as JSON."""

    sections: dict[str, tuple[int, int]] = field(default_factory=dict)
    size: int = 0

    def add(self, name: str, size: int) -> None:
        page = mmap.PAGESIZE
        self.sections[name] = (self.size, size)
        self.size += (size + page - 1) // page * page

    def to_json(self) -> dict[str, object]:
        return {"sections": {k: list(v) for k, v in self.sections.items()}, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Layout:
        sections = data["sections"]
        assert isinstance(sections, dict)
        size = data["size"]
        assert isinstance(size, int)
        return cls({k: (int(v[0]), int(v[1])) for k, v in sections.items()}, size)


class SharedMemory:
    """The per-host shared file. `create` in the supervisor, `attach` in a worker (by inherited fd)."""

    def __init__(self, fd: int, layout: Layout) -> None:
        self.fd = fd
        self.layout = layout
        self.map = mmap.mmap(fd, layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @classmethod
    def create(cls, workers: int, routes: int = ROUTE_SLOTS, extra: dict[str, int] | None = None) -> SharedMemory:
        layout = Layout()
        layout.add("metrics", workers * region_bytes(routes))
        for name, size in (extra or {}).items():      # e.g. "ratelimit": the per-host bucket table
            layout.add(name, size)
        fd = os.memfd_create("fastgw-shared", os.MFD_CLOEXEC)   # workers get it through pass_fds
        os.ftruncate(fd, layout.size)
        return cls(fd, layout)

    @classmethod
    def attach(cls, fd: int, layout: Layout) -> SharedMemory:
        return cls(fd, layout)

    def section(self, name: str) -> memoryview:
        off, size = self.layout.sections[name]
        return memoryview(self.map)[off:off + size]

    def region(self, slot: int, routes: int = ROUTE_SLOTS) -> memoryview:
        """The metrics region of worker `slot`, as raw bytes (for Worker.attach_metrics)."""
        size = region_bytes(routes)
        return self.section("metrics")[slot * size:(slot + 1) * size]

    def words(self, slot: int, routes: int = ROUTE_SLOTS) -> memoryview:
        return self.region(slot, routes).cast("Q")

