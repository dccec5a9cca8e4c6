# cython: language_level=3
"""The multiplexed HTTP/2 upstream, for every upstream with `protocol = "h2"` or `"grpc"`.

  H2Pool      one per target (Target.h2pool, attached by fastgw/compile.py): a few long-lived
              multiplexed connections; a new stream goes on the first one with room
  H2UpConn    one HTTP/2 connection (h2c with prior knowledge, or TLS with ALPN "h2"): an asyncio protocol
              around the h2 library's client-side connection (framing, HPACK, stream states, windows)
  H2UpStream  one upstream stream, joined to the call that opened it (an H2Sink), which it reports to
  H2Sink      the interface of that call (upstream_h2.pxd): the worker's calls implement it

Rules kept here (and why):
* A connection carries at most the server's SETTINGS_MAX_CONCURRENT_STREAMS streams (never more than
  MAX_STREAMS). Streams are opened only once the server's SETTINGS arrived, so none is opened only to be
  refused; until then up to FIRST_STREAMS wait on the new connection, and those over the server's limit
  then move to another one. With every connection full and MAX_CONNS open, new streams wait in the pool.
* Request DATA is sent within the upstream's windows; the client's bytes are acknowledged to the sink
  (ack_request) only once handed to a transport that is not paused: a slow upstream slows the client
  through its own flow control (or its paused socket) instead of growing the gateway's memory.
* Response DATA is acknowledged by the sink (H2UpStream.ack) once the client side took it.
* A stream the server did not process (REFUSED_STREAM, or above a GOAWAY's last-stream-id: RFC 9113 8.7)
  is sent again on another stream, at most MAX_RETRIES times, while its request bytes sent so far fit in
  REPLAY_MAX; the response has not started then, so the client never sees it. Beyond that it fails.
* After a REFUSED_STREAM no stream goes on that connection for REFUSED_PAUSE: the server counts more open
  streams than the client does (ones it has not forgotten yet).
* GOAWAY: no new streams on that connection; those below its last-stream-id finish; it closes when empty.
* An idle connection (no streams) is closed after the upstream's idle_timeout.
"""
import asyncio
from collections import deque

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

from fastgw import failures as _failures
from fastgw._core.hpack import H2Decoder, H2Encoder

from fastgw._core.balancer cimport Target, UpstreamGroup

cdef double REFUSED_PAUSE = 0.05


class ClientH2(H2Connection):
    """h2's client connection, except for a received GOAWAY. h2 moves the whole connection to CLOSED then,
    refusing every later frame: those of the streams the GOAWAY lets finish (RFC 9113 6.8) and the PING a
    gracefully stopping server (grpc among them) sends after its first GOAWAY; it also drops output already
    queued. Here the connection stays open for the streams in flight (H2UpConn.goaway keeps new ones off)
    and the queued output is kept (H2UpConn.flush sends it first)."""

    kept = b""

    def _receive_goaway_frame(self, frame):
        self.kept += self.data_to_send()
        state = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        if state != ConnectionState.CLOSED:
            self.state_machine.state = state
        return result


cdef class H2Sink:
    cdef void ack_request(self, long long n):
        pass

    cdef void on_headers(self, list headers, bint end):
        pass

    cdef void on_data(self, bytes data, long long n):
        pass

    cdef void on_trailers(self, list headers):
        pass

    cdef void on_end(self):
        pass

    cdef void on_reset(self, int code):
        pass

    cdef void on_error(self, int status, str slug, bytes detail, str kind):
        pass

    cdef void on_replay(self, str kind):
        pass


