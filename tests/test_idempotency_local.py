"""Idempotency-Key without [redis]: the per-host store (fastgw/policies/idempotency/hoststore.py, an SQLite
file in /dev/shm every worker opens). Real gateways with 2 workers and no Redis, the echo origin counting
what reaches it, httpx.

Replay (the upstream called once, Idempotent-Replayed), 12 concurrent duplicates spread over both workers
(exactly one reaches the upstream, 11 get 409), 422 on another body, the lock kept until lock_ttl after an
upstream timeout, ttl expiry, a SIGHUP reload keeping the records, the max_records bound (a full store
answers 503 and expired records make room, oldest first), the max_bytes bound, `fastgw check`'s note.
Another process holding the file's write lock never stops a worker: its other requests are answered at
once while the keyed one waits (then goes upstream, or 503 after BUSY_S), a FINISH that meets the lock
is written once it is free, and a reload reopening the store applies at once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgw.policies.idempotency.hoststore import BUSY_S, Busy, HostStore, StoreFull, wait
from tests.procutil import Gateway
from tests.test_idempotency import one_went_upstream, outcomes, problem


@pytest.fixture
def db_path() -> Iterator[str]:
    path = f"/dev/shm/fastgw-test-idem-{uuid.uuid4().hex}.db"
    yield path
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def config(origin: str, path: str, *, max_records: int = 1000, timeout: str = "5s") -> str:
    return f'''
[server]
listen = ["127.0.0.1:0"]
access_log = true
[admin]
listen = "127.0.0.1:0"
[idempotency]
path = "{path}"
max_records = {max_records}
[upstreams.echo]
targets = ["{origin}"]
timeout = "{timeout}"
[[routes]]
name = "pay"
path = "/pay/*"
upstream = "echo"
idempotency = {{ required = true, lock_ttl = "1s", ttl = "3s", max_body = "64KiB" }}
'''


def start(tmp_path: Path, text: str, workers: int = 2) -> tuple[Gateway, Path]:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(text)
    gw = Gateway(cfg, workers=workers)
    gw.wait_ready()
    return gw, cfg


def post(c: httpx.Client, path: str, key: str, body: bytes = b"{}") -> httpx.Response:
    return c.post(path, content=body, headers={"Idempotency-Key": key, "Content-Type": "application/json"})


def rows(path: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM rec").fetchone()[0])


def test_replay_concurrent_duplicates_mismatch_and_reload(tmp_path: Path, echo_origin: Any, db_path: str) -> None:
    gw, cfg = start(tmp_path, config(echo_origin.addr, db_path))
    try:
        m = uuid.uuid4().hex
        body = b'{"amount":"5.00"}'

        # A fresh connection each: the kernel spreads them over both workers (SO_REUSEPORT).
        def one(_: int) -> httpx.Response:
            with httpx.Client(base_url=gw.base, timeout=10) as c:
                return post(c, f"/pay/{m}?delay=0.8", m, body)

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(one, range(12)))
        one_went_upstream(rs)
        # Both workers answered some of them (the test is about the workers sharing one store).
        deadline = time.monotonic() + 3
        while len([e for e in gw.access_lines() if m in e.get("path", "")]) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {e["worker"] for e in gw.access_lines() if m in e.get("path", "")} == {0, 1}
        first = next(r for r in rs if r.status_code == 200)
        assert "idempotent-replayed" not in first.headers
        assert len(echo_origin.requests_for(m)) == 1
        time.sleep(0.2)                                    # the record is written as the response ends
        # Both workers replay it (new connections land on either): the upstream is not called again.
        for _ in range(8):
            with httpx.Client(base_url=gw.base, timeout=10) as c:
                r = post(c, f"/pay/{m}?delay=0.8", m, body)
                assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
                assert r.content == first.content
        # The same key with another body: 422, the record kept.
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            problem(post(c, f"/pay/{m}?delay=0.8", m, b'{"amount":"99.00"}'), 422, "idempotency-mismatch")
        assert len(echo_origin.requests_for(m)) == 1

        # A SIGHUP reload: the records are in the file, not the workers: still replayed.
        n = len(gw.events)
        cfg.write_text(cfg.read_text().replace('ttl = "3s"', 'ttl = "4s"'))
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_applied", after=n)
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            r = post(c, f"/pay/{m}?delay=0.8", m, body)
        assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
        assert len(echo_origin.requests_for(m)) == 1
        o = outcomes(gw, "pay")
        assert o["first"] == 1 and o["stored"] == 1 and o["conflict"] == 11 and o["mismatch"] == 1
        assert o["replayed"] == 9 and o["store_error"] == 0
    finally:
        gw.close()


def test_lock_ttl_after_a_timeout_and_ttl_expiry(tmp_path: Path, echo_origin: Any, db_path: str) -> None:
    gw, _ = start(tmp_path, config(echo_origin.addr, db_path, timeout="300ms"))
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            # A stored response is replayed until ttl (3 s), then forgotten: the key runs again. Stored
            # first, so that its ttl runs out while the lock below is tested (not after it).
            k = uuid.uuid4().hex
            assert post(c, f"/pay/{k}?status=201", k).status_code == 201
            stored = time.monotonic()
            time.sleep(0.1)
            r = post(c, f"/pay/{k}?status=201", k)
            assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"
            # The upstream times out after the request was sent: the outcome is unknown, the key stays
            # locked until lock_ttl (1 s), nothing is stored as a success.
            m = uuid.uuid4().hex
            problem(post(c, f"/pay/{m}?delay=0.6", m), 504, "upstream-timeout")
            problem(post(c, f"/pay/{m}?delay=0.6", m), 409, "idempotency-conflict")
            time.sleep(1.1)
            problem(post(c, f"/pay/{m}?delay=0.6", m), 504, "upstream-timeout")
            assert echo_origin.wait_for(lambda: len(echo_origin.heads_for(m)) == 2)
            time.sleep(max(0.0, stored + 3.2 - time.monotonic()))       # k's ttl is over
            r = post(c, f"/pay/{k}?status=201", k)
            assert r.status_code == 201 and "idempotent-replayed" not in r.headers
            assert echo_origin.wait_for(lambda: len(echo_origin.requests_for(k)) == 2)
        o = outcomes(gw, "pay")
        assert o["unknown"] == 2 and o["conflict"] == 1 and o["replayed"] == 1
    finally:
        gw.close()


def test_the_bound_holds(tmp_path: Path, echo_origin: Any, db_path: str) -> None:
    """max_records = 4: a fifth live key finds the store full (503 store-unavailable, on_store_error
    "closed": never a second run), the four keep replaying; once they expire (ttl 3 s) the oldest make room."""
    gw, _ = start(tmp_path, config(echo_origin.addr, db_path, max_records=4))
    try:
        keys = [uuid.uuid4().hex for _ in range(5)]
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            for k in keys[:4]:
                assert post(c, f"/pay/{k}", k).status_code == 200
            time.sleep(0.1)
            r = post(c, f"/pay/{keys[4]}", keys[4])
            problem(r, 503, "store-unavailable")
            assert len(echo_origin.requests_for(keys[4])) == 0
            for k in keys[:4]:
                assert post(c, f"/pay/{k}", k).headers["idempotent-replayed"] == "true"
            assert rows(db_path) == 4
            time.sleep(3.1)
            assert post(c, f"/pay/{keys[4]}", keys[4]).status_code == 200
            assert rows(db_path) <= 4
        assert outcomes(gw, "pay")["store_error"] == 1
    finally:
        gw.close()


def test_host_store_operations_and_byte_bound(db_path: str) -> None:
    """The store's two operations on the file, across two connections (two workers): BEGIN takes a free
    key once; FINISH only with the lock still held; max_bytes keeps the body-less record instead."""
    a, b = HostStore(db_path, 10, 2**20), HostStore(db_path, 10, 2**20)
    try:
        lock = b"L" + b"f" * 32 + b"a" * 16
        assert a.begin(b"k1", lock, 60_000) is None
        assert b.begin(b"k1", b"L-other", 60_000) == lock
        assert not b.finish(b"k1", b"L-other", b"D-theirs", 60_000)       # not b's lock
        big, small = b"D" + b"x" * 2**20, b"D-small"
        assert a.finish(b"k1", lock, big, 60_000, small)
        assert b.begin(b"k1", b"L2", 60_000) == small                      # no room for the body
        assert a.count() == (1, len(small))
        assert a.begin(b"k2", b"L3", 60_000) is None
        assert a.finish(b"k2", b"L3", b"", 60_000) and a.count() == (1, len(small))   # freed
        full = HostStore(db_path, 1, 2**20)
        with pytest.raises(StoreFull):
            full.begin(b"k3", b"L4", 60_000)
        full.close()
    finally:
        a.close()
        b.close()


def test_check_notes_the_per_host_mode(tmp_path: Path, db_path: str) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config("127.0.0.1:9", db_path))
    out = subprocess.run([sys.executable, "-m", "fastgw", "check", "-c", str(cfg)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"idempotency: records in the per-host store {db_path} (no [redis])" in out.stdout
    assert "another pod runs again" in out.stdout


def test_a_store_that_cannot_open_meets_on_store_error(tmp_path: Path, echo_origin: Any) -> None:
    """The file cannot be created (its directory is missing): the gateway runs, and every keyed request
    meets on_store_error: 503 store-unavailable ("closed"), never sent upstream unprotected."""
    gw, _ = start(tmp_path, config(echo_origin.addr, str(tmp_path / "missing" / "idem.db")), workers=1)
    try:
        k = uuid.uuid4().hex
        with httpx.Client(base_url=gw.base, timeout=5) as c:
            r = post(c, f"/pay/{k}", k)
            problem(r, 503, "store-unavailable")
            assert r.headers["retry-after"] == "1"
            assert c.get(f"/pay/{k}").status_code == 200          # GET: not an idempotency method
        assert [r.head.method for r in echo_origin.requests_for(k)] == ["GET"]
        assert outcomes(gw, "pay")["store_error"] == 1
    finally:
        gw.close()


def timed_get(c: httpx.Client, path: str) -> float:
    t = time.monotonic()
    assert c.get(path).status_code == 200
    return time.monotonic() - t


@contextlib.contextmanager
def one_worker_and_a_holder(tmp_path: Path, origin: str, db_path: str) -> Iterator[tuple[Any, ...]]:
    """A gateway of one worker (and its config file), an SQLite connection of the test's own to its file (to hold the write
    lock), two open client connections (`c` for plain requests, `kc` for the keyed one, run in `pool`)
    and `w`, a key already stored: the store is set up before the lock is taken (and a new httpx client
    takes tens of milliseconds to make, so none is made while it is held)."""
    gw, cfg = start(tmp_path, config(origin, db_path), workers=1)
    holder = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    try:
        with httpx.Client(base_url=gw.base, timeout=5) as c, httpx.Client(base_url=gw.base, timeout=5) as kc, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            w = uuid.uuid4().hex
            assert post(c, f"/pay/{w}", w).status_code == 200
            timed_get(kc, f"/pay/{w}")
            pool.submit(time.sleep, 0).result()
            yield gw, cfg, holder, c, kc, pool, w
    finally:
        holder.close()
        gw.close()


def test_a_held_write_lock_does_not_stop_the_worker(tmp_path: Path, echo_origin: Any, db_path: str) -> None:
    """Another process holds the file's write lock (BEGIN IMMEDIATE) while a keyed request needs it: the
    worker (the only one) keeps answering its other requests at once while that one waits; the lock
    released within BUSY_S (200 ms), the keyed request goes upstream; held longer, 503 store-unavailable
    after BUSY_S, nothing sent upstream, and the key is not taken."""
    with one_worker_and_a_holder(tmp_path, echo_origin.addr, db_path) as (gw, _, holder, c, kc, pool, w):

        def keyed(k: str) -> tuple[httpx.Response, float]:
            t = time.monotonic()
            r = post(kc, f"/pay/{k}", k)
            return r, time.monotonic() - t

        for hold, k in ((0.1, uuid.uuid4().hex), (0.5, uuid.uuid4().hex)):
            holder.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            fut = pool.submit(keyed, k)
            time.sleep(0.04)
            # Before the fix the worker slept on its loop until the lock came free (or BUSY_S).
            slow = [timed_get(c, f"/pay/{w}") for _ in range(3)]
            assert max(slow) < 0.05, slow
            assert not fut.done()
            time.sleep(max(0.0, t0 + hold - time.monotonic()))
            holder.execute("COMMIT")
            r, took = fut.result(timeout=5)
            if hold < 0.2:
                assert r.status_code == 200 and took >= hold * 0.9, (r.status_code, took)
                assert echo_origin.wait_for(lambda k=k: len(echo_origin.requests_for(k)) == 1)
            else:
                problem(r, 503, "store-unavailable")
                assert 0.2 <= took < 0.45, took
                assert echo_origin.requests_for(k) == []
                assert post(c, f"/pay/{k}", k).status_code == 200          # the key was never taken
        assert outcomes(gw, "pay")["store_error"] == 1


def test_a_held_write_lock_at_the_response_end_stores_it_later(tmp_path: Path, echo_origin: Any,
                                                                  db_path: str) -> None:
    """The lock is held by another process when the response ends: the client gets its answer at once,
    and the record (FINISH) is written once the lock comes free, without stopping the worker meanwhile."""
    with one_worker_and_a_holder(tmp_path, echo_origin.addr, db_path) as (gw, _, holder, c, kc, pool, w):
        k = uuid.uuid4().hex

        def keyed() -> tuple[httpx.Response, float]:
            r = post(kc, f"/pay/{k}?delay=0.2", k)
            return r, time.monotonic()

        fut = pool.submit(keyed)
        assert echo_origin.wait_for(lambda: len(echo_origin.heads_for(k)) == 1)   # the key is taken
        holder.execute("BEGIN IMMEDIATE")
        r, done = fut.result(timeout=5)
        assert r.status_code == 200
        # Before the fix the worker slept on its loop in FINISH, and gave up after BUSY_S (409 below).
        assert max(timed_get(c, f"/pay/{w}") for _ in range(3)) < 0.05
        time.sleep(max(0.0, done + 0.1 - time.monotonic()))
        holder.execute("COMMIT")
        time.sleep(0.05)
        r2 = post(c, f"/pay/{k}?delay=0.2", k)
        assert r2.status_code == 200 and r2.headers["idempotent-replayed"] == "true"
        assert len(echo_origin.requests_for(k)) == 1
        o = outcomes(gw, "pay")
        assert o["stored"] == 2 and o["store_error"] == 0


def test_a_reload_reopens_the_store_without_waiting_for_the_lock(tmp_path: Path, echo_origin: Any,
                                                                 db_path: str) -> None:
    """A reload that changes [idempotency] reopens the store while another process holds the file's
    write lock: the worker applies it at once and keeps answering (before the fix it slept on its loop
    for as long as the lock was held, up to 5 s); the lock released, the records are still there."""
    with one_worker_and_a_holder(tmp_path, echo_origin.addr, db_path) as (gw, cfg, holder, c, kc, pool, w):
        holder.execute("BEGIN IMMEDIATE")
        n = len(gw.events)
        cfg.write_text(cfg.read_text().replace("max_records = 1000", "max_records = 999"))
        t = time.monotonic()
        gw.signal(signal.SIGHUP)
        gw.wait_event("config_applied", after=n, timeout=3)
        assert time.monotonic() - t < 1.0
        assert max(timed_get(c, f"/pay/{w}") for _ in range(3)) < 0.05
        r = post(c, f"/pay/{w}", w)                     # a live record: read without the write lock
        assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
        holder.execute("COMMIT")
        k = uuid.uuid4().hex
        assert post(c, f"/pay/{k}", k).status_code == 200
        assert outcomes(gw, "pay")["store_error"] == 0


def test_host_store_never_waits_on_its_own(db_path: str) -> None:
    """With the write lock held by another connection: opening a new file returns at once (the setup is
    left to the first call), each operation raises Busy at once, wait() tries again for BUSY_S and then
    raises Busy; the lock released, the same calls succeed."""
    holder = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    t = time.monotonic()
    a = HostStore(db_path, 10, 2**20)
    try:
        assert not a.ready
        with pytest.raises(Busy):
            a.begin(b"k1", b"L1", 60_000)
        assert time.monotonic() - t < 0.05
        t = time.monotonic()
        with pytest.raises(Busy):
            asyncio.run(wait(a.begin, b"k1", b"L1", 60_000))
        assert BUSY_S <= time.monotonic() - t < BUSY_S + 0.15
        holder.execute("COMMIT")
        assert a.begin(b"k1", b"L1", 60_000) is None and a.ready
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Busy):
            a.finish(b"k1", b"L1", b"D1", 60_000)
        b = HostStore(db_path, 10, 2**20)      # a file already set up: opened without the write lock
        assert b.ready and b.begin(b"k1", b"L2", 60_000) == b"L1"        # a live record: read only
        b.close()
        holder.execute("COMMIT")
        assert asyncio.run(wait(a.finish, b"k1", b"L1", b"D1", 60_000))
    finally:
        a.close()
        holder.close()
