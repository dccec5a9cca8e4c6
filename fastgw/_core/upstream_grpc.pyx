# gRPC passthrough (included by worker.pyx).
#
#   GrpcCall   one downstream HTTP/2 stream on a grpc route, joined to one upstream HTTP/2 stream
#              (fastgw.grpc_upstream.Stream, on a multiplexed connection of the target's Pool)
#
# The downstream stream is an H2Stream: routing and the route's policies ran on it as on any request.
# proceed() hands it here instead of building an HTTP/1.1 head. From then on:
# * request DATA goes to the upstream stream as it arrives; the client's DATA is acknowledged (downstream
#   WINDOW_UPDATE) only once the upstream stream sent it within its windows and the upstream transport is
#   not paused (so memory per call is bounded by the downstream stream window);
# * response DATA is queued on the H2Stream (sent within the client's windows); the upstream's DATA is
#   acknowledged while the stream holds at most STREAM_OUTQ unsent bytes and the client connection is
#   not paused, held otherwise (set_paused);
# * the upstream's trailers go to the client as a HEADERS frame with END_STREAM after the queued DATA;
# * a reset on either side resets the other (the upstream's code is relayed to the client);
# * errors made by the gateway are trailers-only responses (grpc_problem): `:status 200`,
#   `content-type: application/grpc`, `grpc-status`, percent-encoded `grpc-message`.

from fastgw import grpc_upstream as _gu

# HTTP status of a gateway error -> gRPC status code (README "gRPC"). Based on gRPC's "HTTP to gRPC
# status code mapping", with the gateway's own meanings kept where they say more: a rate limit or a
# quota is RESOURCE_EXHAUSTED (8), the gateway's upstream timeout is DEADLINE_EXCEEDED (4).
cdef dict GRPC_STATUS = {
    400: 13,     # INTERNAL (bad request)
    401: 16,     # UNAUTHENTICATED
    403: 7,      # PERMISSION_DENIED
    404: 12,     # UNIMPLEMENTED
    408: 4,      # DEADLINE_EXCEEDED (the request did not arrive in time)
    410: 12,     # UNIMPLEMENTED (a retired route)
    413: 8,      # RESOURCE_EXHAUSTED (a request message over max_body)
    414: 13,     # INTERNAL
    429: 8,      # RESOURCE_EXHAUSTED (rate limit or quota)
    431: 8,      # RESOURCE_EXHAUSTED (metadata too large)
    500: 13,     # INTERNAL
    502: 14,     # UNAVAILABLE
    503: 14,     # UNAVAILABLE
    504: 4,      # DEADLINE_EXCEEDED (the upstream did not answer in time)
}

# Response fields never relayed from an HTTP/2 upstream: the connection-specific ones (RFC 9113 8.2.2,
# the wire table's CONNECTION_SPECIFIC).
cdef frozenset GRPC_HOP = CONNECTION_SPECIFIC

# The failure kinds (fastgw/failures.py) of an upstream connection that was never made.
cdef frozenset CONNECT_KINDS = frozenset((_failures.CONNECT_REFUSED, _failures.CONNECT_FAILED,
                                          _failures.CONNECT_TIMEOUT, _failures.TLS_FAILED))


cpdef bytes grpc_pct(bytes msg):
    """Percent-encode a grpc-message value: bytes outside printable ASCII, and '%', become %XX."""
    cdef const unsigned char* p = msg
    cdef Py_ssize_t i, n = len(msg)
    cdef bytearray out
    for i in range(n):
        if p[i] < 0x20 or p[i] > 0x7e or p[i] == 0x25:
            break
    else:
        return msg
    out = bytearray(msg[:i])
    for i in range(i, n):
        if p[i] < 0x20 or p[i] > 0x7e or p[i] == 0x25:
            out += b"%%%02X" % p[i]
        else:
            out.append(p[i])
    return bytes(out)


cdef void grpc_problem(H2Stream st, Exchange ex, Problem p, bytes detail, bytes extra):
    """A gateway error on a grpc route: a trailers-only response with the mapped gRPC status."""
    cdef GrpcCall call = st.grpc
    cdef int code = 0
    cdef list headers
    if call is not None and call.code:
        code = call.code
    else:
        code = GRPC_STATUS.get(p.status, 2)          # 2 UNKNOWN
    ex.grpc_code = code + 1
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
               (b"grpc-status", b"%d" % code),
               (b"grpc-message", grpc_pct(p.detail if detail is None else detail)),
               (b"x-request-id", ex.rid)]
    if p.extra:
        _h2_lines(p.extra, headers)
    if extra:
        _h2_lines(extra, headers)                    # Retry-After, RateLimit, WWW-Authenticate...
    st.send_head(headers, True)