cdef class H2UpStream:
    cdef bint can_replay(self):
        return self.replay is not None and self.retries < MAX_RETRIES and not self.done

    cdef void replay_later(self, double delay, str kind):
        """Send the request again on a new stream (any connection with room), after `delay` seconds."""
        self.retries += 1
        self.sink.on_replay(kind)
        if self.held:
            n = self.held
            self.held = 0
            self.sink.ack_request(n)
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

    def replace(self):
        if not self.done:
            self.pool.place(self)

    cdef void settle(self):
        """The stream is done: request bytes it still holds will never be sent; acknowledge them to the
        client (on a closed client stream that only returns the connection window)."""
        cdef long long n = self.held
        self.done = True
        for item in self.outq:
            n += <long long>item[1]
        self.outq = []
        self.held = 0
        if n:
            self.sink.ack_request(n)

    cdef void keep(self, bytes data):
        self.replay_bytes += len(data)
        if self.replay_bytes > REPLAY_MAX:
            self.replay = None
        else:
            self.replay.append(data)

    # -- called by the sink ------------------------------------------------------------------------------
    cpdef send(self, bytes data, long long owed):
        """Request DATA; `owed` client bytes are acknowledged (ack_request) once it is sent."""
        if self.done:
            if owed:
                self.sink.ack_request(owed)
            return
        self.outq.append([data, owed])
        if self.sid:
            self.conn.pump(self)

    cpdef end(self):
        if self.done:
            return
        self.req_end = True
        if self.sid:
            self.conn.pump(self)

    cpdef cancel(self):
        cdef H2UpConn conn = self.conn
        if self.done:
            return
        self.settle()
        if conn is None:
            self.pool.forget(self)
        elif self.sid:
            conn.reset(self, H2_CANCEL)
        else:
            conn.forget(self)

    cpdef ack(self, long long n):
        cdef H2UpConn conn = self.conn
        if n and conn is not None and self.sid and not conn.closed:
            conn.h2.acknowledge_received_data(n, self.sid)
            conn.schedule()


