"""Single-flight across the workers of a pod: a shared-memory table of the keys whose GET is in flight, and
the answer handed from the worker that fetched it to the workers that waited.

Each worker keeps its own store, so knowing that another worker is fetching a key is not enough: the
waiter needs the object. The leader therefore publishes what it stored (status, fields, body, freshness)
into its slot of the table, and waiters in other workers copy it into their own store. A slot holds at
most PAYLOAD bytes: a larger answer is not handed over (the waiters go upstream, as they do when the
leader's answer may not be stored, when it fails, or after lock_timeout).

Section "cache_flights": SLOTS slots, a key's slot is its hash modulo SLOTS (another key in flight in the
same slot: no coalescing across workers for the second, as before this table). A slot is ROW words of
header, then PAYLOAD bytes:
  [KEY]       the key's hash (0: free); claimed with a compare-and-swap (fastgw._core.gates.shm_cas)
  [GEN]       a sequence count: odd while the payload is written, so a reader that copied it while it
              changed sees a different count and discards the copy
  [OWNER]     the leader's worker slot + 1
  [DEADLINE]  monotonic ns: in flight until (lock_timeout), or, once ready, readable until (READY_NS)
  [STATE]     IN_FLIGHT, READY or PASS (nothing to hand over: the waiters go upstream)
  [LEN]       the payload's length
The payload (msgpack) repeats the key's hash, so a slot taken over by another key while a reader looked at
it is never mistaken for the answer. Waiting is polling (every POLL seconds, the waiting worker's one
leader only; its other requests wait on the leader in memory).
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import msgspec

from fastgw._core.gates import shm_cas, shm_load, shm_store
from fastgw.process.shm import Section

SECTION = "cache_flights"
SLOTS = 64
ROW = 8                                  # header words
PAYLOAD = 128 * 1024
SLOT_BYTES = ROW * 8 + PAYLOAD
KEY, GEN, OWNER, DEADLINE, STATE, LEN = range(6)
IN_FLIGHT, READY, PASS = 1, 2, 3
READY_NS = 2_000_000_000                 # a published answer stays readable this long
POLL = 0.002

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def key_hash(primary: tuple[Any, ...]) -> int:
    """The same in every worker (Python's hash() is salted per process)."""
    h = int.from_bytes(hashlib.blake2b(repr(primary).encode(), digest_size=8).digest(), "little")
    return h or 1


def section() -> Section:
    return Section(SECTION, SLOTS * SLOT_BYTES)


def _now() -> int:
    return time.monotonic_ns()


class Flights:
    """This worker's view of the table (`me`: its slot)."""

    def __init__(self, mem: memoryview, me: int) -> None:
        self.mem = mem
        self.words = mem.cast("Q")
        self.me = me + 1

    def _w(self, i: int, field: int) -> int:
        return i * (SLOT_BYTES // 8) + field

    def claim(self, h: int, lock_timeout: float) -> tuple[str, int] | None:
        """("lead", i): this worker fetches the key; ("wait", i): another worker is fetching it (or has
        just published it); None: the slot is another key's."""
        i = h % SLOTS
        w = self.words
        now = _now()
        key = shm_load(w, self._w(i, KEY))
        live = shm_load(w, self._w(i, DEADLINE)) > now
        if key == h and live and shm_load(w, self._w(i, OWNER)) != self.me \
                and shm_load(w, self._w(i, STATE)) in (IN_FLIGHT, READY):
            return ("wait", i)
        if key != 0 and live and key != h:
            return None
        if key == h and live:
            return None                               # ours (an earlier request of this worker)
        if not shm_cas(w, self._w(i, KEY), key, h):
            return None                               # another worker took it first: no claim this time
        shm_store(w, self._w(i, STATE), 0)
        shm_store(w, self._w(i, OWNER), self.me)
        shm_store(w, self._w(i, DEADLINE), now + int(lock_timeout * 1e9))
        shm_store(w, self._w(i, STATE), IN_FLIGHT)
        return ("lead", i)

    def publish(self, i: int, h: int, answer: list[Any]) -> bool:
        """Hand the stored answer to the waiters (False: too large, or the slot is no longer ours)."""
        w = self.words
        data = _encode([h, *answer])
        if shm_load(w, self._w(i, KEY)) != h or len(data) > PAYLOAD:
            self.release(i, h)
            return False
        gen = shm_load(w, self._w(i, GEN))
        shm_store(w, self._w(i, GEN), gen | 1)                      # odd: being written
        start = i * SLOT_BYTES + ROW * 8
        self.mem[start:start + len(data)] = data
        shm_store(w, self._w(i, LEN), len(data))
        shm_store(w, self._w(i, GEN), (gen | 1) + 1)
        shm_store(w, self._w(i, DEADLINE), _now() + READY_NS)
        shm_store(w, self._w(i, STATE), READY)
        return True

    def release(self, i: int, h: int) -> None:
        """Nothing to hand over: the waiters go upstream; the slot is free again."""
        w = self.words
        if shm_load(w, self._w(i, KEY)) == h and shm_load(w, self._w(i, STATE)) == IN_FLIGHT:
            shm_store(w, self._w(i, STATE), PASS)
            shm_store(w, self._w(i, DEADLINE), 0)

    def read(self, i: int, h: int) -> list[Any] | None:
        w = self.words
        g1 = shm_load(w, self._w(i, GEN))
        if g1 & 1:
            return None
        n = shm_load(w, self._w(i, LEN))
        start = i * SLOT_BYTES + ROW * 8
        data = bytes(self.mem[start:start + min(n, PAYLOAD)])
        if shm_load(w, self._w(i, GEN)) != g1 or shm_load(w, self._w(i, KEY)) != h:
            return None
        try:
            answer = _decode(data)
        except msgspec.DecodeError:
            return None
        return answer[1:] if isinstance(answer, list) and answer and answer[0] == h else None

    async def wait(self, i: int, h: int, timeout: float) -> list[Any] | None:
        """The answer another worker publishes for key `h`, or None (it passed, failed, or `timeout`)."""
        w = self.words
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if shm_load(w, self._w(i, KEY)) != h:
                return None
            state = shm_load(w, self._w(i, STATE))
            if state == READY:
                return self.read(i, h)
            if state != IN_FLIGHT or shm_load(w, self._w(i, DEADLINE)) <= _now():
                return None
            await asyncio.sleep(POLL)
        return None