cdef void grpc_start(H2Stream st, Exchange ex):
    """The request passed its route's policies: open the upstream stream and send what arrived so far."""
    cdef RequestHead h = ex.head
    cdef RouteRT route = ex.route
    cdef UpstreamGroup g = route.group
    cdef Target t = g.pick(ex)
    cdef GrpcCall call = GrpcCall.__new__(GrpcCall)
    cdef list pieces = h.pieces
    cdef list hdrs
    cdef bytes path = h.path
    cdef Py_ssize_t i
    cdef long long owed
    if t is None:                               # every target ejected, on_panic "fail"
        ex.failed(gateway_error(503, "upstream-unavailable", SRC_UPSTREAM_CONNECT, False, b"",
                                _failures.NO_TARGET))
        return
    ex.target = t
    ex.counted = g.balance == B_LEAST_REQUEST
    call.st = st
    call.ex = ex
    call.max_msg = route.max_body
    call.deadline = st.w.clock.now + g.timeout
    st.grpc = call
    if route.strip:
        path = path[route.strip:]
        if len(path) == 0 or path[0] != 47:
            path = b"/" + path
    hdrs = [(b":method", h.method), (b":scheme", b"http" if g.ssl is None else b"https"),
            (b":authority", h.host if h.host else t.hostport), (b":path", path + h.query)]
    if h.drop is not None or route._req_remove is not None:
        pieces = filter_headers(pieces, h.drop, route._req_remove, route.req_remove_lengths)
    for i in range(0, len(pieces), 4):
        hdrs.append(((<bytes>pieces[i]).lower(), pieces[i + 2]))
    if route.req_add:
        _h2_lines(route.req_add, hdrs)
    if ex.up_extra is not None:
        _h2_lines(ex.up_extra, hdrs)
    hdrs.append((b"x-forwarded-for", st.peer if h.xff is None else h.xff + b", " + st.peer))
    hdrs.append((b"x-forwarded-proto", st.proto))
    if h.host:
        hdrs.append((b"x-forwarded-host", h.host))
    hdrs.append((b"x-request-id", ex.rid))
    if h.traceparent:
        hdrs.append((b"traceparent", h.traceparent))
        if h.tracestate is not None:
            hdrs.append((b"tracestate", h.tracestate))
    hdrs.append((b"te", b"trailers"))
    if h.content_length >= 0:
        hdrs.append((b"content-length", b"%d" % h.content_length))
    pool = t.h2pool
    if pool is None:                                  # (compile attaches one to every grpc target)
        pool = t.h2pool = _gu.Pool(t, None)
    ex.sent = True
    call.us = pool.open(call, hdrs)
    # The body that arrived while the policies ran (held, unacknowledged: P_PENDING).
    owed = st.owed
    st.owed = 0
    st.rpause &= ~P_PENDING
    if ex.pending:
        data = concat(ex.pending)
        ex.pending = []
        ex.pending_bytes = 0
        call.request_data(data, owed)
    elif owed:
        call.ack_request(owed)
    if st.rx_done:
        call.request_end()


