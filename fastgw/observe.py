"""Logs: lifecycle events and the access log, as JSON lines on stdout.

Every process of one gateway writes to the same stdout, usually a pipe (container runtimes and systemd
capture stdout that way). A write to a pipe is atomic only up to PIPE_BUF bytes (4 KiB on Linux); a larger
one may be split and interleaved with another process's data, which splices lines. So every line is at
most LINE_MAX = PIPE_BUF bytes, and every write is whole lines of at most PIPE_BUF bytes (unless stdout is
a regular file, where writes of whole lines do not interleave). Both rules are applied in C:
fastgw/_core/accesslog.pyx, which also formats the access lines.

Lifecycle events (startup, reload, worker exits) are rare and written at once, one write each. The access
log is one line per request and must not cost a blocking write per request: the worker collects a small
tuple per finished response (fastgw._core.proxy.Worker.observe), formats the batch every sweep (a quarter
second), and hands the bytes to a writer thread, so a slow stdout (a full pipe to the log shipper) never
stalls the event loop. If the writer falls more than ACCESS_BACKLOG batches behind, batches are dropped
rather than buffered without bound; dropped lines, and lines whose write failed, are counted
(fastgw_log_dropped_total, through the worker's metrics region) and reported in the lifecycle log
(`access_log_dropped`, at most every DROP_REPORT_SECONDS).
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import stat
import sys
import threading
import time
from typing import Any

from fastgw._core.accesslog import LINE_MAX, format_lines, write_lines
from fastgw.clientaddr import ClientAddress, Net
from fastgw.metrics import H_LOG_DROPPED, H_LOG_LOST

ACCESS_BACKLOG = 256   # batches (of up to a quarter second each) waiting for the writer thread
DROP_REPORT_SECONDS = 10.0

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
    """One lifecycle event as a JSON line on stdout, in a single write of at most LINE_MAX bytes (long
    field values are cut, and the line says "truncated": true), so it never splices with other lines."""
    if level in LEVELS and LEVELS.index(level) < _min_level:
        return
    line = {"ts": round(time.time(), 3), "level": level, "event": event, "pid": os.getpid(), **_static,
            **fields}
    data = (json.dumps(line, default=str) + "\n").encode()
    if len(data) > LINE_MAX:
        data = _shorten(line, set(fields))
    try:
        os.write(sys.stdout.fileno(), data)
    except (BlockingIOError, BrokenPipeError, ValueError, OSError):
        pass


def _shorten(line: dict[str, object], cuttable: set[str]) -> bytes:
    """`line` as JSON within LINE_MAX: the longest of the event's own fields are replaced by a prefix of
    their JSON text until it fits."""
    line = {**line, "truncated": True}
    while True:
        data = (json.dumps(line, default=str) + "\n").encode()
        over = len(data) - LINE_MAX
        if over <= 0 or not cuttable:
            return data
        key = max(cuttable, key=lambda k: len(json.dumps(line[k], default=str)))
        text = line[key] if isinstance(line[key], str) else json.dumps(line[key], default=str)
        assert isinstance(text, str)
        keep = max(0, len(text) - over - 8)
        line[key] = text[:keep] + "..."
        if keep == 0:
            cuttable.discard(key)


def _text(b: bytes | None) -> str | None:
    # Request-derived bytes; latin-1 keeps every byte (the encoder escapes what needs it).
    return b.decode("latin-1") if b is not None else None


def log_dropped_headers(request_id: bytes, client: bytes, dropped: list[tuple[str, bytes]]) -> None:
    """One debug line per request whose header fields were dropped for their "_" (fastgw/headers.py);
    set as Worker.debug_log at log level "debug". Names are cut at 64 characters, values never logged."""
    log("headers_dropped", level="debug", request_id=_text(request_id), client=_text(client),
        headers=[{"name": _text(name[:64]), "reason": reason} for reason, name in dropped])


class AccessLog:
    """Formats batches of Worker.access_log tuples and writes them from a thread.

    Formatting runs on the event loop (it needs the GIL either way) in chunks of CHUNK lines, one chunk
    per loop iteration, so a busy quarter second never stalls the loop for a whole batch; a line costs a
    few hundred instructions (fastgw/_core/accesslog.pyx). `words` is the worker's metrics region (fastgw/metrics.py),
    whose drop counters continue from what an earlier worker of the slot counted."""

    CHUNK = 256

    def __init__(self, worker_slot: int, fd: int | None = None, words: Any = None) -> None:
        self.slot = worker_slot
        self.fd = sys.stdout.fileno() if fd is None else fd
        # Writes to a regular file do not interleave with other processes' writes; anything else (pipe,
        # socket, terminal) gets writes of whole lines of at most PIPE_BUF bytes.
        self.atomic = 0 if stat.S_ISREG(os.fstat(self.fd).st_mode) else LINE_MAX
        self.q: queue.Queue[bytes | None] = queue.Queue(ACCESS_BACKLOG)
        self.client = ClientAddress(())
        self.dropped = 0               # lines not queued: the writer was behind (event loop thread)
        self.lost = 0                  # lines not written: the write failed (writer thread)
        self.words = words
        self.base = (words[H_LOG_DROPPED], words[H_LOG_LOST]) if words is not None else (0, 0)
        self.reported = (0, 0)
        self.report_at = 0.0
        self.thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self.thread.start()

    def set_trusted(self, trusted: tuple[Net, ...]) -> None:
        """server.trusted_proxies: whose X-Forwarded-For names the client (as for the IP rules)."""
        self.client = ClientAddress(trusted)

    def format(self, batch: list[tuple[Any, ...]]) -> bytes:
        return format_lines(batch, time.monotonic_ns(), time.time(), self.slot,
                            self.client.text if self.client.trusted else None)

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

    def publish(self, now: float, final: bool = False) -> None:
        """Copy the drop counts into the metrics region; report new drops in the lifecycle log (at most
        every DROP_REPORT_SECONDS, and at exit)."""
        dropped, lost = self.dropped, self.lost
        if self.words is not None:
            self.words[H_LOG_DROPPED] = self.base[0] + dropped
            self.words[H_LOG_LOST] = self.base[1] + lost
        if (dropped, lost) != self.reported and (final or now >= self.report_at):
            log("access_log_dropped", level="warning", backlog=dropped - self.reported[0],
                write_error=lost - self.reported[1], total=self.base[0] + self.base[1] + dropped + lost)
            self.reported = (dropped, lost)
            self.report_at = now + DROP_REPORT_SECONDS

    def close(self, timeout: float = 2.0) -> None:
        """Let the writer finish what is queued (up to `timeout`); what it cannot is counted as dropped."""
        try:
            self.q.put(None, timeout=timeout)
        except queue.Full:
            pass
        else:
            self.thread.join(timeout)
            if not self.thread.is_alive():
                return
        while True:
            try:
                data = self.q.get_nowait()
            except queue.Empty:
                return
            if data is not None:
                self.dropped += data.count(b"\n")

    def _run(self) -> None:
        while True:
            data = self.q.get()
            if data is None:
                return
            written, err = write_lines(self.fd, data, self.atomic)
            if err:
                self.lost += data.count(b"\n", written)
