# The downstream HTTP/2 engine (included by worker.pyx).
#
#   H2Conn    one HTTP/2 client connection: an H2Wire (h2frames.pyx: frames, stream states, flow control)
#             fed by the connection's ClientConn (which stays the asyncio protocol and the member of
#             Worker.conns, and hands every read to H2Conn)
#   H2Stream  one request stream (h2stream.pyx): a Downstream (downstream.pxd) of its own, as ClientConn is
#             for HTTP/1.1, so Exchange, routing, policies and the upstream pools are the same for both.
#             On a route to an HTTP/2 upstream the stream is joined to an upstream stream (h2call.pyx: the
#             `call` field; the `trailers` sent after the last DATA).
#
# Rules kept here (and why; the precedent in brackets):
# * Received DATA is acknowledged (WINDOW_UPDATE) only once the upstream transport has taken it and is not
#   paused: a slow upstream slows the client through HTTP/2 flow control instead of gateway memory.
# * DATA is sent only within the peer's windows; a stream whose response makes no progress against them
#   for `stall_timeout` is reset (CANCEL) and its upstream released [nginx send_timeout: the time between
#   two successive writes].
# * 100 concurrent streams [RFC 9113 recommends >= 100; nginx 128]; a stream beyond them is refused alone
#   (RST_STREAM REFUSED_STREAM, RFC 9113 5.1.2), 32 KiB header list (the H1 limit),
#   the header count checked at decode (431, like H1) [Envoy max_headers_count], at most 64 CONTINUATION
#   frames per header block (h2's bound, kept). One read may start at most `max_streams` streams: a client
#   that respects the limit cannot start more, even when its first flight beat the SETTINGS frame (those
#   over the limit are refused, and refused streams do not count); more means it reset streams it opened
#   in the same read (the Rapid Reset pattern): GOAWAY ENHANCE_YOUR_CALM.
# * Rapid Reset (CVE-2023-44487): when at least 500 streams were opened in a window and the client reset
#   more than half of them before their response completed, GOAWAY ENHANCE_YOUR_CALM.
# * Control frames (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, empty DATA) cost the client budget: more than
#   `MAX_CONTROL` in a window, or more than `MAX_EMPTY_RUN` consecutive empty DATA frames, is
#   ENHANCE_YOUR_CALM [Envoy max_outbound_control_frames 1000, max_consecutive_inbound_frames_with_empty_
#   payload 1]; output the client does not read is bounded (`MAX_OUTQ` bytes written while the transport
#   is paused, when only control answers and heads go out): past it the connection is dropped
#   [Envoy max_outbound_frames].
# * Pseudo-headers validated (exactly one each of :method :scheme :path, :authority optional, none after a
#   regular field, no unknown ones), names lowercase tokens, values without CR/LF/NUL or surrounding
#   whitespace, no connection-specific fields, TE only "trailers" (RFC 9113 8.2, 8.3): a malformed request
#   is reset with PROTOCOL_ERROR and never reaches an HTTP/1.1 upstream (no H2->H1 smuggling). Every other
#   field goes through the HTTP/1.1 reader's wire table (wire.pyx): the same names dropped, the same
#   underscore rule, the same credential and traceparent rules.
# * Drain: GOAWAY NO_ERROR naming the last stream taken; streams in flight finish, then the connection
#   closes. That GOAWAY is the second of two [RFC 9113 6.8; Envoy drain_timeout]: the first names 2^31-1
#   and comes with a PING, so that streams the client sent before it saw a GOAWAY are still taken; the
#   PING's answer (or `GOAWAY_ACK_WAIT`) ends that round trip. After the second, new streams are refused.
# * The client's GOAWAY [RFC 9113 6.8]: the streams it had opened are answered in full (the wire layer only
#   reports it; h2's H2Connection would have stopped all output), new ones are refused, then GOAWAY and close.
# * Timers, each with its own job [nginx: client_header_timeout, send_timeout and proxy_read_timeout are
#   separate]: `header_timeout` bounds a header block (and the preface) from its first byte to its last,
#   whatever arrives in between (HeaderClock, h2clock.pyx: the CONTINUATION slowloris);
#   `stall_timeout` bounds the time a stream's response makes no progress against the client's windows;
#   the upstream `timeout` bounds the upstream's silence and is suspended while the stream holds response
#   bytes the client has not taken (fastgw is not waiting for the upstream then, and has usually paused
#   reading from it).
# * HPACK decoding errors are connection errors of type COMPRESSION_ERROR [RFC 9113 4.3].
# * A request whose DATA adds up to more or less than its content-length is malformed: stream error
#   PROTOCOL_ERROR [RFC 9113 8.1.1; h2spec http2/8.1.2.6]. A DATA frame that would pass the announced length
#   resets the stream before any of it is forwarded: the upstream request is framed with that
#   Content-Length, and on HTTP/1.1 bytes past it belong to no request (a malformed request is never
#   forwarded, 8.1.1). A body that ends short resets at END_STREAM; the upstream connection, mid-request,
#   is closed with the dropped exchange, never pooled. (h2's H2Connection makes both a connection error.)

