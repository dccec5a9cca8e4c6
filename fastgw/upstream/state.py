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

import ipaddress
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastgw.process.shm import Section

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.process.shm import SharedMemory

SECTION = "upstreams"
RECORDS = 4096
RECORD_BYTES = 128         # balancer.pxd REC_WORDS x 8


def shm_sections(cfg: Config, workers: int) -> list[Section]:
    return [Section(SECTION, RECORDS * RECORD_BYTES)]


def attach(shm: SharedMemory | None, slot: int, services: dict[str, Any]) -> None:
    """The table of records, for build_groups (fastgw/compile.py)."""
    if shm is not None and SECTION in shm.layout.sections:
        from fastgw._core.balancer import TargetTable
        services["upstream_table"] = TargetTable(shm.section(SECTION))


# Words of a record (fastgw/_core/balancer.pxd Record) the supervisor reads.
W_FAILS, W_DOWN_UNTIL, W_SINCE, W_REASON, W_EJECTED_BY = 2, 3, 5, 6, 8
# A host-name target's DNS state (fastgw/upstream/discovery.py): addresses it resolved to last, when it
# last resolved, since when it fails to (monotonic ms; 0: it does not).
W_DNS_ADDRESSES, W_DNS_OK, W_DNS_FAILING = 13, 14, 15
# An address a host-name target resolved to: the name's record key (owner_of; 0: not among the name's last
# addresses), the address in 2 words (16 bytes, IPv4 mapped into IPv6). The same words as the name's DNS
# state, in another record. Read by the prober (health.py) and /status/upstreams, which cannot enumerate
# addresses from keys (hashes).
W_DNS_OWNER, W_DNS_IP = 13, 14


def owner_of(key: int) -> int:
    """A record key as the signed 64-bit word W_DNS_OWNER holds (never 0)."""
    key |= 1
    return key - (1 << 64) if key >= 1 << 63 else key


def mark_resolved(words: Any, owner: int, ip: str) -> None:
    """The address `ip` (its record's words) is among the addresses of the name whose key is `owner`
    (0: no longer). The address is written before the owner, so whoever sees the owner reads it whole."""
    if owner:
        packed = ipaddress.ip_address(ip)
        raw = (packed.packed if packed.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}").packed)
        words[W_DNS_IP] = int.from_bytes(raw[:8], "little", signed=True)
        words[W_DNS_IP + 1] = int.from_bytes(raw[8:], "little", signed=True)
    words[W_DNS_OWNER] = owner


def resolved(table: Any, owner: int) -> list[tuple[str, Any]]:
    """(address, record words) of each address the workers last resolved the name with key `owner` to,
    sorted by address."""
    out = []
    for words in table.having(W_DNS_OWNER, owner):
        raw = b"".join(w.to_bytes(8, "little", signed=True) for w in (words[W_DNS_IP], words[W_DNS_IP + 1]))
        ip = ipaddress.IPv6Address(raw)
        out.append((str(ip.ipv4_mapped or ip), words))
    return sorted(out, key=lambda x: x[0])
REASONS = ("connect", "reset", "timeout", "status", "health")   # balancer.pxd Reason, as labels; "health":
                                                                  # marked down by the prober (health.py)
# An upstream's own records (balancer.pxd GroupRecord; keys: group_key): limits, then retries by condition.
G_ACTIVE, G_PENDING, G_CONNS, G_RETRYING, G_BUDGET_OUT, G_OVERFLOW = 1, 2, 3, 4, 5, 6
G_CHANGES = 9              # returns to service of its targets: each worker then re-reads their slow starts
LIMITS = ("requests", "pending", "connections")                 # balancer.pxd Overflow, as labels


def _groups(shm: SharedMemory, cfg: Config) -> Iterator[tuple[str, Any, Any]]:
    """(upstream, limits record words, retries record words) of every configured upstream."""
    from fastgw._core.balancer import TargetTable
    from fastgw.compile import target_key
    table = TargetTable(shm.section(SECTION))
    for name in cfg.upstreams:
        key = target_key(name, "")
        g, r = table.words(key), table.words(key + 2)
        if g is not None and r is not None:
            yield name, g, r


def _records(shm: SharedMemory, cfg: Config) -> Iterator[tuple[str, str, Any]]:
    """(upstream, address, record words) of every configured target."""
    from fastgw._core.balancer import TargetTable
    from fastgw.compile import target_key
    from fastgw.config.upstreams import address
    table = TargetTable(shm.section(SECTION))
    for name, up in cfg.upstreams.items():
        for t in up.targets:
            words = table.words(target_key(name, address(t)))
            if words is not None:
                yield name, address(t), words


