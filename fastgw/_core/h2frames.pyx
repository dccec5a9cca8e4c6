# cython: language_level=3
# The server side of one HTTP/2 connection below the request layer: the client's bytes become frames, the
# frames become events (H2Event) in the stream states of RFC 9113 5.1, and what the engine sends becomes
# frames (data_to_send). h2engine.pyx's H2Conn drives it; the `h2` library's H2Connection is the reference
# it is tested against (tests/test_h2_differential.py), and still speaks HTTP/2 to upstreams.
#
# Why compiled: under `h2load -c16 -m10` the h2 library's frame and state layer was about 60% of the worker
# (hyperframe objects, state-machine tables, a repr() of every frame for a disabled log); here a frame is
# read in place from the read buffer and an event is one small object.
#
# Rules (RFC 9113 sections in brackets; a connection error queues GOAWAY(last stream, code) and raises
# H2Error; a stream error queues RST_STREAM and reports EV_RESET):
# * The client's first bytes are the preface, its first frame a SETTINGS [3.4], else PROTOCOL_ERROR.
# * Frames larger than our SETTINGS_MAX_FRAME_SIZE (the default, 16384: we never raise it) are
#   FRAME_SIZE_ERROR [4.2], as are frames whose fixed-size payload has the wrong length [6.3-6.9].
# * Stream ids: a client opens odd ids only, each above the last [5.1.1]: an even or a lower unused one is
#   PROTOCOL_ERROR; DATA, RST_STREAM or WINDOW_UPDATE on an idle stream is PROTOCOL_ERROR [5.1].
# * Closed streams [5.1]: frames after our RST_STREAM are ignored (they were in flight); DATA on a stream
#   the client ended or reset is a stream error STREAM_CLOSED, HEADERS a connection error STREAM_CLOSED;
#   WINDOW_UPDATE, PRIORITY and RST_STREAM on it are ignored. DATA that is not delivered still counts
#   against the connection window and is given back at once (else the connection would stall).
# * Half-closed (remote): DATA or HEADERS is a stream error STREAM_CLOSED. Trailers (a second HEADERS)
#   must end the stream [8.1], else the request is malformed: stream error PROTOCOL_ERROR.
# * A header block is HEADERS then CONTINUATION frames on the same stream only, at most MAX_CONTINUATION
#   of them [6.10]; any other frame in between is PROTOCOL_ERROR. Every block is decoded, also on a stream
#   that is being refused or reset, to keep the HPACK table in step; a block that does not decode is
#   COMPRESSION_ERROR [4.3], except a header list past our SETTINGS_MAX_HEADER_LIST_SIZE: ENHANCE_YOUR_CALM.
# * A stream that depends on itself (HEADERS or PRIORITY) is a stream error PROTOCOL_ERROR [5.3.1].
# * Padding as long as the payload or longer is PROTOCOL_ERROR [6.1, 6.2].
# * SETTINGS values [6.5.2]: ENABLE_PUSH and ENABLE_CONNECT_PROTOCOL 0 or 1 (PROTOCOL_ERROR),
#   INITIAL_WINDOW_SIZE <= 2^31-1 (FLOW_CONTROL_ERROR; a change that overflows a stream's window too
#   [6.9.2]), MAX_FRAME_SIZE in [2^14, 2^24-1] (PROTOCOL_ERROR); a SETTINGS ACK with a payload or a
#   payload not a multiple of 6 is FRAME_SIZE_ERROR. Unknown settings are ignored. Every SETTINGS is
#   acknowledged, every PING answered, here.
# * Flow control [6.9]: DATA beyond the connection's or the stream's window is FLOW_CONTROL_ERROR; a
#   WINDOW_UPDATE of 0 is PROTOCOL_ERROR and one past 2^31-1 is FLOW_CONTROL_ERROR (stream errors on a
#   stream, connection errors on the connection). Received bytes are given back (WINDOW_UPDATE) only when
#   the engine acknowledges them, with h2's batching rule (windows.py): once half the window is consumed,
#   or 1024 bytes when the window is exhausted, so small DATA frames do not each cost a WINDOW_UPDATE.
# * PUSH_PROMISE from a client is PROTOCOL_ERROR [8.4]; frames of unknown types are ignored [4.1].
# * Concurrency is the engine's: it refuses streams beyond its limit with RST_STREAM REFUSED_STREAM
#   (reset_stream), which this layer treats as any reset of ours. Only twice the limit open at once here
#   (the engine sees a read's events after the whole read) is a connection error PROTOCOL_ERROR (h2's
#   TooManyStreamsError at the limit the engine gave it, kept).

