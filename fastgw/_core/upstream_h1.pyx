# The HTTP/1.1 upstream (included by worker.pyx): pooled keep-alive connections and the response-head scan.
#
#   UpstreamConn  one upstream connection (asyncio protocol), parsing responses with httptools
#   pool_take/pool_give  the LIFO pool of a Target's idle connections (balancer.pyx holds the list)
#   _connect      a new connection to a target, reported to its Exchange


cdef inline Py_ssize_t _head_end(const char* b, Py_ssize_t n) noexcept nogil:
    """Offset of the first CRLFCRLF in b[:n], or -1: memchr from LF to LF (a response head has a handful
    of lines; ~6x cheaper than bytes.find, ~4x cheaper than glibc's memmem on ~200-byte heads)."""
    cdef const char* p = b
    cdef const char* end = b + n
    cdef const char* q
    while p < end:
        q = <const char*>memchr(p, 10, end - p)
        if q == NULL or q + 2 >= end:
            return -1
        if q[1] == 13 and q[2] == 10 and q > b and q[-1] == 13:
            return (q - 1) - b
        p = q + 1


# Upstream response heads. llhttp validates the head (CRLF line ends, no obs-fold, no bare CR, header
# tokens, a single Content-Length, not both CL and TE); fastgw registers no per-header callback and
# instead walks the validated head once in C, when it is complete: one Python call per response instead
# of two per header. The walk classifies each line by name (case-insensitively) and keeps the rest as
# slices of the received bytes.