cdef class H2UpConn:
    def __init__(self, H2Pool pool):
        self.pool = pool
        # The request fields come from a request head the readers validated against the wire table
        # (upstream_request.pyx upstream_fields), so h2's outbound passes are skipped; the response fields are
        # validated by h2 (they reach HTTP/1.1 clients). HPACK is the core's codec (hpack.pyx): h2's pure
        # Python one was the largest cost of a request in the profile.
        h = ClientH2(config=H2Configuration(client_side=True, header_encoding=None,
                                            validate_outbound_headers=False, normalize_outbound_headers=False,
                                            split_outbound_cookies=False))
        h.encoder = H2Encoder()
        h.decoder = H2Decoder(MAX_RESP_FIELDS)
        self.h2 = h
        self.streams = {}
        self.queued = []
        self.blocked = set()

    # -- capacity ----------------------------------------------------------------------------------------
    cdef bint room(self):
        cdef long limit
        if self.closed or self.goaway:
            return False
        if self.full_until and asyncio.get_running_loop().time() < self.full_until:
            return False                       # it just refused a stream: its count runs behind ours
        limit = self.h2.remote_settings.max_concurrent_streams if self.ready else FIRST_STREAMS
        if limit > MAX_STREAMS:
            limit = MAX_STREAMS
        return len(self.streams) + len(self.queued) < limit

    cdef void take(self, H2UpStream s):
        s.conn = self
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if not self.ready:
            self.queued.append(s)
        else:
            self.open(s)

    cdef void open(self, H2UpStream s):
        h = self.h2
        sid = h.get_next_available_stream_id()
        try:
            h.send_headers(sid, s.headers, end_stream=False)
        except TooManyStreamsError:
            s.conn = None
            self.pool.waiting.appendleft(s)
            return
        s.sid = sid
        self.streams[sid] = s
        self.pump(s)

    cdef void failed(self, int status, str slug, bytes detail, str kind):
        """The connection failed: every stream on it fails (`kind` and its reason `detail`:
        fastgw/failures.py)."""
        cdef H2UpStream s
        self.closed = True
        self.pool.drop(self)
        queued = self.queued
        self.queued = []
        streams = list(self.streams.values())
        self.streams = {}
        for s in queued + streams:
            if not s.done:
                s.settle()
                s.sink.on_error(status, slug, detail, kind)
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio protocol --------------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() != "h2":
            self.failed(502, "bad-gateway", b"ALPN h2 not negotiated", _failures.TLS_FAILED)
            return
        h = self.h2
        h.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        h.initiate_connection()
        h.increment_flow_control_window(CONN_WINDOW - 65535)
        self.flush()
        # Streams are opened once the server's SETTINGS arrived (data_received): see the rules above.

    cdef void settings_arrived(self):
        cdef H2UpStream s
        self.ready = True
        queued = self.queued
        self.queued = []
        for s in queued:
            if s.done:
                continue
            if self.room():
                self.open(s)
            else:
                s.conn = None
                self.pool.place(s)

    def data_received(self, bytes data):
        cdef H2UpStream s
        cdef dict streams
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            self.lost_all(_failures.PROTOCOL_ERROR)
            return
        streams = self.streams
        for ev in events:
            t = type(ev)
            if t is DataReceived:
                s = streams.get(ev.stream_id)
                if s is None or s.done:
                    if ev.flow_controlled_length:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    continue
                s.sink.on_data(ev.data, ev.flow_controlled_length)
            elif t is ResponseReceived:
                s = streams.get(ev.stream_id)
                if s is not None and not s.done:
                    s.replay = None
                    end = ev.stream_ended is not None
                    if end:
                        s.resp_done = True
                    s.sink.on_headers(ev.headers, end)
            elif t is TrailersReceived:
                s = streams.get(ev.stream_id)
                if s is not None and not s.done:
                    s.resp_done = True
                    s.sink.on_trailers(ev.headers)
            elif t is StreamEnded:
                s = streams.get(ev.stream_id)
                if s is not None:
                    if not s.resp_done and not s.done:
                        s.resp_done = True
                        s.sink.on_end()
                    self.finished(s)
            elif t is StreamReset:
                s = streams.pop(ev.stream_id, None)
                if s is not None:
                    self.blocked.discard(s)
                    if ev.error_code == H2_REFUSED_STREAM and s.can_replay():
                        self.full_until = asyncio.get_running_loop().time() + REFUSED_PAUSE
                        s.replay_later(0.01 * (1 << s.retries), _failures.STREAM_REFUSED)
                    elif not s.done:
                        s.settle()
                        s.sink.on_reset(ev.error_code)
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

    def eof_received(self):
        return False                          # (the transport closes; connection_lost follows)

    def connection_lost(self, exc):
        self.transport = None
        if not self.closed:
            self.lost_all(_failures.lost_error(exc))

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        cdef H2UpStream s
        self.paused = False
        for s in list(self.streams.values()):
            if s.held and not s.done:
                n = s.held
                s.held = 0
                s.sink.ack_request(n)

    # -- streams -----------------------------------------------------------------------------------------
    cdef void pump(self, H2UpStream s):
        """Send the stream's queued request DATA within the windows; END_STREAM after the last."""
        cdef long long acks = 0
        cdef Py_ssize_t win
        cdef list item
        cdef bytes data
        if self.closed or s.done:
            return
        h = self.h2
        sid = s.sid
        try:
            while s.outq:
                item = s.outq[0]
                data = item[0]
                if data:
                    win = min(h.local_flow_control_window(sid), h.max_outbound_frame_size)
                    if win <= 0:
                        break
                    if len(data) > win:
                        item[0] = data[win:]
                        data = data[:win]
                        h.send_data(sid, data)
                        if s.replay is not None:
                            s.keep(data)
                        continue
                    h.send_data(sid, data)
                    if s.replay is not None:
                        s.keep(data)
                s.outq.pop(0)
                acks += <long long>item[1]
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
                s.sink.ack_request(acks)
        self.schedule()

    cdef void reset(self, H2UpStream s, int code):
        self.blocked.discard(s)
        if self.streams.pop(s.sid, None) is not None and not self.closed:
            try:
                self.h2.reset_stream(s.sid, code)
            except (ProtocolError, StreamClosedError):
                pass
            self.schedule()
        self.released()

    cdef void forget(self, H2UpStream s):
        if s in self.queued:
            self.queued.remove(s)

    cdef void finished(self, H2UpStream s):
        """The response ended: the stream leaves the connection (reset if our side is still open)."""
        if self.streams.pop(s.sid, None) is None:
            return
        self.blocked.discard(s)
        if not s.end_sent and not self.closed:
            try:
                self.h2.reset_stream(s.sid, H2_CANCEL)
            except (ProtocolError, StreamClosedError):
                pass
        s.settle()
        self.released()

    cdef void released(self):
        """A slot may be free: give it to a stream waiting in the pool; arm the idle timer when empty."""
        cdef H2Pool pool = self.pool
        cdef H2UpStream s
        while pool.waiting and self.room():
            s = pool.waiting.popleft()
            if not s.done:
                self.take(s)
        if not self.streams and not self.queued and not self.closed and self.idle_timer is None:
            self.idle_timer = asyncio.get_running_loop().call_later(pool.target.group.idle_timeout,
                                                                    self.idle)

    def idle(self):
        self.idle_timer = None
        if not self.streams and not self.queued:
            self.close()

    cdef void on_goaway(self, int last_sid):
        cdef H2UpStream s
        self.goaway = True
        self.pool.drop(self)
        queued = self.queued
        self.queued = []
        for s in queued:                       # not opened yet: another connection takes them
            if not s.done:
                s.conn = None
                self.pool.place(s)
        for sid in [sid for sid in self.streams if sid > last_sid]:
            s = self.streams.pop(sid)
            self.blocked.discard(s)
            if s.can_replay():
                s.replay_later(0, _failures.STREAM_REFUSED)
            elif not s.done:
                s.settle()
                s.sink.on_error(502, "bad-gateway", b"", _failures.STREAM_REFUSED)

    cdef void lost_all(self, str kind):
        cdef H2UpStream s
        self.closed = True
        self.pool.drop(self)
        streams = list(self.streams.values()) + self.queued
        self.streams = {}
        self.queued = []
        self.blocked.clear()
        for s in streams:
            if not s.done:
                s.settle()
                s.sink.on_error(502, "bad-gateway", b"", kind)
        if self.transport is not None:
            self.transport.abort()

    cpdef close(self):
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
    cdef void schedule(self):
        """Output is written once per event-loop iteration (many streams share one write)."""
        if not self.flush_soon and not self.closed:
            self.flush_soon = True
            asyncio.get_running_loop().call_soon(self.flush_later)

    def flush_later(self):
        self.flush_soon = False
        self.flush()

    cdef void flush(self):
        if self.transport is None or self.closed:
            return
        h = self.h2
        data = h.data_to_send()
        if h.kept:
            data = h.kept + data
            h.kept = b""
        if data:
            self.transport.write(data)


