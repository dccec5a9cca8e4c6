# The downstream HTTP/1.1 connection (included by worker.pyx): the asyncio protocol of every client
# connection, the HTTP/1.1 session over http1.pyx's reader (pipelining, serialisation, timeouts), and the
# hand-over to h2engine.pyx (h2c preface or ALPN "h2").

import socket
import struct

from fastgw import proxyproto

# SO_LINGER on, 0 s: close() resets the connection and discards what the kernel still holds for it.
LINGER_RESET = struct.pack("ii", 1, 0)


# The status line of each code HTTPStatus names, by code (a list: a dict lookup by status made an int
# object and hashed it, ~150 instructions per response); others are formatted (status_line).
cdef list STATUS_LINES = [None] * 1000
# The fixed lines of a response head (ClientConn.write_head, framing).
cdef bytes RID_NAME = b"X-Request-ID: "
cdef bytes CL_LINE = b"\r\nContent-Length: "
cdef bytes TE_LINE = b"\r\nTransfer-Encoding: chunked"


def _init_status_lines():
    from http import HTTPStatus
    for s in HTTPStatus:
        STATUS_LINES[s.value] = b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode())


_init_status_lines()


cdef inline bytes status_line(int status):
    cdef object line = None
    if 0 <= status < 1000:
        line = <object>PyList_GET_ITEM(STATUS_LINES, status)
    if line is None:
        return b"HTTP/1.1 %d Unknown\r\n" % status
    return <bytes>line


cdef class H1Reader(RequestReader):
    """The HTTP/1.1 request reader (http1.pyx) of one ClientConn: its events go to the connection."""
    cpdef request_head(self, RequestHead head):
        self.conn.request_head(head)

    cpdef request_body(self, bytes data):
        self.conn.body_data(data)

    cpdef request_end(self):
        self.conn.body_end()

    cpdef request_error(self, int status, str slug, str detail):
        self.conn.request_error(status, slug, detail)


