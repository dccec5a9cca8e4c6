"""The targets' pod-wide records: the "upstreams" section of the per-host shared memory.

Every worker maps the section and finds a target's record by a key derived from the config (upstream name
and address; fastgw/compile.py target_key), claimed atomically on first use (fastgw/_core/balancer.pyx
TargetTable). No worker tells another anything: a worker reads the others' counts at pick time, so there
is no event to miss [APISIX's health events between workers could be lost and a dead node kept traffic].

The section has a fixed number of records (the file is cut once, at start): RECORDS, far more than the
targets of a large config. A reload that changes addresses claims new records and never frees the old ones;
once every record is taken, a new target counts in this worker only (least_request then sees this worker's
load for it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

SECTION = "upstreams"
RECORDS = 4096
RECORD_BYTES = 64          # balancer.pxd REC_WORDS x 8: one cache line per target


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return [Section(SECTION, RECORDS * RECORD_BYTES)]


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    """The table of records, for build_groups (fastgw/compile.py)."""
    if shm is not None and SECTION in shm.layout.sections:
        from fastgw._core.balancer import TargetTable
        services["upstream_table"] = TargetTable(shm.section(SECTION))
