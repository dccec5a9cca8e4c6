"""What each worker's store client sees, in shared memory (section "redisnodes", one region per worker),
and how the supervisor shows it: the fastgw_redis_node_* / _redirects / _topology families and the JSON
of GET /status/redis.

Region layout in 64-bit words: [0] mode + 1 (0: no client) [1] topology changes seen [2..4] MOVED, ASK,
TRYAGAIN replies followed [5] nodes listed [6] the client can answer some keys (client.up) [7] reserved;
then MAX_NODES entries of ENTRY_WORDS: [0] up [1] commands [2] errors [3] ms since the epoch of the last
change of `up` [4..11] the address, ASCII, NUL-padded. A worker writes its region when a node changes
state and at every heartbeat; the supervisor only reads.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastgw.store.config import MAX_NODES

if TYPE_CHECKING:
    from fastgw.process.shm import SharedMemory

SECTION = "redisnodes"
MODE_NAMES = ("standalone", "sentinel", "cluster")
HEADER = 8
ENTRY_WORDS = 16
ADDR_WORDS = 8
REGION_BYTES = (HEADER + MAX_NODES * ENTRY_WORDS) * 8


def region(shm: SharedMemory, slot: int) -> memoryview:
    return shm.section(SECTION)[slot * REGION_BYTES:(slot + 1) * REGION_BYTES].cast("Q")


def publish(words: Any, client: Any) -> None:
    """Write `client`'s state (fastgw/store/redis.py) into a worker's region."""
    words[0] = MODE_NAMES.index(client.mode) + 1
    words[1] = client.changes
    words[2], words[3], words[4] = client.redirects
    nodes = client.nodes()[:MAX_NODES]
    words[5] = len(nodes)
    words[6] = 1 if client.up else 0
    for i, n in enumerate(nodes):
        base = HEADER + i * ENTRY_WORDS
        words[base] = 1 if n.up else 0
        words[base + 1] = n.commands
        words[base + 2] = n.errors
        words[base + 3] = int(n.since * 1000)
        raw = n.addr.encode()[:ADDR_WORDS * 8].ljust(ADDR_WORDS * 8, b"\0")
        for j in range(ADDR_WORDS):
            words[base + 4 + j] = int.from_bytes(raw[j * 8:(j + 1) * 8], "little")


def _entries(words: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(min(words[5], MAX_NODES)):
        base = HEADER + i * ENTRY_WORDS
        raw = b"".join(words[base + 4 + j].to_bytes(8, "little") for j in range(ADDR_WORDS)).rstrip(b"\0")
        out.append({"node": raw.decode("ascii", "replace"), "up": bool(words[base]), "commands": words[base + 1],
                    "errors": words[base + 2], "since_ms": words[base + 3]})
    return out


def summary(regions: list[Any]) -> dict[str, Any]:
    """Every live worker's view merged: per node, how many workers reach it; the counters summed."""
    live = [w for w in regions if w[0]]
    nodes: dict[str, dict[str, Any]] = {}
    for w in live:
        for e in _entries(w):
            n = nodes.setdefault(e["node"], {"node": e["node"], "workers_up": 0, "workers_down": 0,
                                             "commands": 0, "errors": 0, "down_since_ms": None})
            n["workers_up" if e["up"] else "workers_down"] += 1
            n["commands"] += e["commands"]
            n["errors"] += e["errors"]
            if not e["up"]:
                n["down_since_ms"] = min(n["down_since_ms"] or e["since_ms"], e["since_ms"])
    return {"mode": MODE_NAMES[live[0][0] - 1] if live else None,
            "workers": len(live),
            "workers_degraded": sum(1 for w in live if not w[6] or any(not e["up"] for e in _entries(w))),
            "topology_changes": max((w[1] for w in live), default=0),
            "redirects": {k: sum(w[2 + i] for w in live) for i, k in enumerate(("moved", "ask", "tryagain"))},
            "nodes": sorted(nodes.values(), key=lambda n: n["node"])}


def status_json(regions: list[Any]) -> str:
    return json.dumps(summary(regions), indent=1) + "\n"


def render_metrics(regions: list[Any]) -> list[str]:
    s = summary(regions)
    if s["mode"] is None:
        return []
    out = ["# HELP fastgw_redis_node_up Live workers whose connection to this Redis node is up (primaries and "
           "the standalone or Sentinel master in use).",
           "# TYPE fastgw_redis_node_up gauge"]
    out += [f'fastgw_redis_node_up{{node="{n["node"]}"}} {n["workers_up"]}' for n in s["nodes"]]
    out += ["# HELP fastgw_redis_node_errors_total Failures per Redis node (timeouts, lost or refused connections, "
            "error replies), over the live workers.",
            "# TYPE fastgw_redis_node_errors_total counter"]
    out += [f'fastgw_redis_node_errors_total{{node="{n["node"]}"}} {n["errors"]}' for n in s["nodes"]]
    out += ["# HELP fastgw_redis_redirects_total Redis Cluster redirections followed (MOVED, ASK, TRYAGAIN).",
            "# TYPE fastgw_redis_redirects_total counter"]
    out += [f'fastgw_redis_redirects_total{{kind="{k}"}} {v}' for k, v in s["redirects"].items()]
    out += ["# HELP fastgw_redis_topology_changes_total Changes of the Redis topology a worker saw (a new "
            "slot map, a new Sentinel master).",
            "# TYPE fastgw_redis_topology_changes_total counter",
            f"fastgw_redis_topology_changes_total {s['topology_changes']}",
            "# HELP fastgw_redis_workers_degraded Live workers with a Redis node they cannot reach (their calls "
            "for that node's keys follow on_store_error).",
            "# TYPE fastgw_redis_workers_degraded gauge",
            f"fastgw_redis_workers_degraded {s['workers_degraded']}"]
    return out
