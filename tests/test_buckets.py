"""fastgw/_core/buckets.pyx against its pure-Python twin (tests/buckets_ref.py), plus the properties the
shared table must keep: all-or-nothing plans, bounded memory under a flood of keys, exactness across
processes sharing one table."""
from __future__ import annotations

import mmap
import os
import resource
from datetime import UTC, datetime

import pytest
from buckets_ref import NS, RefQuota, RefRate, window_end
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core import buckets as B


def table(nslots: int = 1024) -> B.Table:
    return B.Table(bytearray(B.table_bytes(nslots)))


@settings(max_examples=200, deadline=None)
@given(interval=st.integers(1, 10**9), burst=st.integers(1, 50),
       ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3 * 10**9), st.integers(1, 5),
                              st.booleans()), max_size=60))
def test_rate_matches_reference(interval: int, burst: int, ops: list[tuple[int, int, int, bool]]) -> None:
    t, ref = table(), RefRate(interval, burst)
    now = 10**12
    for key, dt, n, commit in ops:
        now += dt * interval // 10**9      # steps in units of the interval, fractions included
        got = t.rate(key + 1, now, interval, burst, n, commit)
        want = ref.take(key + 1, now, n, commit)
        assert got == want, (key, now, n, commit)


_walls = st.integers(0, 4102444800 * NS)   # 1970 .. 2100


@settings(max_examples=300, deadline=None)
@given(wall=_walls)
def test_window_ends_are_utc_calendar(wall: int) -> None:
    for kind, name in ((B.QUOTA_MINUTE, "minute"), (B.QUOTA_HOUR, "hour"), (B.QUOTA_DAY, "day"),
                       (B.QUOTA_MONTH, "month")):
        assert B.window_end(kind, wall) == window_end(name, wall), (name, wall)


def test_month_window_edges() -> None:
    def ns(*a: int) -> int:
        return int(datetime(*a, tzinfo=UTC).timestamp()) * NS   # type: ignore[arg-type,misc]

    assert B.window_end(B.QUOTA_MONTH, ns(2024, 2, 29, 23, 59, 59)) == ns(2024, 3, 1)
    assert B.window_end(B.QUOTA_MONTH, ns(2026, 12, 31, 12)) == ns(2027, 1, 1)
    assert B.window_end(B.QUOTA_MONTH, ns(2027, 1, 1)) == ns(2027, 2, 1)
    assert B.window_end(B.QUOTA_DAY, ns(2027, 1, 1) - 1) == ns(2027, 1, 1)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from([(B.QUOTA_MINUTE, "minute"), (B.QUOTA_HOUR, "hour"), (B.QUOTA_DAY, "day"),
                             (B.QUOTA_MONTH, "month")]),
       limit=st.integers(1, 20), start=_walls,
       ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40 * 86400 * NS // 50), st.integers(1, 3)),
                    max_size=50))
def test_quota_matches_reference(kind: tuple[int, str], limit: int, start: int,
                                 ops: list[tuple[int, int, int]]) -> None:
    t, ref = table(), RefQuota(kind[1], limit)
    wall = start
    mono = 5 * NS
    for key, dt, n in ops:
        wall += dt
        mono += dt
        assert t.quota(key + 1, kind[0], limit, mono, wall, n) == ref.take(key + 1, wall, n)