cdef class GrpcCall:
    # -- from the downstream stream (h2engine.pyx) -----------------------------------------------------------
    cdef void request_data(self, bytes data, long long n):
        if self.over:
            self.ack_request(n)
            return
        if data and not self.scan(data):
            self.message_too_large()
            self.ack_request(n)
            return
        self.us.send(data, n)

    cdef bint scan(self, bytes data):
        """Follow the gRPC message framing (1 flag byte, 4 length bytes, the message) across DATA frames;
        False when a message is longer than max_body. Only the prefixes are looked at."""
        cdef const unsigned char* p = data
        cdef Py_ssize_t pos = 0, n = len(data), take
        cdef unsigned long long length
        while pos < n:
            if self.need > 0:
                take = n - pos
                if take > self.need:
                    take = <Py_ssize_t>self.need
                self.need -= take
                pos += take
                continue
            while self.hlen < 5 and pos < n:
                self.hdr[self.hlen] = p[pos]
                self.hlen += 1
                pos += 1
            if self.hlen == 5:
                self.hlen = 0
                length = ((<unsigned long long>self.hdr[1] << 24) | (<unsigned long long>self.hdr[2] << 16)
                          | (<unsigned long long>self.hdr[3] << 8) | self.hdr[4])
                if <long long>length > self.max_msg:
                    return False
                self.need = length
        return True

    cdef void message_too_large(self):
        cdef H2Stream st = self.st
        detail = b"request message exceeds the route's max_body (%d bytes)" % self.max_msg
        self.us.cancel()
        if not self.head_sent:
            self.code = 8
            self.over = True
            self.ex.failed(gateway_error(413, "payload-too-large", SRC_DOWNSTREAM, False, detail, None))
            return
        st.trailers = [(b"grpc-status", b"8"), (b"grpc-message", grpc_pct(detail))]
        self.ex.grpc_code = 9
        self.over = True
        st.write_end(self.ex)
        self.ex.status = 413
        self.ex.complete()

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
        self.paused = want
        if not want and self.up_owed and not self.over:
            n = self.up_owed
            self.up_owed = 0
            self.us.ack(n)

    cdef void check(self, double now):
        if not self.over and not self.head_sent and now > self.deadline:
            self.us.cancel()
            self.fail(504, "upstream-timeout", None, 4, _failures.TIMEOUT)

    cdef void fail(self, int status, str slug, bytes detail, int code, str kind=None):
        """The upstream failed: the exchange's failure path answers (a gRPC status `code` before the
        response head; after it, the client's stream is reset: never a silently truncated response)."""
        if self.over:
            return
        self.over = True
        self.code = code
        self.ex.failed(gateway_error(status, slug, SRC_UPSTREAM_CONNECT if kind in CONNECT_KINDS
                                     else SRC_UPSTREAM_RESPONSE, False, detail, kind))

    # -- from the upstream stream (fastgw.grpc_upstream) -----------------------------------------------
    def ack_request(self, long long n):
        """`n` bytes of the client's DATA went upstream: let the client send more."""
        cdef H2Conn conn = self.st.conn
        if n and not conn.closed:
            conn.h2.acknowledge_received_data(n, self.st.sid)
            self.st.kick()

    def on_headers(self, list headers, bint end):
        cdef H2Stream st = self.st
        cdef Exchange ex = self.ex
        cdef RouteRT route = ex.route
        cdef list out = []
        cdef bytes name, value
        cdef int status = 200
        if self.over:
            return
        remove = route.resp_remove
        for name, value in headers:
            if name == b":status":
                status = int(value)
                out.insert(0, (name, value))
            elif name in GRPC_HOP or (remove is not None and name in remove) or name[:1] == b":":
                continue
            else:
                if end and name == b"grpc-status":
                    self.note_status(value)
                out.append((name, value))
        if route.resp_add:
            _h2_lines(route.resp_add, out)
        if ex.resp_extra is not None:
            _h2_lines(ex.resp_extra, out)
        out.append((b"x-request-id", ex.rid))
        self.head_sent = True
        ex.resp_started = True
        ex.status = status
        st.send_head(out, end)
        if end:
            self.finish()

    def on_data(self, bytes data, long long n):
        if self.over:
            self.us.ack(n)
            return
        self.st.write_body(self.ex, data)
        if self.paused:
            self.up_owed += n
        elif n:
            self.us.ack(n)

    def on_trailers(self, list headers):
        cdef list out = []
        cdef bytes name, value
        if self.over:
            return
        for name, value in headers:
            if name[:1] != b":" and name not in GRPC_HOP:
                out.append((name, value))
                if name == b"grpc-status":
                    self.note_status(value)
        self.st.trailers = out
        self.st.write_end(self.ex)
        self.finish()

    def on_end(self):
        """END_STREAM on DATA, without trailers (not gRPC, but relayed as it is)."""
        if self.over:
            return
        self.st.write_end(self.ex)
        self.finish()

    def on_reset(self, int code):
        """The upstream reset the stream: reset the client's with the same code."""
        if self.over:
            return
        self.over = True
        cdef GatewayError err = gateway_error(502, "bad-gateway", SRC_UPSTREAM_RESPONSE, False, b"",
                                              _failures.STREAM_RESET)
        self.ex.err = err
        if not self.head_sent:
            self.st.w.upstream_error(self.ex, 502)
            self.ex.status = 502
        self.ex.name_failure(err)
        self.st.w.observe(self.ex)             # the access log records the reset call and why
        self.st.reset(code)

    def on_error(self, int status, str slug, bytes detail, int code, str kind=None):
        """The upstream connection failed (connect, TLS, lost, GOAWAY before this stream); `kind` and
        `detail` (its reason) as for Exchange.name_failure."""
        self.fail(status, slug, detail, code, kind)

    cdef void note_status(self, bytes value):
        if value.isdigit() and len(value) <= 3:
            self.ex.grpc_code = int(value) + 1

    cdef void finish(self):
        self.over = True
        self.ex.complete()
