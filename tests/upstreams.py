"""Real peers for the proxy integration tests: origin servers on loopback and a raw HTTP/1.1 client.

Origins run an asyncio loop (the stock one, not uvloop: the gateway's own stack is what is under test)
in a daemon thread of the test process, so a test can look at what each origin received:

  EchoOrigin        a well-behaved HTTP/1.1 origin. It reports the request it saw (request line, headers
                    as received, body length and sha256, body framing) as JSON, and checks that what the
                    gateway sent is well-formed (see `violations`). Query parameters shape the response:
                      status=N      status code (204/304 and HEAD answers carry no body)
                      size=N        an N-byte body of `pattern()` bytes instead of the JSON report
                      te=cl|chunked|close   response framing (Content-Length, chunked, or end-by-close)
                      delay=S       wait S seconds before answering
                      gate=NAME     send the head and the first 1 KiB, then wait for open_gate(NAME)
                      hdr=N:V       add a response header (repeatable)
                      interim=N     send an interim 1xx response first
                      pause_after=B&pause=S   stop reading the request body for S seconds after B bytes
  StaleOrigin       serves the first request of every connection; on the second it reads the head and
                    closes without answering (a keep-alive connection closed just as it was reused).
  IdleCloseOrigin   an echo origin that closes every connection shortly after each response.
  ResetOrigin       reads the request head, then resets the connection (RST).
  GarbageOrigin     answers with bytes that are not HTTP.
  SlowOrigin        reads the request and never answers.
  MidBodyOrigin     sends a response head promising a body, part of the body, then closes.
  CloseDelimitedOrigin  answers with a body delimited by closing the connection (legal HTTP/1.1).
  OverrunOrigin     keeps connections alive but sends bytes after the declared end of some responses.

The raw client (`RawClient`) speaks HTTP/1.1 over a plain socket, for pipelining, malformed input and
byte-level checks of framing and connection closure.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# ---------------------------------------------------------------------------------------------------
# Deterministic payloads

# A prime-length block: a payload made of it never lines up with power-of-two buffer sizes, so a piece
# that is lost, repeated or reordered somewhere on the way changes the checksum.
PATTERN_BLOCK = hashlib.shake_256(b"fastgw integration payload").digest(65521)


def pattern(offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of the endless repetition of PATTERN_BLOCK."""
    out = bytearray()
    blk = len(PATTERN_BLOCK)
    while n > 0:
        start = offset % blk
        piece = PATTERN_BLOCK[start:start + n]
        out += piece
        offset += len(piece)
        n -= len(piece)
    return bytes(out)


def pattern_stream(total: int, piece: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        yield pattern(sent, n)
        sent += n


def pattern_digest(total: int) -> str:
    h = hashlib.sha256()
    for p in pattern_stream(total):
        h.update(p)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Origin servers

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEX = re.compile(rb"[0-9a-fA-F]+")


class BadMessage(Exception):
    """What the gateway sent is not well-formed HTTP/1.1 (recorded in Origin.violations)."""


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    conn: int
    seq: int

    def values(self, name: str) -> list[str]:
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.target).query))

    def query_all(self, key: str) -> list[str]:
        return [v for k, v in parse_qsl(urlsplit(self.target).query) if k == key]


@dataclass
class Received:
    """A request an origin received completely."""
    head: Head
    body_len: int
    body_sha256: str
    chunked: bool
    body: bytes                  # the first 64 KiB
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def report(self) -> dict:
        h = self.head
        return {
            "method": h.method, "target": h.target, "version": h.version,
            "headers": [[n, v] for n, v in h.headers],
            "body_len": self.body_len, "body_sha256": self.body_sha256, "body_chunked": self.chunked,
            "body": self.body.decode("latin-1") if self.body_len <= len(self.body) else None,
            "conn": h.conn, "seq": h.seq,
        }


