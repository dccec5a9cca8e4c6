# The client side of an exchange (included by worker.pyx): what both kinds of Downstream (downstream.pxd)
# do alike. ClientConn (h1engine.pyx) and H2Stream (h2engine.pyx) derive from it and implement the
# writing, the reading and the ending in their protocol; the exchange (exchange.pyx) sees only this.
#
# Rules kept here (and why):
# * A request body goes to its exchange as it arrives, within the route's max_body; over it, the client
#   side takes no more requests and the exchange answers 413 (or, once the response started, the side is
#   cut: never a truncated response presented as complete).
# * Whose time is it? While the request body is coming, the client's: body_timeout (silence) and the
#   minimum body rate; while the gateway does not read it (the upstream or the pending buffer is full),
#   nobody's but the upstream's. Once the whole request is sent upstream, the upstream's `timeout`; it
#   stops while the upstream is paused because the client does not take the response, which is the
#   client's time again (send_timeout, the stream's stall_timeout: the engines').
# * A client that goes away ends its exchange: the upstream request is aborted (never pooled) and the
#   exchange is logged with the status sent, or 499 if none was [nginx 499 "client closed request"].


cdef class Downstream:
    # -- the interface (downstream.pxd): each engine implements these ------------------------------------
    cdef void write_head(self, Exchange ex, int status, list lines, bytes length):
        """The response head from an HTTP/1.1 upstream: its kept header lines; `length` its Content-Length
        value, or None when its body is chunked or ends with the connection."""
        raise NotImplementedError

    cdef void write_fields(self, Exchange ex, int status, list fields, bint end):
        """The response head from an HTTP/2 upstream: (name, value) pairs, lowercase; `end`: no body."""
        raise NotImplementedError

    cdef void write_body(self, Exchange ex, bytes data):
        raise NotImplementedError

    cdef void write_trailers(self, Exchange ex, list fields):
        """The response's trailer fields, before write_end (a side that cannot carry them drops them)."""
        raise NotImplementedError

    cdef void write_end(self, Exchange ex):
        raise NotImplementedError

    cdef void write_answer(self, Exchange ex, int status, bytes lines, bytes body):
        """A whole response the gateway makes (a policy's Respond): header lines and body."""
        raise NotImplementedError

    cdef void write_problem(self, Exchange ex, str slug, bytes detail, bytes extra):
        """A problem the gateway answers with (errors.py slug), `extra` header lines added."""
        raise NotImplementedError

    cdef void write_continue(self):
        """The client waits for a go-ahead before its body (Expect: 100-continue)."""
        raise NotImplementedError

    cdef void flush(self):
        """Write what was batched during the current event."""
        raise NotImplementedError

    cdef void pause_reading(self, int why):
        raise NotImplementedError

    cdef void resume_reading(self, int why):
        raise NotImplementedError

    cdef void stop_requests(self):
        """Take no more requests from this side (its input can no longer be trusted or is not wanted)."""
        raise NotImplementedError

    cdef void abort(self):
        """Cut this side at once (a response already started cannot be completed)."""
        raise NotImplementedError

    cdef bint reader_done(self):
        """No further request can come from this side (its connection closes after this answer)."""
        raise NotImplementedError

    cdef object peercert(self):
        raise NotImplementedError

    cdef void finished(self, Exchange ex):
        """The response of `ex` is complete."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------
    cdef Exchange new_exchange(self, RequestHead head):
        cdef Exchange ex = Exchange.__new__(Exchange)
        ex.client = self
        ex.head = head
        ex.rt = self.w.rt
        ex.t0 = mono_ns()
        if head is not None and head.request_id is not None:
            ex.rid = head.request_id
        else:
            ex.rid = self.w.next_id()
        # The request's trace (tracecontext.pyx): continued when its traceparent is valid, else started;
        # a tracestate goes with a continued trace only, and only when valid and within bounds.
        if head is None:
            trace_start(&ex.tc, None, False, ex.rt.trace_threshold)
        elif not trace_start(&ex.tc, head.traceparent, ex.rt.trace_trust, ex.rt.trace_threshold):
            head.tracestate = None
        elif head.tracestate is not None and not tracestate_ok(head.tracestate):
            head.tracestate = None
        if head is not None and head.dropped is not None:
            self.w.headers_dropped(ex)
        return ex

    cdef void start(self, Exchange ex):
        """`ex` is this side's turn: the exchange drives it from here (exchange.pyx run)."""
        self.active = ex
        ex.run()

    cdef void body_data(self, bytes data):
        """Request body bytes of the exchange being received."""
        cdef Exchange ex = self.rx
        if ex is None or ex.done:
            return
        ex.body_bytes += len(data)
        if ex.route is not None and ex.body_bytes > ex.route.max_body:
            self.body_too_large(ex)
            return
        ex.request_data(data)
        if ex.body_waiter is not None and ex.body_bytes > ex.body_limit:
            ex.body_ready()                       # a policy waits for the body (read_body): too large

    cdef void body_end(self):
        """The request body of the exchange being received ended."""
        cdef Exchange ex = self.rx
        self.rx = None
        if ex is None:
            return
        ex.body_done = True
        if ex.done or not ex.has_body:        # (a call started without a body was ended by its start)
            return
        ex.up_last = self.w.clock.now          # the whole request is sent: the response timeout starts
        ex.request_end()
        if ex.body_waiter is not None:
            ex.body_ready()                       # a policy waits for the whole body (read_body)

    cdef void body_too_large(self, Exchange ex):
        self.stop_requests()
        ex.body_done = False
        if ex.resp_started:
            ex.done = True
            self.abort()
        else:
            ex.err_extra = None
            ex.failed(gateway_error(413, "payload-too-large", SRC_DOWNSTREAM, False,
                                    b"request body exceeds the route's limit", None))

    cdef void client_gone(self, Exchange ex):
        """`ex` ends because its client went away (closed or reset)."""
        if not ex.resp_started:
            ex.status = 499
        ex.drop()
        self.w.observe(ex)

    # -- timeouts of the exchange being answered (called by the engines' checks) --------------------------
    cdef void check_exchange(self, Exchange ex, double now):
        cdef Runtime rt = self.rt0
        cdef bint sending = not ex.body_done and self.rx is ex
        cdef bint held = sending and self.rpause & (P_UPSTREAM | P_PENDING) != 0
        if held and ex.body_tick != 0:
            ex.body_tick = now                    # not the client's time
        if ex.drv is not None and ex.drv.check(ex, now, sending, held):
            return                                # the upstream's time (Upstream.check)
        if sending and not held:
            if now - self.last_rx > rt.body_timeout:
                self.body_timed_out(ex, b"request body not received in time")
            elif rt.min_body_rate > 0 and self.body_slow(ex, rt, now):
                self.body_timed_out(ex, b"request body arriving too slowly")

    cdef bint body_slow(self, Exchange ex, Runtime rt, double now):
        """The minimum body rate [Apache mod_reqtimeout body=20,MinRate=500; Kestrel
        MinRequestBodyDataRate 240 B/s after a 5 s grace]: the body gets a time allowance of body_timeout,
        refilled by one second per min_body_rate bytes received and capped at body_timeout (a burst does
        not buy a later trickle), spent while the gateway waits for the client. Empty: too slow."""
        if ex.body_tick == 0:
            ex.body_allow = rt.body_timeout
        else:
            ex.body_allow += (ex.body_bytes - ex.body_seen) / rt.min_body_rate - (now - ex.body_tick)
            if ex.body_allow > rt.body_timeout:
                ex.body_allow = rt.body_timeout
        ex.body_seen = ex.body_bytes
        ex.body_tick = now
        return ex.body_allow < 0

    cdef void body_timed_out(self, Exchange ex, bytes detail):
        """408 from the gateway; the upstream request is aborted (Exchange.failed: never pooled)."""
        self.stop_requests()
        if ex.resp_started:
            self.abort()
        else:
            ex.failed(gateway_error(408, "request-timeout", SRC_DOWNSTREAM, False, detail, None))
