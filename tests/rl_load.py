"""Load generator for the traffic-policy tests (run as a subprocess so the test process does not share
its GIL): keep-alive HTTP/1.1 connections sending GETs back to back for a fixed time.

usage: python rl_load.py DURATION PATH HEADER_LINE ADDR[,ADDR...] CONNS_PER_ADDR
Prints one JSON line: {"ok": n200, "limited": n429, "other": {status: n}, "t0": first send (monotonic),
"t1": last response, "degraded": responses carrying RateLimit-Degraded}.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response (Content-Length framed): its status and head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return int(head[9:12]), head


def tally(out: dict, status: int) -> None:
    if status == 200:
        out["ok"] += 1
    elif status == 429:
        out["limited"] += 1
    else:
        out["other"][status] = out["other"].get(status, 0) + 1


async def conn(addr: str, path: str, header: str, end: float, out: dict) -> None:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    req = (f"GET {path} HTTP/1.1\r\nHost: test\r\n" + (header + "\r\n" if header else "") + "\r\n").encode()
    try:
        while time.monotonic() < end:
            if out["t0"] is None:
                out["t0"] = time.monotonic()
            writer.write(req)
            status, head = await read_response(reader)
            if b"\r\nratelimit-degraded:" in head.lower():
                out["degraded"] += 1
            out["t1"] = time.monotonic()
            tally(out, status)
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, int(port))
    finally:
        writer.close()


async def main() -> None:
    duration, path, header, addrs, n = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    out: dict = {"ok": 0, "limited": 0, "other": {}, "t0": None, "t1": None, "degraded": 0}
    end = time.monotonic() + duration
    await asyncio.gather(*(conn(a, path, header, end, out) for a in addrs.split(",") for _ in range(n)))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