class Origin:
    """An HTTP origin on 127.0.0.1:<ephemeral port>, served by an asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.port = 0
        self.heads: list[Head] = []            # every request head received, in order
        self.requests: list[Received] = []     # every request received completely
        self.incomplete: list[Head] = []       # heads whose body never arrived completely
        self.violations: list[str] = []        # malformed HTTP received from the gateway
        self.errors: list[str] = []            # unexpected exceptions in the origin's own code
        self.progress: dict[str, int] = {}     # body bytes received so far, per request target
        self.connections = 0
        self.ended: set[int] = set()           # ids of connections that have ended (Head.conn)
        self._conn_ids = itertools.count(1)
        self._gates: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def addr(self) -> str:
        return f"{getattr(self, 'host', '127.0.0.1')}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> Origin:
        ready = threading.Event()
        self.host = host

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, host, port, limit=1 << 20, backlog=256))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("origin did not start")
        return self

    def stop(self) -> None:
        if self.loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self.loop = None

    def open_gate(self, name: str) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(lambda: self._gate(name).set())

    def _gate(self, name: str) -> asyncio.Event:
        return self._gates.setdefault(name, asyncio.Event())

    # -- queries from the test thread --------------------------------------------------------------
    def heads_for(self, marker: str) -> list[Head]:
        return [h for h in list(self.heads) if marker in h.target]

    def requests_for(self, marker: str) -> list[Received]:
        return [r for r in list(self.requests) if marker in r.head.target]

    def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.005)
        return bool(predicate())

    # -- serving -----------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = next(self._conn_ids)
        try:
            await self.serve(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except BadMessage as e:
            self.violations.append(str(e))
        except Exception as e:  # a bug in the test origin itself: make it visible
            self.errors.append(repr(e))
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()
            self.ended.add(conn)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        raise NotImplementedError

    async def read_head(self, reader: asyncio.StreamReader, conn: int, seq: int) -> Head | None:
        """The next request head on the connection, or None at a clean EOF between requests."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial:
                raise BadMessage(f"connection closed inside a request head: {e.partial[:200]!r}") from None
            return None
        except asyncio.LimitOverrunError:
            raise BadMessage("request head over 1 MiB") from None
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise BadMessage(f"bad request line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not TOKEN.fullmatch(name):
                raise BadMessage(f"bad header line {line!r}")
            if b"\n" in value or b"\r" in value or b"\x00" in value:
                raise BadMessage(f"control character in header {line!r}")
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        head = Head(parts[0].decode(), parts[1].decode("latin-1"), parts[2].decode(), headers, conn, seq)
        self.heads.append(head)
        if parts[2] != b"HTTP/1.1":
            self.violations.append(f"gateway sent {parts[2]!r} upstream")
        if len(head.values("host")) != 1:
            self.violations.append(f"{head.target}: {len(head.values('host'))} Host headers")
        return head

    async def read_body(self, reader: asyncio.StreamReader, head: Head) -> Received:
        te = head.values("transfer-encoding")
        cl = head.values("content-length")
        h = hashlib.sha256()
        keep = bytearray()
        n = 0
        q = head.query
        pause_after = int(q.get("pause_after", -1))
        pause = float(q.get("pause", 0))
        trailers: list[tuple[str, str]] = []

        async def take(data: bytes) -> None:
            nonlocal n, pause_after
            n += len(data)
            h.update(data)
            if len(keep) < 65536:
                keep.extend(data[:65536 - len(keep)])
            self.progress[head.target] = n
            if 0 <= pause_after <= n:
                pause_after = -1
                await asyncio.sleep(pause)

        if te and cl:
            raise BadMessage(f"{head.target}: both Transfer-Encoding and Content-Length sent upstream")
        try:
            if te:
                if te != ["chunked"]:
                    raise BadMessage(f"{head.target}: Transfer-Encoding {te!r} sent upstream")
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if not HEX.fullmatch(line[:-2]):
                        raise BadMessage(f"{head.target}: bad chunk-size line {line[:80]!r}")
                    size = int(line[:-2], 16)
                    if size == 0:
                        break
                    left = size
                    while left:
                        data = await reader.read(min(left, 65536))
                        if not data:
                            raise asyncio.IncompleteReadError(b"", left)
                        left -= len(data)
                        await take(data)
                    if await reader.readexactly(2) != b"\r\n":
                        raise BadMessage(f"{head.target}: chunk data not followed by CRLF")
                while True:
                    line = await reader.readuntil(b"\r\n")
                    if line == b"\r\n":
                        break
                    name, _, value = line[:-2].partition(b":")
                    trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            elif cl:
                if len(cl) != 1 or not cl[0].isdigit():
                    raise BadMessage(f"{head.target}: Content-Length {cl!r} sent upstream")
                left = int(cl[0])
                while left:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    await take(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.incomplete.append(head)
            raise
        rec = Received(head, n, h.hexdigest(), bool(te), bytes(keep), trailers)
        self.requests.append(rec)
        return rec

    @staticmethod
    def wants_close(head: Head) -> bool:
        return any("close" in v.lower() for v in head.values("connection"))


class EchoOrigin(Origin):
    """A well-behaved origin: answers every request, keeps connections alive."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        for seq in itertools.count(1):
            head = await self.read_head(reader, conn, seq)
            if head is None:
                return
            rec = await self.read_body(reader, head)
            keep = await self.respond(rec, writer)
            if not keep or self.wants_close(head):
                return

    async def respond(self, rec: Received, writer: asyncio.StreamWriter) -> bool:
        """Write the response the query asks for; False if the connection must close after it."""
        head = rec.head
        q = head.query
        status = int(q.get("status", 200))
        te = q.get("te", "cl")
        if "delay" in q:
            await asyncio.sleep(float(q["delay"]))
        if "interim" in q:
            writer.write(b"HTTP/1.1 %d Interim\r\nX-Interim: yes\r\n\r\n" % int(q["interim"]))
        if "size" in q:
            size = int(q["size"])
            body_iter: Iterator[bytes] = pattern_stream(size)
            ctype = b"application/octet-stream"
        else:
            payload = json.dumps(rec.report()).encode()
            size = len(payload)
            body_iter = iter([payload])
            ctype = b"application/json"
        nobody = head.method == "HEAD" or status in (204, 304)
        lines = [b"HTTP/1.1 %d %s" % (status, b"OK" if status == 200 else b"Status"),
                 b"Content-Type: " + ctype, b"Server: test-origin"]
        for h in head.query_all("hdr"):
            lines.append(h.encode("latin-1"))
        if status == 204:
            pass
        elif te == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
        elif te == "cl":
            lines.append(b"Content-Length: %d" % size)
        if te == "close":
            lines.append(b"Connection: close")
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        if nobody:
            await writer.drain()
            return te != "close"
        gate = q.get("gate")
        sent = 0
        for piece in body_iter:
            if gate is not None and sent == 0 and len(piece) > 1024:
                first, piece = piece[:1024], piece[1024:]
                self._write_body(writer, first, te)
                sent += len(first)
                await writer.drain()
                await asyncio.wait_for(self._gate(gate).wait(), 10)
            self._write_body(writer, piece, te)
            sent += len(piece)
            await writer.drain()
        if te == "chunked":
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return te != "close"

    @staticmethod
    def _write_body(writer: asyncio.StreamWriter, data: bytes, te: str) -> None:
        if te == "chunked":
            writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            writer.write(data)


class StaleOrigin(EchoOrigin):
    """Answers the first request on each connection; reads the second one's head, then closes."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        head = await self.read_head(reader, conn, 1)
        if head is None:
            return
        rec = await self.read_body(reader, head)
        await self.respond(rec, writer)
        head = await self.read_head(reader, conn, 2)
        if head is not None:
            self.drop(head, writer)

    def drop(self, head: Head, writer: asyncio.StreamWriter) -> None:
        """The second request of a connection: never answered (the connection closes)."""
        self.incomplete.append(head)


class IdleCloseOrigin(EchoOrigin):
    """Closes each connection 50 ms after answering (an origin whose keep-alive timeout is short)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        head = await self.read_head(reader, conn, 1)
        if head is None:
            return
        rec = await self.read_body(reader, head)
        await self.respond(rec, writer)
        await asyncio.sleep(0.05)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a reset (RST): SO_LINGER on, 0 s."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ResetOrigin(Origin):
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        await self.read_head(reader, conn, 1)
        reset(writer)


class GarbageOrigin(Origin):
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        await self.read_head(reader, conn, 1)
        writer.write(b"THIS IS NOT HTTP\r\n\x00\x01\x02\r\n\r\n")
        await writer.drain()
        await reader.read()                    # hold the connection until the gateway drops it


class SlowOrigin(Origin):
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        await self.read_head(reader, conn, 1)
        await reader.read()                    # never answer; wait for the gateway to give up


class MidBodyOrigin(Origin):
    """Promises 100000 body bytes (Content-Length, or chunked with ?te=chunked), sends 1000, closes."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        head = await self.read_head(reader, conn, 1)
        if head is None:
            return
        await self.read_body(reader, head)
        body = pattern(0, 1000)
        if head.query.get("te") == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body)
                         + body + b"\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + body)
        await writer.drain()
        await asyncio.sleep(0.05)


class CloseDelimitedOrigin(Origin):
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        head = await self.read_head(reader, conn, 1)
        if head is None:
            return
        await self.read_body(reader, head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        for piece in pattern_stream(300_000, 50_000):
            writer.write(piece)
            await writer.drain()


class OverrunOrigin(Origin):
    """Keep-alive origin whose responses end where their framing says, followed by `?extra=` (bytes as a
    latin-1 string, appended in the same write) when asked. `?te=cl` (default: Content-Length 10),
    `chunked` (one 10-byte chunk, then the last chunk) or `none` (204, no body). `?later=1` sends the extra
    bytes in a second write 50 ms after the response (they reach the gateway on an idle connection)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int) -> None:
        for seq in itertools.count(1):
            head = await self.read_head(reader, conn, seq)
            if head is None:
                return
            await self.read_body(reader, head)
            q = head.query
            body = b"0123456789"
            te = q.get("te", "cl")
            if te == "chunked":
                resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + body + b"\r\n0\r\n\r\n"
            elif te == "none":
                resp = b"HTTP/1.1 204 No Content\r\n\r\n"
            else:
                resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + body
            extra = q.get("extra", "").encode("latin-1")
            if q.get("later"):
                writer.write(resp)
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(extra)
            else:
                writer.write(resp + extra)
            await writer.drain()


# ---------------------------------------------------------------------------------------------------
# Raw HTTP/1.1 client

class Closed(Exception):
    """The server closed (or reset) the connection before a complete response arrived."""

    def __init__(self, how: str, partial: bytes) -> None:
        super().__init__(f"connection {how} after {len(partial)} bytes: {partial[:300]!r}")
        self.how = how
        self.partial = partial


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool
    raw_head: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        low = name.lower()
        return [v for n, v in self.headers if n.lower() == low]

    def header(self, name: str) -> str | None:
        vals = self.values(name)
        return vals[0] if vals else None

    def has(self, name: str) -> bool:
        return bool(self.values(name))

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def conn_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.values("connection") for t in v.split(",") if t.strip()}


class RawClient:
    """One TCP connection to the gateway; requests are bytes, responses are parsed strictly."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        if self.eof:
            raise Closed("closed", bytes(self.buf))
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            self.eof = True
            raise Closed("reset", bytes(self.buf)) from None
        if not data:
            self.eof = True
            raise Closed("closed", bytes(self.buf))
        self.buf += data

    def take_until(self, sep: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i + len(sep)])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise AssertionError(f"no {sep!r} within {limit} bytes")
            self._fill()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self) -> Response:
        """The next response head (interim or final); its body is not read."""
        raw = self.take_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        m = re.fullmatch(rb"(HTTP/1\.[01]) ([1-5][0-9][0-9]) ?(.*)", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep and TOKEN.fullmatch(name), f"bad response header line {line!r}"
            headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
        return Response(m[1].decode(), int(m[2]), m[3].decode("latin-1"), headers, b"", False, raw)

    def read_response(self, method: str = "GET", interim: bool = False) -> Response:
        """The next final response (interim 1xx skipped unless `interim`), body read by its framing."""
        while True:
            r = self.read_head()
            if r.status >= 200 or interim:
                break
        if r.status < 200:
            return r
        te = r.values("transfer-encoding")
        cl = r.values("content-length")
        assert not (te and cl), f"both Transfer-Encoding and Content-Length: {r.raw_head!r}"
        if method == "HEAD" or r.status in (204, 304):
            return r
        if te:
            assert te == ["chunked"], f"unexpected Transfer-Encoding {te!r}"
            r.chunked = True
            body = bytearray()
            while True:
                line = self.take_until(b"\r\n")
                assert HEX.fullmatch(line[:-2]), f"bad chunk-size line {line!r}"
                size = int(line[:-2], 16)
                if size == 0:
                    break
                body += self.take(size)
                assert self.take(2) == b"\r\n", "chunk not followed by CRLF"
            while (line := self.take_until(b"\r\n")) != b"\r\n":
                name, _, value = line[:-2].partition(b":")
                r.trailers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            r.body = bytes(body)
        elif cl:
            assert len(cl) == 1 and cl[0].isdigit(), f"bad Content-Length {cl!r}"
            r.body = self.take(int(cl[0]))
        else:
            r.body = self.read_to_end()
        return r

    def read_to_end(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes (EOF or reset); fails if it stays open past `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
        except Closed:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def closed_by_server(self, timeout: float = 3.0) -> str | None:
        """'closed' or 'reset' once the server ends the connection with no further bytes; None if it
        is still open after `timeout`. Fails if unexpected bytes arrive."""
        if self.eof:
            return "closed"
        assert not self.buf, f"unexpected bytes after the response: {bytes(self.buf[:200])!r}"
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            self.eof = True
            return "reset"
        finally:
            self.sock.settimeout(5.0)
        assert not data, f"unexpected bytes after the response: {data[:200]!r}"
        self.eof = True
        return "closed"


def request(method: str, target: str, host: str | None = "gw.test", headers: list[tuple[str, str]] = (),
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """Serialise a request; Content-Length is added for a non-empty body unless a framing header is given."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    names = {n.lower() for n, _ in headers}
    lines += [f"{n}: {v}" for n, v in headers]
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# ---------------------------------------------------------------------------------------------------
# Checks of responses the gateway made itself

REQUEST_ID_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


def assert_problem(status: int, headers: Any, body: bytes, expect_status: int, slug: str,
                   instance: str | None = None) -> dict:
    """A response fastgw made itself: RFC 9457 problem+json with the stable slug and the request id."""
    assert status == expect_status, f"expected {expect_status} {slug}, got {status}: {body[:300]!r}"
    get = headers.get if hasattr(headers, "get") else None
    ctype = get("content-type") if get else None
    assert ctype is not None and ctype.split(";")[0].strip() == "application/problem+json", ctype
    doc = json.loads(body)
    assert doc["type"] == f"urn:fastgw:problem:{slug}", doc
    assert doc["status"] == expect_status, doc
    assert isinstance(doc["title"], str) and doc["title"], doc
    rid = get("x-request-id")
    assert rid and doc["request_id"] == rid, (rid, doc)
    assert set(rid) <= REQUEST_ID_OK and len(rid) <= 128, rid
    if instance is not None:
        assert doc["instance"] == instance, doc
    assert get("server") is None, "no Server banner on gateway responses"
    return doc


class _RawHeaders:
    def __init__(self, resp: Any) -> None:
        self.resp = resp

    def get(self, name: str) -> str | None:
        return self.resp.header(name)


def assert_raw_problem(resp: Any, expect_status: int, slug: str, instance: str | None = None) -> dict:
    return assert_problem(resp.status, _RawHeaders(resp), resp.body, expect_status, slug, instance)
