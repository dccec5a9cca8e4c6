"""Load generator for the store tests (a subprocess: it must not share the test's GIL): keep-alive HTTP/1.1
connections sending GETs back to back, each request on the next of KEYS keys (X-Key: k<i>), for a fixed
time; it records the slowest answer and when answers said RateLimit-Degraded (monotonic clock, the same
in every process of the machine).

usage: python redis_load.py DURATION PATH ADDR[,ADDR...] CONNS_PER_ADDR KEYS
SIGINT ends the load before DURATION (each connection stops after its answer in flight), for a test that
stops when what it waits for has happened rather than after a fixed time.
Prints one JSON line: ok, limited, other {status: n}, degraded, first_degraded, last_degraded, max_latency,
max_at (when the slowest request was sent), slow [[sent, seconds] of answers slower than SLOW], t0, t1,
latency_p50.
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import uvloop
from rl_load import read_response, tally

SLOW = 0.02          # seconds: answers slower than this are listed with their send time


async def conn(addr: str, path: str, keys: int, start: int, end: list[float], out: dict, lat: list[float]) -> None:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    i = start
    try:
        while time.monotonic() < end[0]:
            i += 1
            req = f"GET {path} HTTP/1.1\r\nHost: test\r\nX-Key: k{i % keys}\r\n\r\n".encode()
            t = time.monotonic()
            writer.write(req)
            try:
                status, head = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):    # counted as a failed request
                out["other"]["reset"] = out["other"].get("reset", 0) + 1
                out["resets"].append(t)
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
                continue
            if b"connection: close" in head.lower():        # the gateway's per-connection request cap
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
            now = time.monotonic()
            took = now - t
            lat.append(took)
            if took > out["max_latency"]:
                out["max_latency"], out["max_at"] = took, t
            if took > SLOW:
                out["slow"].append((t, took))
            if b"\r\nratelimit-degraded:" in head.lower():
                out["degraded"] += 1
                out["first_degraded"] = out["first_degraded"] or now
                out["last_degraded"] = now
            tally(out, status)
    finally:
        writer.close()


async def main() -> None:
    duration, path, addrs, n, keys = (float(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), int(sys.argv[4]),
                                      int(sys.argv[5]))
    out: dict = {"ok": 0, "limited": 0, "other": {}, "degraded": 0, "first_degraded": None, "last_degraded": None,
                 "max_latency": 0.0, "max_at": None, "t0": time.monotonic(), "slow": [], "resets": []}
    lat: list[float] = []
    end = [time.monotonic() + duration]
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, end.__setitem__, 0, 0.0)
    await asyncio.gather(*(conn(a, path, keys, j * 7919, end, out, lat) for a in addrs for j in range(n)))
    out["t1"] = time.monotonic()
    lat.sort()
    out["latency_p50"] = lat[len(lat) // 2] if lat else None
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
