"""Idempotency-Key without [redis]: the per-host store (fastgw/policies/idempotency/hoststore.py, an SQLite
file in /dev/shm every worker opens). Real gateways with 2 workers and no Redis, the echo origin counting
what reaches it, httpx.

Replay (the upstream called once, Idempotent-Replayed), 12 concurrent duplicates spread over both workers
(exactly one reaches the upstream, 11 get 409), 422 on another body, the lock kept until lock_ttl after an
upstream timeout, ttl expiry, a SIGHUP reload keeping the records, the max_records bound (a full store
answers 503 and expired records make room, oldest first), the max_bytes bound, `fastgw check`'s note.
"""
from __future__ import annotations

import concurrent.futures
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

from fastgw.policies.idempotency.hoststore import HostStore, StoreFull
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
            # The upstream times out after the request was sent: the outcome is unknown, the key stays
            # locked until lock_ttl (1 s), nothing is stored as a success.
            m = uuid.uuid4().hex
            problem(post(c, f"/pay/{m}?delay=0.6", m), 504, "upstream-timeout")
            problem(post(c, f"/pay/{m}?delay=0.6", m), 409, "idempotency-conflict")
            time.sleep(1.1)
            problem(post(c, f"/pay/{m}?delay=0.6", m), 504, "upstream-timeout")
            assert echo_origin.wait_for(lambda: len(echo_origin.heads_for(m)) == 2)
            # A stored response is replayed until ttl (3 s), then forgotten: the key runs again.
            k = uuid.uuid4().hex
            assert post(c, f"/pay/{k}?status=201", k).status_code == 201
            time.sleep(0.1)
            r = post(c, f"/pay/{k}?status=201", k)
            assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"
            time.sleep(3.1)
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
