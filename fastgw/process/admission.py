"""How many client connections a worker admits (server.limits.max_connections).

The count and the decision live in the data path (fastgw._core.worker.Worker: admit / release, called as
connections are accepted and lost); this module sizes the default. At the cap the worker's listeners
pause (fastgw/process/listeners.py).

The "auto" default:

    max_connections = min(memory limit x MEMORY_SHARE / workers / CONNECTION_BUDGET,
                          (RLIMIT_NOFILE - FD_RESERVE) / 2)

The memory limit is the cgroup's (a container limit) or else the machine's RAM. CONNECTION_BUDGET is what
one busy connection is planned to cost: a connection holding a request in flight, with its upstream
connection, measured 5.1 KB of worker RSS (5.7 KB with a stalled 16 KiB upload; bench/memory_busy.py,
1,000 connections); its kernel socket buffers (charged to the cgroup) and bodies in flight (up to 256 KiB
each way at worst: PENDING_LIMIT in exchange.pxd, CLIENT_WRITE_HIGH in protocol.pxd) come on top, so 64 KiB (~12x the
measured cost) leaves room for them. Half the memory is left to the runtime, policies and bursts. A
client connection may hold an upstream connection: two descriptors each. Example: a 2 GiB container
with 2 workers: 2 GiB x 0.5 / 2 / 64 KiB = 8,192 per worker (if RLIMIT_NOFILE allows 16,448 descriptors).
"""
from __future__ import annotations

import os
import resource

CONNECTION_BUDGET = 64 * 1024     # bytes of worker memory planned per client connection (see above)
MEMORY_SHARE = 0.5                # of the memory limit, for client connections
FD_RESERVE = 64                   # descriptors kept for listeners, logs, Redis, the control socket
NOFILE_CEILING = 1 << 20          # the soft descriptor limit is raised to the hard one, at most this


def memory_limit() -> int:
    """Bytes this process may use: the cgroup v2/v1 limit if one is set, else the machine's RAM."""
    limits = []
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limits.append(int(text))       # v1 reports "no limit" as a huge number: min() below drops it
    limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return min(limits)


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit [nginx worker_rlimit_nofile; HAProxy does it
    itself]: the default soft limit (often 1024) would cap connections far below what memory allows.
    Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else NOFILE_CEILING, NOFILE_CEILING)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def auto_max_connections(workers: int) -> int:
    by_memory = int(memory_limit() * MEMORY_SHARE / max(1, workers) / CONNECTION_BUDGET)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    by_fds = (soft - FD_RESERVE) // 2 if soft != resource.RLIM_INFINITY else by_memory
    return max(1, min(by_memory, by_fds))


def max_connections(setting: int | str, workers: int) -> int:
    return auto_max_connections(workers) if setting == "auto" else int(setting)
