"""100 MiB through the proxy each way, streamed, with the gateway's memory bounded.

The far end counts the bytes and checksums them. Midway the receiver stops reading for half a second:
without backpressure the gateway would buffer what the sender keeps producing, and its peak RSS (VmHWM of
the serving process, reset before each transfer) would show it.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
from upstreams import pattern_digest, pattern_stream

SIZE = 100 * 1024 * 1024
PAUSE_AT = 10 * 1024 * 1024
PAUSE = 0.5
RSS_HEADROOM_MIB = 60


@pytest.fixture(scope="module")
def expected() -> str:
    return pattern_digest(SIZE)


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin):
    gw = gateway_launcher.start(
        {"echo": {"targets": [echo_origin.addr], "timeout": "10s"}},
        [{"name": "big", "path": "/big/*", "upstream": "echo", "max_body": "256MiB"}])
    with gw.client() as c:                       # warm up: first requests allocate lasting state
        for i in range(20):
            assert c.post(f"/big/warm{i}", content=b"x" * 100_000).status_code == 200
            assert c.get(f"/big/warm{i}?size=100000").status_code == 200
    return gw


class PeakRss:
    """Samples the serving process's VmRSS while a transfer runs; the kernel's VmHWM is checked too."""

    def __init__(self, gw) -> None:
        self.gw = gw
        self.stop = threading.Event()
        time.sleep(0.3)                          # let the previous transfer's buffers go
        self.idle = gw.status_kib("VmRSS")
        gw.reset_peak_rss()
        self.peak = self.idle
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.gw.status_kib("VmRSS"))

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.gw.status_kib("VmHWM"))

    def check(self) -> None:
        grown = (self.peak - self.idle) / 1024
        assert grown < RSS_HEADROOM_MIB, f"gateway RSS grew {grown:.1f} MiB above idle ({self.idle / 1024:.1f} MiB)"


def upload_body(digest: list[str]) -> Iterator[bytes]:
    h = hashlib.sha256()
    for piece in pattern_stream(SIZE):
        h.update(piece)
        yield piece
    digest.append(h.hexdigest())


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_upload_100mib(gw, echo_origin, expected, framing):
    sent: list[str] = []
    headers = {"Content-Length": str(SIZE)} if framing == "content-length" else {}
    with PeakRss(gw) as rss, gw.client(timeout=60) as c:
        r = c.post(f"/big/upload-{framing}?pause_after={PAUSE_AT}&pause={PAUSE}", content=upload_body(sent),
                   headers=headers)
    assert r.status_code == 200, r.text[:500]
    doc = r.json()
    assert doc["body_len"] == SIZE
    assert doc["body_chunked"] is (framing == "chunked")
    assert sent == [expected] and doc["body_sha256"] == expected
    rss.check()


@pytest.mark.parametrize("te", ["cl", "chunked"])
def test_download_100mib(gw, expected, te):
    h = hashlib.sha256()
    n = 0
    paused = False
    with PeakRss(gw) as rss, gw.client(timeout=60) as c, c.stream("GET", f"/big/download?size={SIZE}&te={te}") as r:
        assert r.status_code == 200
        if te == "cl":
            assert r.headers["content-length"] == str(SIZE)
        else:
            assert r.headers["transfer-encoding"] == "chunked"
        for data in r.iter_raw(256 * 1024):
            n += len(data)
            h.update(data)
            if not paused and n >= PAUSE_AT:
                paused = True
                time.sleep(PAUSE)                 # the origin keeps sending meanwhile
    assert n == SIZE
    assert h.hexdigest() == expected
    rss.check()
