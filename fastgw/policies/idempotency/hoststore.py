"""The per-host idempotency store, used when the config has no [redis]: one SQLite database file (the
stdlib's sqlite3) that every worker of the host opens, so a retry that lands on another worker finds the
record. It serves one pod: a retry that reaches another host runs again (docs/api-products.md).

The records are the values of record.py (b"L" lock, b"D" done record) with an expiry instant; the two
operations are the Redis scripts' (record.py BEGIN and FINISH), each one `BEGIN IMMEDIATE` transaction:
SQLite takes the database's write lock first, so two workers racing on one key are serialized and exactly
one of them takes the lock. A record past its expiry is absent (lock_ttl, ttl), and is swept lazily: each
insert deletes up to SWEEP of the oldest expired records.

Bounded (the file lives in /dev/shm by default, i.e. in memory): at most max_records records and
max_bytes of values. A new key that finds the store full first drops expired records, oldest first; if it
is still full, the call fails like a store that is down (on_store_error decides: 503 by default). Live
records are never evicted: dropping a completed request's record would let its retry pay twice.

Cost (bench/idempotency_host.py on the 2-core CI machine, /dev/shm, WAL, synchronous=OFF): a BEGIN that
takes a key 30 µs alone, 60-80 µs with two workers writing at once; a FINISH 35 µs (70-100 µs); a replay's
read 8 µs (it reads without the write lock: WAL readers never wait). So a call runs inline on the event
loop, once: a thread hop would cost as much as the call. The store itself never waits: when another
worker holds the write lock (or is setting the file up) a call raises Busy at once, and the caller tries
again with wait(), which pauses with asyncio.sleep between tries, so the worker's loop serves its other
connections meanwhile; after BUSY_S the call counts as a store failure (on_store_error). Opening never
waits either (at start or on a reload): a file another worker is setting up is finished by the first
call that needs it, inside that call's wait.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

# Expired records deleted by each insert (lazy sweep; the index on exp finds them oldest first).
SWEEP = 4
# How long a call waits for another worker's transaction (each holds the lock for tens of microseconds)
# before it counts as a store failure.
BUSY_S = 0.2
# The pauses between tries, the last one repeated: the first only yields to the loop (the other worker's
# transaction is likely over by then), then 1 and 2 ms (the loop's timers are millisecond ones). Not
# SQLite's own busy handler (1, 2, 5, 10... ms, and it sleeps on the loop): a worker that tries that
# rarely can starve while another writes in a loop (seen with 2 processes: "database is locked").
BACKOFF_S = (0.0, 0.001, 0.002)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rec (k BLOB PRIMARY KEY, v BLOB NOT NULL, exp INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rec_exp ON rec (exp);
CREATE TABLE IF NOT EXISTS size (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO size VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS rec_ins AFTER INSERT ON rec
  BEGIN UPDATE size SET n = n + 1, bytes = bytes + length(NEW.v) WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS rec_del AFTER DELETE ON rec
  BEGIN UPDATE size SET n = n - 1, bytes = bytes - length(OLD.v) WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS rec_upd AFTER UPDATE OF v ON rec
  BEGIN UPDATE size SET bytes = bytes - length(OLD.v) + length(NEW.v) WHERE id = 0; END;
"""


class StoreFull(Exception):
    """Every record is live and the store is at max_records or max_bytes."""


class Busy(sqlite3.OperationalError):
    """Another worker holds the file's write lock, or is setting the file up: try again (wait())."""


def _busy(e: sqlite3.OperationalError) -> bool:
    # SQLITE_BUSY ("database is locked") and SQLITE_LOCKED ("database table is locked").
    return "locked" in str(e) or "busy" in str(e)


async def wait(call: Callable[..., T], *args: object) -> T:
    """call(*args) (a HostStore operation that just raised Busy) tried again, pausing between tries with
    asyncio.sleep (BACKOFF_S), until it is not Busy; after BUSY_S the last Busy is raised."""
    deadline = time.monotonic() + BUSY_S
    i = 0
    while True:
        await asyncio.sleep(BACKOFF_S[i])
        i = min(i + 1, len(BACKOFF_S) - 1)
        try:
            return call(*args)
        except Busy:
            if time.monotonic() >= deadline:
                raise


def _now_ms() -> int:
    return int(time.time() * 1000)


