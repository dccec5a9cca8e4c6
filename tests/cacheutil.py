"""The cache tests' origin and gateway: an origin whose answers the test scripts per request (status and
header lines from the query, as EchoOrigin does) and that also answers If-None-Match with 304 when the
query's `etag` matches, can be told to fail (503) or to drop connections, and counts requests per path."""
from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from tests.procutil import Gateway
from tests.upstreams import EchoOrigin, Received

KEY_A = "key-a"
KEY_B = "key-b"


class CacheOrigin(EchoOrigin):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"                     # "ok" | "503" (answers 503) | "drop" (closes without answering)
        self.delay = 0.0                     # seconds before answering (a slow origin)
        self.count: Counter[str] = Counter()  # requests received per "METHOD path"
        self.seen: list = []                  # their heads, in order

    async def respond(self, rec: Received, writer: asyncio.StreamWriter) -> bool:
        head = rec.head
        path = urlsplit(head.target).path
        self.count[f"{head.method} {path}"] += 1
        self.seen.append(head)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "drop":
            writer.close()
            return False
        q = head.query
        if self.mode == "503":
            writer.write(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\ndown")
            return True
        etag = q.get("etag")
        if etag is not None and etag in head.values("if-none-match"):
            lines = [b"HTTP/1.1 304 Not Modified", b"ETag: " + etag.encode()]
            lines += [h.encode("latin-1") for h in head.query_all("hdr")]
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
            return True
        if etag is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nETag: " + etag.encode() + b"\r\n")   # then the echo's head
            return await super().respond(rec, _Rest(writer))
        return await super().respond(rec, writer)

    def n(self, path: str, method: str = "GET") -> int:
        return self.count[f"{method} {path}"]


class _Rest:
    """A writer that drops the status line of what it is given first (CacheOrigin wrote its own)."""

    def __init__(self, w: asyncio.StreamWriter) -> None:
        self.w = w
        self.first = True

    def write(self, data: bytes) -> None:
        if self.first:
            self.first = False
            data = data[data.index(b"\r\n") + 2:]
        self.w.write(data)

    async def drain(self) -> None:
        await self.w.drain()

    def close(self) -> None:
        self.w.close()


def config(origin: str, down: str, cache: str = "", workers_note: str = "") -> str:
    digest = {k: hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B)}
    return f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.origin]
targets = ["{origin}"]
[upstreams.down]
targets = ["{down}"]
[consumers.a]
api_keys_sha256 = ["{digest[KEY_A]}"]
[consumers.b]
api_keys_sha256 = ["{digest[KEY_B]}"]
[cache.main]
max_memory = "1MiB"
max_object = "64KiB"
query = ["page", "sort"]
stale_while_revalidate = "30s"
stale_if_error = "60s"
lock_timeout = "3s"
{cache}
[cache.keyed]
per_consumer = true
[[routes]]
name = "c"
path = "/c/*"
upstream = "origin"
cache = "main"
[[routes]]
name = "auth"
path = "/auth/*"
upstream = "origin"
auth = ["api_key"]
cache = "main"
[[routes]]
name = "mine"
path = "/mine/*"
upstream = "origin"
auth = ["api_key"]
cache = "keyed"
[[routes]]
name = "flaky"
path = "/flaky/*"
upstream = "down"
cache = "main"
[[routes]]
name = "plain"
path = "/*"
upstream = "origin"
'''


def start(tmp_path: Path, text: str, workers: int = 1) -> Gateway:
    cfg = tmp_path / "fastgw.toml"
    cfg.write_text(text)
    gw = Gateway(cfg, workers=workers)
    gw.wait_ready()
    return gw
