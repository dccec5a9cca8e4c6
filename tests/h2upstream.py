"""A real HTTP/2 origin for the tests of `protocol = "h2"` upstreams, built on the h2 library's server side.

H2Origin listens on 127.0.0.1 (an asyncio loop in a daemon thread, as tests/upstreams.py's origins): h2c
with prior knowledge, or TLS with ALPN "h2" when given a certificate. Every request is answered with what
it received, so a test can check the conversion an HTTP/1.1 request went through:

  x-seen-method, x-seen-path, x-seen-authority, x-seen-scheme   the pseudo-fields
  x-seen-fields      the regular field names, in order, comma-separated
  x-seen-traceparent, x-seen-tracestate                         the trace context received ("" when none)
  x-body-len, x-body-sha256                                     the request body
  the body           the request body echoed, or with /big/N: N bytes of `pattern()`

Paths shape the behaviour: /trailers/... ends the response with trailers (x-trailer: yes); /stall/...
sends its head and 5 body bytes, then nothing more (never ends the stream); a path with "refuse-once" is refused (RST_STREAM REFUSED_STREAM) the first time it is seen, one with
"reset-once" reset (RST_STREAM INTERNAL_ERROR: it may have been processed) the first time. With goaway_after=N the
first connection, once N streams have arrived, sends GOAWAY naming the Nth: the streams after it are
never processed (RFC 9113 6.8), the others are answered, then the connection closes.

Response DATA is sent within the gateway's windows (the server waits for WINDOW_UPDATE), and request DATA
is acknowledged as it is read, so large bodies exercise flow control both ways.
"""
from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hyperframe.frame import GoAwayFrame
from upstreams import pattern


class H2Origin:
    def __init__(self, tls: tuple[str, str] | None = None, goaway_after: int = 0) -> None:
        self.tls = tls
        self.goaway_after = goaway_after
        self.port = 0
        self.connections = 0
        self.goaways = 0
        self.answered: list[bytes] = []          # paths answered, in order
        self.seen: list[bytes] = []              # paths whose HEADERS arrived, in order
        self.errors: list[str] = []
        self.serving: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> H2Origin:
        ready = threading.Event()
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            ctx.set_alpn_protocols(["h2"])

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            self.server = loop.run_until_complete(asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=ctx))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="H2Origin", daemon=True).start()
        if not ready.wait(5):
            raise RuntimeError("h2 origin did not start")
        return self

    def stop(self) -> None:
        if self.loop is None:
            return

        async def shutdown() -> None:
            self.server.close()
            for t in list(self.serving):
                t.cancel()
            await asyncio.gather(*self.serving, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        try:
            await self.connection(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            self.serving.discard(task)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        heads: dict[int, dict[bytes, Any]] = {}
        bodies: dict[int, bytearray] = {}
        windows: dict[int, asyncio.Event] = {}
        tasks: set[asyncio.Task] = set()
        last_sid = 0                             # with a GOAWAY sent: the last stream processed
        opened = 0

        async def answer(sid: int) -> None:
            head = heads[sid]
            body = bytes(bodies.pop(sid, b""))
            path = head[b":path"]
            names = ",".join(n.decode() for n in head if not n.startswith(b":"))
            status = path[8:11] if path.startswith(b"/status/") else b"200"     # /status/503/...: that status
            fields = [(b":status", status), (b"x-seen-method", head[b":method"]),
                      (b"x-seen-path", path), (b"x-seen-authority", head.get(b":authority", b"")),
                      (b"x-seen-scheme", head[b":scheme"]), (b"x-seen-fields", names.encode()),
                      (b"x-seen-traceparent", head.get(b"traceparent", b"")),
                      (b"x-seen-tracestate", head.get(b"tracestate", b"")),
                      (b"x-body-len", b"%d" % len(body)),
                      (b"x-body-sha256", hashlib.sha256(body).hexdigest().encode())]
            if path.startswith(b"/big/"):
                body = pattern(0, int(path[5:].split(b"?")[0]))
            trailers = path.startswith(b"/trailers/")
            self.answered.append(path)
            if path.startswith(b"/stall/"):
                conn.send_headers(sid, fields, end_stream=False)
                conn.send_data(sid, b"stall")
                writer.write(conn.data_to_send())
                await asyncio.Event().wait()         # until the connection's tasks are cancelled           # before any byte goes out: a client may see it at once
            conn.send_headers(sid, fields + [(b"content-length", b"%d" % len(body))] if not trailers else fields,
                              end_stream=not body and not trailers)
            writer.write(conn.data_to_send())
            pos = 0
            while pos < len(body):
                win = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if win <= 0:
                    ev = windows.setdefault(sid, asyncio.Event())
                    ev.clear()
                    await ev.wait()
                    continue
                piece = body[pos:pos + win]
                pos += len(piece)
                conn.send_data(sid, piece, end_stream=pos >= len(body) and not trailers)
                writer.write(conn.data_to_send())
                await writer.drain()
            if trailers:
                conn.send_headers(sid, [(b"x-trailer", b"yes")], end_stream=True)
                writer.write(conn.data_to_send())

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    self.errors.append(repr(e))
                    writer.write(conn.data_to_send())
                    break
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        head = dict(ev.headers)
                        path = head[b":path"]
                        refuse = b"refuse-once" in path and path not in self.seen
                        drop = b"reset-once" in path and path not in self.seen
                        self.seen.append(path)
                        if last_sid and ev.stream_id > last_sid:
                            continue                     # after our GOAWAY: never processed
                        if refuse or drop:
                            conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM if refuse
                                              else h2.errors.ErrorCodes.INTERNAL_ERROR)
                            continue
                        heads[ev.stream_id] = head
                        bodies[ev.stream_id] = bytearray()
                        opened += 1
                        if first and self.goaway_after and opened == self.goaway_after and not last_sid:
                            last_sid = ev.stream_id
                            self.goaways += 1
                            # Written as a raw frame: h2's close_connection would close its state
                            # machine, and the streams up to last_sid could not be answered.
                            writer.write(conn.data_to_send()
                                         + GoAwayFrame(0, last_stream_id=last_sid, error_code=0).serialize())
                        if ev.stream_ended is not None:
                            t = asyncio.ensure_future(answer(ev.stream_id))
                            tasks.add(t)
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.stream_id in bodies:
                            bodies[ev.stream_id] += ev.data
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in heads:
                        t = asyncio.ensure_future(answer(ev.stream_id))
                        tasks.add(t)
                    elif isinstance(ev, h2.events.WindowUpdated):
                        for w in windows.values():
                            w.set()
                    elif isinstance(ev, h2.events.StreamReset):
                        heads.pop(ev.stream_id, None)
                writer.write(conn.data_to_send())
                # (after a GOAWAY the gateway closes the connection once its processed streams ended)
        except (ConnectionError, ssl.SSLError) as e:
            self.errors.append(repr(e))
        finally:
            for t in tasks:
                t.cancel()
            writer.close()
