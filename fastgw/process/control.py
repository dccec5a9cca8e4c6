"""The control channel between the supervisor and a worker: JSON lines over an inherited socket pair.

The supervisor sends:

  {"op": "config", "gen": N, "hash": H, "toml": TEXT, "slots": {route: metrics slot}, "workers": N}
      the first one starts serving; later ones are reloads: the worker compiles the new config and swaps
      one reference (Worker.rt). Each request keeps the Runtime it started with, so requests in flight
      finish on the old config. Upstream groups whose settings did not change are carried over with their
      warm keep-alive pools; pools of replaced groups are closed as their connections come back idle.
  {"op": "drain", "accept": S, "timeout": T}
      SIGTERM semantics (docs/operations.md "Signals"): keep accepting for S seconds with keep-alive off, then close
      the listeners, give requests in flight up to T seconds, exit 0.
  {"op": "stop"}
      stop at once.
  {"op": "policy", "policy": NAME, ...}
      a policy's admin action (PURGE /cache...): the worker hands it to that policy's `control` hook
      (fastgw/policies/contract.py AdminRuntime) and logs the result; nothing is answered.

and the worker answers {"ev": "ready" | "applied" | "rejected", "gen": N, ...}. The supervisor validated
the text before sending it, and the text travels with the message, so every worker compiles exactly the
bytes the supervisor checked (not whatever the file holds by then).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

MSG_LIMIT = 64 * 1024 * 1024


async def send_msg(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(json.dumps(msg).encode() + b"\n")
    await writer.drain()


async def read_msg(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    msg = json.loads(line)
    assert isinstance(msg, dict)
    return msg
