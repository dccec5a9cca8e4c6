"""The lifecycle log: events (startup, reload, worker exits) as JSON lines on stdout, one write each.

Every process of one gateway writes to the same stdout, usually a pipe (container runtimes and systemd
capture stdout that way). A write to a pipe is atomic only up to PIPE_BUF bytes (4 KiB on Linux); a larger
one may be split and interleaved with another process's data, which splices lines. So every line is at
most LINE_MAX = PIPE_BUF bytes (fastgw/_core/accesslog.pyx, which applies the same rule to the access
log: fastgw/observe/access.py).
"""
from __future__ import annotations

import json
import os
import sys
import time

from fastgw._core.accesslog import LINE_MAX

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