from fastgw._core.h2frames import H2Error
from fastgw._core.h2frames cimport (
    EV_DATA, EV_END, EV_GOAWAY, EV_IGNORED, EV_PING, EV_PING_ACK, EV_PRIORITY, EV_REQUEST, EV_RESET, EV_SETTINGS,
    EV_TRAILERS, EV_WINDOW, F_PING, frame_bytes, goaway_bytes,
)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


cdef dict H2_STATUS = {}
for _s in range(100, 600):
    H2_STATUS[_s] = b"%d" % _s

cdef inline bint _h2_value_ok(bytes v):
    """RFC 9113 8.2.1: no NUL, CR or LF anywhere, no leading or trailing SP/HTAB."""
    cdef const unsigned char* p = v
    cdef Py_ssize_t i, n = len(v)
    if n == 0:
        return True
    if p[0] == 32 or p[0] == 9 or p[n - 1] == 32 or p[n - 1] == 9:
        return False
    for i in range(n):
        if p[i] == 0 or p[i] == 10 or p[i] == 13:
            return False
    return True


cdef H2Limits H2_DEFAULTS = H2Limits()

# RFC 9113 3.5 on the port shared by HTTP/1.1 and h2c (prior knowledge): a start that is not the exact
# preface goes to the HTTP/1.1 reader, which answers what it cannot parse with a 400. When the start was not
# HTTP/1.x either, that 400 is replaced by HTTP/2's answer to an invalid preface: GOAWAY PROTOCOL_ERROR
# (last stream 0), then close. "Not HTTP/1.x": preface-shaped (the preface's first line, then something
# else), or a first line of three parts whose third is not an HTTP version ("INVALID CONNECTION
# PREFACE", h2spec http2/3.5/2). A request line with an HTTP version (also "HTTP/2.0") or HTTP/0.9's two
# parts keeps the HTTP/1.1 400. Only the connection's first bytes count, only on the error path.
cdef bytes H2_PREFACE_ERROR = goaway_bytes(0, E_PROTOCOL)

cdef bint not_http1_start(bytes start):
    cdef Py_ssize_t eol
    cdef list parts
    if start is None:
        return False
    if start.startswith(b"PRI * HTTP/2.0\r\n"):
        return True
    eol = start.find(b"\n")
    if eol < 0:
        return False
    parts = start[:eol].rstrip(b"\r").split(b" ")
    return len(parts) == 3 and not (<bytes>parts[2]).startswith(b"HTTP/")