def status(shm: SharedMemory | None, cfg: Config) -> dict[str, Any]:
    """GET /status/upstreams: each target's state ("up", "ejected" by outlier detection, or "down" by the
    active checks), the reason of its last ejection,
    since when (Unix seconds; null: in service since start), its ejections and its consecutive
    failures."""
    out: dict[str, Any] = {"upstreams": {}}
    if shm is None or SECTION not in shm.layout.sections:
        return out
    now_ms = time.monotonic() * 1000
    wall = time.time()
    from fastgw._core.balancer import TargetTable
    from fastgw.compile import target_key
    from fastgw.config.checks import parse_hostport
    from fastgw.config.upstreams import is_ip
    table = TargetTable(shm.section(SECTION))
    for name, addr, w in _records(shm, cfg):
        out["upstreams"].setdefault(name, {"targets": []})["targets"].append(_entry(addr, w, now_ms, wall))
        host, port = parse_hostport(addr)
        if not is_ip(host) and (w[W_DNS_OK] or w[W_DNS_FAILING]):      # a host name (discovery.py)
            out["upstreams"][name]["targets"][-1]["dns"] = {
                "addresses": w[W_DNS_ADDRESSES],
                "resolved": round(wall - (now_ms - w[W_DNS_OK]) / 1000, 3) if w[W_DNS_OK] else None,
                "failing_since": round(wall - (now_ms - w[W_DNS_FAILING]) / 1000, 3) if w[W_DNS_FAILING] else None,
                "targets": [_entry(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", aw, now_ms, wall)
                            for ip, aw in resolved(table, owner_of(target_key(name, addr)))]}
    for name, g, _ in _groups(shm, cfg):
        out["upstreams"].setdefault(name, {"targets": []})["limits"] = {
            "requests": g[G_ACTIVE], "pending": g[G_PENDING], "connections": g[G_CONNS],
            "retrying": g[G_RETRYING]}
    return out


def _entry(addr: str, w: Any, now_ms: float, wall: float) -> dict[str, Any]:
    """One target's state as /status/upstreams shows it."""
    ejected = w[W_DOWN_UNTIL] > now_ms
    forever = w[W_DOWN_UNTIL] == (1 << 63) - 1       # health.py DOWN_FOREVER: until a check passes
    ejections = sum(w[W_EJECTED_BY + i] for i in range(len(REASONS)))
    return {
        "target": addr,
        "state": "down" if forever else "ejected" if ejected else "up",
        "reason": REASONS[w[W_REASON]] if ejections else None,
        "since": round(wall - (now_ms - w[W_SINCE]) / 1000, 3) if w[W_SINCE] else None,
        "until": round(wall + (w[W_DOWN_UNTIL] - now_ms) / 1000, 3) if ejected and not forever else None,
        "ejections": ejections,
        "consecutive_failures": w[W_FAILS],
    }


def metrics(shm: SharedMemory | None, cfg: Config) -> list[str]:
    """fastgw_upstream_target_up and fastgw_upstream_ejections_total, for every configured target."""
    if shm is None or SECTION not in shm.layout.sections:
        return []
    now_ms = time.monotonic() * 1000
    up = _family("fastgw_upstream_target_up", "gauge",
                 "1 when the target is in service, 0 while it is ejected or down.")
    ej = _family("fastgw_upstream_ejections_total", "counter", "Ejections of a target by outlier detection, by "
                 "reason (connect, reset, timeout, status: 502/503/504), and health: marked down by the active "
                 "checks.")
    for name, addr, w in _records(shm, cfg):
        labels = f'upstream="{name}",target="{addr}"'
        up.append(f"fastgw_upstream_target_up{{{labels}}} {0 if w[W_DOWN_UNTIL] > now_ms else 1}")
        ej += [f'fastgw_upstream_ejections_total{{{labels},reason="{r}"}} {w[W_EJECTED_BY + i]}'
               for i, r in enumerate(REASONS)]
    return up + ej + _group_metrics(shm, cfg)


def _family(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _group_metrics(shm: SharedMemory, cfg: Config) -> list[str]:
    """fastgw_upstream_overflow_total, fastgw_upstream_retries_total and
    fastgw_upstream_retry_budget_exhausted_total, for every configured upstream."""
    from fastgw.config.upstreams import RETRY_ON
    ov = _family("fastgw_upstream_overflow_total", "counter", "Requests answered 503 upstream-overloaded "
                 "(circuit breaking), by the limit reached (requests, pending, connections).")
    rt = _family("fastgw_upstream_retries_total", "counter",
                 "Retries made, by the condition that caused them (retry.on).")
    bx = _family("fastgw_upstream_retry_budget_exhausted_total", "counter",
                 "Retries not made because the retry budget was used up.")
    for name, g, r in _groups(shm, cfg):
        ov += [f'fastgw_upstream_overflow_total{{upstream="{name}",limit="{lim}"}} {g[G_OVERFLOW + i]}'
               for i, lim in enumerate(LIMITS)]
        rt += [f'fastgw_upstream_retries_total{{upstream="{name}",reason="{c}"}} {r[1 + i]}'
               for i, c in enumerate(RETRY_ON)]
        bx.append(f'fastgw_upstream_retry_budget_exhausted_total{{upstream="{name}"}} {g[G_BUDGET_OUT]}')
    return ov + rt + bx


def page(shm: SharedMemory | None, cfg: Config) -> tuple[int, str, str]:
    return 200, "application/json", json.dumps(status(shm, cfg), indent=1) + "\n"


PAGES = {"/status/upstreams": page}
