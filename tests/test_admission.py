"""The "auto" server.limits.max_connections (fastgw/process/admission.py): memory share over the budget per
connection, per worker, bounded by the descriptors a worker may open."""
from __future__ import annotations

import resource

from fastgw.process import admission


def test_auto_follows_memory_and_workers(monkeypatch) -> None:
    monkeypatch.setattr(admission, "memory_limit", lambda: 2 * 2**30)
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (1_000_000, 1_000_000))
    assert admission.max_connections("auto", 2) == 8192          # 2 GiB x 0.5 / 2 / 64 KiB
    assert admission.max_connections("auto", 1) == 16384
    assert admission.max_connections(300, 2) == 300


def test_auto_is_bounded_by_descriptors(monkeypatch) -> None:
    monkeypatch.setattr(admission, "memory_limit", lambda: 64 * 2**30)
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (1024, 1024))
    assert admission.max_connections("auto", 1) == (1024 - 64) // 2


def test_memory_limit_is_positive_and_at_most_ram() -> None:
    import os
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < admission.memory_limit() <= ram
