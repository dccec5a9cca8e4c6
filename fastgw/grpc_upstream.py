"""HTTP/2 upstream connections for grpc routes (docs/grpc.md).

  Pool    one per upstream target used by a grpc route (Target.h2pool, attached by fastgw.compile): a few
          long-lived multiplexed connections, new streams placed on the first one with room
  Conn    one HTTP/2 connection (h2c prior knowledge, or TLS with ALPN "h2"): an asyncio protocol around
          an h2 client-side H2Connection
  Stream  one upstream stream, joined to a downstream call (fastgw._core.upstream_grpc.GrpcCall), which it calls
          back: on_headers, on_data, on_trailers, on_end, on_reset, on_error, ack_request

Rules kept here:
* A connection takes at most the server's SETTINGS_MAX_CONCURRENT_STREAMS streams (never more than
  MAX_STREAMS). Streams are opened only once the server's SETTINGS arrived; until then up to
  FIRST_STREAMS wait on the new connection, and those over the server's limit then move to another
  connection. With every connection full and MAX_CONNS open, new streams wait in the pool for a slot.
* Request DATA is sent within the upstream's windows; the downstream acknowledgement (ack_request) is
  given only for bytes handed to the transport while it is not paused.
* Response DATA is acknowledged by the call (Stream.ack) once the client side took it.
* GOAWAY: no new streams on that connection; streams above its last-stream-id fail with UNAVAILABLE
  (the server did not process them), the others finish; the connection closes when it has none left.
* An idle connection (no streams) is closed after the upstream's idle_timeout.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError, TooManyStreamsError
from h2.settings import SettingCodes, Settings

from fastgw import failures

MAX_CONNS = 4              # connections per target
MAX_STREAMS = 1000         # streams per connection, whatever the server allows
FIRST_STREAMS = 100        # streams per connection before the server's SETTINGS arrive
STREAM_WINDOW = 262144     # our receive window per stream (response DATA in flight)
CONN_WINDOW = 4194304      # and per connection

REPLAY_MAX = 65536         # request bytes kept for a retry of a refused stream
MAX_RETRIES = 3            # retries of one refused stream
REFUSED_PAUSE = 0.05       # after a REFUSED_STREAM, no new stream on that connection for this long

UNAVAILABLE = 14
CANCEL = 8
REFUSED_STREAM = 7


class ClientH2(H2Connection):
    """h2's client connection, except for a received GOAWAY. h2 moves the whole connection to CLOSED then,
    refusing every later frame: those of the streams the GOAWAY lets finish (RFC 9113 6.8) and the PING a
    gracefully stopping server (grpc among them) sends after its first GOAWAY; it also drops output already
    queued. Here the connection stays open for the streams in flight (Conn.goaway keeps new ones off it)
    and the queued output is kept (Conn.flush sends it first)."""

    kept = b""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        self.kept += self.data_to_send()
        state = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        if state != ConnectionState.CLOSED:
            self.state_machine.state = state
        return result


class Stream:
    __slots__ = ("pool", "conn", "call", "sid", "headers", "outq", "req_end", "end_sent", "done",
                 "resp_done", "held", "replay", "replay_bytes", "retries")

    def __init__(self, pool: Pool, call: Any, headers: list | None) -> None:
        self.pool = pool
        self.conn: Conn | None = None
        self.call = call
        self.sid = 0
        self.headers = headers
        self.outq: list[list] = []     # [bytes, downstream bytes to acknowledge once sent]
        self.req_end = False           # the client ended its request
        self.end_sent = False
        self.done = False              # reset, failed or finished: nothing more goes either way
        self.resp_done = False         # the response ended (trailers or END_STREAM)
        self.held = 0                  # downstream acknowledgements held while the transport is paused
        # A copy of the request DATA sent, kept until the response starts (at most REPLAY_MAX bytes): a
        # stream the server refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last stream) is sent
        # again on another stream (RFC 9113 8.7), at most MAX_RETRIES times.
        self.replay: list[bytes] | None = []
        self.replay_bytes = 0
        self.retries = 0

    def can_retry(self) -> bool:
        return self.replay is not None and self.retries < MAX_RETRIES and not self.done

    def retry(self, delay: float) -> None:
        """Send the request again on a new stream (any connection with room), after `delay` seconds."""
        assert self.replay is not None
        self.retries += 1
        if self.held:
            n, self.held = self.held, 0
            self.call.ack_request(n)
        self.outq = [[d, 0] for d in self.replay] + self.outq
        self.replay = []
        self.replay_bytes = 0
        self.sid = 0
        self.conn = None
        self.end_sent = False
        if delay:
            asyncio.get_running_loop().call_later(delay, self.replace)
        else:
            self.replace()

    def replace(self) -> None:
        if not self.done:
            self.pool.place(self)

    def settle(self) -> None:
        """The stream is done: request bytes it still holds will never be sent; acknowledge them to the
        client (on a closed client stream that only returns the connection window)."""
        self.done = True
        n = self.held + sum(item[1] for item in self.outq)
        self.outq = []
        self.held = 0
        if n:
            self.call.ack_request(n)

    def keep(self, data: bytes) -> None:
        self.replay_bytes += len(data)
        if self.replay_bytes > REPLAY_MAX:
            self.replay = None
        else:
            self.replay.append(data)   # type: ignore[union-attr]

    # -- called by the downstream call -------------------------------------------------------------------
    def send(self, data: bytes, owed: int) -> None:
        if self.done:
            if owed:
                self.call.ack_request(owed)
            return
        self.outq.append([data, owed])
        if self.sid:
            self.conn.pump(self)           # type: ignore[union-attr]

    def end(self) -> None:
        if self.done:
            return
        self.req_end = True
        if self.sid:
            self.conn.pump(self)           # type: ignore[union-attr]

    def cancel(self) -> None:
        if self.done:
            return
        self.settle()
        conn = self.conn
        if conn is None:
            self.pool.forget(self)
        elif self.sid:
            conn.reset(self, CANCEL)
        else:
            conn.forget(self)

    def ack(self, n: int) -> None:
        conn = self.conn
        if n and conn is not None and self.sid and not conn.closed:
            conn.h2.acknowledge_received_data(n, self.sid)
            conn.schedule()


class Conn(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        cfg = H2Configuration(client_side=True, header_encoding=None)
        self.h2 = ClientH2(config=cfg)
        self.transport: Any = None
        self.streams: dict[int, Stream] = {}
        self.queued: list[Stream] = []        # taken before the connection is up
        self.closed = False
        self.ready = False
        self.goaway = False
        self.paused = False
        self.blocked: set[Stream] = set()      # request DATA waiting for window
        self.flush_soon = False
        self.idle_timer: Any = None
        self.task: Any = None
        self.full_until = 0.0

    # -- capacity ----------------------------------------------------------------------------------------
    def room(self) -> bool:
        if self.closed or self.goaway:
            return False
        if self.full_until and asyncio.get_running_loop().time() < self.full_until:
            return False                       # it just refused a stream: its count runs behind ours
        limit = self.h2.remote_settings.max_concurrent_streams if self.ready else FIRST_STREAMS
        return len(self.streams) + len(self.queued) < min(limit, MAX_STREAMS)

    def take(self, s: Stream) -> None:
        s.conn = self
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if not self.ready:
            self.queued.append(s)
        else:
            self.open(s)

    def open(self, s: Stream) -> None:
        h = self.h2
        sid = h.get_next_available_stream_id()
        assert s.headers is not None
        try:
            h.send_headers(sid, s.headers, end_stream=False)
        except TooManyStreamsError:
            s.conn = None
            self.pool.waiting.appendleft(s)
            return
        s.sid = sid
        self.streams[sid] = s
        self.pump(s)

    # -- connecting --------------------------------------------------------------------------------------
    def connect(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        t = self.pool.target
        g = t.group
        loop = asyncio.get_running_loop()
        try:
            if self.pool.ssl is None:
                coro = loop.create_connection(lambda: self, t.host, t.port)
            else:
                coro = loop.create_connection(lambda: self, t.host, t.port, ssl=self.pool.ssl,
                                              server_hostname=g.server_name or t.host)
            await asyncio.wait_for(coro, g.connect_timeout)
        except TimeoutError:
            self.failed(504, "upstream-timeout", b"", UNAVAILABLE, failures.CONNECT_TIMEOUT)
        except asyncio.CancelledError:
            self.failed(502, "bad-gateway", b"cancelled", UNAVAILABLE, failures.CONNECT_FAILED)
        except OSError as exc:                         # (ssl.SSLError is an OSError)
            kind, reason = failures.connect_error(exc)
            self.failed(502, "bad-gateway", reason.encode(), UNAVAILABLE, kind)
        finally:
            self.task = None

    def failed(self, status: int, slug: str, detail: bytes, code: int, kind: str) -> None:
        """The connection failed: every stream on it fails (`kind` and its reason `detail`:
        fastgw/failures.py)."""
        self.closed = True
        self.pool.drop(self)
        queued, self.queued = self.queued, []
        streams = list(self.streams.values())
        self.streams = {}
        for s in queued + streams:
            if not s.done:
                s.settle()
                s.call.on_error(status, slug, detail, code, kind)
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() != "h2":
            self.failed(502, "bad-gateway", b"ALPN h2 not negotiated", UNAVAILABLE, failures.TLS_FAILED)
            return
        h = self.h2
        h.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        h.initiate_connection()
        h.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()
        # Streams are opened once the server's SETTINGS arrived (data_received): its stream limit is
        # known then, so no stream is opened only to be refused.

    def settings_arrived(self) -> None:
        self.ready = True
        queued, self.queued = self.queued, []
        for s in queued:
            if s.done:
                continue
            if self.room():
                self.open(s)
            else:
                s.conn = None
                self.pool.place(s)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            self.lost_all(failures.PROTOCOL_ERROR)
            return
        streams = self.streams
        ev: Any
        for ev in events:
            t = type(ev)
            if t is DataReceived:
                s = streams.get(ev.stream_id)
                if s is None or s.done:
                    if ev.flow_controlled_length:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                s.call.on_data(ev.data, ev.flow_controlled_length)
            elif t is ResponseReceived:
                s = streams.get(ev.stream_id)
                if s is not None and not s.done:
                    s.replay = None
                    end = ev.stream_ended is not None
                    if end:
                        s.resp_done = True
                    s.call.on_headers(ev.headers, end)
            elif t is TrailersReceived:
                s = streams.get(ev.stream_id)
                if s is not None and not s.done:
                    s.resp_done = True
                    s.call.on_trailers(ev.headers)
            elif t is StreamEnded:
                s = streams.get(ev.stream_id)
                if s is not None:
                    if not s.resp_done and not s.done:
                        s.resp_done = True
                        s.call.on_end()
                    self.finished(s)
            elif t is StreamReset:
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    self.blocked.discard(s)
                    if ev.error_code == REFUSED_STREAM and s.can_retry():
                        # The server counts more open streams than we do (e.g. ones it has not
                        # forgotten yet): keep new streams off this connection for a moment, retry.
                        self.full_until = asyncio.get_running_loop().time() + REFUSED_PAUSE
                        s.retry(0.01 * (1 << s.retries))
                    elif not s.done:
                        s.settle()
                        s.call.on_reset(ev.error_code)
                    self.released()
            elif t is RemoteSettingsChanged and not self.ready:
                self.settings_arrived()
            elif t is WindowUpdated or t is RemoteSettingsChanged:
                for s in list(self.blocked):
                    self.pump(s)
                if t is RemoteSettingsChanged:
                    self.released()
            elif t is ConnectionTerminated:
                self.on_goaway(ev.last_stream_id)
        self.flush()
        if self.goaway and not self.streams:
            self.close()

    def connection_lost(self, exc: Any) -> None:
        self.transport = None
        if not self.closed:
            self.lost_all(failures.lost_error(exc))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for s in list(self.streams.values()):
            if s.held and not s.done:
                n, s.held = s.held, 0
                s.call.ack_request(n)

    # -- streams -----------------------------------------------------------------------------------------
    def pump(self, s: Stream) -> None:
        """Send the stream's queued request DATA within the windows; END_STREAM after the last."""
        if self.closed or s.done:
            return
        h = self.h2
        sid = s.sid
        acks = 0
        try:
            while s.outq:
                item = s.outq[0]
                data = item[0]
                if data:
                    win = min(h.local_flow_control_window(sid), h.max_outbound_frame_size)
                    if win <= 0:
                        break
                    if len(data) > win:
                        data = data[:win]
                        item[0] = item[0][win:]
                        h.send_data(sid, data)
                        if s.replay is not None:
                            s.keep(data)
                        continue
                    h.send_data(sid, data)
                    if s.replay is not None:
                        s.keep(data)
                s.outq.pop(0)
                acks += item[1]
            if s.outq:
                self.blocked.add(s)
            else:
                self.blocked.discard(s)
                if s.req_end and not s.end_sent:
                    s.end_sent = True
                    h.end_stream(sid)
        except StreamClosedError:
            self.blocked.discard(s)
            s.settle()
        if acks:
            if self.paused and not s.done:
                s.held += acks
            else:
                s.call.ack_request(acks)
        self.schedule()

    def reset(self, s: Stream, code: int) -> None:
        self.blocked.discard(s)
        if self.streams.pop(s.sid, None) is not None and not self.closed:
            try:
                self.h2.reset_stream(s.sid, code)
            except (ProtocolError, StreamClosedError):
                pass
            self.schedule()
        self.released()

    def forget(self, s: Stream) -> None:
        if s in self.queued:
            self.queued.remove(s)

    def finished(self, s: Stream) -> None:
        """The response ended: the stream leaves the connection (reset if our side is still open)."""
        if self.streams.pop(s.sid, None) is None:
            return
        self.blocked.discard(s)
        if not s.end_sent and not self.closed:
            try:
                self.h2.reset_stream(s.sid, CANCEL)
            except (ProtocolError, StreamClosedError):
                pass
        s.settle()
        self.released()

    def released(self) -> None:
        """A slot may be free: give it to a stream waiting in the pool; arm the idle timer when empty."""
        pool = self.pool
        while pool.waiting and self.room():
            s = pool.waiting.popleft()
            if not s.done:
                self.take(s)
        if not self.streams and not self.queued and not self.closed and self.idle_timer is None:
            loop = asyncio.get_running_loop()
            self.idle_timer = loop.call_later(self.pool.target.group.idle_timeout, self.idle)

    def idle(self) -> None:
        self.idle_timer = None
        if not self.streams and not self.queued:
            self.close()

    def on_goaway(self, last_sid: int) -> None:
        self.goaway = True
        self.pool.drop(self)
        queued, self.queued = self.queued, []
        for s in queued:                       # not opened yet: another connection takes them
            if not s.done:
                s.conn = None
                self.pool.place(s)
        for sid in [sid for sid in self.streams if sid > last_sid]:
            s = self.streams.pop(sid)
            self.blocked.discard(s)
            if s.can_retry():
                s.retry(0)
            elif not s.done:
                s.settle()
                s.call.on_error(502, "bad-gateway", b"", UNAVAILABLE, failures.STREAM_REFUSED)

    def lost_all(self, kind: str) -> None:
        self.closed = True
        self.pool.drop(self)
        streams = list(self.streams.values()) + self.queued
        self.streams = {}
        self.queued = []
        self.blocked.clear()
        for s in streams:
            if not s.done:
                s.settle()
                s.call.on_error(502, "bad-gateway", b"", UNAVAILABLE, kind)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.drop(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.transport is not None:
            try:
                self.h2.close_connection()
                self.transport.write(self.h2.data_to_send())
            except ProtocolError:
                pass
            self.transport.close()

    # -- output ------------------------------------------------------------------------------------------
    def schedule(self) -> None:
        """Output is written once per event-loop iteration (many streams share one write)."""
        if not self.flush_soon and not self.closed:
            self.flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush_later)

    def flush_later(self) -> None:
        self.flush_soon = False
        self.flush()

    def flush(self) -> None:
        if self.transport is None or self.closed:
            return
        h = self.h2
        data = h.data_to_send()
        if h.kept:
            data = h.kept + data
            h.kept = b""
        if data:
            self.transport.write(data)


