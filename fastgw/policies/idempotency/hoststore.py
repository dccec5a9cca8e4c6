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
read 8 µs (it reads without the write lock: WAL readers never wait). So the calls run inline on the event
loop: a thread hop would cost as much as the call. BUSY_S bounds how long a worker waits for another's
transaction (each holds the lock for tens of microseconds).
"""
from __future__ import annotations

import sqlite3
import time

# Expired records deleted by each insert (lazy sweep; the index on exp finds them oldest first).
SWEEP = 4
# How long a call waits for another worker's transaction before it counts as a store failure, polling
# every POLL_S: SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, and a worker that polls
# that slowly can starve while another writes in a loop (seen with 2 processes: "database is locked").
BUSY_S = 0.2
POLL_S = 0.0002
# How long a worker tries to set the file up while the others do the same (at start and on a reload).
OPEN_S = 5.0

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


def _now_ms() -> int:
    return int(time.time() * 1000)


class HostStore:
    """One worker's connection to the host's database file."""

    def __init__(self, path: str, max_records: int, max_bytes: int) -> None:
        self.path, self.max_records, self.max_bytes = path, max_records, max_bytes
        self.db = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
        # Workers start together: switching the file to WAL and its first recovery answer SQLITE_BUSY at
        # once, without the busy timeout (SQLite's rule for those steps), so the setup is tried again.
        deadline = time.monotonic() + OPEN_S
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=OFF")     # in memory (/dev/shm): nothing to make durable
                self.db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
                return
            except sqlite3.OperationalError as e:
                self._rollback()
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    self.db.close()
                    raise
                time.sleep(0.01)
            except BaseException:
                self.db.close()
                raise

    def close(self) -> None:
        self.db.close()

    def _lock(self) -> None:
        """BEGIN IMMEDIATE (the file's write lock), waiting up to BUSY_S for another worker's transaction."""
        deadline = 0.0
        while True:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + BUSY_S
                elif now > deadline:
                    raise
                time.sleep(POLL_S)

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def begin(self, key: bytes, lock: bytes, lock_ms: int) -> bytes | None:
        """record.py BEGIN: None when `lock` now holds the key for lock_ms, else the live record's value.
        Raises sqlite3.Error (the store failed) or StoreFull."""
        db = self.db
        now = _now_ms()
        try:
            # A live record (a replay, a duplicate in flight) is read without the write lock; only a key
            # that looks free is read again under it, so of two racing requests one takes it.
            row = db.execute("SELECT v, exp FROM rec WHERE k = ?", (key,)).fetchone()
            if row is not None and row[1] > now:
                return bytes(row[0])
            self._lock()
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
        except BaseException:
            self._rollback()
            raise

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
        lock_ttl. Raises sqlite3.Error."""
        db = self.db
        now = _now_ms()
        try:
            self._lock()
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
        except BaseException:
            self._rollback()
            raise

    def count(self) -> tuple[int, int]:
        """(records, bytes) held, expired ones included."""
        n, size = self.db.execute("SELECT n, bytes FROM size WHERE id = 0").fetchone()
        return int(n), int(size)