async def _connect(H2UpConn c):
    cdef H2Pool pool = c.pool
    cdef Target t = pool.target
    cdef UpstreamGroup g = t.group
    loop = asyncio.get_running_loop()
    try:
        if pool.ssl is None:
            coro = loop.create_connection(lambda: c, t.host, t.port)
        else:
            coro = loop.create_connection(lambda: c, t.host, t.port, ssl=pool.ssl,
                                          server_hostname=g.server_name or t.host)
        await asyncio.wait_for(coro, g.connect_timeout)
    except TimeoutError:
        c.failed(504, "upstream-timeout", b"", _failures.CONNECT_TIMEOUT)
    except asyncio.CancelledError:
        c.failed(502, "bad-gateway", b"cancelled", _failures.CONNECT_FAILED)
    except OSError as exc:                         # (ssl.SSLError is an OSError)
        kind, reason = _failures.connect_error(exc)
        c.failed(502, "bad-gateway", reason.encode(), kind)
    finally:
        c.task = None


cdef class H2Pool:
    """The HTTP/2 connections of one target."""

    def __init__(self, Target target, ssl_ctx):
        self.target = target
        self.ssl = ssl_ctx
        self.conns = []
        self.waiting = deque()

    cpdef H2UpStream open(self, H2Sink sink, list headers):
        """A new stream for `sink` with the request's header list (pseudo-headers first)."""
        cdef H2UpStream s = H2UpStream.__new__(H2UpStream)
        s.pool = self
        s.sink = sink
        s.headers = headers
        s.outq = []
        s.replay = []
        self.place(s)
        return s

    cdef void place(self, H2UpStream s):
        """The first connection with room, else a new one (up to MAX_CONNS), else wait for a slot."""
        cdef H2UpConn c
        for c in self.conns:
            if c.room():
                c.take(s)
                return
        if len(self.conns) < MAX_CONNS:
            c = H2UpConn(self)
            self.conns.append(c)
            c.take(s)
            c.task = asyncio.get_running_loop().create_task(_connect(c))
        else:
            self.waiting.append(s)

    cdef void drop(self, H2UpConn c):
        """`c` takes no new streams; streams waiting for a slot get a new connection."""
        cdef H2UpStream s
        if c in self.conns:
            self.conns.remove(c)
        waiting = [s for s in self.waiting if not s.done]
        self.waiting.clear()
        for s in waiting:
            s.conn = None
            self.place(s)

    cdef void forget(self, H2UpStream s):
        try:
            self.waiting.remove(s)
        except ValueError:
            pass

    def close(self):
        """Close every connection (a reload that drops this target's upstream)."""
        cdef H2UpConn c
        for c in list(self.conns):
            c.close()