class Pool:
    """The HTTP/2 connections of one target."""

    def __init__(self, target: Any, ssl_ctx: ssl.SSLContext | None) -> None:
        self.target = target
        self.ssl = ssl_ctx
        self.conns: list[Conn] = []
        self.waiting: deque[Stream] = deque()

    def open(self, call: Any, headers: list) -> Stream:
        s = Stream(self, call, headers)
        self.place(s)
        return s

    def place(self, s: Stream) -> None:
        """The first connection with room, else a new one (up to MAX_CONNS), else wait for a slot."""
        for c in self.conns:
            if c.room():
                c.take(s)
                return
        if len(self.conns) < MAX_CONNS:
            c = Conn(self)
            self.conns.append(c)
            c.take(s)
            c.connect()
        else:
            self.waiting.append(s)

    def drop(self, c: Conn) -> None:
        """`c` takes no new streams; streams waiting for a slot get a new connection."""
        if c in self.conns:
            self.conns.remove(c)
        waiting = [s for s in self.waiting if not s.done]
        self.waiting.clear()
        for s in waiting:
            s.conn = None
            self.place(s)

    def forget(self, s: Stream) -> None:
        try:
            self.waiting.remove(s)
        except ValueError:
            pass

    def close(self) -> None:
        for c in list(self.conns):
            c.close()