cdef class UpstreamConn:
    # the response being parsed

    def __init__(self, Target target):
        self.target = target
        self.parser = HttpResponseParser(self)
        self.feed = self.parser.feed_data
        self.status_code = self.parser.get_status_code
        self.keep_alive = self.parser.should_keep_alive

    cdef void close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    cdef void abort(self):
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def discard(self):
        """Close this idle pooled connection (Target.close_idle, on reload)."""
        self.close()

    # asyncio protocol
    def connection_made(self, transport):
        self.transport = transport
        self.target.group.connections(1)        # limits.max_connections

    def data_received(self, bytes data):
        cdef Exchange ex = self.ex
        cdef Downstream cl
        cdef bint overrun = False
        if ex is None:
            # Bytes on an idle connection: beyond the end of the last response; never reuse it.
            if self.w is not None:
                self.w.count(M_OVERRUNS)
            self.abort()
            return
        self.got_bytes = True
        cl = ex.client
        ex.up_last = cl.w.clock.now
        cl.batching = True
        if self.r_head_done:
            self.r_extra += len(data)
        else:
            self.hbuf = data if self.hbuf is None else self.hbuf + data
        try:
            self.feed(data)
            if not self.r_head_done and self.hbuf is not None and len(self.hbuf) > MAX_RESP_HEAD:
                raise HttpParserError("response head too large")
        except HttpParserUpgrade:
            # llhttp stops after a 101 with Upgrade: only a tunnel request's 101 gets here (see
            # on_headers_complete); the bytes after its head are the tunnel's.
            if self.r_switch and self.ex is ex:
                ex.switch(self, self.hbuf[self.r_switch:])
                self.hbuf = None
        except HttpParserError as exc:
            if self.r_done:
                overrun = True                # llhttp refused what followed the end of the response
            elif self.ex is ex:
                self.abort()
                ex.upstream_failed(502, "bad-gateway", str(exc).encode(), _failures.INVALID_RESPONSE)
        finally:
            if self.r_done:
                self.end_response(data, overrun)
            cl.batching = False
            cl.flush()

    cdef void end_response(self, bytes data, bint overrun):
        """The response ended inside `data`. Bytes after its end belong to no response: the connection
        is closed instead of pooled (the next request on it would read them as its answer) and counted
        [nginx: "upstream sent more data than specified in Content-Length header", connection not kept].
        A body delimited by Content-Length is every byte after the head up to its end, so what llhttp did
        not deliver as body was more (r_extra); any other body (chunked, or none) ends with CRLF CRLF, so a
        read that completed one and does not end with those bytes carried more. (What llhttp refuses
        raises, and a second head raises in on_headers_complete.)"""
        cdef Py_ssize_t n
        cdef const char* d
        cdef Exchange ex = self.ex
        self.r_done = False
        if overrun:
            pass
        elif self.r_bylen:
            overrun = self.r_extra > 0
        else:
            n = PyBytes_GET_SIZE(data)
            d = PyBytes_AS_STRING(data)
            if n >= 4:
                overrun = not (d[n - 4] == 13 and d[n - 3] == 10 and d[n - 2] == 13 and d[n - 1] == 10)
            else:
                overrun = not b"\r\n\r\n".endswith(data)
        if overrun:
            self.w.count(M_OVERRUNS)
        if ex is not None:
            ex.resp_end(self.r_keep and not overrun)

    def eof_received(self):
        cdef Exchange ex = self.ex
        self.closed = True
        if ex is not None:
            if self.r_head_done and not self.r_chunked and not self.r_has_cl:
                ex.client.batching = True
                ex.resp_end(False)          # close-delimited response: EOF is its end
                ex.client.batching = False
                ex.client.flush()
            else:
                ex.upstream_failed(502, "bad-gateway", None, _failures.CLOSED)
        return False

    def connection_lost(self, exc):
        cdef Exchange ex = self.ex
        self.closed = True
        self.transport = None
        self.target.group.connections(-1)
        if ex is not None:
            ex.upstream_failed(502, "bad-gateway", None, _failures.lost_error(exc))

    def pause_writing(self):
        if self.ex is not None:
            # The upstream is not taking the request: the upstream timeout runs from here (check).
            self.ex.up_last = self.ex.client.w.clock.now
            self.ex.client.pause_reading(P_UPSTREAM)

    def resume_writing(self):
        if self.ex is not None:
            self.ex.client.resume_reading(P_UPSTREAM)

    cdef void reset(self):
        """Per-response state (there is no on_message_begin callback: one Python call less)."""
        self.rpieces = None
        self.hbuf = None
        self.r_head_done = False
        self.r_chunked = False
        self.r_has_cl = False
        self.r_cl = None
        self.r_done = False
        self.r_switch = 0

    cdef int scan_head(self, bytes buf, Py_ssize_t end, object remove) except -1:
        """Walk the validated head buf[:end] (status line and header lines, each ending in CRLF):
        note the framing headers, drop hop-by-hop ones and those in `remove` (lowercase names), and
        keep the rest in self.rpieces as slices of buf. Returns 0, or 1 for too many lines."""
        cdef const char* s = buf
        cdef Py_ssize_t ls[MAX_RESP_LINES]
        cdef Py_ssize_t le[MAX_RESP_LINES]
        cdef unsigned char kind[MAX_RESP_LINES]     # wire.pxd RespKind
        cdef Py_ssize_t pos, eol, colon, vs, ve, n = 0, k, run
        cdef const char* q
        cdef object drop = None
        cdef list pieces = []
        pos = <const char*>memchr(s, b'\n', end) - s + 1        # skip the status line
        while pos < end:
            if n == MAX_RESP_LINES:
                return 1
            q = <const char*>memchr(s + pos, b'\n', end - pos)
            eol = q - s + 1
            colon = <const char*>memchr(s + pos, b':', eol - pos) - s
            ls[n] = pos
            le[n] = eol
            kind[n] = response_kind(s + pos, colon - pos)
            if kind[n] != R_KEEP:
                vs = colon + 1
                ve = eol - 2
                while vs < ve and (s[vs] == b' ' or s[vs] == b'\t'):
                    vs += 1
                while ve > vs and (s[ve - 1] == b' ' or s[ve - 1] == b'\t'):
                    ve -= 1
                if kind[n] == R_CONTENT_LENGTH:
                    self.r_has_cl = True
                    self.r_cl = buf[vs:ve]
                elif kind[n] == R_TRANSFER_ENCODING:
                    self.r_chunked = buf[vs:ve].rstrip(b" \t,").lower().endswith(b"chunked")
                elif kind[n] == R_CONNECTION and not (ieq(s + vs, ve - vs, b"keep-alive", 10)
                                                or ieq(s + vs, ve - vs, b"close", 5)):
                    for tok in buf[vs:ve].lower().split(b","):
                        tok = tok.strip()
                        if tok and tok != b"close" and tok != b"keep-alive":
                            if drop is None:
                                drop = set()
                            drop.add(tok)
            n += 1
            pos = eol
        if remove is not None or drop is not None:
            for k in range(n):
                if kind[k] == R_KEEP:
                    colon = <const char*>memchr(s + ls[k], b':', le[k] - ls[k]) - s
                    name = buf[ls[k]:colon].lower()
                    if (drop is not None and name in drop) or (remove is not None and name in remove):
                        kind[k] = R_HOP
        # Consecutive kept lines become one slice.
        k = 0
        while k < n:
            if kind[k] != R_KEEP:
                k += 1
                continue
            run = k
            while k < n and kind[k] == R_KEEP:
                k += 1
            pieces.append(buf[ls[run]:le[k - 1]])
        self.rpieces = pieces
        return 0

    # httptools callbacks (no on_header: see scan_head)
    def on_headers_complete(self):
        cdef int status = self.status_code()
        cdef Exchange ex = self.ex
        cdef bytes buf = self.hbuf
        cdef Py_ssize_t end = _head_end(buf, len(buf)) + 2   # llhttp accepted the head: it is there
        if ex is None:
            raise HttpParserError("response on an idle connection")
        if status < 200:
            if status == 101:
                if ex.tunnel is None or not self.parser.should_upgrade():
                    raise HttpParserError("unexpected 101 Switching Protocols")
                if self.scan_head(buf, end, ex.route.resp_remove):
                    raise HttpParserError("too many response header lines")
                self.r_switch = end + 2               # the tunnel opens when llhttp stops (data_received)
                return
            self.hbuf = buf[end + 2:]             # interim responses are not relayed
            return
        if self.r_done:
            raise HttpParserError("a second response to one request")
        if self.scan_head(buf, end, ex.route.resp_remove):
            raise HttpParserError("too many response header lines")
        self.hbuf = None
        self.r_head_done = True
        self.r_bylen = self.r_has_cl and not self.r_chunked and status != 204 and status != 304
        self.r_extra = len(buf) - (end + 2)           # received with the head, after it
        ex.resp_head(self, status)

    def on_body(self, bytes body):
        self.r_extra -= len(body)
        if self.ex is not None:
            self.ex.resp_body(body)

    def on_message_complete(self):
        if self.ex is not None and self.r_head_done:
            self.r_done = True                        # ended after the read: see end_response
            self.r_keep = self.keep_alive()


