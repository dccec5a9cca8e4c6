"""Progress of a benchmark while it runs, on stderr: which step (scenario, round, system), how many are
done, and the time left.

A step is announced when it starts:

    [proxy 7/24 0:52] 3b c64 round 2/3 fastgw (~10s) | ~2:57 left

and a step that runs longer than `heartbeat` seconds (a callgrind run, 10,000 connections being opened)
repeats its line with the time spent in it, so a quiet terminal always means a stuck benchmark, not a busy
one. The time left is the remaining steps times the mean of the steps done so far, or, before the first
one ends, the caller's estimate per step. Lines, not carriage returns: the output may be a CI log or a
file. Stdlib only, like the bench scripts.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


def clock_text(seconds: float) -> str:
    """0:07, 2:57, 1:02:03."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, name: str, steps: int, per_step: float | None = None, heartbeat: float = 15.0,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.steps, self.per_step = name, max(1, steps), per_step
        self.out = out if out is not None else sys.stderr
        self.clock = clock
        self.t0 = clock()
        self.done = 0                       # steps finished
        self.what = ""
        self.step_t0 = self.t0
        self.heartbeat = heartbeat
        self.written = self.t0             # when the last line was written
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def left(self) -> float | None:
        """Seconds left (the current step counted in full), or None when there is nothing to go by."""
        if self.done:
            per = (self.step_t0 - self.t0) / self.done
        elif self.per_step is not None:
            per = self.per_step
        else:
            return None
        return max(0.0, (self.steps - self.done) * per - (self.clock() - self.step_t0))

    def line(self, note: str = "") -> str:
        now = self.clock()
        left = self.left()
        tail = f" | ~{clock_text(left)} left" if left is not None else ""
        return (f"[{self.name} {min(self.done + 1, self.steps)}/{self.steps} {clock_text(now - self.t0)}] "
                f"{self.what}{note}{tail}")

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()
            self.written = self.clock()

    def step(self, what: str, seconds: float | None = None) -> None:
        """Step `what` starts (the previous one, if any, is finished); `seconds`: how long it should take."""
        now = self.clock()
        if self.what:
            self.done += 1
        self.what, self.step_t0 = what, now
        self._write(self.line(f" (~{clock_text(seconds)})" if seconds else ""))
        if self.heartbeat and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="bench-progress", daemon=True)
            self._thread.start()

    def note(self, text: str) -> None:
        """Say how far the current step is (e.g. connections opened so far)."""
        self._write(self.line(f" ... {text}"))

    def finish(self, summary: str = "") -> None:
        """The last step is finished: stop the heartbeat and say how long the whole run took."""
        if self.what:
            self.done += 1
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._write(f"[{self.name} done in {clock_text(self.clock() - self.t0)}] {summary}".rstrip())

    def _beat(self) -> None:
        """A line when `heartbeat` seconds have passed without one (checked every second)."""
        while not self._stop.wait(min(1.0, self.heartbeat)):
            if self.clock() - self.written >= self.heartbeat:
                self.note(f"{clock_text(self.clock() - self.step_t0)} in this step")
