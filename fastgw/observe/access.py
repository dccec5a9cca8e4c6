"""The access log: one JSON line per request, on stdout, without a blocking write per request.

Every line is at most LINE_MAX = PIPE_BUF bytes, and every write is whole lines of at most PIPE_BUF bytes
(unless stdout is a regular file, where writes of whole lines do not interleave), so lines of several
processes sharing a pipe never splice (fastgw/observe/log.py). Both rules are applied in C:
fastgw/_core/accesslog.pyx, which also formats the lines.

The worker collects a small tuple per finished response (fastgw._core.worker.Worker.observe), formats the
batch every sweep (a quarter second), and hands the bytes to a writer thread, so a slow stdout (a full pipe
to the log shipper) never stalls the event loop. If the writer falls more than ACCESS_BACKLOG batches
behind, batches are dropped rather than buffered without bound; dropped lines, and lines whose write
failed, are counted (fastgw_log_dropped_total, through the worker's metrics region) and reported in the
lifecycle log (`access_log_dropped`, at most every DROP_REPORT_SECONDS).
"""
from __future__ import annotations

import asyncio
import os
import queue
import stat
import sys
import threading
import time
from typing import Any

from fastgw._core.accesslog import LINE_MAX, format_lines, write_lines
from fastgw.clientaddr import ClientAddress, Net
from fastgw.observe.log import log
from fastgw.observe.metrics import H_LOG_DROPPED, H_LOG_LOST

ACCESS_BACKLOG = 256   # batches (of up to a quarter second each) waiting for the writer thread
DROP_REPORT_SECONDS = 10.0


class AccessLog:
    """Formats batches of Worker.access_log tuples and writes them from a thread.

    Formatting runs on the event loop (it needs the GIL either way) in chunks of CHUNK lines, one chunk
    per loop iteration, so a busy quarter second never stalls the loop for a whole batch; a line costs a
    few hundred instructions (fastgw/_core/accesslog.pyx). `words` is the worker's metrics region (fastgw/observe/metrics.py),
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
