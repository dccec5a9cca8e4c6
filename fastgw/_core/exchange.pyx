# One request and its response (included by worker.pyx), driven from here: routing, the route's policies,
# the upstream call, the one failure path, the response, the log; and the policy interface. The request
# the upstream receives is built in upstream_request.pyx, the retry decided in retry.pyx.

def _report_policy_error(where, exc):
    import sys
    import traceback
    sys.stderr.write(f"fastgw: policy error in {where}: {exc!r}\n")
    traceback.print_exception(exc, file=sys.stderr)


async def _await_gate(Exchange ex, aw):
    try:
        res = await aw
    except asyncio.CancelledError:
        return
    except Exception as exc:
        _report_policy_error(ex.route.name, exc)
        res = (500, "internal-error", None, None)
    ex.gate_task = None
    if ex.done or ex.client.closed:
        return
    ex.gate_done(res)


cdef bytes IDEMPOTENT = b" GET HEAD OPTIONS TRACE PUT DELETE "


cdef class Exchange:
    # -- upstream request ------------------------------------------------------------------------------
    cdef void request_data(self, bytes data):
        """Request body bytes from the client side (within max_body: Downstream.body_data): to the
        upstream call once it started, held until then."""
        if self.sent:
            if self.replay is not None:          # kept to send again on a retry, up to replay_buffer
                if self.body_bytes > self.route.group.replay_max:
                    self.replay = None
                else:
                    self.replay.append(data)
            self.drv.send(self, data)
        else:
            self.hold(data)

    cdef void request_end(self):
        """The request body ended (Downstream.body_end); before the call started, its start ends it."""
        if self.sent:
            self.drv.end(self)

    cdef void hold(self, bytes data):
        """Body bytes the upstream cannot take yet (the route unknown, its policies running, the
        connection being made), unframed; past PENDING_LIMIT the client's reading pauses. (The list is
        made on first use: most requests hold nothing.)"""
        if self.pending is None:
            self.pending = []
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > PENDING_LIMIT and self.body_waiter is None:   # (read_body: body_limit)
            self.client.pause_reading(P_PENDING)

    cdef void to_upstream(self, bytes data):
        """HTTP/1.1 request bytes (framed) to the upstream connection (H1Upstream)."""
        if self.up is None or not self.sent:
            self.hold(data)
        elif self.client.batching:
            if self.out is None:                  # (made on first use: a request without a body has none)
                self.out = []
            self.out.append(data)
        else:
            twrite(self.up.transport, data)

    cdef void flush_upstream(self):
        """Write the request bytes batched during one client read (see to_upstream) in one go."""
        if self.out and self.up is not None and self.up.transport is not None:
            write_parts(self.up.transport, self.out)
            self.out = None

    cdef void acquire(self, bint fresh):
        """A connection to the target the upstream head was built for (upstream_head picked it):
        a pooled one, or a new one (`fresh`: always new, as the retry on a closed kept-alive one wants)."""
        cdef Downstream cl = self.client
        cdef UpstreamConn c = None
        cdef Target t = self.target
        cdef int over
        if not fresh:
            c = pool_take(t, cl.w.clock.now)
        if c is not None:
            self.attach(c)
            return
        over = t.group.connect_slot()           # circuit breaking: max_connections, max_pending
        if over >= 0:
            self.overloaded(over)
            return
        self.connect_deadline = cl.w.clock.now + self.route.group.connect_timeout
        self.connect_task = cl.loop.create_task(_connect(self, t))

    cdef void connected(self, UpstreamConn c):
        self.connect_task = None
        c.w = self.client.w
        if self.done or self.client.closed:
            pool_give(self.target, c, self.client.w.clock.now)
            return
        self.attach(c)
        self.client.flush()

    cdef void connect_failed(self, int status, str slug, bytes detail, str kind=None):
        """Refused or unreachable: 502; no connection within connect_timeout: 504. (503 is kept for
        "no usable target" and "overloaded".) Retryable whatever the method: nothing was sent."""
        cdef GatewayError err = gateway_error(status, slug, SRC_UPSTREAM_CONNECT, True, detail, kind)
        err.cond = RC_CONNECT
        self.connect_task = None
        self.failed(err)

    cdef void overloaded(self, int which):
        """Circuit breaking: the upstream is at a limit (Overflow: max_requests, max_pending or
        max_connections, pod-wide): 503 upstream-overloaded at once, with Retry-After, never a queue
        [Envoy: 503 with x-envoy-overloaded]. No target failed: outlier detection does not count it."""
        cdef bytes line = b"Retry-After: 1\r\n"
        self.err_extra = line if self.err_extra is None else self.err_extra + line
        self.failed(gateway_error(503, "upstream-overloaded", SRC_UPSTREAM_CONNECT, False,
                                  (b"max_requests", b"max_pending", b"max_connections")[which], _failures.OVERLOADED))

    cdef void name_failure(self, GatewayError err):
        """Name an upstream failure for the access log and the problem body: err.kind (fastgw/failures.py)
        becomes its label and err.detail the client's sentence naming the upstream. A reporter that names
        no kind keeps its own sentence; the kind follows the status."""
        cdef str name = self.route.group.name
        if err.kind is None:
            err.kind = _failures.BY_STATUS.get(err.status, "failed")
            err.detail = (err.detail or b"upstream failed") + b' (upstream "%s")' % name.encode()
            return
        err.kind, err.detail = _failures.describe(name, err.kind,
                                                  err.detail.decode("latin-1") if err.detail else "")

    cdef bytes failure_members(self):
        """The problem body's members naming an upstream failure (never the target's address)."""
        cdef GatewayError err = self.err
        if err is None or err.kind is None:
            return b""
        return b',"upstream":"' + json_bytes(self.route.group.name.encode()) + b'","upstream_error":"' \
            + json_bytes(err.kind.encode("ascii", "replace")) + b'"'

    cdef void attach(self, UpstreamConn c):
        self.up = c
        c.ex = self
        c.got_bytes = False
        c.reset()
        self.up_last = self.client.w.clock.now
        self.sent = True
        if self.client.wpaused and not c.rpaused:
            c.rpaused = True
            c.transport.pause_reading()
        cdef list parts = self.pending
        cdef UpstreamGroup g
        cdef bytes piece
        if self.has_body:
            # A request with a body keeps what it sends (unframed: request_data adds the rest), to be sent
            # again if a retry may need it: an idempotent one (or retry_safe), under replay_buffer.
            g = self.route.group
            self.replay = None
            if g.attempts > self.tries and self.body_bytes <= g.replay_max and (
                    self.retry_safe or IDEMPOTENT.find(b" " + self.head.method + b" ") >= 0):
                self.replay = parts[:] if parts else []
        if self.head.chunked:
            # The body held so far, framed (H1Upstream.send frames what comes later), and its end if it
            # ended already.
            parts = [self.up_head]
            if self.pending is not None:
                for piece in self.pending:
                    parts += (b"%x\r\n" % len(piece), piece, b"\r\n")
            if self.body_done:
                parts.append(b"0\r\n\r\n")
            self.pending = None
            self.pending_bytes = 0
            write_parts(c.transport, parts)
            self.client.resume_reading(P_PENDING)
        elif parts:
            parts.insert(0, self.up_head)
            self.pending = None
            self.pending_bytes = 0
            write_parts(c.transport, parts)
            self.client.resume_reading(P_PENDING)
        else:
            twrite(c.transport, self.up_head)

    cdef void release_upstream(self, bint reusable):
        cdef UpstreamConn c = self.up
        if c is None:
            return
        self.up = None
        c.ex = None
        if reusable and self.body_done and not c.closed:
            pool_give(self.target, c, self.client.w.clock.now)
        else:
            c.close()

    cdef void upstream_failed(self, int status, str slug, bytes detail, str kind=None):
        """The upstream connection failed once the request was on its way (closed, reset, invalid
        response: 502; timeout: 504): the connection is dropped and the failure goes to `failed`."""
        cdef UpstreamConn c = self.up
        cdef bint stale
        cdef int cond = RC_NONE
        cdef GatewayError err
        if self.done:
            return
        # Before any response byte, the failure meets a retry condition (gateway_error.pyx): a kept-alive
        # connection the upstream closed or reset just as it was reused (no sign of a sick target) most
        # likely never reached it, but the bytes were written: retryable for a request that may be
        # repeated (nginx retries a non-idempotent request never once it was sent); a fresh one may have
        # reached it (the method decides).
        stale = (c is not None and c.reused and not c.got_bytes and status == 502
                 and (self.retry_safe or IDEMPOTENT.find(b" " + self.head.method + b" ") >= 0))
        if c is not None and not c.got_bytes:
            cond = RC_SEND if stale else (RC_TIMEOUT if status == 504 else RC_RESPONSE)
        if c is not None:
            c.ex = None
            c.abort()
            self.up = None
        err = gateway_error(status, slug, SRC_UPSTREAM_RESPONSE, stale, detail, kind)
        err.cond = cond
        self.failed(err)

    cdef void failed(self, GatewayError err):
        """The one failure path of an exchange: every failure, whoever detected it, arrives here. An
        upstream failure counts against its target (outlier detection), is retried when `retry` decides
        so, else counted and named; once the response has started the client connection is cut (never a
        silently truncated response); otherwise the client gets the problem (`respond_problem`). The
        error stays on the exchange for the access log."""
        cdef bint upstream = err.source == SRC_UPSTREAM_CONNECT or err.source == SRC_UPSTREAM_RESPONSE
        if self.done:
            return
        if upstream:
            # A stale kept-alive connection is no outlier; a 503 made here (overloaded, no target) is none.
            if self.target is not None and err.cond != RC_SEND and err.status != 503:
                self.target.failed_with(err.source == SRC_UPSTREAM_CONNECT, err.status)
            if err.cond != RC_NONE and not self.resp_started and decide_retry(self, err):
                return
            self.err = err
            self.client.w.upstream_error(self, err.status)
            self.name_failure(err)
            if self.resp_started:
                self.release_slots()
                self.done = True
                self.client.w.observe(self)      # the access log records the cut response and why
                self.client.abort()              # never a silently truncated response
                return
        self.err = err
        self.respond_problem(err)

    cdef void release_slots(self):
        """The exchange ends: its places in its upstream's counts (requests in flight, retry budget) are
        given back, and a pending retry is called off."""
        if self.admitted:
            self.admitted = False
            self.route.group.release()
        if self.retrying:
            self.retrying = False
            self.route.group.retry_done()
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None

    # -- response --------------------------------------------------------------------------------------
    cdef void resp_head(self, UpstreamConn c, int status):
        cdef bint is_head = self.head.method == b"HEAD"
        cdef GatewayError err
        if 502 <= status <= 504:
            self.target.failure(REASON_STATUS)
            if (self.route.group.retry_on >> (RC_502 + status - 502)) & 1:       # opt-in: retry.on "50x"
                err = gateway_error(status, "bad-gateway", SRC_UPSTREAM_RESPONSE, False, None, str(status))
                err.cond = RC_502 + status - 502
                if decide_retry(self, err):
                    return
        else:
            self.target.success()
        if self.route.on_response is not None:          # phase: on_response
            if self.upstream_response(c, status):
                return
        self.resp_started = True
        self.status = status
        self.resp_nobody = is_head or status == 204 or status == 304
        # (a response to HEAD ends with its head: the reader knows the method, the connection stays reusable)
        self.client.write_head(self, status, c.rpieces, c.rd.length)

    cdef void switch(self, UpstreamConn c, bytes tail):
        """The origin answered 101 to a request a policy made a tunnel request (`tunnel`, its session):
        the 101 goes to the client, the exchange ends (logged with status 101), and the two connections
        become a Tunnel (tunnel.pyx); `tail` is what the origin sent after its 101 in the same read."""
        cdef ClientConn cl = self.client
        self.target.success()
        self.resp_started = True
        self.status = 101
        cl.write_switch(self, c)
        cl.flush_now()
        self.done = True
        if self.counted:
            self.counted = False
            self.target.finish()
        c.ex = None
        self.up = None
        cl.active = None
        open_tunnel(cl, c.transport, self.tunnel, tail)
        if self.after is not None:
            self.run_after()
        cl.w.observe(self)

    cdef void resp_body(self, bytes data):
        if self.resp_nobody:
            return
        self.client.write_body(self, data)
        self.resp_bytes += len(data)
        if self.route.on_response_body is not None:     # phase: on_response_body
            self.body_tap(data, False)

    cdef void resp_end(self, bint reusable):
        if self.done:
            return
        self.client.write_end(self)
        if self.route.on_response_body is not None:     # phase: on_response_body (the end)
            self.body_tap(b"", True)
        self.release_upstream(reusable)
        self.complete()

    cdef void body_tap(self, bytes data, bint end):
        """phase: on_response_body, each policy in order: a chunk of the upstream's response body as it
        went to the client, or (`end`) its end. A response cut before its end never gets the end. A policy
        that raises is reported; the response, already on its way, goes on."""
        try:
            for fn in self.route.on_response_body:
                fn(self, data, end)
        except Exception as exc:
            _report_policy_error(self.route.name, exc)

    cdef void complete(self):
        if not self.done:
            self.done = True
            if self.body_waiter is not None:            # a policy waited for a body that never came whole
                self.body_waiter.cancel()
                self.body_waiter = None
            if self.admitted or self.retrying:
                self.release_slots()
            if self.counted:
                self.counted = False
                self.target.finish()
            if self.after is not None:
                self.run_after()
            self.client.w.observe(self)
            self.client.finished(self)

    cdef void drop(self):
        """End the exchange where it stands (its client is gone): pending work is cancelled and the
        upstream connection, mid-request, is closed."""
        self.done = True
        if self.admitted or self.retrying:
            self.release_slots()
        if self.counted:
            self.counted = False
            self.target.finish()
        if self.gate_task is not None:
            self.gate_task.cancel()
            self.gate_task = None
        if self.after is not None:
            self.run_after()
        if self.drv is not None:
            self.drv.cancel(self)

    cdef void run_after(self):
        fns = self.after
        self.after = None
        for fn in fns:
            try:
                fn(self)
            except Exception as exc:            # a policy bug must not take the connection down
                _report_policy_error("on_complete", exc)

    # -- driving the request ---------------------------------------------------------------------------
    # The exchange is the request's only driver: route -> the route's policies -> the upstream head (the
    # target is picked there, once) -> the upstream call -> the response -> the log. The connection (an
    # Downstream, downstream.pxd: an HTTP/1.1 ClientConn or an HTTP/2 H2Stream) parses and writes; it
    # starts an exchange when its turn comes (Downstream.start) and hands it the body (body_data).
    cdef void run(self):
        """Route the request and run the route's policies; then `proceed`, or the rejection."""
        cdef Runtime rt = self.rt
        cdef RequestHead h = self.head
        cdef RouteRT route
        cdef Downstream cl = self.client
        if self.err is not None:
            self.failed(self.err)                   # a request that failed before its turn
            return
        m = (<Router>rt.router).match(h.method, h.host, h.path)      # a C call (router.pxd)
        code = <int>m[0]
        if code != 0:
            if code == 404:
                self.failed(gateway_error(404, "not-found", SRC_DOWNSTREAM, False, None, None))
            else:
                self.err_extra = b"Allow: " + <bytes>m[1] + b"\r\n"
                self.failed(gateway_error(405, "method-not-allowed", SRC_DOWNSTREAM, False, None, None))
            return
        route = <RouteRT>m[1]
        self.route = route
        head_res = None
        if route.line_gates is not None:        # the policies' response lines, on every answer (gates.pyx),
            head_res = route_head(self, route, h, True)     # and their answer from the head
        self.drv = <Upstream>route.upstream if route.upstream is not None else H1_UPSTREAM
        if route.on_log is not None:            # phase: on_log (run with the on_complete callbacks)
            self.after = list(route.on_log)
        if self.drv.needs & ~cl.caps:
            # The upstream needs what this client side cannot carry (gRPC: HTTP/2 end to end)
            self.failed(gateway_error(505, "http2-required", SRC_DOWNSTREAM, False, None, None))
            return
        if h.content_length > route.max_body or self.body_bytes > route.max_body:
            cl.body_too_large(self)
            return
        if head_res is not None:                # phase: on_request, answered from the head (route_head)
            self.params = m[2]
            if type(head_res) is tuple:
                self.reject(<tuple>head_res)
            else:
                self.answer(<Respond>head_res)
            return
        if route.gate is not None:
            self.params = m[2]
            try:
                g = route.gate               # the compiled Chain called in C; one policy: its on_request
                res = (<Chain>g).run(self) if type(g) is Chain else g(self)
            except Exception as exc:
                _report_policy_error(route.name, exc)
                res = (500, "internal-error", None, None)
            if res is not None:
                if type(res) is tuple:
                    self.reject(res)
                elif type(res) is Respond:        # phase: on_request answered
                    self.answer(<Respond>res)
                else:
                    self.gate_task = cl.loop.create_task(_await_gate(self, res))
                return
        self.proceed()

    cdef void proceed(self):
        """The request passed its route's policies: build the upstream head and go."""
        cdef RequestHead h = self.head
        if self.route.on_upstream_request is not None and not self.upstream_request_phase():
            return                                # phase: on_upstream_request (a policy failed: 500)
        if not self.route.group.admit():          # circuit breaking: max_requests
            self.overloaded(OV_REQUESTS)
            return
        self.admitted = True
        self.try_timeout = self.route.try_timeout
        self.tu0 = mono_ns()                      # the gateway's part ends here, the upstream's begins
        if not self.drv.start(self):
            return                                # no usable target: answered
        if h.expect_continue and self.has_body and h.minor == 1 and self.body_bytes == 0:
            self.client.write_continue()

    cdef void reject(self, tuple res):
        """A policy's rejection (status, slug, detail, extra header lines); a store it needs being
        unavailable is the store's failure, not the policy's."""
        status, slug, detail, extra = res
        if extra is not None:
            self.err_extra = extra if self.err_extra is None else self.err_extra + extra
        self.failed(gateway_error(status, slug, SRC_STORE if slug == "store-unavailable" else SRC_POLICY,
                                False, detail, None))

    cdef void gate_done(self, object res):
        """A policy that awaited (Redis, a JWKS fetch) answered: go on or reject, output batched."""
        cdef Downstream cl = self.client
        cl.batching = True
        try:
            if res is None:
                self.proceed()
            elif type(res) is Respond:            # phase: on_request answered
                self.answer(<Respond>res)
            else:
                self.reject(res)
        finally:
            cl.batching = False
            cl.flush()

    # -- policy interface ------------------------------------------------------------------------------
    # A route's phases (compiled from its policies at config load; fastgw/policies/contract.py) receive
    # the exchange. Its `gate` (on_request) is called as gate(exchange) once the route is known and before
    # any upstream work. It returns None to let the request through, a rejection tuple (status, slug,
    # detail bytes or None, extra header lines bytes or None), a Respond (the policy answers), or an
    # awaitable resolving to one of those (only policies that must wait for I/O, e.g. Redis, do that).
    # Everything a policy may read or add is below; nothing else of the exchange is public.
    @property
    def method(self):
        return self.head.method

    @property
    def path(self):
        return self.head.path

    @property
    def query(self):
        return self.head.query

    @property
    def host(self):
        return self.head.host

    @property
    def peer(self):
        return self.client.peer

    @property
    def xff(self):
        """The client's X-Forwarded-For (fields joined), or None: believe it only from a trusted proxy."""
        return self.head.xff

    @property
    def peercert(self):
        """The verified TLS client certificate of the connection (ssl getpeercert() form), or None."""
        return self.client.peercert()

    @property
    def request_id(self):
        return self.rid

    @property
    def route_name(self):
        return self.route.name if self.route is not None else None

    @property
    def route_params(self):
        return self.params

    @property
    def upgrade(self):
        """The protocol an HTTP/1.1 request asks to switch to (its Upgrade field, lowercase) when its
        Connection names "upgrade" (the reader then reads nothing more of the connection), else None."""
        cdef RequestHead h = self.head
        if h is None or h.upgrade is None or h.drop is None or b"upgrade" not in h.drop:
            return None
        return h.upgrade.strip().lower()

    @property
    def request_body_bytes(self):
        """on_log: the request body bytes received from the client (without chunked framing)."""
        return self.body_bytes

    @property
    def response_body_bytes(self):
        """on_log: the upstream's response body bytes written to the client (an answer the gateway made
        itself: 0)."""
        return self.resp_bytes

    @property
    def with_body(self):
        """The request has a body (Content-Length above 0, or chunked)."""
        return self.has_body

    @property
    def draining(self):
        """The worker is draining (SIGTERM): a policy opens no new long-lived session."""
        return self.client.draining

    def add_upstream_header(self, bytes name, bytes value):
        line = name + b": " + value + b"\r\n"
        self.up_extra = line if self.up_extra is None else self.up_extra + line

    def add_response_header(self, bytes name, bytes value):
        if self.resp_view is not None:                  # on_response: checked, then as outside it
            name = _ph.check_name(name)
            value = _ph.check_value(value)
            if self.viewed:
                self.resp_view.append((name, value))
                return
        line = name + b": " + value + b"\r\n"
        self.resp_extra = line if self.resp_extra is None else self.resp_extra + line

    def set_query(self, bytes query):
        """Replace the query forwarded upstream (b"" or b"?..."), e.g. without a credential parameter."""
        if query and query[0] != 63:
            raise ValueError("a query starts with '?'")
        self.head.query = query

    # header(), add_upstream_lines() and add_response_lines(): PolicyExchange (gates.pyx), in C for the gates

    def on_complete(self, fn):
        """Run fn(exchange) once when the exchange ends, whatever the outcome."""
        if self.after is None:
            self.after = []
        self.after.append(fn)

    @property
    def request_sent(self):
        """The request went (or was going) to an upstream connection: after a failure, its outcome is
        unknown (the upstream may have acted on it); False while nothing was sent (a connect failure)."""
        return self.sent

    def read_body(self, long long limit):
        """on_request: an awaitable of the whole request body (bytes, without chunked framing) once it has
        arrived, or of None as soon as it is larger than `limit` bytes (the policy answers 413). The body is
        still sent upstream as it came. While a policy waits, the body is held in memory up to `limit` (the
        connection keeps reading; an HTTP/2 stream's window is given back), under the route's body timeouts;
        a client that sent `Expect: 100-continue` is told to go on."""
        fut = self.client.loop.create_future()
        if self.body_done or self.body_bytes > limit:
            fut.set_result(self.held_body() if self.body_bytes <= limit else None)
            return fut
        self.body_waiter = fut
        self.body_limit = limit
        self.client.resume_reading(P_PENDING)
        if self.head.expect_continue and self.head.minor == 1 and self.body_bytes == 0:
            self.client.write_continue()
            self.client.flush()
        return fut

    cdef bytes held_body(self):
        return b"".join(self.pending) if self.pending is not None else b""     # (held unframed: hold)

    cdef void body_ready(self):
        """The body read_body waits for is whole (body_done), or over its limit: wake the policy."""
        fut = self.body_waiter
        self.body_waiter = None
        if not fut.done():
            fut.set_result(self.held_body() if self.body_bytes <= self.body_limit else None)

    # -- policy interface: the phases (fastgw/policies/contract.py) --------------------------------------
    @property
    def response_status(self):
        """The status of the response (on_response: the one being answered; on_log: the one sent, 499 when
        the client went away first)."""
        return self.status

    @property
    def response_headers(self):
        """on_response: the response's (name, value) pairs, in order, as a tuple (None outside the phase);
        edits go through the methods below, which check them. Framing, hop-by-hop fields and X-Request-ID
        are the gateway's, not in it."""
        return tuple(self.edit_view()) if self.resp_view is not None else None

    @property
    def response_lines(self):
        """on_response: the header lines the response came with (the upstream's kept fields and the route's
        response_headers.add; a Respond's; a problem's extra lines), before any policy added to or edited
        them (None outside the phase). What a policy that keeps a response (the cache) stores."""
        return b"".join(self.resp_blocks) if self.resp_blocks is not None else None

    def response_header(self, bytes lname):
        """on_response: the first value of response header `lname` (lowercase), or None."""
        return _ph.first(self.edit_view(), lname)

    def set_response_header(self, name, value):
        """on_response: `name: value` in place of every `name` field of the response."""
        _ph.replace(self.edit_view(), name, value)

    def remove_response_header(self, name):
        """on_response: drop every `name` field of the response; how many there were."""
        return _ph.drop(self.edit_view(), name)

    cdef list edit_view(self):
        """The response's (name, value) pairs, made from its header blocks and the lines added so far on
        first use: a phase whose policies only add headers never builds them."""
        cdef list view
        if self.resp_view is None:
            raise RuntimeError("response headers are edited in on_response")
        if not self.viewed:
            view = []
            for block in self.resp_view:
                _ph.parse_lines(<bytes>block, view)
            if self.resp_extra is not None:
                _ph.parse_lines(self.resp_extra, view)
                self.resp_extra = None
            self.resp_view = view
            self.viewed = True
        return self.resp_view

    def remove_upstream_header(self, name):
        """Do not send request header `name` (any case) upstream: neither the client's nor one a policy
        added before. (Headers the gateway sets itself cannot be removed: ValueError.)"""
        cdef bytes low = _ph.check_name(name).lower()
        cdef list pieces = self.head.pieces
        cdef list kept = []
        cdef Py_ssize_t i
        for i in range(0, len(pieces), 4):
            if (<bytes>pieces[i]).lower() != low:
                kept.extend(pieces[i:i + 4])
        self.head.pieces = kept
        if self.up_extra is not None:
            kept = [pair for pair in _ph.parse_lines(self.up_extra, []) if (<bytes>pair[0]).lower() != low]
            self.up_extra = _ph.join_pairs(kept) if kept else None

    cdef bint upstream_request_phase(self):
        """phase: on_upstream_request, each policy in order (they return None). False when one failed:
        then the request was answered with a 500 problem and never sent."""
        try:
            for fn in self.route.on_upstream_request:
                if fn(self) is not None:
                    raise TypeError("on_upstream_request returns None")
        except Exception as exc:
            _report_policy_error(self.route.name, exc)
            self.policy_failed()
            return False
        return True

    cdef object response_phase(self, tuple fns, list blocks, int status):
        """phase: on_response, each policy in order, over the response's header `blocks` (header lines,
        bytes) and the lines policies added (resp_extra). A Respond from a policy replaces the response:
        the later policies see it. Returns None, the last replacing Respond (its status is then
        self.status), or False when a policy failed (the caller answers 500); then phase_lines() gives the
        result. Runs once per exchange: an answer made after it skips it."""
        cdef object replaced = None
        self.phased = True
        self.resp_view = blocks
        self.resp_blocks = blocks
        self.viewed = False
        self.status = status
        try:
            for fn in fns:
                r = fn(self)
                if r is None:
                    continue
                if type(r) is not Respond:
                    raise TypeError(f"on_response returned {type(r).__name__}, not None or a Respond")
                replaced = r
                self.resp_view = list((<Respond>r).headers)
                self.viewed = True
                self.resp_extra = None
                self.status = (<Respond>r).status
        except Exception as exc:
            _report_policy_error(self.route.name if self.route is not None else "on_response", exc)
            self.resp_view = None
            return False
        return replaced

    cdef bytes phase_lines(self):
        """After response_phase: the response's header lines when a policy read or edited them (the lines
        added on the way are in them), or None when they stand as they were (resp_extra still to add)."""
        cdef bytes lines = _ph.join_pairs(self.resp_view) if self.viewed else None
        self.resp_view = None
        self.resp_blocks = None
        return lines

    cdef bint upstream_response(self, UpstreamConn c, int status):
        """phase: on_response over an upstream's response head (its kept lines, then the route's added
        ones). True when the policies replaced it (answered here; the upstream connection is closed)."""
        cdef list blocks = c.rpieces
        if self.route.phase_resp_add:
            blocks = blocks + [self.route.phase_resp_add]
        r = self.response_phase(self.route.on_response, blocks, status)
        if r is False:
            self.settle(0)
            self.policy_failed()
            return True
        lines = self.phase_lines()
        if r is None:
            c.rpieces = [lines] if lines is not None else blocks
            return False
        self.settle(0)
        self.send_answer(self.status, lines, (<Respond>r).body)
        return True

    cdef void answer(self, Respond r):
        """A policy answered itself (a Respond from on_request), before any upstream work: the answer
        passes the on_response phase, then goes to the client."""
        cdef bytes lines = _ph.join_pairs(r.headers)
        self.settle(0)
        fns = self.route.on_response if self.route is not None else self.rt.unrouted_response
        if fns is not None and not self.phased:             # phase: on_response
            rr = self.response_phase(fns, [lines], r.status)
            if rr is False:
                self.policy_failed()
                return
            if rr is not None:
                r = <Respond>rr
            edited = self.phase_lines()
            if edited is not None:
                self.send_answer(self.status, edited, r.body)
                return
        if self.resp_extra is not None:
            lines = lines + self.resp_extra
        self.send_answer(r.status, lines, r.body)

    cdef void send_answer(self, int status, bytes lines, bytes body):
        self.status = status
        self.resp_nobody = (self.head is not None and self.head.method == b"HEAD") or status == 204 \
            or status == 304
        self.client.write_answer(self, status, lines, body)
        self.complete()

    cdef void policy_failed(self):
        """A policy raised in a phase: a 500 problem without what the policies had added, but with the
        route's compiled response lines (CORS, the lifecycle: a browser reads the 500 like any error)."""
        self.err_extra = None
        self.resp_extra = None
        if self.route is not None and self.route.line_gates is not None:
            route_head(self, self.route, self.head, False)
        self.resp_view = None
        self.failed(gateway_error(500, "internal-error", SRC_POLICY, False, None, None))

    cdef void settle(self, int status):
        """Before an answer the gateway makes itself (before any upstream response byte): stop the upstream
        work, and decide whether the connection closes after it (`status`: of a problem, else 0)."""
        cdef Downstream cl = self.client
        if self.drv is not None:
            self.drv.cancel(self)
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        if not self.body_done or status == 400 or status == 408 or status == 413 or status == 431 \
                or status == 414:
            self.close_after = True
        if cl.draining or cl.reader_done() or cl.nreq + 1 >= cl.rt0.max_requests \
                or (self.head is not None and not self.head.keep_alive):   # the client asked to close
            self.close_after = True

    cdef bytes traceparent_line(self):
        """b"\r\ntraceparent: " and the traceparent forwarded upstream (the request's trace, the gateway's
        span id as the parent), made once, when first needed (the access log reads its ids there)."""
        if self.tp is None:
            self.tp = traceparent_bytes(&self.tc, True)
        return self.tp

    cdef bytes traceparent(self):
        """The traceparent value alone (an HTTP/2 field)."""
        return self.traceparent_line()[TP_LINE:]

    cdef void respond_problem(self, GatewayError err):
        """A response made by fastgw (problem+json), before any upstream response byte. It passes the
        on_response phase (the route's; before routing the runtime's unrouted one), unless that ran."""
        cdef int status = err.status
        self.settle(status)
        self.status = status
        extra = self.err_extra
        if self.route is None:
            fns = self.rt.unrouted_response
            if self.rt.unrouted_log is not None and self.after is None:   # phase: on_log (unrouted)
                self.after = list(self.rt.unrouted_log)
        else:
            fns = self.route.on_response
        if fns is not None and not self.phased:             # phase: on_response
            r = self.response_phase(fns, [extra] if extra is not None else [], status)
            if r is False:
                self.policy_failed()
                return
            lines = self.phase_lines()
            if r is not None:
                self.send_answer(self.status, lines, (<Respond>r).body)
                return
            if lines is not None:
                extra = lines
        if self.resp_extra is not None:
            extra = self.resp_extra if extra is None else extra + self.resp_extra
        self.client.write_problem(self, err.slug, err.detail, extra)
        self.complete()