cdef class H1Upstream(Upstream):
    """An HTTP/1.1 upstream: the request's state is the exchange's (the head built, the pending body,
    the connect task) and its pooled UpstreamConn's; the exchange's acquire/attach/release_upstream and
    upstream_failed are this kind's helpers."""
    cdef bint start(self, Exchange ex):
        ex.up_head = upstream_head(ex, ex.route, ex.head)
        if ex.up_head is None:              # every target ejected, below panic_threshold, on_panic "fail"
            ex.failed(gateway_error(503, "upstream-unavailable", SRC_UPSTREAM_CONNECT, False, b"",
                                    _failures.NO_TARGET))
            return False
        ex.acquire(False)
        return True

    cdef void send(self, Exchange ex, bytes data):
        if ex.head.chunked:                 # fastgw frames a chunked body itself (its extensions dropped)
            ex.to_upstream(b"%x\r\n" % len(data))
            ex.to_upstream(data)
            ex.to_upstream(b"\r\n")
        else:
            ex.to_upstream(data)

    cdef void end(self, Exchange ex):
        if ex.head.chunked:
            ex.to_upstream(b"0\r\n\r\n")

    cdef void retry(self, Exchange ex):
        ex.sent = False
        ex.acquire(True)

    cdef void cancel(self, Exchange ex):
        if ex.connect_task is not None:
            t = ex.connect_task
            ex.connect_task = None
            t.cancel()
        if ex.up is not None:
            ex.release_upstream(False)

    cdef void set_paused(self, Exchange ex, bint want):
        cdef UpstreamConn up = ex.up
        if up is not None and up.transport is not None and up.rpaused != want:
            up.rpaused = want
            if want:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()
                ex.up_last = ex.client.w.clock.now    # the upstream's time runs again from here

    cdef void held_up(self, Exchange ex, double now):
        if ex.up is not None:
            ex.up_last = now

    cdef bint check(self, Exchange ex, double now, bint sending, bint held):
        if ex.connect_task is not None:
            if now > ex.connect_deadline:
                ex.connect_task.cancel()
            return True
        if sending:
            if held and ex.up is not None and now - ex.up_last > ex.try_timeout:
                ex.upstream_failed(504, "upstream-timeout", b"upstream did not take the request in time")
            return held
        if ex.up is not None and not ex.up.rpaused and now - ex.up_last > (
                ex.try_timeout if ex.tunnel is None else ex.tunnel.handshake):
            # (a tunnel request waits for its 101 at most the session's handshake timeout)
            ex.upstream_failed(504, "upstream-timeout", None, _failures.TIMEOUT)
        return True


cdef H1Upstream H1_UPSTREAM = H1Upstream()


async def _connect(Exchange ex, Target target):
    """A new connection for `ex` (pending in its upstream's limits.max_pending until it is made or not)."""
    loop = asyncio.get_running_loop()
    try:
        await _open(ex, target, loop)
    finally:
        target.group.connect_done()


async def _open(Exchange ex, Target target, loop):
    try:
        g = target.group
        if g.ssl is None:
            _, conn = await loop.create_connection(lambda: UpstreamConn(target), target.host, target.port)
        else:
            _, conn = await loop.create_connection(lambda: UpstreamConn(target), target.host, target.port,
                                                   ssl=g.ssl, server_hostname=g.server_name or target.host)
    except asyncio.CancelledError:
        ex.connect_failed(504, "upstream-timeout", None, _failures.CONNECT_TIMEOUT)
        return
    except OSError as exc:                           # (ssl.SSLError is an OSError)
        kind, reason = _failures.connect_error(exc)
        ex.connect_failed(502, "bad-gateway", reason.encode(), kind)
        return
    ex.connected(<UpstreamConn>conn)


cdef UpstreamConn pool_take(Target t, double now):
    """An idle kept-alive connection of `t` (the most recently used), or None; stale ones are closed."""
    cdef UpstreamConn c
    while t.idle:
        c = <UpstreamConn>t.idle.pop()
        if c.closed or now - c.idle_since > t.group.idle_timeout:
            c.close()
            continue
        return c
    return None


cdef void pool_give(Target t, UpstreamConn c, double now):
    """Keep `c` for reuse, up to the target's `keepalive` idle connections; beyond that it is closed."""
    if c.closed:
        return
    if len(t.idle) >= t.keepalive:
        c.close()
        return
    c.ex = None
    c.idle_since = now
    c.reused = True
    if c.rpaused:
        c.rpaused = False
        c.transport.resume_reading()
    t.idle.append(c)
