"""Logs: lifecycle events and the access log, as JSON lines on stdout.

Lifecycle events (startup, reload, worker exits) are rare and written at once. The access log is one line
per request and must not cost a blocking write per request: the worker collects a small tuple per finished
response (fastgw._core.proxy.Worker.observe), formats the batch every sweep (a quarter second), and hands
the bytes to a writer thread, so a slow stdout (a full pipe to the log shipper) never stalls the event loop.
If the writer falls more than ACCESS_BACKLOG batches behind, batches are dropped and counted rather than
buffered without bound.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import sys
import threading
import time
from typing import Any

import msgspec

ACCESS_BACKLOG = 256   # batches (of up to a quarter second each) waiting for the writer thread

_static: dict[str, object] = {}
LEVELS = ("debug", "info", "warning", "error")
_min_level = 1            # server.log_level: lines below it are not written (default "info")


def set_level(level: str) -> None:
    """Write lifecycle lines at `level` and above (server.log_level)."""
    global _min_level
    _min_level = LEVELS.index(level)


def set_context(**fields: object) -> None:
    """Fields added to every lifecycle line of this process (e.g. role, worker slot)."""
    _static.update(fields)


def log(event: str, level: str = "info", **fields: object) -> None:
    """One lifecycle event as a JSON line on stdout (a single write: lines from processes sharing the
    pipe do not interleave, as long as they stay under PIPE_BUF)."""
    if level in LEVELS and LEVELS.index(level) < _min_level:
        return
    line = {"ts": round(time.time(), 3), "level": level, "event": event, "pid": os.getpid(), **_static,
            **fields}
    data = (json.dumps(line, default=str) + "\n").encode()
    try:
        os.write(sys.stdout.fileno(), data)
    except (BlockingIOError, BrokenPipeError, ValueError, OSError):
        pass


def _text(b: bytes | None) -> str | None:
    # Request-derived bytes; latin-1 keeps every byte (the encoder escapes what needs it).
    return b.decode("latin-1") if b is not None else None


def log_dropped_headers(request_id: bytes, client: bytes, dropped: list[tuple[str, bytes]]) -> None:
    """One debug line per request whose header fields were dropped for their "_" (fastgw/headers.py);
    set as Worker.debug_log at log level "debug". Names are cut at 64 characters, values never logged."""
    log("headers_dropped", level="debug", request_id=_text(request_id), client=_text(client),
        headers=[{"name": _text(name[:64]), "reason": reason} for reason, name in dropped])


class AccessLine(msgspec.Struct, omit_defaults=True):
    """One access-log line (field order is the output order)."""
    ts: float
    type: str
    request_id: str | None
    client: str | None
    method: str | None
    host: str | None
    path: str | None            # the query string is never logged (it often carries credentials)
    route: str | None
    status: int
    duration_ms: float
    worker: int
    grpc_status: int | None = None    # calls on grpc routes only (omitted on other lines)


class AccessLog:
    """Formats batches of Worker.access_log tuples and writes them from a thread.

    Formatting runs on the event loop (it needs the GIL either way) in chunks of CHUNK lines, one chunk
    per loop iteration, so a busy quarter second never stalls the loop for a whole batch; msgspec
    encodes a line in well under a microsecond."""

    CHUNK = 256

    def __init__(self, worker_slot: int, fd: int | None = None) -> None:
        self.slot = worker_slot
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.q: queue.Queue[bytes | None] = queue.Queue(ACCESS_BACKLOG)
        self.dropped = 0
        self.encoder = msgspec.json.Encoder()
        self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self.thread.start()

    def format(self, batch: list[tuple[Any, ...]]) -> bytes:
        mono_ns = time.monotonic_ns()
        wall = time.time()
        slot = self.slot
        lines = []
        for end_ns, dur_ns, status, head, peer, rid, route, grpc_status in batch:
            lines.append(AccessLine(
                round(wall - (mono_ns - end_ns) / 1e9, 6), "access", _text(rid), _text(peer),
                _text(head.method) if head is not None else None,
                _text(head.host) if head is not None else None,
                _text(head.path) if head is not None else None,
                route, status, round(dur_ns / 1e6, 3), slot, grpc_status))
        return self.encoder.encode_lines(lines)

    def submit(self, batch: list[tuple[Any, ...]]) -> None:
        if not batch:
            return
        if len(batch) > self.CHUNK:
            rest = batch[self.CHUNK:]
            batch = batch[:self.CHUNK]
            try:
                asyncio.get_running_loop().call_soon(self.submit, rest)
            except RuntimeError:                  # no loop (tests, shutdown): format it all now
                batch = batch + rest
        try:
            self.q.put_nowait(self.format(batch))
        except queue.Full:
            self.dropped += len(batch)

    def close(self, timeout: float = 2.0) -> None:
        try:
            self.q.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.fd, view)
                except InterruptedError:
                    continue
                except OSError:
                    break
                view = view[n:]