cdef list _h2_lines(bytes block, list out):
    """Append (lowercase name, value) for each "Name: value\\r\\n" line of an H1 header block (a line
    without a colon, or starting with one, is skipped; the value loses surrounding SP/HTAB). One C pass:
    this runs for every response head."""
    cdef const char* p = block
    cdef const char* hit
    cdef Py_ssize_t n = len(block), pos = 0, eol, k, vs, ve, i
    cdef bytes name
    cdef char* w
    while pos < n:
        eol = n
        k = pos
        while k < n:
            hit = <const char*>memchr(p + k, 13, n - k)
            if hit == NULL:
                break
            k = hit - p
            if k + 1 < n and p[k + 1] == 10:
                eol = k
                break
            k += 1
        hit = <const char*>memchr(p + pos, 58, eol - pos)
        if hit != NULL and hit - p > pos:
            k = hit - p
            name = PyBytes_FromStringAndSize(p + pos, k - pos)
            w = PyBytes_AS_STRING(name)
            for i in range(k - pos):
                if 65 <= w[i] <= 90:
                    w[i] += 32
            vs = k + 1
            ve = eol
            while vs < ve and (p[vs] == 32 or p[vs] == 9):
                vs += 1
            while ve > vs and (p[ve - 1] == 32 or p[ve - 1] == 9):
                ve -= 1
            out.append((name, PyBytes_FromStringAndSize(p + vs, ve - vs)))
        pos = eol + 2
    return out


cdef bytes DRAIN_PING = b"fgdrain\x00"     # the drain's PING payload; its ACK ends the first round trip
cdef bytes DRAIN_FIRST = goaway_bytes(LAST_STREAM_ID, 0) + frame_bytes(F_PING, 0, 0, DRAIN_PING)


