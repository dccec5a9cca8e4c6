# One exchange on an HTTP/2 upstream stream (included by worker.pyx), whatever the client speaks.
#
#   H2Call   joins an Exchange (its client an HTTP/1.1 connection or an HTTP/2 stream) to one stream of
#            upstream_h2.pyx, whose H2Sink it is; GrpcCall (upstream_grpc.pyx) is its gRPC kind
#   H2Upstream the driver (upstream.pxd) of a route to an HTTP/2 upstream: h2_start opens the call once
#            the request passed its route's policies
#
# Rules kept here (and why):
# * The upstream request is the exchange's (upstream_request.pyx upstream_fields), so an HTTP/1.1 client's request
#   arrives as an HTTP/2 one: Host as :authority, the fields the wire table does not forward already
#   dropped by the reader, names lowercase (RFC 9113 8.2.1), the body as DATA (a chunked body unframed by
#   the reader and streamed as it comes, its length unknown), Content-Length kept when the client gave it.
# * Request backpressure: an HTTP/2 client's DATA is acknowledged (its WINDOW_UPDATE) only once the
#   upstream stream sent it, so its windows bound what the gateway holds; an HTTP/1.1 client's reading
#   pauses while more than PENDING_LIMIT of its bytes wait for the upstream's windows.
# * Response backpressure: the upstream's DATA is acknowledged while the client side takes it (set_paused),
#   so a slow client slows the upstream stream through its window, not the gateway's memory.
# * Response fields: the connection-specific ones (RFC 9113 8.2.2) and the route's removed ones are not
#   relayed; the route's and the policies' are added, and X-Request-ID. Trailers go to an HTTP/2 client,
#   and to an HTTP/1.1 client that sent TE: trailers in its chunked body's trailer section (h1engine.pyx
#   write_trailers); otherwise the body comes without them.
# * The upstream's silence is bounded by its `timeout`, as an HTTP/1.1 upstream's: to the response head
#   (504 problem) and then between DATA frames (the response is cut), except while the client side does
#   not take the response (set_paused: then it is the client's time). A reset or a failure before the head
#   is a 502 problem; after it the client's response is cut (stream reset, connection closed): never a
#   truncated response presented as complete.

# The failure kinds (fastgw/failures.py) of an upstream connection that was never made.
cdef frozenset CONNECT_KINDS = frozenset((_failures.CONNECT_REFUSED, _failures.CONNECT_FAILED,
                                          _failures.CONNECT_TIMEOUT, _failures.TLS_FAILED))
# The kinds of a stream lost before its response head: reset, or its connection closed or reset (the
# request may have reached the upstream: reset-before-response, for a request that may be repeated).
cdef frozenset LOST_KINDS = frozenset((_failures.STREAM_RESET, _failures.CLOSED, _failures.RESET))


cdef class H2Upstream(Upstream):
    cdef bint start(self, Exchange ex):
        return h2_start(ex, self.grpc)

    cdef void send(self, Exchange ex, bytes data):
        ex.call.request_data(data, len(data))       # (an HTTP/2 client's DATA goes to the call directly)

    cdef void end(self, Exchange ex):
        ex.call.request_end()

    cdef void retry(self, Exchange ex):
        """The exchange's retry decided to try again (retry.pyx decide_retry; a stream the upstream did not process
        was replayed by the pool before it came to that): the same request on a new stream, to the target
        the retry chose."""
        h2_open(ex, self.grpc, (<H2Call>ex.call).fields)

    cdef void cancel(self, Exchange ex):
        if ex.call is not None:
            ex.call.cancel()

    cdef void set_paused(self, Exchange ex, bint want):
        if ex.call is not None:
            ex.call.set_paused(want)

    cdef void held_up(self, Exchange ex, double now):
        cdef H2Call call = ex.call
        if call is not None and call.head_sent:
            call.deadline = now + ex.route.group.timeout

    cdef bint check(self, Exchange ex, double now, bint sending, bint held):
        if ex.call is None or (sending and not held):
            return False
        ex.call.check(now)
        return True


cdef H2Upstream H2_UPSTREAM = H2Upstream()
cdef H2Upstream GRPC_UPSTREAM = H2Upstream()
GRPC_UPSTREAM.grpc = True
GRPC_UPSTREAM.needs = CAP_GRPC


cdef bint h2_start(Exchange ex, bint grpc):
    """The request passed its route's policies: open its upstream stream and send what arrived so far.
    False when no target was usable (answered)."""
    cdef RouteRT route = ex.route
    cdef list fields = upstream_fields(ex, route, ex.head)
    if fields is None:                                # every target ejected, on_panic "fail"
        ex.failed(gateway_error(503, "upstream-unavailable", SRC_UPSTREAM_CONNECT, False, b"",
                                _failures.NO_TARGET))
        return False
    h2_open(ex, grpc, fields)
    return True