cdef object route_head(Exchange ex, RouteRT route, RequestHead h, bint ask):
    """The route's line-giving policies (gates.pyx: CORS, the lifecycle) over the request's head, in C:
    the response lines they give it become ex.resp_extra (on every answer of the exchange) and, when
    `ask`, the first answer of their head_request (a preflight's 204, the 410 after a sunset) is returned
    (else None). The compiled policies catch their Python halves' errors themselves (gates.pyx: a raising
    `allowed` grants nothing, a raising `preflight` answers 500), so the loop runs no try per policy (four
    cost ~100 instructions per request); one guard remains, so that run() never stops halfway: whatever
    escapes is reported, the lines gathered so far stay, and the answer is a 500."""
    cdef bytes out = None
    cdef bytes lines
    cdef object res = None
    cdef Gate g
    cdef tuple gates = route.line_gates
    cdef Py_ssize_t i
    try:
        for i in range(len(gates)):
            g = <Gate>gates[i]
            lines = g.response_lines(h)
            if lines is not None:
                out = lines if out is None else _join2(out, lines)
            if ask and res is None:
                res = g.head_request(h)
    except Exception as exc:
        _report_policy_error(route.name, exc)
        if ask:
            res = (500, "internal-error", None, None)
    ex.resp_extra = out
    return res


# The last join of _join2: the policies give prebuilt lines (CORS one bytes object per listed origin, the
# lifecycle one per route), so the same two objects come again request after request: their join is kept
# (strong references, bytes are immutable; one worker thread) instead of allocated and copied each time.
cdef bytes _last_a = None, _last_b = None, _last_ab = None


cdef inline bytes _join2(bytes a, bytes b):
    """a + b in C: one allocation, two copies (`+` on bytes goes through PyNumber_Add and the buffer
    protocol, ~425 instructions; concat() of a list of two, ~300); the same two objects as last time: the
    same result."""
    global _last_a, _last_b, _last_ab
    if a is _last_a and b is _last_b:
        return _last_ab
    cdef Py_ssize_t na = PyBytes_GET_SIZE(a), nb = PyBytes_GET_SIZE(b)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, na + nb)
    cdef char* dst = PyBytes_AS_STRING(out)
    memcpy(dst, PyBytes_AS_STRING(a), na)
    memcpy(dst + na, PyBytes_AS_STRING(b), nb)
    _last_a, _last_b, _last_ab = a, b, out
    return out