from cpython.bytes cimport PyBytes_FromStringAndSize

from hpack.exceptions import OversizedHeaderListError

from fastgw._core.hpack cimport H2Decoder, H2Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
cdef bytes _PREFACE = PREFACE


class H2Error(Exception):
    """A connection error: the GOAWAY carrying `code` is queued (data_to_send) before this is raised."""

    def __init__(self, int code, str why):
        super().__init__(why)
        self.code = code


cdef class H2Event:
    def __repr__(self):
        return f"H2Event(kind={self.kind}, stream_id={self.stream_id})"


cdef class H2StreamState:
    pass


cdef inline H2Event _ev(int kind, int sid):
    cdef H2Event e = H2Event.__new__(H2Event)
    e.kind = kind
    e.stream_id = sid
    return e


cdef inline bytes _hdr(Py_ssize_t length, int ftype, int flags, int sid):
    cdef unsigned char h[9]
    h[0] = (length >> 16) & 0xff
    h[1] = (length >> 8) & 0xff
    h[2] = length & 0xff
    h[3] = ftype
    h[4] = flags
    h[5] = (sid >> 24) & 0x7f
    h[6] = (sid >> 16) & 0xff
    h[7] = (sid >> 8) & 0xff
    h[8] = sid & 0xff
    return PyBytes_FromStringAndSize(<char*>h, 9)


cdef inline long long _u32(const unsigned char* p):
    return (<long long>p[0] << 24) | (<long long>p[1] << 16) | (<long long>p[2] << 8) | p[3]


cdef inline bytes _u32b(long long v):
    cdef unsigned char b[4]
    b[0] = (v >> 24) & 0xff
    b[1] = (v >> 16) & 0xff
    b[2] = (v >> 8) & 0xff
    b[3] = v & 0xff
    return PyBytes_FromStringAndSize(<char*>b, 4)


cpdef bytes frame_bytes(int ftype, int flags, int sid, bytes payload):
    """One frame, serialised (for frames the engine writes itself: the drain's GOAWAY and PING)."""
    return _hdr(len(payload), ftype, flags, sid) + payload


cpdef bytes goaway_bytes(long long last_sid, long long code):
    return frame_bytes(F_GOAWAY, 0, 0, _u32b(last_sid & 0x7fffffff) + _u32b(code))