cdef void h2_open(Exchange ex, bint grpc, list fields):
    """The call on a stream to ex.target (the first try, or a retry's with the first try's fields)."""
    cdef Downstream cl = ex.client
    cdef RouteRT route = ex.route
    cdef H2Stream st = None
    cdef H2Call call
    cdef Target t = ex.target
    cdef long long owed = 0
    cdef bint ended
    if ex.transcode is not None:
        call = transcode_call(ex, fields)             # HTTP/JSON -> gRPC (transcode.pyx)
    elif grpc:
        call = GrpcCall.__new__(GrpcCall)
        (<GrpcCall>call).max_msg = route.max_body
        fields.append((b"te", b"trailers"))
    else:
        call = H2Call.__new__(H2Call)
    call.cl = cl
    call.ex = ex
    call.fields = fields
    call.deadline = cl.w.clock.now + ex.try_timeout   # the upstream's timeout, or retry.per_try_timeout
    if isinstance(cl, H2Stream):
        st = <H2Stream>cl
        call.st = st
        st.call = call
    ex.call = call
    pool = t.h2pool
    if pool is None:                                  # (compile attaches one to every HTTP/2 upstream)
        pool = t.h2pool = H2Pool(t, None)
    ex.sent = True
    call.us = (<H2Pool>pool).open(call, fields)
    # The body that arrived while the policies ran, held: an HTTP/2 client's unacknowledged (P_PENDING),
    # an HTTP/1.1 client's reading paused past PENDING_LIMIT.
    if st is not None:
        owed = st.owed
        st.owed = 0
        st.rpause &= ~P_PENDING
        ended = st.rx_done
    else:
        ended = ex.body_done
    if ex.pending:
        data = concat(ex.pending)
        ex.pending = None
        ex.pending_bytes = 0
        call.request_data(data, owed if st is not None else len(data))
        if st is None:
            cl.resume_reading(P_PENDING)
    elif owed:
        call.ack_request(owed)
    if ended:
        call.request_end()