cdef class ClientConn(Downstream):
    """One client connection: the asyncio protocol, and the Downstream (downstream.pxd) of its HTTP/1.1
    exchanges, one at a time; an HTTP/2 connection hands its input to H2Conn, whose streams are the
    Downstreams of its exchanges."""
    def __init__(self, Worker w):
        cdef Runtime rt = w.rt
        cdef H1Reader reader = H1Reader(rt.max_line, rt.max_hbytes, rt.max_headers, rt.headers)
        reader.conn = self
        self.reader = reader
        self.w = w
        self.loop = w.loop
        self.rt0 = rt
        self.draining = w.draining
        self.queue = []
        self.wbuf = []

    # -- asyncio protocol ------------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        # Up to 256 KiB may wait in the client's write buffer before the upstream is paused (uvloop's
        # default, 64 KiB, paused and resumed the upstream on every 64 KiB response; nginx buffers 128 KiB
        # per request with the benchmark's proxy_buffers).
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.tcp_peer = (peer[0] if peer else "unknown").encode()
        self.peer = self.proxied_peer if self.proxied_peer is not None else self.tcp_peer
        self.proto = b"https" if transport.get_extra_info("sslcontext") is not None else b"http"
        self.last_rx = self.w.clock.now
        self.head_start = self.last_rx
        self.w.conns.add(self)
        if self.parked:
            transport.pause_reading()        # over the cap: read nothing until Worker.make_room
            self.w.parked.append(self)
            return
        self.begin()

    cdef void begin(self):
        ssl = self.transport.get_extra_info("ssl_object")
        if ssl is not None and ssl.selected_alpn_protocol() == "h2":
            self.start_h2(b"")

    cdef void unpark(self):
        """Room under max_connections: serve this connection from now on (its timers start now)."""
        self.parked = False
        if self.closed:
            return
        self.last_rx = self.head_start = self.w.clock.now
        self.transport.resume_reading()
        self.begin()

    def data_received(self, bytes data):
        if self.closed:
            return
        if self.want_proxy:
            data = self.proxy_preface(data)
            if not data:
                return
        if self.h2 is not None:
            self.h2.feed(data)
            return
        if not self.sniffed:
            data = self.sniff(data)
            if data is None:
                return
        self.last_rx = self.w.clock.now
        if self.active is None and self.reader._state == ST_IDLE:
            self.head_start = self.last_rx
        self.batching = True
        try:
            self.reader.feed(data)
        finally:
            self.batching = False
        self.flush()

    cdef bytes proxy_preface(self, bytes data):
        """Hold input until the PROXY header is parsed (fastgw.proxyproto), take the client address
        from it, return the bytes after it (b"" while incomplete; a bad header aborts the connection)."""
        buf = data if self.pre is None else self.pre + data
        try:
            res = proxyproto.parse(buf)
        except proxyproto.ProxyProtocolError:
            self.abort()
            return b""
        if res is None:
            self.pre = buf
            return b""
        self.want_proxy = False
        self.pre = None
        if res.source is not None:
            self.peer = res.source.encode()
        return buf[res.consumed:]

    def eof_received(self):
        cdef Exchange ex = self.rx
        self.eof = True
        if self.h2 is not None:
            self.h2.lost()
            return False
        if ex is not None and not ex.body_done and not ex.done:
            # The client closed before its request body ended: the request can never complete. Abort it
            # upstream now [nginx, HAProxy abort on client close] rather than at the upstream timeout.
            self.rx = None
            self.stop_requests()
            if ex is self.active:
                self.abort()                  # nothing of the response can be owed (connection_lost)
                return False
            self.queue.remove(ex)             # a queued request: the ones before it are still answered
            self.client_gone(ex)
        if self.active is None and not self.queue:
            self.close()
            return False
        return True                         # keep writing the answers still owed

    def connection_lost(self, exc):
        cdef Exchange ex
        self.closed = True
        self.w.conns.discard(self)
        if self.admitted:
            self.admitted = False
            if self.parked:
                self.w.parked.remove(self)
            self.w.release()
        if self.h2 is not None:
            self.h2.lost()
        if self.active is not None and not self.active.done:
            self.client_gone(self.active)
        for ex in ([self.active] if self.active is not None else []) + self.queue:
            ex.drop()
        self.active = None
        self.queue = []

    def pause_writing(self):
        self.wpaused = True
        self.wpaused_at = self.w.clock.now
        if self.h2 is not None:
            self.h2.pause_writing()
        if self.active is not None and self.active.drv is not None:
            self.active.drv.set_paused(self.active, True)

    def resume_writing(self):
        self.wpaused = False
        if self.h2 is not None:
            self.h2.resume_writing()
        if self.active is not None and self.active.drv is not None:
            self.active.drv.set_paused(self.active, False)

    # -- HTTP/2 selection -----------------------------------------------------------------------------
    cdef bytes sniff(self, bytes data):
        """The connection's first bytes: an h2c prior-knowledge preface hands the connection to the
        HTTP/2 engine (None returned); anything else is HTTP/1.1 (the bytes returned, to feed)."""
        cdef Py_ssize_t n
        if self.sbuf is not None:
            data = self.sbuf + data
            self.sbuf = None
        n = len(data)
        if n == 0:
            return data
        if n > 24:
            n = 24
        if (<const char*>data)[0] != b'P' or data[:n] != H2_PREFACE[:n]:
            self.sniffed = True
            self.first = data
            return data
        if n < 24:
            self.sbuf = data
            return None
        self.start_h2(data)
        return None

    cpdef start_h2(self, bytes data):
        """Speak HTTP/2 on this connection from now on (h2c preface seen, or ALPN chose "h2"); `data`
        is what was received so far (the client preface included)."""
        self.sniffed = True
        self.h2 = H2Conn(self)
        if data:
            self.h2.feed(data)

    # -- output ----------------------------------------------------------------------------------------
    cdef void send(self, bytes data):
        """Write `data`, or add it to the output batch while one read is handled (flush writes it). The
        batch is wbuf[:nw], slots kept from batch to batch: a list emptied and appended to again frees and
        reallocates its item array (~250 instructions per response)."""
        if self.batching:
            slot_put(self.wbuf, self.nw, data)
            self.nw += 1
        elif not self.closed:
            twrite(self.transport, data)

    cdef void flush(self):
        cdef Exchange ex = self.active
        if self.nw and not self.closed:
            self.write_batch()
        if ex is not None:
            ex.flush_upstream()

    cdef void write_batch(self):
        """Write the output batch, wbuf[:nw], in one go and empty its slots."""
        cdef Py_ssize_t k, n = self.nw
        self.nw = 0
        write_parts(self.transport, self.wbuf, n)
        for k in range(n):
            slot_put(self.wbuf, k, None)

    cdef void close(self):
        if not self.closed:
            self.closed = True
            self.closed_at = self.w.clock.now
            self.flush_now()
            self.transport.close()

    cdef void abort(self):
        if not self.closed:
            self.closed = True
            self.wbuf = []
            self.nw = 0
            self.transport.abort()

    cdef void flush_now(self):
        if self.nw:
            self.write_batch()

    cdef void pause_reading(self, int why):
        if self.rpause == 0 and not self.closed:
            self.transport.pause_reading()
        self.rpause |= why

    cdef void resume_reading(self, int why):
        if self.rpause & why:
            self.rpause &= ~why
            if self.rpause == 0 and not self.closed:
                self.last_rx = self.w.clock.now   # the client's silence counts from now (check)
                self.transport.resume_reading()

    cdef bint reader_done(self):
        return self.reader._state == ST_DEAD or self.reader.upgraded or self.eof or self.discard

    cdef void stop_requests(self):
        self.discard = True
        self.reader._state = ST_DEAD

    cdef object peercert(self):
        """The verified TLS client certificate of this connection, or None (asked of the TLS transport
        only when a policy wants it: mTLS routes)."""
        t = self.transport
        return t.get_extra_info("peercert") if t is not None else None

    # -- response output (the Downstream interface, downstream.pxd): HTTP/1.1 framing -------------------
    cdef void write_head(self, Exchange ex, int status, list lines, bytes length):
        """The status line, the upstream's kept lines, the route's and the policies' added ones,
        X-Request-ID, then the framing (framing) and Connection (head_end): written into one bytes object
        sized first (a list of ~10 parts grown then joined cost ~500 instructions more per response)."""
        cdef RouteRT route = ex.route
        cdef bytes line = status_line(status), joined = None, end, out
        cdef bytes add = route.resp_add, extra = ex.resp_extra
        cdef Py_ssize_t total, n = 0
        cdef int fr
        cdef char* d
        if lines:
            n = parts_size(lines)
            if n < 0:
                joined = b"".join(lines)          # (a policy put other buffers there: the general path)
                n = PyBytes_GET_SIZE(joined)
        fr = self.framing(ex, status, length)
        end = self.head_end(ex, ex.head)
        total = PyBytes_GET_SIZE(line) + n + PyBytes_GET_SIZE(RID_NAME) + PyBytes_GET_SIZE(ex.rid) \
            + PyBytes_GET_SIZE(end)
        if add:
            total += PyBytes_GET_SIZE(add)
        if extra is not None:
            total += PyBytes_GET_SIZE(extra)
        if fr == FR_LENGTH:
            total += PyBytes_GET_SIZE(CL_LINE) + PyBytes_GET_SIZE(length)
        elif fr == FR_CHUNKED:
            total += PyBytes_GET_SIZE(TE_LINE)
        out = PyBytes_FromStringAndSize(NULL, total)
        d = put_bytes(PyBytes_AS_STRING(out), line)
        if joined is not None:
            d = put_bytes(d, joined)
        elif n:
            d = put_parts(d, lines)
        if add:
            d = put_bytes(d, add)
        if extra is not None:
            d = put_bytes(d, extra)
        d = put_bytes(d, RID_NAME)
        d = put_bytes(d, ex.rid)
        if fr == FR_LENGTH:
            d = put_bytes(d, CL_LINE)
            d = put_bytes(d, length)
        elif fr == FR_CHUNKED:
            d = put_bytes(d, TE_LINE)
        filled(put_bytes(d, end), out)
        self.send(out)

    cdef void write_fields(self, Exchange ex, int status, list fields, bint end):
        """The response head from an HTTP/2 upstream's field list (h2call.pyx), framed as write_head
        frames an HTTP/1.1 upstream's."""
        cdef list parts
        cdef bytes name, value, length = None, sep = b""
        line = status_line(status)
        parts = [line]
        for name, value in fields:              # (never empty: x-request-id is the last)
            if name == b"content-length":
                length = value
                continue
            parts += (sep, name, b": ", value)
            sep = b"\r\n"
        self.frame_head(ex, status, length, parts)

    cdef void frame_head(self, Exchange ex, int status, bytes length, list parts):
        """End a response head whose last line has no CRLF yet with its framing (framing), then
        Connection (end_head)."""
        cdef int fr = self.framing(ex, status, length)
        if fr == FR_LENGTH:
            parts.append(CL_LINE)
            parts.append(length)
        elif fr == FR_CHUNKED:
            parts.append(TE_LINE)
        self.end_head(ex, ex.head, parts)

    cdef int framing(self, Exchange ex, int status, bytes length):
        """A response's framing: the upstream's Content-Length when it gave one (kept on a HEAD or 304
        answer, which has no body, as the length the body would have: RFC 9110 8.6; none on a 204), else
        chunked for an HTTP/1.1 client or the close for an HTTP/1.0 one (FR_*)."""
        if length is not None:
            return FR_LENGTH if status != 204 else FR_NONE
        if not ex.resp_nobody:
            if ex.head.minor == 1:
                ex.resp_chunked = True
                return FR_CHUNKED
            ex.close_after = True                # HTTP/1.0 client: the end of the body is the close
        return FR_NONE

    cdef void write_switch(self, Exchange ex, UpstreamConn c):
        """The origin's 101 to a tunnel request: its kept lines, the route's and the policies' added
        ones, X-Request-ID, and the Upgrade the client asked for (Upgrade and Connection are hop-by-hop:
        the gateway writes its own)."""
        parts = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        if c.rpieces:
            parts.extend(c.rpieces)
        if ex.route.resp_add:
            parts.append(ex.route.resp_add)
        elif ex.route.phase_resp_add:            # (the 101 passes no on_response: nothing to edit)
            parts.append(ex.route.phase_resp_add)
        if ex.resp_extra is not None:
            parts.append(ex.resp_extra)
        parts += (b"X-Request-ID: ", ex.rid, b"\r\nUpgrade: ", ex.head.upgrade.strip(),
                  b"\r\nConnection: Upgrade\r\n\r\n")
        self.send(concat(parts))

    cdef void end_head(self, Exchange ex, RequestHead h, list parts):
        """End a response head whose last line has no CRLF yet (head_end), then send it (into the output
        batch while a read is handled)."""
        parts.append(self.head_end(ex, h))
        self.send(concat(parts))

    cdef bytes head_end(self, Exchange ex, RequestHead h):
        """The end of a response head whose last line has no CRLF yet: Connection as the exchange goes on
        or not (the connection closes after it when the request body is not all read, the client or the
        worker ends it, or it is the connection's last request)."""
        if not ex.body_done or not h.keep_alive or self.draining or self.reader_done() \
                or self.nreq + 1 >= self.rt0.max_requests:
            ex.close_after = True
        if ex.close_after:
            return b"\r\nConnection: close\r\n\r\n"
        if h.minor == 0:
            return b"\r\nConnection: keep-alive\r\n\r\n"
        return b"\r\n\r\n"

    cdef void write_body(self, Exchange ex, bytes data):
        if ex.resp_chunked:
            self.send(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.send(data)

    cdef void write_trailers(self, Exchange ex, list fields):
        """An upstream's trailer fields (already without pseudo and connection-specific ones) go in the
        chunked body's trailer section when the client said it takes them (TE: trailers, RFC 9110 10.1.4)
        [nginx grpc/http2 proxies drop them for HTTP/1.1]; otherwise, or when the body is not chunked
        (HTTP/1.0, Content-Length, HEAD), they are dropped, as RFC 9110 6.5.1 lets a recipient do. Framing
        fields never go there, nor a value with CR, LF or NUL."""
        cdef bytes name, value
        cdef list lines
        if not ex.resp_chunked or not ex.head.te_trailers:
            return
        lines = []
        for name, value in fields:
            if name == b"content-length" or name == b"host" or b"\r" in value or b"\n" in value \
                    or b"\x00" in value:
                continue
            lines += (name, b": ", value, b"\r\n")
        if lines:
            ex.resp_trailers = concat(lines)

    cdef void write_end(self, Exchange ex):
        if ex.resp_chunked:
            if ex.resp_trailers is not None:
                self.send(b"0\r\n" + ex.resp_trailers + b"\r\n")
            else:
                self.send(b"0\r\n\r\n")

    cdef void write_answer(self, Exchange ex, int status, bytes lines, bytes body):
        """A response a policy made (Respond): its header lines and body, framed here."""
        cdef RequestHead h = ex.head
        line = status_line(status)
        parts = [line, lines, b"X-Request-ID: ", ex.rid, b"\r\n", self.w.clock.date]
        if status != 204 and status != 304:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if ex.close_after:
            parts.append(b"Connection: close\r\n")
        elif h is not None and h.minor == 0:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if not ex.resp_nobody:
            parts.append(body)
        self.send(concat(parts))

    cdef void write_problem(self, Exchange ex, str slug, bytes detail, bytes extra):
        if ex.route is not None and ex.route.err_add:
            extra = (extra or b"") + ex.route.err_add
        self.send(self.render_problem(ex.rt, slug, ex.head, ex.rid, detail, extra, ex.close_after,
                                      ex.failure_members()))

    cdef bytes render_problem(self, Runtime rt, str slug, RequestHead h, bytes rid, bytes detail,
                              bytes extra, bint close, bytes members=b""):
        cdef Problem p = <Problem>rt.problems[slug]
        # No parsed path (408, 414, 431 before the head is complete): the request itself is the instance.
        return p.render(h.path if h is not None and h.path is not None else b"urn:fastgw:request:" + rid,
                        rid, self.w.clock.date,
                        json_bytes(detail) if detail is not None else None, extra or b"", close, members)

    # -- reader events (H1Reader) ----------------------------------------------------------------------
    cdef void enqueue(self, Exchange ex):
        if self.active is None:
            self.start(ex)
        else:
            self.queue.append(ex)
            if len(self.queue) >= self.rt0.max_pipelined:
                # Bounded: answer what is queued, then close; later requests are not read.
                ex.close_after = True
                self.discard = True
                self.pause_reading(P_TERM)
            else:
                self.pause_reading(P_PIPELINE)

    cdef void request_head(self, RequestHead head):
        cdef Exchange ex
        if self.discard:
            self.rx = None
            return
        if self.first is not None:
            self.first = None                 # (held for request_error's check of the first request)
        ex = self.new_exchange(head)
        ex.has_body = head.chunked or head.content_length > 0
        ex.body_done = not ex.has_body
        self.rx = ex
        self.enqueue(ex)

    cdef void request_error(self, int status, str slug, str detail):
        cdef Exchange ex = self.rx
        cdef GatewayError err = gateway_error(status, slug, SRC_DOWNSTREAM, False, detail.encode(), None)
        if status == 400 and self.nreq == 0 and ex is None and self.active is None and not_http1_start(self.first):
            self.send(H2_PREFACE_ERROR)       # neither HTTP/1.x nor the h2c preface (h2engine.pyx)
            self.close()
            return
        self.rx = None
        self.discard = True
        if ex is not None and not ex.done:
            # The request in progress turned bad (body framing, trailers, size): it must not complete
            # upstream. Answer if nothing was answered yet, else drop the connection.
            ex.body_done = False
            ex.out = None
            if ex.resp_started:
                ex.done = True
                self.abort()
            elif ex is self.active or ex in self.queue:
                if ex is not self.active:
                    self.queue = self.queue[:self.queue.index(ex) + 1]
                ex.close_after = True
                if ex is self.active:
                    ex.failed(err)
                else:
                    ex.err = err                # answered when its turn comes (start)
            return
        ex = self.new_exchange(None)
        ex.err = err
        ex.close_after = True
        self.queue = self.queue[:]
        self.enqueue(ex)

    # -- running exchanges -----------------------------------------------------------------------------
    cdef void write_continue(self):
        """Tell an HTTP/1.1 client waiting on Expect: 100-continue to send its body."""
        self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    cdef void finished(self, Exchange ex):
        """The response of `ex` (the active exchange) is complete."""
        cdef Exchange nxt
        if ex is not self.active:
            return
        self.active = None
        self.nreq += 1
        if self.nreq >= self.rt0.max_requests:
            ex.close_after = True             # (its response already said so when it could)
        if ex.close_after or self.closed:
            self.discard = True
            self.close()
            return
        self.last_rx = self.w.clock.now
        if self.queue:
            nxt = <Exchange>self.queue.pop(0)
            self.start(nxt)
            if not self.queue:
                self.resume_reading(P_PIPELINE)
        else:
            self.resume_reading(P_PIPELINE)
            if self.eof:
                self.close()

    # -- timeouts (called by Worker.sweep; the exchange's own: Downstream.check_exchange) ---------------
    cdef void check(self, double now):
        cdef Exchange ex = self.active
        cdef Runtime rt = self.rt0
        cdef int state = self.reader._state
        if self.closed:
            # Closed with output the client does not take (uvloop keeps the socket until it is sent):
            # dropped send_timeout after the close [nginx send_timeout applies to the lingering close].
            if self.transport is not None and now - self.closed_at > rt.send_timeout:
                self.reset_connection()
            return
        if self.transport is not None:
            if self.parked:
                return                        # like a connection in the kernel's backlog: no timers
            if self.wpaused and now - self.wpaused_at > rt.send_timeout:
                # The client has not taken the buffered response (high-water mark 256 KiB, resumed at
                # 64 KiB) for send_timeout: close and free the upstream [nginx send_timeout 60s, which
                # measures between two writes; here the client must drain 192 KiB per send_timeout].
                self.reset_connection()
                return
        if self.h2 is not None:
            self.h2.check(now)
            return
        if ex is None:
            if state == ST_IDLE and self.nreq == 0:
                if now - self.head_start > rt.header_timeout:
                    self.close()                  # connected, sent nothing: drop silently
            elif state == ST_HEAD or state == ST_BODY:
                if now - self.head_start > rt.header_timeout:
                    self.timeout_response(408, "request-timeout", b"request head not received in time")
            elif now - self.last_rx > rt.idle_timeout:
                self.close()
            return
        self.check_exchange(ex, now)

    cdef void reset_connection(self):
        """Drop the connection with a reset, discarding unsent output in the kernel too (a plain close
        leaves it queued, for as long as the client keeps its window barely open) [nginx
        reset_timedout_connection]."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        self.closed = True
        self.wbuf = []
        self.nw = 0
        self.transport.abort()

    cdef void timeout_response(self, int status, str slug, bytes detail):
        cdef Exchange ex = self.new_exchange(None)
        self.stop_requests()
        ex.close_after = True
        self.active = ex
        ex.failed(gateway_error(status, slug, SRC_DOWNSTREAM, False, detail, None))
