# gRPC passthrough (included by worker.pyx).
#
#   GrpcCall   the gRPC kind of H2Call (h2call.pyx): one downstream HTTP/2 stream on a grpc route, joined
#              to one upstream HTTP/2 stream (upstream_h2.pyx)
#
# The downstream stream is an H2Stream: routing and the route's policies ran on it as on any request.
# The exchange opens the call (h2_start) instead of an HTTP/1.1 upstream request. From then on (the
# flow-control rules are H2Call's):
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
    cdef H2Call call = st.call
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


cdef class GrpcCall(H2Call):
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

    # -- from the upstream stream (the H2Sink interface, upstream_h2.pxd) --------------------------------
    cdef void on_reset(self, int code):
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

    cdef void note_status(self, bytes value):
        if value.isdigit() and len(value) <= 3:
            self.ex.grpc_code = int(value) + 1