cdef class H2Call(H2Sink):
    # -- from the client side (the engines and the exchange) ----------------------------------------------
    cdef void request_data(self, bytes data, long long n):
        """`n` client bytes (an HTTP/2 client's flow-controlled length; an HTTP/1.1 client's body bytes)."""
        cdef Exchange ex = self.ex
        if self.over:
            self.ack_request(n)
            return
        if self.st is not None:
            ex.body_bytes += len(data)           # (the HTTP/1.1 reader counts its own: request_body)
            if ex.body_bytes > ex.route.max_body:
                self.ack_request(n)
                self.too_large()
                return
        else:
            self.unsent += n
            if self.unsent > PENDING_LIMIT:
                self.cl.pause_reading(P_UPSTREAM)
        self.us.send(data, n)

    cdef void too_large(self):
        """The request body went over the route's max_body: the client side's answer (413, or the cut)."""
        self.us.cancel()
        self.over = True
        self.cl.body_too_large(self.ex)

    cdef void request_end(self):
        if not self.over:
            self.us.end()

    cdef void cancel(self):
        """The client reset the stream or went away: reset the upstream stream."""
        if not self.over:
            self.over = True
            self.us.cancel()

    cdef void set_paused(self, bint want):
        cdef long long n
        if self.paused and not want:            # the upstream's time runs again from here
            self.deadline = self.ex.client.w.clock.now + self.ex.route.group.timeout
        self.paused = want
        if not want and self.up_owed and not self.over:
            n = self.up_owed
            self.up_owed = 0
            self.us.ack(n)

    cdef void check(self, double now):
        if not self.over and now > self.deadline and not (self.head_sent and self.paused):
            self.us.cancel()
            self.fail(504, "upstream-timeout", None, 4, _failures.TIMEOUT)

    cdef void fail(self, int status, str slug, bytes detail, int code, str kind=None):
        """The upstream failed: the exchange's failure path answers (before the response head a problem,
        or on a grpc route the gRPC status `code`; after it the client's response is cut)."""
        cdef bint connect = kind in CONNECT_KINDS
        cdef bint refused = kind == _failures.STREAM_REFUSED
        cdef GatewayError err
        if self.over:
            return
        self.over = True
        self.code = code
        # Before the response head, the failure meets a retry condition as an HTTP/1.1 upstream's does
        # (gateway_error.pyx; retry.pyx decide_retry decides): nothing sent (no connection, a stream the upstream
        # did not process) is retryable whatever the method; a stream lost or reset may have been acted on.
        err = gateway_error(status, slug, SRC_UPSTREAM_CONNECT if connect else SRC_UPSTREAM_RESPONSE,
                            connect or refused, detail, kind)
        if not self.head_sent:
            err.cond = (RC_CONNECT if connect else RC_REFUSED if refused else RC_TIMEOUT if status == 504
                        else RC_RESPONSE if kind in LOST_KINDS else RC_NONE)
        self.ex.failed(err)

    cdef void note_status(self, bytes value):
        pass                                  # (gRPC: the grpc-status of the call, for the access log)

    cdef void finish(self):
        self.over = True
        self.ex.complete()

    # -- from the upstream stream (the H2Sink interface, upstream_h2.pxd) --------------------------------
    cdef void ack_request(self, long long n):
        """`n` client bytes went upstream: let the client send more."""
        cdef H2Conn conn
        if self.st is not None:
            conn = self.st.conn
            if n and not conn.closed:
                conn.h2.acknowledge_received_data(n, self.st.sid)
                self.st.kick()
            return
        self.unsent -= n
        if self.unsent <= PENDING_LIMIT:
            self.cl.resume_reading(P_UPSTREAM)

    cdef void on_headers(self, list headers, bint end):
        cdef Exchange ex = self.ex
        cdef RouteRT route = ex.route
        cdef list out = []
        cdef bytes name, value
        cdef int status = 200
        if self.over:
            return
        self.deadline = ex.client.w.clock.now + route.group.timeout
        remove = route.resp_remove
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name in CONNECTION_SPECIFIC or (remove is not None and name in remove) or name[:1] == b":":
                continue
            else:
                if end and name == b"grpc-status":
                    self.note_status(value)
                out.append((name, value))
        if ex.target is not None:               # outlier detection: a 502/503/504 counts, any other ends a run
            if 502 <= status <= 504:
                ex.target.failure(REASON_STATUS)
            else:
                ex.target.success()
        if route.resp_add:
            _h2_lines(route.resp_add, out)
        if route.on_response is not None and self.response_phase(route, out, status):   # phase: on_response
            return
        if ex.resp_extra is not None:
            _h2_lines(ex.resp_extra, out)
        out.append((b"x-request-id", ex.rid))
        self.head_sent = True
        ex.resp_started = True
        ex.status = status
        ex.resp_nobody = ex.head.method == b"HEAD" or status == 204 or status == 304
        self.cl.write_fields(ex, status, out, end)
        if end:
            self.cl.write_end(ex)
            if route.on_response_body is not None:          # phase: on_response_body (the end)
                ex.body_tap(b"", True)
            self.finish()

    cdef bint response_phase(self, RouteRT route, list out, int status):
        """on_response over the upstream's head (`out`: the relayed pairs, :status apart). True when the
        policies replaced it: the upstream stream is cancelled and the answer sent instead."""
        cdef Exchange ex = self.ex
        cdef list blocks = [_ph.join_pairs(out)]
        if route.phase_resp_add:
            blocks.append(route.phase_resp_add)
        r = ex.response_phase(route.on_response, blocks, status)
        if r is False:
            self.cancel()
            ex.settle(0)
            ex.policy_failed()
            return True
        lines = ex.phase_lines()
        if r is None:
            if lines is not None:
                out[:] = _h2_lines(lines, [])             # HTTP/2 field names: lowercase
            elif route.phase_resp_add:
                _h2_lines(route.phase_resp_add, out)
            return False
        self.cancel()
        ex.settle(0)
        ex.send_answer(ex.status, lines, (<Respond>r).body)
        return True

    cdef void on_data(self, bytes data, long long n):
        cdef Exchange ex = self.ex
        if self.over:
            self.us.ack(n)
            return
        self.deadline = ex.client.w.clock.now + ex.route.group.timeout
        if data and not self.ex.resp_nobody:
            self.cl.write_body(self.ex, data)
            ex.resp_bytes += len(data)
            if self.ex.route.on_response_body is not None:      # phase: on_response_body
                self.ex.body_tap(data, False)
        if self.paused:
            self.up_owed += n
        elif n:
            self.us.ack(n)

    cdef void on_trailers(self, list headers):
        cdef list out = []
        cdef bytes name, value
        if self.over:
            return
        for name, value in headers:
            if name[:1] != b":" and name not in CONNECTION_SPECIFIC:
                out.append((name, value))
                if name == b"grpc-status":
                    self.note_status(value)
        self.cl.write_trailers(self.ex, out)
        self.cl.write_end(self.ex)
        if self.ex.route.on_response_body is not None:          # phase: on_response_body (the end)
            self.ex.body_tap(b"", True)
        self.finish()

    cdef void on_end(self):
        """END_STREAM on DATA, without trailers."""
        if self.over:
            return
        self.cl.write_end(self.ex)
        if self.ex.route.on_response_body is not None:          # phase: on_response_body (the end)
            self.ex.body_tap(b"", True)
        self.finish()

    cdef void on_reset(self, int code):
        """The upstream reset the stream: before the response head a 502, after it the cut."""
        self.fail(502, "bad-gateway", b"", 14, _failures.STREAM_RESET)

    cdef void on_error(self, int status, str slug, bytes detail, str kind):
        """The upstream connection failed (connect, TLS, lost, GOAWAY before this stream); `kind` and
        `detail` (its reason) as for Exchange.name_failure; 14 is gRPC's UNAVAILABLE."""
        self.fail(status, slug, detail, 14, kind)

    cdef void on_replay(self, str kind):
        """The upstream did not process the stream (REFUSED_STREAM, GOAWAY) and it is sent again: a
        retryable failure, which the access log names as the one the call was retried after."""
        self.ex.retried = True
        self.ex.retried_err = gateway_error(502, "bad-gateway", SRC_UPSTREAM_RESPONSE, True, b"", kind)