cdef class H2Conn:
    def __init__(self, ClientConn cl):
        cdef Runtime rt = cl.rt0
        self.cl = cl
        self.w = cl.w
        self.transport = cl.transport
        self.lim = rt.h2 if rt.h2 is not None else H2_DEFAULTS
        self.streams = {}
        self.dirty = []
        self.after_end = []
        self.last_active = self.w.clock.now
        self.win_start = self.last_active
        self.hclock = HeaderClock(len(H2_PREFACE), self.last_active)
        # fastgw validates request fields itself (below, in one pass that it needs anyway to build the
        # upstream head) and builds response fields lowercase and clean: the wire layer only frames them.
        h = H2Wire(self.lim.max_streams, self.lim.stream_window, rt.max_hbytes)
        h.initiate_connection()
        if self.lim.conn_window > 65535:
            h.increment_flow_control_window(self.lim.conn_window - 65535)
        self.h2 = h
        self.flush()

    # -- input -------------------------------------------------------------------------------------------
    cdef void feed(self, bytes data):
        cdef int new = 0, k
        cdef H2Event ev
        cdef list events
        cdef double now = self.w.clock.now
        if self.closed:
            return
        self.last_active = now
        if now - self.win_start > FLOOD_WINDOW:
            self.win_start = now
            self.win_opened = 0
            self.win_reset = 0
            self.win_ctrl = 0
        self.hclock.feed(data, now)
        try:
            events = self.h2.receive_data(data)
        except H2Error:
            self.fatal()                           # the GOAWAY with the error's code is queued
            return
        self.batching = True
        try:
            for ev in events:
                k = ev.kind
                if k == EV_REQUEST:
                    self.win_opened += 1
                    if self.peer_goaway or self.goaway_stage == 2 or len(self.streams) >= self.lim.max_streams:
                        # Not processed, safe to retry (RFC 9113 5.1.2, 6.8).
                        self.h2.reset_stream(ev.stream_id, E_REFUSED)
                        continue
                    new += 1
                    if new > self.lim.max_streams:
                        self.calm()                # more streams taken than can be open at once
                        return
                    self.on_request(ev)
                elif k == EV_DATA:
                    self.on_data(ev)
                elif k == EV_END:
                    self.on_end(ev.stream_id)
                elif k == EV_RESET:
                    self.on_reset(ev.stream_id)
                elif k == EV_WINDOW or k == EV_SETTINGS:
                    self.win_ctrl += 1
                    self.push_blocked()
                elif k == EV_PING or k == EV_PRIORITY or k == EV_IGNORED:
                    self.win_ctrl += 1             # (EV_IGNORED: a frame on a closed stream, or unknown)
                elif k == EV_PING_ACK:
                    self.win_ctrl += 1
                    if self.goaway_stage == 1 and ev.ping_data == DRAIN_PING:
                        self.final_goaway()
                elif k == EV_TRAILERS:
                    # Request trailers cannot be forwarded on an HTTP/1.1 upstream request fastgw framed
                    # itself; they are dropped (their END_STREAM follows as EV_END).
                    pass
                elif k == EV_GOAWAY:
                    self.peer_goaway = True
                    self.draining = True
                if self.closed:
                    return
            if self.win_ctrl > MAX_CONTROL or self.empty_run > MAX_EMPTY_RUN:
                self.calm()
                return
        finally:
            self.batching = False
        self.flush()
        self.close_if_done()

    cdef void on_request(self, H2Event ev):
        cdef int sid = ev.stream_id
        cdef H2Stream st
        cdef RequestHead h
        cdef Exchange ex
        cdef bint ended = ev.stream_ended
        if sid > self.last_sid:
            self.last_sid = sid
        st = H2Stream.__new__(H2Stream)
        st.conn = self
        st.sid = sid
        st.w = self.w
        st.loop = self.cl.loop
        st.rt0 = self.cl.rt0
        st.peer = self.cl.peer
        st.tcp_peer = self.cl.tcp_peer
        st.proto = self.cl.proto
        st.caps = CAP_GRPC
        st.outq = []
        st.counted = True
        st.last_rx = self.last_active
        st.head_start = self.last_active
        st.wpaused = self.wpaused
        st.rx_done = ended
        self.streams[sid] = st
        h = RequestHead.__new__(RequestHead)
        code = self.build_head(h, ev.headers, ended)
        st.body_left = h.content_length      # (-1 when absent or malformed)
        if code == 1:
            st.reset(E_PROTOCOL)
            return
        ex = st.new_exchange(h)
        if code == 431:
            ex.err = gateway_error(431, "header-too-large", SRC_DOWNSTREAM, False, b"too many header fields", None)
            ex.body_done = True
            st.rx_done = True
            st.start(ex)
            return
        ex.has_body = not ended
        ex.body_done = ended
        if not ended:
            st.rx = ex
        st.start(ex)

    cdef int build_head(self, RequestHead h, list headers, bint ended):
        """Validate the request's field list and fill `h` as the H1 reader would, with the same wire table
        (fastgw/_core/wire.pyx). Returns 0, 1 (malformed: PROTOCOL_ERROR) or 431 (too many fields)."""
        cdef Runtime rt = self.cl.rt0
        cdef HeaderTable table = rt.headers
        cdef list pieces = []
        cdef bytes name, value, method = None, path = None, scheme = None, authority = None
        cdef bint regular = False
        cdef Py_ssize_t n = 0, i, q, plen
        cdef const unsigned char* u
        cdef int flags = 0, code
        cdef list cookies = None
        cdef unsigned long long creds = 0
        h.content_length = -1
        h.host = b""
        h.minor = 1
        h.keep_alive = True
        h.pieces = pieces                        # (take_field appends the forwarded fields to it)
        for name, value in headers:
            if not _h2_value_ok(value):
                return 1
            if len(name) and (<const unsigned char*>name)[0] == 58:      # ':'
                if regular:
                    return 1
                if name == b":method":
                    if method is not None or not value:
                        return 1
                    method = value
                elif name == b":path":
                    if path is not None or not value:
                        return 1
                    path = value
                elif name == b":scheme":
                    if scheme is not None:
                        return 1
                    scheme = value
                elif name == b":authority":
                    if authority is not None:
                        return 1
                    authority = value
                else:
                    return 1
                continue
            regular = True
            if not name or not only(name, C_NAME):
                return 1
            n += 1
            if n > rt.max_headers:
                return 431
            code = table.classify(name)
            if (code == A_FORWARD or code >= A_CREDENTIALS) and name == b"cookie":
                # Split cookie fields (RFC 9113 8.2.3) become one field for HTTP/1.1 (a cookie that
                # carries a credential too: its crumbs are joined, then read once).
                if cookies is None:
                    cookies = []
                cookies.append(value)
                continue
            if code == A_HOST:                   # host: :authority wins when both are present
                if authority is None:
                    if h.host or not value or not only(value, C_HOST):
                        return 1
                    h.host = value
            elif code == A_CONTENT_LENGTH:
                if h.content_length >= 0 or not value.isdigit() or len(value) > 18:
                    return 1
                h.content_length = int(value)
            elif code == A_TRANSFER_ENCODING or code == A_CONNECTION or code == A_CONN_SPECIFIC:
                return 1                         # connection-specific (RFC 9113 8.2.2)
            elif code == A_TE:
                if value != b"trailers":
                    return 1
            elif take_field(h, code, name, value, &creds) == FIELD_DUPLICATE:
                return 1                         # a credential forwarded, never twice
            # the rest (expect, hop-by-hop, X-Forwarded-*, identity): dropped
        if method is None or method == b"CONNECT" or path is None or scheme is None:
            return 1
        if authority is not None:
            if not authority or not only(authority, C_HOST):     # RFC 9110 4.2.1: no empty host
                return 1
            h.host = authority
        if cookies is not None:
            pieces += (b"cookie", b": ", b"; ".join(cookies), b"\r\n")
        h.method = method
        h.pieces = pieces
        u = path
        plen = len(path)
        if plen == 1 and u[0] == 42:
            if method != b"OPTIONS":
                return 1
            h.path = path
            h.query = b""
        elif u[0] != 47:
            return 1
        else:
            q = plen
            for i in range(plen):
                if u[i] == 63:
                    q = i
                    break
                flags |= CHARS[u[i]]
            for i in range(q, plen):
                if u[i] == 35 or u[i] <= 32 or u[i] >= 127:
                    return 1
            if q == plen:
                h.path = path
                h.query = b""
            else:
                h.path = path[:q]
                h.query = path[q:]
            flags &= C_PATH
            if flags and bad_path(h.path, flags):
                return 1
        if h.content_length < 0 and not ended:
            h.chunked = True                 # a body of unknown length: chunked to the upstream
        elif h.content_length > 0 and ended:
            return 1                          # content-length disagrees with the (empty) body
        return 0

    cdef void on_data(self, H2Event ev):
        cdef int sid = ev.stream_id
        cdef H2Stream st = self.streams.get(sid)
        cdef long long n = ev.flow_controlled_length
        cdef bytes data = ev.data
        cdef Exchange ex
        if not data:
            if not ev.stream_ended:
                self.empty_run += 1
                self.win_ctrl += 1
        else:
            self.empty_run = 0
        if st is not None and st.body_left >= 0 and not st.ended:
            if len(data) > st.body_left:
                st.reset(E_PROTOCOL)         # more than content-length: not one byte of it goes upstream
                if n:
                    self.h2.acknowledge_received_data(n, sid)
                return
            st.body_left -= len(data)
        if st is not None and st.call is not None:
            st.last_rx = self.last_active
            st.call.request_data(data, n)     # acknowledged once the upstream stream took it
            return
        if st is None or st.rx is None or st.active is None:
            if n:
                self.h2.acknowledge_received_data(n, sid)
            return
        ex = st.rx
        st.last_rx = self.last_active
        if data:
            st.body_data(data)
        if st.rx is not ex or ex.done:
            if n:
                self.h2.acknowledge_received_data(n, sid)
            return
        if not ex.sent and ex.body_waiter is None:   # (the upstream call has not started; read_body holds it)
            st.rpause |= P_PENDING           # held until attach() hands it to the upstream transport
        st.owed += n
        if st.rpause == 0:
            self.ack(st)

    cdef void ack(self, H2Stream st):
        cdef long long n = st.owed
        st.owed = 0
        if n and not self.closed:
            self.h2.acknowledge_received_data(n, st.sid)
            if not self.batching:
                self.flush()

    cdef void on_end(self, int sid):
        cdef H2Stream st = self.streams.get(sid)
        if st is None:
            return
        st.rx_done = True
        if st.body_left > 0 and not st.ended:
            st.reset(E_PROTOCOL)             # less than content-length
            return
        if st.call is not None:
            st.call.request_end()
        elif st.rx is not None:
            st.body_end()

    cdef void on_reset(self, int sid):
        cdef H2Stream st = self.streams.get(sid)
        if st is None:
            return
        if st.counted:
            self.win_reset += 1
            if self.win_opened >= RESET_MIN and self.win_reset * 2 > self.win_opened:
                self.calm()
                return
        st.ended = True
        st.outq = []
        st.outq_bytes = 0
        st.drop_exchange()
        self.stream_ended(st)

    # -- output ------------------------------------------------------------------------------------------
    cdef void push(self, H2Stream st):
        """Send the stream's queued DATA within the windows; END_STREAM with the last frame."""
        cdef object h = self.h2
        cdef Py_ssize_t win, n, fmax
        cdef bytes chunk
        cdef bint moved = False
        if st.ended:
            st.outq = []
            return
        fmax = h.max_outbound_frame_size
        while st.outq and not self.wpaused:
            win = h.local_flow_control_window(st.sid)
            if win <= 0:
                break
            chunk = st.outq[0]
            n = len(chunk)
            if n > win or n > fmax:
                n = win if win < fmax else fmax
                h.send_data(st.sid, chunk[:n])
                st.outq[0] = chunk[n:]
            else:
                st.outq.pop(0)
                last = st.end_pending and not st.outq and st.trailers is None
                h.send_data(st.sid, chunk, end_stream=last)
                if last:
                    st.ended = True
            st.outq_bytes -= n
            moved = True
        if st.outq:
            if moved or st.blocked_since == 0:
                st.blocked_since = self.w.clock.now     # the stall timer counts time without progress
        else:
            st.blocked_since = 0
            if st.end_pending and not st.ended:
                st.ended = True
                if st.trailers is not None:
                    h.send_headers(st.sid, st.trailers, end_stream=True)
                else:
                    h.end_stream(st.sid)
            if st.ended:
                self.stream_ended(st)
        if st.wpaused and st.outq_bytes <= STREAM_OUTQ and not self.wpaused:
            st.update_wpause()

    cdef void push_blocked(self):
        cdef H2Stream st
        for st in list(self.streams.values()):
            if st.outq and not st.dirty:
                st.dirty = True
                self.dirty.append(st)

    cdef void flush(self):
        cdef H2Stream st
        cdef list dirty
        if self.closed:
            return
        while self.dirty:
            dirty = self.dirty
            self.dirty = []
            for st in dirty:
                st.dirty = False
                self.push(st)
        if self.after_end:
            for st in self.after_end:
                if st.ended and not st.outq:
                    self.h2.reset_stream(st.sid, E_NO_ERROR)
            self.after_end = [st for st in self.after_end if not st.ended]
        data = self.h2.data_to_send()
        if data:
            if self.wpaused:
                # No DATA is sent while the transport is paused: what still comes is control-frame
                # answers and response heads. Past MAX_OUTQ the client is not reading: drop it.
                self.paused_out += len(data)
                if self.paused_out > MAX_OUTQ:
                    self.abort()
                    return
            self.transport.write(data)

    cdef void schedule(self):
        """Output produced outside a client read (upstream responses, connects, policy results) is
        written once per event-loop iteration: the responses of many streams share one h2 serialisation
        pass and one write() instead of one each."""
        if not self.flush_soon and not self.closed:
            self.flush_soon = True
            self.cl.loop.call_soon(self.flush_later)

    def flush_later(self):
        self.flush_soon = False
        self.flush()

    cdef void stream_ended(self, H2Stream st):
        """Forget a stream once its response is fully out (or it was reset) and no exchange holds it."""
        if st.ended and st.active is None and not st.outq:
            if st.owed:
                n = st.owed
                st.owed = 0
                if not self.closed:
                    self.h2.acknowledge_received_data(n, st.sid)     # the connection window
            if self.streams.get(st.sid) is st:
                del self.streams[st.sid]

    # -- connection level --------------------------------------------------------------------------------
    cdef void calm(self):
        """A flood: GOAWAY ENHANCE_YOUR_CALM and close."""
        if self.closed:
            return
        self.h2.close_connection(error_code=E_CALM, last_stream_id=self.last_sid)
        self.fatal()

    cdef void fatal(self):
        """Write the pending output, whose last frame is the GOAWAY of a connection error, and close."""
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)
        self.lost()
        self.cl.close()

    cdef void final_goaway(self):
        """GOAWAY NO_ERROR naming the last stream taken; in-flight streams finish (written directly, after
        the pending output: the wire layer goes on taking their frames)."""
        if self.goaway_stage == 2 or self.closed:
            return
        self.goaway_stage = 2
        self.flush()
        self.transport.write(goaway_bytes(self.last_sid, 0))

    def drain(self):
        """Graceful shutdown, first step: GOAWAY(2^31-1) and a PING (see the header comment). Called again
        while the worker drains: closes the connection once it is done."""
        self.draining = True
        if self.goaway_stage == 0 and not self.peer_goaway and not self.closed:
            self.goaway_stage = 1
            self.goaway_at = self.w.clock.now
            self.flush()
            self.transport.write(DRAIN_FIRST)
        self.close_if_done()

    cdef void close_if_done(self):
        """A draining connection (fastgw's drain or the client's GOAWAY) closes once no stream is left,
        unless the drain's PING round trip is still under way."""
        if self.draining and not self.streams and self.goaway_stage != 1:
            self.close()

    cdef void close(self):
        """GOAWAY naming the last stream taken, then close (RFC 9113 6.8: a GOAWAY before closing)."""
        if not self.closed:
            self.final_goaway()
            self.flush()
            self.lost()
            self.cl.close()

    cdef void abort(self):
        self.lost()
        self.cl.abort()

    cdef void lost(self):
        """The connection is gone (or going): every stream's exchange ends and releases its upstream."""
        cdef H2Stream st
        if self.closed:
            return
        self.closed = True
        for st in list(self.streams.values()):
            st.ended = True
            st.outq = []
            st.drop_exchange()
        self.streams.clear()
        self.dirty = []

    def pause_writing(self):
        cdef H2Stream st
        self.wpaused = True
        for st in list(self.streams.values()):
            st.update_wpause()

    def resume_writing(self):
        cdef H2Stream st
        self.wpaused = False
        self.paused_out = 0
        for st in list(self.streams.values()):
            st.update_wpause()
        self.push_blocked()
        self.flush()

    cdef void check(self, double now):
        cdef H2Stream st
        cdef Exchange ex
        cdef Runtime rt = self.cl.rt0
        if self.closed:
            return
        if self.hclock.since and now - self.hclock.since > rt.header_timeout:
            # A header block (or the preface) unfinished at header_timeout: the connection's input is stuck
            # on it (RFC 9113 6.10), so the connection ends [nginx: GOAWAY PROTOCOL_ERROR].
            self.h2.close_connection(error_code=E_PROTOCOL, last_stream_id=self.last_sid)
            self.fatal()
            return
        if self.goaway_stage == 1 and now - self.goaway_at > GOAWAY_ACK_WAIT:
            self.final_goaway()                 # the drain's PING went unanswered
        for st in list(self.streams.values()):
            ex = st.active
            if st.outq and ex is not None and ex.drv is not None:
                ex.drv.held_up(ex, now)         # the upstream's time waits while the client holds us up
            if st.call is not None:
                st.call.check(now)
            elif ex is not None:
                st.check_exchange(ex, now)
            if st.outq and st.blocked_since and now - st.blocked_since > self.lim.stall_timeout:
                st.reset(E_CANCEL)              # no progress against the client's windows
        if not self.streams:
            if self.draining:
                self.close_if_done()
            elif now - self.last_active > rt.idle_timeout:
                self.close()
        if not self.batching:
            self.flush()
