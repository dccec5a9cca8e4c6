"""The access log on a shared pipe (issue 11, item 21): 2 real workers under wrk write to one pipe (how a
container runtime captures stdout), and every line must arrive whole; lines the writer could not keep up
with are counted and reported; a line never exceeds one atomic pipe write (PIPE_BUF), whatever the
request; a non-blocking stdout loses nothing."""
from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from upstreams import StaleOrigin

from fastgw._core.accesslog import LINE_MAX, format_lines
from fastgw._core.http1 import RequestHead
from fastgw.observe.access import ACCESS_BACKLOG, AccessLog
from fastgw.observe.log import log
from tests.procutil import ROOT, Gateway, Origin, admin_get, config, metric

F_SETPIPE_SZ = 1031          # fcntl(2), Linux


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


class PipeGateway:
    """`fastgw run` whose stdout is a pipe read by a thread like a busy log shipper: it reads for READ
    seconds, then stops for PAUSE seconds (longer than a worker's quarter-second batch), so both workers
    regularly wait on a full pipe in the middle of a write; what they wrote arrives here byte for byte."""

    READ, PAUSE = 0.1, 0.4

    def __init__(self, cfg: Path, workers: int, pipe_size: int) -> None:
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, pipe_size)
        self.proc = subprocess.Popen([sys.executable, "-m", "fastgw", "run", "-c", str(cfg), "--workers",
                                      str(workers)], cwd=ROOT, stdout=w, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        os.close(w)
        self.fd = r
        self.data = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        started = self.event("started")
        self.listen, self.admin = started["listen"][0], started["admin"]
        deadline = time.monotonic() + 15
        while admin_get(f"http://{self.admin}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.05)

    def _read(self) -> None:
        phase = time.monotonic()
        while chunk := os.read(self.fd, 65536):
            with self.lock:
                self.data += chunk
            if time.monotonic() - phase > self.READ:
                time.sleep(self.PAUSE)
                phase = time.monotonic()

    def lines(self) -> list[bytes]:
        with self.lock:
            return bytes(self.data).split(b"\n")

    def event(self, name: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for raw in self.lines():
                if b'"event": "%s"' % name.encode() in raw:
                    return json.loads(raw)
            time.sleep(0.05)
        raise AssertionError(f"no {name} event: {self.lines()[-10:]}")

    def stop(self) -> None:
        self.proc.terminate()                      # drain: workers flush their access log and exit
        self.proc.wait(30)
        self.reader.join(10)
        os.close(self.fd)


def test_two_workers_one_pipe_every_line_whole(origin: Origin, tmp_path: Path) -> None:
    """wrk -c64 through 2 workers whose stdout is one pipe: every line parses as JSON, and every
    request is in the access log or counted as dropped (fastgw_log_dropped_total)."""
    path = tmp_path / "gw.toml"
    path.write_text(config(origin, extra_server="access_log = true",
                           drain='accept_seconds = "0s"\ntimeout_seconds = "5s"'))
    gw = PipeGateway(path, workers=2, pipe_size=16384)
    try:
        # 3 s of wrk: tens of thousands of lines (35,000 on a loaded 2-core box) through the 16 KiB pipe,
        # filled many times over; the 5 s this test first ran wrote more of the same lines, no new case.
        out = subprocess.run(["wrk", "-t2", "-c64", "-d3s", f"http://{gw.listen}/hello"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        m = re.search(r"(\d+) requests in", out.stdout)
        assert m is not None, out.stdout
        sent = int(m.group(1))
        time.sleep(0.6)                            # the last quarter-second batches
        text = admin_get(f"http://{gw.admin}/metrics")[1]
    finally:
        gw.stop()
    lines = gw.lines()
    assert lines[-1] == b""                        # the output ends with a complete line
    bad, access = [], 0
    for raw in lines[:-1]:
        try:
            obj = json.loads(raw)
        except ValueError:
            bad.append(raw[:200])
            continue
        access += obj.get("type") == "access"
    print(f"{sent} sent, {len(lines) - 1} lines, {len(bad)} not JSON")
    assert not bad, f"{len(bad)} of {len(lines) - 1} lines are not JSON, e.g. {bad[:3]}"
    served = sum(metric(text, "fastgw_requests_total", route="hello", method="GET", status_class=c)
                 for c in ("2xx", "5xx"))
    assert 'fastgw_log_dropped_total{reason="backlog"}' in text
    dropped = sum(metric(text, "fastgw_log_dropped_total", reason=r) for r in ("backlog", "write_error"))
    assert served >= sent > 1000
    assert access + dropped == served, (access, dropped, served)


# ---------------------------------------------------------------------------------------------------
# The writer in one process, on real pipes

def head(method: bytes = b"GET", host: bytes | None = b"api.example", path: bytes = b"/accounts/1",
         xff: bytes | None = None) -> RequestHead:
    h = RequestHead.__new__(RequestHead)
    h.method, h.host, h.path, h.xff = method, host, path, xff
    return h


def entry(i: int, h: RequestHead | None = None) -> tuple:
    """One tuple as fastgw._core.worker.Worker.observe appends it."""
    return (time.monotonic_ns(), 1_500_000, 200, h or head(path=b"/accounts/%d" % i), b"192.0.2.7",
            b"192.0.2.7", b"rid-%d" % i, "accounts", "core", b"10.1.2.3:8080", None, None)


def read_all(fd: int, out: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        out += chunk


def test_writer_behind_drops_are_counted_and_reported(capfd: pytest.CaptureFixture[str]) -> None:
    """Nobody reads the pipe: the writer blocks, ACCESS_BACKLOG batches queue up, the rest is dropped,
    counted in the metrics region (continuing a previous worker's count) and reported once."""
    r, w = os.pipe()
    words = memoryview(bytearray(8 * 8)).cast("Q")
    words[3] = 1000                                   # what an earlier worker of this slot dropped
    alog = AccessLog(3, fd=w, words=words)
    batches, per = ACCESS_BACKLOG + 60, 100
    for b in range(batches):
        alog.submit([entry(b * per + i) for i in range(per)])
    assert alog.dropped >= 50 * per
    alog.publish(time.monotonic())
    assert words[3] == 1000 + alog.dropped and words[4] == 0
    events = [json.loads(x) for x in capfd.readouterr().out.splitlines()]
    assert [e["backlog"] for e in events if e["event"] == "access_log_dropped"] == [alog.dropped]
    alog.publish(time.monotonic())                    # nothing new: no second report
    assert "access_log_dropped" not in capfd.readouterr().out
    got = bytearray()
    reader = threading.Thread(target=read_all, args=(r, got))
    reader.start()
    alog.close(timeout=30)
    os.close(w)
    reader.join(30)
    os.close(r)
    lines = bytes(got).splitlines()
    assert all(json.loads(x)["type"] == "access" for x in lines)
    assert len(lines) + alog.dropped == batches * per and alog.lost == 0


def test_nonblocking_output_loses_nothing() -> None:
    """A stdout someone set O_NONBLOCK (the flag belongs to the open file, shared by every process that
    inherited it): a full pipe is waited on, not taken for a failed write."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    alog = AccessLog(0, fd=w)
    got = bytearray()

    def slow_reader() -> None:
        time.sleep(0.3)                               # let the pipe fill first
        read_all(r, got)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    for b in range(40):
        alog.submit([entry(b * 100 + i) for i in range(100)])
    alog.close(timeout=30)
    os.close(w)
    reader.join(30)
    os.close(r)
    assert len(bytes(got).splitlines()) == 4000 and alog.dropped == 0 and alog.lost == 0


def test_long_request_line_fits_one_atomic_write() -> None:
    path = b"/a" * 4000 + b'"\\\xff'
    h = head(host=b"h\x01" * 600, path=path)
    line = format_lines([entry(1, h)], time.monotonic_ns(), time.time(), 0, None)
    assert len(line) <= LINE_MAX and line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj["truncated"] is True and obj["request_id"] == "rid-1"
    assert path.decode("latin-1").startswith(obj["path"]) and len(obj["path"]) >= 400
    assert ("h\x01" * 600).startswith(obj["host"])


@settings(max_examples=300, deadline=None)
@given(method=st.binary(min_size=1, max_size=40), host=st.none() | st.binary(max_size=3000),
       path=st.binary(max_size=9000), xff=st.none() | st.binary(max_size=50))
def test_any_request_bytes_make_one_valid_line(method: bytes, host: bytes | None, path: bytes,
                                               xff: bytes | None) -> None:
    """Whatever bytes a request carries: one line, valid JSON, at most LINE_MAX bytes, fields equal to
    the bytes (as latin-1) or, when cut, a prefix of them."""
    line = format_lines([entry(1, head(method, host, path, xff))], time.monotonic_ns(), time.time(), 2, None)
    assert len(line) <= LINE_MAX and line.count(b"\n") == 1 and line.endswith(b"\n")
    obj = json.loads(line)
    for key, raw in (("method", method), ("host", host), ("path", path)):
        if raw is None:
            assert obj[key] is None
        elif obj.get("truncated"):
            assert raw.decode("latin-1").startswith(obj[key])
        else:
            assert obj[key] == raw.decode("latin-1")
    assert obj["worker"] == 2 and obj["status"] == 200 and obj["duration_ms"] == 1.5
    assert obj["upstream"] == "core" and obj["target"] == "10.1.2.3:8080" and obj["client"] == "192.0.2.7"


def test_long_lifecycle_line_is_cut_to_one_atomic_write(capfd: pytest.CaptureFixture[str]) -> None:
    log("config_reload_failed", level="error", errors=[f"routes[{i}].path: invalid" for i in range(500)])
    out = capfd.readouterr().out
    assert len(out.encode()) <= LINE_MAX and out.count("\n") == 1
    obj = json.loads(out)
    assert obj["event"] == "config_reload_failed" and obj["truncated"] is True
    assert obj["errors"].startswith('["routes[0].path: invalid"')


# ---------------------------------------------------------------------------------------------------
# The documentation of the line

def documented_fields() -> list[str]:
    """The field names of the access-log table in docs/logs-and-metrics.md, in the documented order."""
    text = (ROOT / "docs" / "logs-and-metrics.md").read_text()
    table = text.split("| field | value |", 1)[1].split("\n\n", 1)[0]
    names: list[str] = []
    for row in table.splitlines()[2:]:
        names += re.findall(r"`([a-z_]+)`", row.split("|")[1])
    return names


def test_every_field_the_gateway_writes_is_documented_in_order(origin: Origin, tmp_path: Path) -> None:
    """Lines a real gateway writes for a proxied request, an upstream failure, a gRPC call, a request
    retried after its pooled upstream connection closed, and a request whose line had to be cut: together
    they carry every documented field and no other, each line in the documented order."""
    import grpc

    down = f"127.0.0.1:{free_port()}"
    stale = StaleOrigin().start()         # closes each connection at its second request: one retry
    routes = ('[[routes]]\nname = "grpc-down"\npath = "/test.Echo/*"\nupstream = "down"\nprotocol = "grpc"\n'
              '[[routes]]\nname = "http-down"\npath = "/down/*"\nupstream = "down"\n'
              '[[routes]]\nname = "stale"\npath = "/stale/*"\nupstream = "stale"\n'
              f'[upstreams.down]\ntargets = ["{down}"]\n[upstreams.stale]\ntargets = ["{stale.addr}"]\n')
    path = tmp_path / "gw.toml"
    path.write_text(config(origin, extra_server="access_log = true", routes=routes))
    gw = Gateway(path, workers=1)
    try:
        gw.wait_ready()
        assert httpx.get(gw.base + "/hello").status_code == 200
        assert httpx.get(gw.base + "/down/x").status_code == 502
        assert httpx.get(gw.base + "/hello/" + "x" * 6000).status_code == 200
        with grpc.insecure_channel(gw.listen, options=[("grpc.enable_retries", 0)]) as ch:
            with pytest.raises(grpc.RpcError) as e:
                ch.unary_unary("/test.Echo/Unary")(b"x", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert httpx.get(gw.base + "/stale/warm").status_code == 200
        assert httpx.get(gw.base + "/stale/again").status_code == 200     # retried on a fresh connection
        deadline = time.monotonic() + 5
        while len(lines := gw.access_lines()) < 6:
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        gw.close()
        stale.stop()
    documented = documented_fields()
    assert len(documented) == len(set(documented)) > 10
    written: set[str] = set()
    for line in lines:
        keys = [k for k in line if not k.startswith("_")]      # "_t": procutil's arrival time
        assert keys == [k for k in documented if k in keys], (keys, documented)
        written |= set(keys)
    assert written == set(documented), (sorted(written - set(documented)), sorted(set(documented) - written))
