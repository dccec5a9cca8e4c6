# The HTTP/1.1 upstream (included by worker.pyx): pooled keep-alive connections reading their responses.
#
#   UpstreamConn  one upstream connection (asyncio protocol), reading responses with fastgw's own reader
#                 (http1_response.pyx ResponseReader: sans-IO, no Python-level call per parser event)
#   pool_take/pool_give  the LIFO pool of a Target's idle connections (balancer.pyx holds the list)
#   _connect      a new connection to a target, reported to its Exchange


cdef class UpstreamConn:
    # The reader checks each response (RFC 9112, llhttp's strictness), walks its head once in C and hands
    # on its kept lines as slices of the received bytes (rpieces) and its body as the bytes read (sliced
    # only where a read holds more than body).

    def __init__(self, Target target):
        self.target = target
        self.rd = ResponseReader()

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
        cdef ResponseReader rd = self.rd
        cdef int ev
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
        rd.feed(data)
        while True:
            ev = rd.next()
            if ev == RE_BODY:
                ex.resp_body(rd.body)
            elif ev == RE_NEED:
                break
            elif ev == RE_HEAD:
                self.rpieces = rd.pieces
                ex.resp_head(self, rd.status)
            elif ev == RE_END:
                self.end_response(rd.left() > 0)
                break
            elif ev == RE_SWITCH:
                # only a tunnel request's 101 (ResponseReader.start); the bytes after its head are the tunnel's
                self.rpieces = rd.pieces
                ex.switch(self, rd.rest())
                break
            else:
                self.abort()
                ex.upstream_failed(502, "bad-gateway", rd.error.encode(), _failures.INVALID_RESPONSE)
                break
            if self.ex is not ex:
                break           # the exchange let the connection go (a retry on its status, an answer, a failure)
        rd.release()
        cl.batching = False
        cl.flush()

    cdef void end_response(self, bint overrun):
        """The response ended inside the current read; `overrun`: more bytes followed its end in it. Bytes
        after the end of a response belong to no response: the connection is closed instead of pooled (the
        next request on it would read them as its answer) and counted [nginx: "upstream sent more data than
        specified in Content-Length header", connection not kept]."""
        cdef Exchange ex = self.ex
        if overrun:
            self.w.count(M_OVERRUNS)
        if ex is not None:
            ex.resp_end(self.rd.keep_alive and not overrun)

    def eof_received(self):
        cdef Exchange ex = self.ex
        self.closed = True
        if ex is not None:
            if self.rd.eof():
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
        """Read the response to the request of the exchange just attached: a response to HEAD has no body
        (RFC 9112 6.3), a 101 is taken only for a tunnel request, the route's resp_remove names are dropped."""
        cdef Exchange ex = self.ex
        self.rpieces = None
        self.rd.start(ex.head.method == b"HEAD", ex.tunnel is not None, ex.route.resp_remove)


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
    """An idle kept-alive connection of `t` (the most recently used), or None; stale ones are closed.
    The pool is a stack in t.idle[:t.nidle] whose slots stay allocated (a list popped to empty and appended
    to again frees and reallocates its item array: ~300 instructions per request)."""
    cdef UpstreamConn c
    while t.nidle:
        t.nidle -= 1
        c = <UpstreamConn>t.idle[t.nidle]
        slot_put(t.idle, t.nidle, None)
        if c.closed or now - c.idle_since > t.group.idle_timeout:
            c.close()
            continue
        return c
    return None


cdef void pool_give(Target t, UpstreamConn c, double now):
    """Keep `c` for reuse, up to the target's `keepalive` idle connections; beyond that it is closed."""
    if c.closed:
        return
    if t.nidle >= t.keepalive:
        c.close()
        return
    c.ex = None
    c.idle_since = now
    c.reused = True
    if c.rpaused:
        c.rpaused = False
        c.transport.resume_reading()
    slot_put(t.idle, t.nidle, c)
    t.nidle += 1