cdef inline long long _window_give(long long* cur, long long maxw, long long* done, long long n):
    """h2's WindowManager rule (see the header comment): how much of the acknowledged bytes to give back
    now (0: keep collecting)."""
    cdef long long inc
    done[0] += n
    if done[0] <= 0:
        return 0
    if (cur[0] == 0 and done[0] > (1024 if 1024 < maxw // 4 else maxw // 4)) or done[0] >= maxw // 2:
        inc = maxw - cur[0]
        if done[0] < inc:
            inc = done[0]
        done[0] = 0
        cur[0] += inc
        return inc
    return 0


cdef class H2Wire:
    def __init__(self, int max_streams=100, long long stream_window=65535, Py_ssize_t max_header_list=65536):
        self.decoder = H2Decoder(max_header_list)
        self.encoder = H2Encoder()
        self.streams = {}
        self.closed = {}
        self.out = []
        self.out_conn = 65535
        self.in_conn = self.in_conn_max = 65535
        self.peer_initial = 65535
        self.max_outbound_frame_size = FRAME_MIN
        self.local_initial = stream_window
        self.local_max_streams = max_streams
        self.local_max_headers = max_header_list

    def initiate_connection(self):
        """Our SETTINGS (the server preface). ENABLE_PUSH is not sent: a server's value means nothing
        (RFC 9113 6.5.2), and fastgw never pushes."""
        self.emit(F_SETTINGS, 0, 0,
                  b"\x00\x03" + _u32b(self.local_max_streams)
                  + b"\x00\x04" + _u32b(self.local_initial)
                  + b"\x00\x06" + _u32b(self.local_max_headers))

    cpdef void increment_flow_control_window(self, long long n):
        """Open the connection's receive window by n (above the 65535 every connection starts with)."""
        self.in_conn += n
        self.in_conn_max += n
        self.emit(F_WINDOW_UPDATE, 0, 0, _u32b(n))

    # -- input -------------------------------------------------------------------------------------------
    cpdef list receive_data(self, bytes data):
        """The events of one read (a frame split across reads waits for its end)."""
        cdef list events = []
        cdef bytes buf = data
        cdef const unsigned char* p
        cdef Py_ssize_t n, pos = 0, length
        if self.inbuf is not None:
            buf = self.inbuf + data
            self.inbuf = None
        n = len(buf)
        p = buf
        if not self.preface_done:
            if n < 24:
                if buf != _PREFACE[:n]:
                    self.conn_error(H2E_PROTOCOL, "invalid connection preface")
                self.inbuf = buf
                return events
            if buf[:24] != _PREFACE:
                self.conn_error(H2E_PROTOCOL, "invalid connection preface")
            self.preface_done = True
            pos = 24
        while n - pos >= 9:
            length = (<Py_ssize_t>p[pos] << 16) | (<Py_ssize_t>p[pos + 1] << 8) | p[pos + 2]
            if length > FRAME_MIN:
                self.conn_error(H2E_FRAME_SIZE, "frame larger than SETTINGS_MAX_FRAME_SIZE")
            if n - pos - 9 < length:
                break
            self.frame(p[pos + 3], p[pos + 4], <int>(_u32(p + pos + 5) & 0x7fffffff), buf, pos + 9, length,
                       events)
            pos += 9 + length
        if pos < n:
            self.inbuf = buf[pos:] if pos else buf
        return events

    cdef int frame(self, int ftype, int flags, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n,
                   list events) except -1:
        cdef const unsigned char* p = buf
        cdef H2StreamState st
        cdef H2Event e
        if self.cont_sid:
            if ftype != F_CONTINUATION or sid != self.cont_sid:
                return self.conn_error(H2E_PROTOCOL, "a frame inside a header block")
            self.cont_frames += 1
            if self.cont_frames > MAX_CONTINUATION:
                return self.conn_error(H2E_PROTOCOL, "too many CONTINUATION frames")
            self.cont_block.append(buf[at:at + n])
            if flags & FL_END_HEADERS:
                self.on_block(events)
            return 0
        if not self.settings_seen:
            if ftype != F_SETTINGS or flags & FL_ACK:
                return self.conn_error(H2E_PROTOCOL, "the first frame is not SETTINGS")
            self.settings_seen = True
        if ftype == F_DATA:
            return self.on_data(flags, sid, buf, at, n, events)
        if ftype == F_HEADERS:
            return self.on_headers(flags, sid, buf, at, n, events)
        if ftype == F_WINDOW_UPDATE:
            return self.on_window(sid, buf, at, n, events)
        if ftype == F_SETTINGS:
            if sid:
                return self.conn_error(H2E_PROTOCOL, "SETTINGS on a stream")
            return self.on_settings(flags, buf, at, n, events)
        if ftype == F_PING:
            self.fixed(sid, False, n, 8, "PING")
            if flags & FL_ACK:
                e = _ev(EV_PING_ACK, 0)
                e.ping_data = buf[at:at + 8]
            else:
                e = _ev(EV_PING, 0)
                e.ping_data = buf[at:at + 8]
                self.emit(F_PING, FL_ACK, 0, e.ping_data)
            events.append(e)
            return 0
        if ftype == F_RST_STREAM:
            self.fixed(sid, True, n, 4, "RST_STREAM")
            st = self.known(sid, "RST_STREAM", events)
            if st is None:
                return 0
            self.forget(st, CLOSED_OTHER)
            e = _ev(EV_RESET, sid)
            e.error_code = _u32(p + at)
            events.append(e)
            return 0
        if ftype == F_PRIORITY:
            self.fixed(sid, True, n, 5, "PRIORITY")
            if (_u32(p + at) & 0x7fffffff) == sid:
                self.stream_error(self.streams.get(sid), sid, H2E_PROTOCOL, events)
                return 0
            events.append(_ev(EV_PRIORITY, sid))
            return 0
        if ftype == F_GOAWAY:
            if sid:
                return self.conn_error(H2E_PROTOCOL, "GOAWAY on a stream")
            if n < 8:
                return self.conn_error(H2E_FRAME_SIZE, "GOAWAY payload shorter than 8 bytes")
            e = _ev(EV_GOAWAY, 0)
            e.last_stream_id = _u32(p + at) & 0x7fffffff
            e.error_code = _u32(p + at + 4)
            events.append(e)
            return 0
        if ftype == F_PUSH_PROMISE:
            return self.conn_error(H2E_PROTOCOL, "PUSH_PROMISE from a client")
        if ftype == F_CONTINUATION:
            return self.conn_error(H2E_PROTOCOL, "CONTINUATION outside a header block")
        events.append(_ev(EV_IGNORED, sid))        # an extension frame: ignored (RFC 9113 4.1)
        return 0

    cdef int on_data(self, int flags, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n, list events) except -1:
        cdef const unsigned char* p = buf
        cdef Py_ssize_t pad = 0, start = at
        cdef H2StreamState st
        cdef H2Event e
        cdef long long inc
        if not sid:
            return self.conn_error(H2E_PROTOCOL, "DATA on stream 0")
        if flags & FL_PADDED:
            if n < 1:
                return self.conn_error(H2E_FRAME_SIZE, "padded DATA without a pad length")
            pad = p[at]
            if pad >= n:
                return self.conn_error(H2E_PROTOCOL, "padding as long as the DATA payload")
            start = at + 1
        if n > self.in_conn:
            return self.conn_error(H2E_FLOW_CONTROL, "DATA beyond the connection window")
        self.in_conn -= n
        st = self.streams.get(sid)
        if st is None or st.rx_closed:
            if st is None and sid > self.last_in:
                return self.conn_error(H2E_PROTOCOL, "DATA on an idle stream")
            inc = _window_give(&self.in_conn, self.in_conn_max, &self.in_conn_done, n)
            if inc:
                self.emit(F_WINDOW_UPDATE, 0, 0, _u32b(inc))
            if st is not None:
                self.stream_error(st, sid, H2E_STREAM_CLOSED, events)
            else:
                if self.closed.get(sid, 0) != CLOSED_BY_US:
                    self.emit(F_RST_STREAM, 0, sid, _u32b(H2E_STREAM_CLOSED))
                events.append(_ev(EV_IGNORED, sid))
            return 0
        if n > st.in_win:
            return self.conn_error(H2E_FLOW_CONTROL, "DATA beyond the stream window")
        st.in_win -= n
        e = _ev(EV_DATA, sid)
        e.data = buf[start:at + n - pad]
        e.flow_controlled_length = n
        e.stream_ended = flags & FL_END_STREAM
        events.append(e)
        if flags & FL_END_STREAM:
            st.rx_closed = True
            e = _ev(EV_END, sid)
            events.append(e)
            if st.tx_closed:
                self.forget(st, CLOSED_OTHER)
        return 0

    cdef int on_headers(self, int flags, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n,
                        list events) except -1:
        cdef const unsigned char* p = buf
        cdef Py_ssize_t i = at, end = at + n, pad = 0
        if not sid or not (sid & 1):
            return self.conn_error(H2E_PROTOCOL, "HEADERS on stream 0 or an even stream")
        self.cont_selfdep = False
        if flags & FL_PADDED:
            if n < 1:
                return self.conn_error(H2E_FRAME_SIZE, "padded HEADERS without a pad length")
            pad = p[i]
            i += 1
        if flags & FL_PRIORITY:
            if end - i < 5:
                return self.conn_error(H2E_FRAME_SIZE, "HEADERS too short for its priority")
            self.cont_selfdep = (_u32(p + i) & 0x7fffffff) == sid
            i += 5
        if pad > end - i:
            return self.conn_error(H2E_PROTOCOL, "padding longer than the HEADERS payload")
        self.cont_sid = sid
        self.cont_end = flags & FL_END_STREAM
        self.cont_frames = 0
        self.cont_block = [buf[i:end - pad]]
        if flags & FL_END_HEADERS:
            self.on_block(events)
        return 0

    cdef int on_block(self, list events) except -1:
        """A complete header block: a new stream's request, trailers, or a block to decode and drop."""
        cdef int sid = self.cont_sid
        cdef bint end = self.cont_end
        cdef H2StreamState st = self.streams.get(sid)
        cdef H2Event e
        cdef bytes block = <bytes>self.cont_block[0] if len(self.cont_block) == 1 else b"".join(self.cont_block)
        cdef list headers
        cdef int how
        self.cont_sid = 0
        self.cont_block = None
        try:
            headers = self.decoder.decode(block)
        except OversizedHeaderListError:
            # Past our SETTINGS_MAX_HEADER_LIST_SIZE: a client that ignores the limit is flooding (h2's
            # DenialOfServiceError, kept) [RFC 9113 10.5.1].
            return self.conn_error(H2E_CALM, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
        except Exception:
            # Whatever the decoder rejects (a bad index, a bad Huffman code, a header list past the limit):
            # the HPACK state is lost with it, so the connection cannot go on (RFC 9113 4.3).
            return self.conn_error(H2E_COMPRESSION, "header block does not decode")
        if st is None:
            if sid > self.last_in:
                self.last_in = sid
                if len(self.streams) >= 2 * self.local_max_streams:
                    return self.conn_error(H2E_PROTOCOL, "streams open far over SETTINGS_MAX_CONCURRENT_STREAMS")
                if self.cont_selfdep:
                    self.closed[sid] = CLOSED_BY_US
                    self.emit(F_RST_STREAM, 0, sid, _u32b(H2E_PROTOCOL))
                    events.append(_ev(EV_IGNORED, sid))
                    return 0
                st = H2StreamState.__new__(H2StreamState)
                st.sid = sid
                st.in_win = st.in_max = self.local_initial
                st.out_win = self.peer_initial
                st.rx_closed = end
                self.streams[sid] = st
                e = _ev(EV_REQUEST, sid)
                e.headers = headers
                e.stream_ended = end
                events.append(e)
                if end:
                    events.append(_ev(EV_END, sid))
                return 0
            how = self.closed.get(sid, 0)
            if how == CLOSED_BY_US:
                events.append(_ev(EV_IGNORED, sid))        # in flight when we reset it
                return 0
            if how == 0:
                return self.conn_error(H2E_PROTOCOL, "a new stream id not above the last")
            return self.conn_error(H2E_STREAM_CLOSED, "HEADERS on a closed stream")
        if st.rx_closed:
            self.stream_error(st, sid, H2E_STREAM_CLOSED, events)
        elif not end or self.cont_selfdep:
            self.stream_error(st, sid, H2E_PROTOCOL, events)
        else:
            e = _ev(EV_TRAILERS, sid)
            e.headers = headers
            e.stream_ended = True
            events.append(e)
            st.rx_closed = True
            events.append(_ev(EV_END, sid))
            if st.tx_closed:
                self.forget(st, CLOSED_OTHER)
        return 0

    cdef int on_settings(self, int flags, bytes buf, Py_ssize_t at, Py_ssize_t n, list events) except -1:
        cdef const unsigned char* p = buf
        cdef Py_ssize_t i
        cdef int ident
        cdef long long v, delta
        cdef H2StreamState st
        if flags & FL_ACK:
            if n:
                return self.conn_error(H2E_FRAME_SIZE, "SETTINGS ACK with a payload")
            events.append(_ev(EV_SETTINGS_ACK, 0))
            return 0
        if n % 6:
            return self.conn_error(H2E_FRAME_SIZE, "SETTINGS payload not a multiple of 6")
        for i in range(at, at + n, 6):
            ident = (p[i] << 8) | p[i + 1]
            v = _u32(p + i + 2)
            if ident == 1:
                self.encoder.header_table_size = v
            elif ident == 2 or ident == 8:
                if v > 1:
                    return self.conn_error(H2E_PROTOCOL, "ENABLE_PUSH or ENABLE_CONNECT_PROTOCOL not 0 or 1")
            elif ident == 4:
                if v > WIN_MAX:
                    return self.conn_error(H2E_FLOW_CONTROL, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = v - self.peer_initial
                self.peer_initial = v
                for st in self.streams.values():
                    st.out_win += delta
                    if st.out_win > WIN_MAX:
                        return self.conn_error(H2E_FLOW_CONTROL, "INITIAL_WINDOW_SIZE overflows a window")
            elif ident == 5:
                if v < FRAME_MIN or v > FRAME_MAX:
                    return self.conn_error(H2E_PROTOCOL, "MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = v
        self.emit(F_SETTINGS, FL_ACK, 0, b"")
        events.append(_ev(EV_SETTINGS, 0))
        return 0

    cdef int on_window(self, int sid, bytes buf, Py_ssize_t at, Py_ssize_t n, list events) except -1:
        cdef const unsigned char* p = buf
        cdef long long inc
        cdef H2StreamState st
        if n != 4:
            return self.conn_error(H2E_FRAME_SIZE, "WINDOW_UPDATE payload not 4 bytes")
        inc = _u32(p + at) & 0x7fffffff
        if not sid:
            if not inc:
                return self.conn_error(H2E_PROTOCOL, "WINDOW_UPDATE of 0")
            self.out_conn += inc
            if self.out_conn > WIN_MAX:
                return self.conn_error(H2E_FLOW_CONTROL, "connection window above 2^31-1")
            events.append(_ev(EV_WINDOW, 0))
            return 0
        st = self.known(sid, "WINDOW_UPDATE", events)
        if st is None:
            return 0
        if not inc:
            self.stream_error(st, sid, H2E_PROTOCOL, events)
            return 0
        st.out_win += inc
        if st.out_win > WIN_MAX:
            self.stream_error(st, sid, H2E_FLOW_CONTROL, events)
            return 0
        events.append(_ev(EV_WINDOW, sid))
        return 0

    cdef int fixed(self, int sid, bint on_stream, Py_ssize_t n, Py_ssize_t size, str what) except -1:
        """A frame of fixed size: on a stream or on the connection (else PROTOCOL_ERROR), `size` bytes of
        payload (else FRAME_SIZE_ERROR) [RFC 9113 6.3, 6.4, 6.7]."""
        if (sid != 0) != on_stream:
            return self.conn_error(H2E_PROTOCOL, what + (" on stream 0" if on_stream else " on a stream"))
        if n != size:
            return self.conn_error(H2E_FRAME_SIZE, f"{what} payload not {size} bytes")
        return 0

    cdef H2StreamState known(self, int sid, str what, list events):
        """The open stream a RST_STREAM or WINDOW_UPDATE is for; None when it is closed (the frame is
        ignored: RFC 9113 5.1); on an idle stream, PROTOCOL_ERROR."""
        cdef H2StreamState st = self.streams.get(sid)
        if st is None:
            if sid > self.last_in:
                self.conn_error(H2E_PROTOCOL, what + " on an idle stream")
            events.append(_ev(EV_IGNORED, sid))
        return st

    cdef int conn_error(self, int code, str why) except -1:
        self.close_connection(code, self.last_in)
        raise H2Error(code, why)

    cdef void stream_error(self, H2StreamState st, int sid, int code, list events):
        cdef H2Event e
        self.emit(F_RST_STREAM, 0, sid, _u32b(code))
        if st is not None:
            self.forget(st, CLOSED_BY_US)
            e = _ev(EV_RESET, sid)
            e.error_code = code
            events.append(e)
        else:
            events.append(_ev(EV_IGNORED, sid))

    cdef void forget(self, H2StreamState st, int how):
        del self.streams[st.sid]
        self.closed[st.sid] = how
        if len(self.closed) > CLOSED_MEMORY:
            del self.closed[next(iter(self.closed))]

    # -- output ------------------------------------------------------------------------------------------
    cdef void emit(self, int ftype, int flags, int sid, bytes payload):
        self.out.append(_hdr(len(payload), ftype, flags, sid))
        if payload:
            self.out.append(payload)

    cpdef void send_headers(self, int sid, list headers, bint end_stream=False):
        """A response head (or trailers, with end_stream); CONTINUATION frames past the frame size."""
        cdef H2StreamState st = self.streams.get(sid)
        cdef bytes block
        cdef Py_ssize_t n, fmax = self.max_outbound_frame_size, i
        if st is None or st.tx_closed:
            return
        block = self.encoder.encode(headers)
        n = len(block)
        if n <= fmax:
            self.emit(F_HEADERS, FL_END_HEADERS | (FL_END_STREAM if end_stream else 0), sid, block)
        else:
            self.emit(F_HEADERS, FL_END_STREAM if end_stream else 0, sid, block[:fmax])
            i = fmax
            while i < n:
                self.emit(F_CONTINUATION, FL_END_HEADERS if n - i <= fmax else 0, sid, block[i:i + fmax])
                i += fmax
        if end_stream:
            st.tx_closed = True
            if st.rx_closed:
                self.forget(st, CLOSED_OTHER)

    cpdef void send_data(self, int sid, bytes data, bint end_stream=False):
        """DATA within the windows (the caller asks local_flow_control_window first)."""
        cdef H2StreamState st = self.streams.get(sid)
        cdef Py_ssize_t n = len(data), fmax = self.max_outbound_frame_size, i = 0
        if st is None or st.tx_closed:
            return
        st.out_win -= n
        self.out_conn -= n
        if n <= fmax:
            self.emit(F_DATA, FL_END_STREAM if end_stream else 0, sid, data)
        else:
            while i < n:
                self.emit(F_DATA, FL_END_STREAM if end_stream and n - i <= fmax else 0, sid, data[i:i + fmax])
                i += fmax
        if end_stream:
            st.tx_closed = True
            if st.rx_closed:
                self.forget(st, CLOSED_OTHER)

    cpdef void end_stream(self, int sid):
        self.send_data(sid, b"", True)

    cpdef void reset_stream(self, int sid, int error_code=0):
        """RST_STREAM on an open or half-closed stream (nothing on a closed one)."""
        cdef H2StreamState st = self.streams.get(sid)
        if st is None:
            return
        self.emit(F_RST_STREAM, 0, sid, _u32b(error_code))
        self.forget(st, CLOSED_BY_US)

    cpdef void acknowledge_received_data(self, Py_ssize_t n, int sid):
        """The engine has taken n received bytes of stream sid: give them back to the client (batched)."""
        cdef H2StreamState st = self.streams.get(sid)
        cdef long long inc = _window_give(&self.in_conn, self.in_conn_max, &self.in_conn_done, n)
        if inc:
            self.emit(F_WINDOW_UPDATE, 0, 0, _u32b(inc))
        if st is not None:
            inc = _window_give(&st.in_win, st.in_max, &st.in_done, n)
            if inc:
                self.emit(F_WINDOW_UPDATE, 0, sid, _u32b(inc))

    cpdef Py_ssize_t local_flow_control_window(self, int sid):
        """What may be sent on stream sid now (0 when it is closed)."""
        cdef H2StreamState st = self.streams.get(sid)
        if st is None:
            return 0
        return <Py_ssize_t>(st.out_win if st.out_win < self.out_conn else self.out_conn)

    cpdef void close_connection(self, int error_code=0, int last_stream_id=-1):
        self.emit(F_GOAWAY, 0, 0, _u32b(self.last_in if last_stream_id < 0 else last_stream_id) + _u32b(error_code))

    cpdef bytes data_to_send(self):
        cdef list out = self.out
        if not out:
            return b""
        self.out = []
        return b"".join(out)

    @property
    def open_streams(self):
        """The ids of the open and half-closed streams (for tests)."""
        return sorted(self.streams)
