"""The budget of failed credentials per client address (server.limits.auth_failures; docs/identity.md
"Failed credentials: a budget per client address"), against credential stuffing: 40 wrong API keys sent at once from one address used to be
verified, all 40. Now each failed credential (401 invalid or expired, not a missing one) spends a token of
the address's bucket; when the bucket is empty, requests from that address on authenticated routes are
answered 429 `auth-throttled` before any credential is looked at, until a token is back.

Which address: the one the IP rules use (fastgw.clientaddr.ClientAddress: the TCP peer, from the PROXY
protocol header when the listener has it, or the trusted X-Forwarded-For entry). An IPv6 client is counted
by its /64, the block one subscriber usually gets (cycling through the addresses of one /64 does not buy a
fresh budget) [the same rule as common IPv6 rate limiters].

Where: a bucket table of its own in the host's shared memory (buckets.Table, the GCRA of the rate limits),
so the workers of a host share one budget per address, and of a fixed size (AUTHFAIL_KEYS), so the memory
an attacker controls is capped: a new key takes a free or idle slot, else evicts the one that becomes
idle soonest. A table of its own also keeps a flood of addresses from evicting the rate plans' buckets.

Cost when nothing fails: none on the request path but one load. The table header's `blocked_until` (the
latest moment until which some address may be over its budget) is 0; the compiled fast path
(fastgw._core.gates.AuthGate) reads it and goes on. Only while it is set does a request with a known-good
credential cost a lookup of its address: compiled too (gates.FailGate.check), with the address parsed
once per peer and X-Forwarded-For value, so an attacker who keeps one address blocked does not make every
other client's request pay a Python address parse.
"""
from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any

from fastgw._core import buckets as B
from fastgw._core.gates import FailGate
from fastgw.config.units import parse_rate
from fastgw.observe.metrics import AUTH_REASONS
from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config

AUTHFAIL_KEYS = 16384                     # addresses tracked at once: 1 MiB of shared memory (64 B each)
TABLE_BYTES = B.table_bytes(AUTHFAIL_KEYS)
SECTION = "authfail"
_SEED = B.hash_key(0, b"fastgw auth failures")
NS = 1_000_000_000


def _format(mem: memoryview) -> None:
    B.Table(mem, init=True, zeroed=True)     # a fresh memfd: untouched pages


SHM_SECTION = Section(SECTION, TABLE_BYTES, _format)    # the host's table, in the shared file


def attach(shm: Any, services: dict[str, Any]) -> None:
    """Worker side: the host's table in services (absent without shared memory: see table())."""
    if shm is not None and SECTION in shm.layout.sections:
        services["authfail_table"] = B.Table(shm.section(SECTION), init=False)


def table(services: dict[str, Any]) -> B.Table:
    t = services.get("authfail_table")
    if t is None:                         # no shared memory (tests in one process, tools): this process only
        t = services["authfail_table"] = B.Table(bytearray(TABLE_BYTES))
    return t


class FailureBudget(FailGate):
    """server.limits.auth_failures over the table: `check` (compiled, FailGate) before credentials are
    verified, `failed` after one did not verify. `client(ex)` is the auth policy's ClientAddress."""

    def __init__(self, cfg: Config, tab: B.Table, client: Any) -> None:
        count, period = parse_rate(cfg.server.limits.auth_failures)
        self.table = tab
        self.interval = period * NS // count
        self.burst = count
        self.reason = AUTH_REASONS.index("throttled")
        self.by_xff = bool(cfg.server.trusted_proxies)
        self.keys = {}
        self.client = client

    def key(self, ex: Any) -> int:
        addr = self.client(ex)
        if addr is None:                  # not an IP address (cannot happen on TCP listeners): the raw peer
            return B.hash_key(_SEED, b"peer:" + ex.peer)
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            return B.hash_key(_SEED, mapped.packed if mapped is not None else addr.packed[:8])
        return B.hash_key(_SEED, addr.packed)

    def failed(self, ex: Any) -> None:
        """A credential from this client did not verify: spend a token; the last one blocks the address
        until the next token is back."""
        now = time.monotonic_ns()
        ok, left, next_ns, retry_ns = self.table.rate(self.address_key(ex), now, self.interval, self.burst, 1, True)
        if not ok:                        # another worker spent the last one meanwhile
            self.table.block_until(now + retry_ns)
        elif left == 0:
            self.table.block_until(now + next_ns)


def budget(cfg: Config, services: dict[str, Any], client: Any) -> FailureBudget | None:
    if cfg.server.limits.auth_failures == "off":
        return None
    return FailureBudget(cfg, table(services), client)