def test_plan_is_all_or_nothing() -> None:
    t = table()
    # 10/s burst 5 and 3 per minute, one key: the 4th request is refused by the quota and must not
    # spend a rate token; the rate bucket then still holds 5 - 3 = 2 tokens.
    plan = B.Plan(t, [(B.RATE, NS // 10, 5, True, 11, 0), (B.QUOTA_MINUTE, 3, 0, True, 12, 0)])
    mono, wall = 10**12, 1_700_000_000 * NS
    results = [plan.check((42,), mono, wall) for _ in range(4)]
    assert results == [-1, -1, -1, 1]
    assert plan.retry_s == (B.window_end(B.QUOTA_MINUTE, wall) - wall + NS - 1) // NS
    rate_key = _plan_key(42, 11)
    assert t.rate(rate_key, mono, NS // 10, 5, 1, False)[1] == 5 - 3 - 1


def _plan_key(value: int, seed: int) -> int:
    # Plan mixes the key value with the limit's seed (splitmix64 finaliser); mirror it here.
    z = (value ^ seed) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) or 1


def test_plan_reports_tightest_limit_and_shadow() -> None:
    t = table()
    plan = B.Plan(t, [(B.RATE, NS // 100, 50, True, 1, 0), (B.QUOTA_DAY, 10, 0, True, 2, 0),
                      (B.RATE, NS, 1, False, 3, 0)])
    mono, wall = 10**12, 1_700_000_000 * NS
    assert plan.check((7,), mono, wall) == -1
    assert (plan.tight, plan.remaining) == (1, 9)        # quota 9 left < rate 49 left
    assert plan.shadowed == 0
    assert plan.check((7,), mono, wall) == -1            # the shadow limit (1/s, burst 1) is over...
    assert plan.shadowed == 1                            # ...counted, not enforced
    for _ in range(8):
        assert plan.check((7,), mono, wall) == -1
    assert plan.check((7,), mono, wall) == 1
    assert plan.remaining == 0 and plan.retry_s >= 1


def test_concurrency_acquire_release() -> None:
    t = table()
    plan = B.Plan(t, [(B.CONCURRENCY, 2, 0, True, 5, 0)])
    assert [plan.check((1,), 0, 0) for _ in range(3)] == [-1, -1, 0]
    assert plan.retry_s == 1
    plan.release((1,), 1)
    assert plan.check((1,), 0, 0) == -1
    assert plan.check((2,), 0, 0) == -1                  # another key has its own count


def test_plan_takes_one_value_per_key_index() -> None:
    """A plan reads keys[key index] of each limit: a tuple without one is refused, never read past its end;
    two keys are two buckets."""
    t = table()
    plan = B.Plan(t, [(B.RATE, NS, 1, True, 11, 0), (B.RATE, NS, 1, True, 12, 1)])
    for short in ((), (5,)):
        with pytest.raises(ValueError):
            plan.check(short, 0, 0)
        with pytest.raises(ValueError):
            plan.release(short, 3)
    mono = 10**12
    assert plan.check((5, 6), mono, 0) == -1
    assert plan.check((5, 6), mono, 0) == 0              # the bucket of 1 is spent
    assert plan.check((7, 6), mono, 0) == 1              # key 0 is another bucket, key 1 the same
    assert plan.check((7, 8), mono, 0) == -1
    with pytest.raises(ValueError):
        B.Plan(t, [(B.RATE, NS, 1, True, 1, 16)])


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_million_keys_bounded_and_hot_keys_exact() -> None:
    """1,000,000 distinct keys through a 16384-slot table (1 MiB): memory is the table, and keys in active use are
    never evicted, so they keep exact decisions (compared with the reference, which never forgets)."""
    nslots = 16384
    buf = bytearray(B.table_bytes(nslots))
    t = B.Table(buf)
    interval, burst = 10**6, 3                      # 1000/s: a one-shot key is idle again 1 ms later
    ref = RefRate(interval, burst)
    hot = [2**63 + i for i in range(16)]
    rss0 = _rss_kib()
    now = 10**12
    hot_allowed = 0
    mismatches = 0
    for i in range(1_000_000):
        now += 1000                                 # 1 µs per request: ~1000 one-shot keys live at once
        t.rate(i + 1, now, interval, burst)
        if i % 64 == 0:
            k = hot[(i // 64) % 16]
            got = t.rate(k, now, interval, burst)
            if got != ref.take(k, now):
                mismatches += 1
            hot_allowed += got[0]
    assert mismatches == 0
    assert hot_allowed > 0
    assert len(buf) == B.table_bytes(nslots)
    assert t.used() <= nslots
    assert t.evictions == 0
    assert _rss_kib() - rss0 < 20 * 1024            # no per-key allocation (the table is 1 MiB)


def test_overfull_table_evicts_soonest_idle_and_counts() -> None:
    t = table(8)                                    # one bucket of 8 slots
    for k in range(1, 10):                          # 9 live keys (1/s, burst 1): one must go
        assert t.rate(k, 0, NS, 1)[0]
    assert t.evictions == 1
    assert t.used() == 8


def test_exact_across_processes() -> None:
    """Four processes hammer one key of a table in shared memory at a fixed time: exactly `burst`
    requests pass, however the updates interleave."""
    size = B.table_bytes(64)
    m = mmap.mmap(-1, size)
    B.Table(m)                                      # format
    burst = 20_000
    admitted = mmap.mmap(-1, 8 * 4)                 # each child's admitted count (any split is valid)
    pids = []
    for i in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                tt = B.Table(m, init=False)
                n = sum(tt.rate(99, 10**12, NS, burst)[0] for _ in range(10_000))
                admitted[8 * i:8 * i + 8] = n.to_bytes(8, "little")
                os._exit(0)
            except BaseException:
                os._exit(255)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert sum(int.from_bytes(admitted[8 * i:8 * i + 8], "little") for i in range(4)) == burst
    t = B.Table(m, init=False)
    ok, remaining, _, _ = t.rate(99, 10**12, NS, burst, 1, False)
    assert 40_000 - burst == 20_000
    assert (ok, remaining) == (False, 0)            # every token spent: 40,000 attempts > 20,000 burst
    m2 = mmap.mmap(-1, size)
    B.Table(m2)
    pids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            tt = B.Table(m2, init=False)
            for _ in range(5_000):
                tt.rate(7, 10**12, NS, burst)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    t2 = B.Table(m2, init=False)
    # 20,000 takes in total, no lost update: the bucket is exactly empty.
    assert t2.rate(7, 10**12, NS, burst, 1, False)[:2] == (False, 0)
    assert t2.rate(7, 10**12 + NS, NS, burst, 1, False)[:2] == (True, 0)


def test_hash_key_is_stable() -> None:
    assert B.hash_key(1, b"partner-a") == B.hash_key(1, b"partner-a")
    assert B.hash_key(1, b"partner-a") != B.hash_key(2, b"partner-a")
    assert B.hash_key(0, b"") != 0


def test_zeroed_table_is_formatted_without_touching_slots() -> None:
    """The supervisor formats its fresh (all-zero) shared section with zeroed=True: only the header is
    written, so the table's pages stay unallocated until keys use them (idle memory of a host)."""
    buf = bytearray(B.table_bytes(64))
    buf[B.HEADER_BYTES + 40] = 0xAB                  # a byte of slot 0 (its `kind` field)
    t = B.Table(buf, init=True, zeroed=True)
    assert t.nslots == 64
    assert buf[B.HEADER_BYTES + 40] == 0xAB          # slots left as they were
    B.Table(buf, init=True)
    assert buf[B.HEADER_BYTES + 40] == 0             # a full format clears them


@settings(max_examples=100, deadline=None)
@given(interval=st.integers(1, 10**9), burst=st.integers(1, 20),
       ops=st.lists(st.tuples(st.integers(0, 3 * 10**9), st.booleans()), max_size=40))
def test_rate_wait_is_the_retry_of_one_more_and_charges_nothing(interval: int, burst: int,
                                                               ops: list[tuple[int, bool]]) -> None:
    t, ref = table(), RefRate(interval, burst)
    now = 10**12
    assert t.rate_wait(9, now, interval, burst) == 0 and t.used() == 0     # unknown key: nothing created
    for dt, take in ops:
        now += dt * interval // 10**9
        if take:
            t.rate(9, now, interval, burst)
            ref.take(9, now)
        ok, _, _, retry = ref.take(9, now, 1, False)
        assert t.rate_wait(9, now, interval, burst) == (0 if ok else retry)


def test_blocked_until_rises_atomically_and_clears_only_if_unchanged() -> None:
    t = table()
    assert t.blocked_until == 0
    t.block_until(100)
    t.block_until(50)                      # never lowered
    assert t.blocked_until == 100
    t.block_until(200)
    t.unblock(100)                         # read as 100, raised since: stays
    assert t.blocked_until == 200
    t.unblock(200)
    assert t.blocked_until == 0
