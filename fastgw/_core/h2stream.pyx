# One request stream of a downstream HTTP/2 connection (included by worker.pyx): the Downstream
# (downstream.pxd) of the exchange it carries, as ClientConn is for an HTTP/1.1 connection. Its response
# goes out through its H2Conn (h2engine.pyx): heads at once, DATA queued within the client's windows
# (H2Conn.push), END_STREAM with the last frame or the trailers.
#
# Rules kept here (and why):
# * A stream holding more than STREAM_OUTQ unsent response bytes, or on a connection whose transport is
#   paused, pauses its upstream (update_wpause): a slow client slows the upstream, not gateway memory.
# * The client's DATA is acknowledged once the exchange took it (resume_reading: the owed bytes).
# * Cutting a stream is RST_STREAM (INTERNAL_ERROR from abort), never the connection; the exchange is
#   dropped and its upstream released.
# * An answer before the request body ended: the rest is not wanted (RFC 9113 8.1), the stream is reset
#   NO_ERROR after the response's END_STREAM.


cdef class H2Stream(Downstream):
    # -- the Downstream interface (downstream.pxd) ---------------------------------------------------------
    cdef void write_continue(self):
        pass                                  # (100 Continue: HTTP/2 clients send their body without it)

    cdef void stop_requests(self):
        self.discard = True                   # (a stream carries one request)

    cdef void flush(self):
        cdef Exchange ex = self.active
        if ex is not None:
            ex.flush_upstream()
        if not self.conn.batching:
            self.conn.schedule()

    cdef void kick(self):
        if not self.batching and not self.conn.batching:
            self.conn.schedule()

    cdef bint reader_done(self):
        return False

    cdef object peercert(self):
        return self.conn.cl.peercert()        # the TLS connection's certificate, for every stream

    cdef void write_head(self, Exchange ex, int status, list lines, bytes length):
        cdef RouteRT route = ex.route
        cdef list headers = [(b":status", H2_STATUS.get(status) or b"%d" % status)]
        cdef bytes piece
        for piece in lines:
            _h2_lines(piece, headers)
        if route.resp_add:
            _h2_lines(route.resp_add, headers)
        if ex.resp_extra is not None:
            _h2_lines(ex.resp_extra, headers)
        headers.append((b"x-request-id", ex.rid))
        if length is not None and status != 204:
            headers.append((b"content-length", length))
        self.send_head(headers, ex.resp_nobody)

    cdef void write_fields(self, Exchange ex, int status, list fields, bint end):
        cdef list headers = [(b":status", H2_STATUS.get(status) or b"%d" % status)]
        headers.extend(fields)
        self.send_head(headers, end or ex.resp_nobody)

    cdef void send_head(self, list headers, bint end):
        if self.ended or self.conn.closed:
            return
        self.conn.h2.send_headers(self.sid, headers, end_stream=end)
        self.head_sent = True
        if end:
            self.ended = True
            self.conn.stream_ended(self)
        self.kick()

    cdef void write_body(self, Exchange ex, bytes data):
        if self.ended or not data:
            return
        self.outq.append(data)
        self.outq_bytes += len(data)
        if not self.dirty:
            self.dirty = True
            self.conn.dirty.append(self)
        if self.outq_bytes > STREAM_OUTQ:
            self.update_wpause()
        self.kick()

    cdef void write_trailers(self, Exchange ex, list fields):
        self.trailers = fields                # sent with END_STREAM after the queued DATA (H2Conn.push)

    cdef void write_end(self, Exchange ex):
        if self.ended:
            return
        self.end_pending = True
        if not self.dirty:
            self.dirty = True
            self.conn.dirty.append(self)
        self.kick()

    cdef void write_answer(self, Exchange ex, int status, bytes lines, bytes body):
        cdef list headers = [(b":status", H2_STATUS.get(status) or b"%d" % status)]
        cdef bint nobody = ex.resp_nobody or not body
        _h2_lines(lines, headers)
        headers.append((b"x-request-id", ex.rid))
        if status != 204 and status != 304:
            headers.append((b"content-length", b"%d" % len(body)))
        self.send_head(headers, nobody)
        if not nobody:
            self.write_body(ex, body)
            self.write_end(ex)

    cdef void write_problem(self, Exchange ex, str slug, bytes detail, bytes extra):
        cdef Problem p = <Problem>ex.rt.problems[slug]
        cdef RequestHead h = ex.head
        cdef list headers
        if ex.route is not None and ex.route.grpc:
            grpc_problem(self, ex, p, detail, extra)       # a gRPC status, not problem+json
            return
        instance = h.path if h is not None and h.path is not None else b"urn:fastgw:request:" + ex.rid
        if ex.route is not None and ex.route.err_add:
            extra = (extra or b"") + ex.route.err_add
        body = p.body(instance, ex.rid, None if detail is None else json_bytes(detail), ex.failure_members())
        headers = [(b":status", H2_STATUS.get(p.status) or b"%d" % p.status),
                   (b"content-type", b"application/problem+json"), (b"cache-control", b"no-store"),
                   (b"content-length", b"%d" % len(body)), (b"x-request-id", ex.rid)]
        if p.extra:
            _h2_lines(p.extra, headers)
        if extra:
            _h2_lines(extra, headers)
        self.send_head(headers, False)
        self.write_body(ex, body)
        self.write_end(ex)

    cdef void pause_reading(self, int why):
        self.rpause |= why

    cdef void resume_reading(self, int why):
        if self.rpause & why:
            self.rpause &= ~why
            if self.rpause == 0 and self.owed:
                self.conn.ack(self)

    cdef void update_wpause(self):
        """Pause the upstream's reading while this stream holds too much unsent response, or the client
        connection's transport is full; resume when neither holds."""
        cdef bint want = self.conn.wpaused or self.outq_bytes > STREAM_OUTQ
        cdef Exchange ex = self.active
        if want == self.wpaused:
            return
        self.wpaused = want
        if ex is not None and ex.drv is not None:
            ex.drv.set_paused(ex, want)

    cdef void abort(self):
        self.reset(E_INTERNAL)

    cdef void reset(self, int code):
        """RST_STREAM (unless the stream already ended) and drop the exchange."""
        if not self.ended and not self.conn.closed:
            self.ended = True
            self.conn.h2.reset_stream(self.sid, code)
        self.ended = True
        self.outq = []
        self.outq_bytes = 0
        self.drop_exchange()
        self.conn.stream_ended(self)
        self.kick()

    cdef void drop_exchange(self):
        cdef Exchange ex = self.active
        self.closed = True
        self.active = None
        self.rx = None
        if self.call is not None:
            self.call.cancel()                # RST_STREAM CANCEL upstream, unless it already ended
        if ex is not None:
            ex.drop()

    cdef void finished(self, Exchange ex):
        if ex is not self.active:
            return
        self.active = None
        self.counted = False
        if self.rx is ex:
            self.rx = None
        self.conn.nreq += 1
        if not self.rx_done:
            # Answered before the request body ended: the rest is not wanted (RFC 9113 8.1). The reset
            # follows the response's END_STREAM (queued first).
            self.rx_done = True
            self.conn.after_end.append(self)
        self.conn.stream_ended(self)
