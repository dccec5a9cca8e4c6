"""The per-host idempotency store's cost (fastgw/policies/idempotency/hoststore.py): µs per operation on a
file in /dev/shm, alone and with N processes (workers) doing the same at once. It decides whether the
policy calls the store inline on the event loop (it does: an operation costs about a Redis round trip,
and a thread hop would cost as much again). A call that meets another process's lock is tried again
the way the policy does (hoststore.wait: asyncio.sleep between tries, on an event loop).

    python3 bench/idempotency_host.py [--n 5000] [--procs 2]

Prints one line per process: begin (a new key: the lock taken), finish (the response stored), begin on a
stored key (the replay's read), each the median of 3 rounds in µs, and how many calls met the lock.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from progress import Progress  # noqa: E402  (bench/progress.py: this script's directory is on sys.path)

from fastgw.policies.idempotency.hoststore import Busy, HostStore, wait  # noqa: E402

LOCK = b"L" + b"f" * 48
VALUE = b"D" + b"x" * 600             # a small JSON answer with its headers


async def rounds_of(store: HostStore, tag: str, n: int) -> tuple[list[tuple[float, float, float]], int]:
    rounds: list[tuple[float, float, float]] = []
    busy = 0
    for r in range(3):
        keys = [b"%s-%d-%d" % (tag.encode(), r, i) for i in range(n)]
        t0 = time.perf_counter()
        for k in keys:
            try:
                store.begin(k, LOCK, 60_000)
            except Busy:
                busy += 1
                await wait(store.begin, k, LOCK, 60_000)
        t1 = time.perf_counter()
        for k in keys:
            try:
                store.finish(k, LOCK, VALUE, 60_000)
            except Busy:
                busy += 1
                await wait(store.finish, k, LOCK, VALUE, 60_000)
        t2 = time.perf_counter()
        for k in keys:
            store.begin(k, LOCK, 60_000)          # a stored key: read without the lock, never Busy
        t3 = time.perf_counter()
        rounds.append(((t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, (t3 - t2) / n * 1e6))
    return rounds, busy


def run(path: str, tag: str, n: int, out: multiprocessing.Queue) -> None:
    store = HostStore(path, 10 * n * 3, 2**30)
    rounds, busy = asyncio.run(rounds_of(store, tag, n))
    store.close()
    out.put((tag, [statistics.median(c) for c in zip(*rounds, strict=True)], busy))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="keys per round and process")
    ap.add_argument("--procs", type=int, default=2, help="processes at once (after one alone)")
    a = ap.parse_args()
    path = f"/dev/shm/fastgw-bench-idem-{uuid.uuid4().hex}.db"
    progress = Progress("idempotency_host", 2)
    try:
        for procs in (1, a.procs):
            progress.step(f"{procs} process(es) x {a.n} keys x 3 rounds")
            q: multiprocessing.Queue = multiprocessing.Queue()
            ps = [multiprocessing.Process(target=run, args=(path, f"p{procs}-{i}", a.n, q)) for i in range(procs)]
            for p in ps:
                p.start()
            got = [q.get() for _ in ps]
            for p in ps:
                p.join()
            for tag, (b, f, r), busy in sorted(got):
                print(f"{procs} process(es) {tag}: begin {b:.1f} µs  finish {f:.1f} µs  replay read {r:.1f} µs"
                      f"  (met the lock: {busy} of {6 * a.n} writes)")
        progress.finish()
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)


if __name__ == "__main__":
    main()