class HostStore:
    """One worker's connection to the host's database file."""

    def __init__(self, path: str, max_records: int, max_bytes: int) -> None:
        self.path, self.max_records, self.max_bytes = path, max_records, max_bytes
        self.db = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        self.ready = False
        try:
            self._setup()
        except Busy:
            pass                    # the first call finishes the setup (its wait covers it)
        except BaseException:
            self.db.close()
            raise

    def _setup(self) -> None:
        """WAL and the schema, one try. Workers start together: switching the file to WAL and its first
        recovery answer SQLITE_BUSY at once, without the busy timeout (SQLite's rule for those steps):
        Busy. A file already set up is only read (the schema is made in one transaction, its last
        statement the trigger rec_upd), so a reload does not need the write lock."""
        db = self.db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")         # in memory (/dev/shm): nothing to make durable
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'rec_upd'").fetchone() is None:
                db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.OperationalError as e:
            self._failed(e)
        self.ready = True

    def close(self) -> None:
        self.db.close()

    def _failed(self, e: BaseException) -> NoReturn:
        """A call failed: its transaction rolled back, and Busy raised if it met another worker's lock."""
        self._rollback()
        if isinstance(e, sqlite3.OperationalError) and _busy(e) and not isinstance(e, Busy):
            raise Busy(str(e)) from e
        raise e

    def _rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.ProgrammingError:     # closed (a reload replaced the store during a wait)
            pass

    def begin(self, key: bytes, lock: bytes, lock_ms: int) -> bytes | None:
        """record.py BEGIN: None when `lock` now holds the key for lock_ms, else the live record's value.
        Raises Busy (call it again: wait()), sqlite3.Error (the store failed) or StoreFull."""
        db = self.db
        now = _now_ms()
        try:
            if not self.ready:
                self._setup()
            # A live record (a replay, a duplicate in flight) is read without the write lock; only a key
            # that looks free is read again under it, so of two racing requests one takes it.
            row = db.execute("SELECT v, exp FROM rec WHERE k = ?", (key,)).fetchone()
            if row is not None and row[1] > now:
                return bytes(row[0])
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT v, exp FROM rec WHERE k = ?", (key,)).fetchone()
            if row is not None and row[1] > now:
                db.execute("COMMIT")
                return bytes(row[0])
            if row is not None:
                db.execute("DELETE FROM rec WHERE k = ?", (key,))
            db.execute("DELETE FROM rec WHERE k IN (SELECT k FROM rec WHERE exp <= ? ORDER BY exp LIMIT ?)",
                       (now, SWEEP))
            n, size = db.execute("SELECT n, bytes FROM size WHERE id = 0").fetchone()
            if n >= self.max_records or size + len(lock) > self.max_bytes:
                self._evict_expired(now, len(lock))
            db.execute("INSERT INTO rec VALUES (?, ?, ?)", (key, lock, now + lock_ms))
            db.execute("COMMIT")
            return None
        except BaseException as e:
            self._failed(e)

    def _evict_expired(self, now: int, need: int) -> None:
        """Delete expired records, oldest first, until one of `need` bytes fits; StoreFull when none is left."""
        db = self.db
        while True:
            n, size = db.execute("SELECT n, bytes FROM size WHERE id = 0").fetchone()
            if n < self.max_records and size + need <= self.max_bytes:
                return
            gone = db.execute("DELETE FROM rec WHERE k IN (SELECT k FROM rec WHERE exp <= ? ORDER BY exp "
                              "LIMIT 256)", (now,)).rowcount
            if gone == 0:
                raise StoreFull(f"idempotency store {self.path}: {n} live records, {size} bytes")

    def finish(self, key: bytes, lock: bytes, value: bytes, ttl_ms: int, smaller: bytes = b"") -> bool:
        """record.py FINISH: replace `lock` with `value` for ttl_ms (b"": delete it) if `lock` is still the
        key's value. A value that would pass max_bytes is replaced by `smaller` (the record without its
        body: a retry gets 409, never a second run); if that does not fit either, the lock stays until
        lock_ttl. Raises Busy (call it again: wait()) or sqlite3.Error."""
        db = self.db
        now = _now_ms()
        try:
            if not self.ready:
                self._setup()
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT v, exp FROM rec WHERE k = ?", (key,)).fetchone()
            if row is None or bytes(row[0]) != lock or row[1] <= now:
                db.execute("COMMIT")
                return False
            if value:
                room = self.max_bytes - db.execute("SELECT bytes FROM size WHERE id = 0").fetchone()[0] + len(lock)
                if len(value) > room:
                    value = smaller
                    if not value or len(value) > room:
                        db.execute("COMMIT")
                        return False
            if value:
                db.execute("UPDATE rec SET v = ?, exp = ? WHERE k = ?", (value, now + ttl_ms, key))
            else:
                db.execute("DELETE FROM rec WHERE k = ?", (key,))
            db.execute("COMMIT")
            return True
        except BaseException as e:
            self._failed(e)

    def count(self) -> tuple[int, int]:
        """(records, bytes) held, expired ones included."""
        n, size = self.db.execute("SELECT n, bytes FROM size WHERE id = 0").fetchone()
        return int(n), int(size)
