"""Per-host shared memory: one file cut into named sections, created by the supervisor and mapped by every
worker.

The supervisor creates one shared-memory file (memfd: anonymous, gone when the last process holding it
exits, nothing to clean up in /dev/shm) and hands its descriptor to every worker it spawns. The file is cut
into the sections their owners register (a `Section`: name, size, how to format it): "metrics"
(fastgw/observe/metrics.py), each policy's (fastgw/policies/__init__.py, the registry: e.g. the traffic
policy's bucket table) and the gateway's other owners (fastgw/process/sections.py: e.g. the upstream
targets' records). The supervisor and the workers name none of them. Workers map the file and write; the supervisor
maps it and reads.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Section:
    """A named part of the shared file. `init` formats it once, in the supervisor, on fresh (zeroed)
    pages."""

    name: str
    size: int
    init: Callable[[memoryview], None] | None = None


@dataclass
class Layout:
    """Named sections of the shared file: name -> (offset, size). Passed to workers as JSON."""

    sections: dict[str, tuple[int, int]] = field(default_factory=dict)
    size: int = 0

    def add(self, name: str, size: int) -> None:
        if name in self.sections:
            raise ValueError(f"shared-memory section {name!r} registered twice")
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
    def create(cls, sections: Sequence[Section]) -> SharedMemory:
        layout = Layout()
        for s in sections:
            layout.add(s.name, s.size)
        fd = os.memfd_create("fastgw-shared", os.MFD_CLOEXEC)   # workers get it through pass_fds
        os.ftruncate(fd, layout.size)
        shm = cls(fd, layout)
        for s in sections:
            if s.init is not None:
                s.init(shm.section(s.name))
        return shm

    @classmethod
    def attach(cls, fd: int, layout: Layout) -> SharedMemory:
        return cls(fd, layout)

    def section(self, name: str) -> memoryview:
        off, size = self.layout.sections[name]
        return memoryview(self.map)[off:off + size]

