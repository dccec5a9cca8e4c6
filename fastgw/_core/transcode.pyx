# HTTP/JSON -> gRPC (included by worker.pyx): the kind of H2Call (h2call.pyx) a route with `transcode` opens
# once its policies chose the method (fastgw/policies/transcode: Exchange.transcode).
#
# Rules kept here (and why):
# * One JSON request is one message: the body is held (up to the route's max_body) and transcoded when it
#   ends; a body that does not transcode is a 400 and nothing reaches the upstream past its HEADERS (the
#   stream is reset).
# * The upstream request is the method's: POST to /package.Service/Method, content-type application/grpc,
#   te: trailers, grpc-timeout from the upstream's `timeout`; the client's framing and content fields do not
#   apply; the gateway's fields (X-Forwarded-*, X-Request-ID, trace context, the policies') are kept.
# * A unary answer is sent once the trailers say how the call ended, so an error is never a 200 (the gRPC
#   status mapped to HTTP, problem+json with grpc-message). A server-streaming method streams NDJSON, one
#   line per message as it arrives (Server-Sent Events when the client accepts text/event-stream); an error
#   after the first message is the last line (an `error` event), and the response ends.
# * Response messages are bounded (MAX_GRPC_RESPONSE: a larger one is a 502, never a truncated answer);
#   compressed messages are refused (no grpc-accept-encoding is sent).

from urllib.parse import unquote_to_bytes as _unquote_to_bytes

cdef frozenset TRANSCODE_DROP = frozenset((b":method", b":path", b"content-length", b"content-type", b"accept",
                                           b"accept-encoding", b"te", b"grpc-timeout"))


cdef bytes _pct_decode(bytes msg):
    """grpc-message is percent-encoded (gRPC over HTTP/2 spec)."""
    return _unquote_to_bytes(msg) if b"%" in msg else msg


cdef H2Call transcode_call(Exchange ex, list fields):
    cdef TranscodeCall call = TranscodeCall.__new__(TranscodeCall)
    tc = ex.transcode
    call.tc = tc
    call.body = []
    call.rbuf = bytearray()
    kept = [(n, v) for n, v in fields[4:] if n not in TRANSCODE_DROP]
    fields[:] = [(b":method", b"POST"), fields[1], fields[2], (b":path", tc.path),
                 (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"grpc-timeout", tc.timeout)] + kept
    return call


cdef class TranscodeCall(H2Call):
    cdef void request_data(self, bytes data, long long n):
        cdef Exchange ex = self.ex
        if self.over:
            self.ack_request(n)
            return
        if self.st is not None:
            ex.body_bytes += len(data)
            self.ack_request(n)                  # held here, bounded by max_body
            if ex.body_bytes > ex.route.max_body:
                self.too_large()
                return
        self.body.append(data)

    cdef void request_end(self):
        if self.over or self.body is None:       # (an HTTP/1.1 request may be ended twice: h2_start, the reader)
            return
        try:
            msg = self.tc.request(b"".join(self.body))
        except ValueError as exc:                 # the codec's BadRequest: the client's 400
            self.over = True
            self.us.cancel()
            self.ex.failed(gateway_error(400, "bad-request", SRC_DOWNSTREAM, False,
                                         str(exc).encode("utf-8", "replace")[:512], None))
            return
        except Exception as exc:                  # a bug of the codec: 500, the worker goes on
            _report_policy_error(self.ex.route.name, exc)
            self.over = True
            self.us.cancel()
            self.ex.policy_failed()
            return
        self.body = None
        self.us.send(msg, 0)
        self.us.end()

    cdef void ack_request(self, long long n):
        if self.st is not None:
            H2Call.ack_request(self, n)

    cdef int read_status(self, list headers):
        """grpc-status in `headers` (-1: none; not a number: UNKNOWN), keeping grpc-message and
        grpc-status-details-bin."""
        cdef int code = -1
        for name, value in headers:
            if name == b"grpc-status":
                code = int(value) if value.isdigit() else 2
            elif name == b"grpc-message":
                self.message_text = value
            elif name == b"grpc-status-details-bin":
                self.details = value
        return code

    cdef void on_headers(self, list headers, bint end):
        cdef int status = 200, code
        if self.over:
            return
        for name, value in headers:
            if name == b":status":
                status = int(value)
        code = self.read_status(headers)
        if status != 200:
            self.us.cancel()
            self.fail(502, "bad-gateway", b"the gRPC upstream answered HTTP %d" % status, 14,
                      _failures.INVALID_RESPONSE)
            return
        self.head_sent = True                     # (the upstream's timeout is now its grpc-timeout)
        if end:
            self.grpc_end(code)

    cdef void on_data(self, bytes data, long long n):
        cdef Py_ssize_t ln
        if self.over:
            self.us.ack(n)
            return
        self.rbuf += data
        if self.paused:
            self.up_owed += n
        elif n:
            self.us.ack(n)
        while len(self.rbuf) >= 5 and not self.over:
            if self.rbuf[0] != 0:
                self.us.cancel()
                self.fail(502, "bad-gateway", b"a compressed gRPC message", 14, _failures.INVALID_RESPONSE)
                return
            ln = int.from_bytes(self.rbuf[1:5], "big")
            if ln > MAX_GRPC_RESPONSE:
                self.us.cancel()
                self.fail(502, "bad-gateway", b"a gRPC response message over 4 MiB", 14, _failures.INVALID_RESPONSE)
                return
            if len(self.rbuf) < 5 + ln:
                return
            payload = bytes(self.rbuf[5:5 + ln])
            del self.rbuf[:5 + ln]
            self.message(payload)

    cdef void message(self, bytes payload):
        cdef Exchange ex = self.ex
        if not self.tc.streaming:
            if self.unary is not None:
                self.us.cancel()
                self.fail(502, "bad-gateway", b"more than one message from a unary method", 14,
                          _failures.INVALID_RESPONSE)
                return
            self.unary = payload
            return
        try:
            line = self.tc.item(payload)
        except Exception:
            self.us.cancel()
            self.fail(502, "bad-gateway", b"an undecodable response message", 14, _failures.INVALID_RESPONSE)
            return
        if not self.streamed:
            self.streamed = True
            ex.resp_started = True
            ex.status = 200
            ex.resp_nobody = ex.head.method == b"HEAD"
            self.cl.write_fields(ex, 200, [(b"content-type", self.tc.ctype), (b"cache-control", b"no-store"),
                                           (b"x-request-id", ex.rid)], False)
        self.cl.write_body(ex, line)

    cdef void on_trailers(self, list headers):
        if not self.over:
            self.grpc_end(self.read_status(headers))

    cdef void on_end(self):
        if not self.over:
            self.grpc_end(-1)

    cdef void grpc_end(self, int code):
        """The call ended with gRPC status `code` (-1: none came, which is the upstream's fault)."""
        cdef Exchange ex = self.ex
        cdef bytes msg = _pct_decode(self.message_text or b"")
        if code < 0:
            self.fail(502, "bad-gateway", b"the gRPC upstream sent no grpc-status", 14, _failures.INVALID_RESPONSE)
            return
        ex.grpc_code = code + 1
        if self.streamed:
            if code != 0:
                self.cl.write_body(ex, self.tc.last_error(code, msg, self.details, ex.head.path, ex.rid))
            self.cl.write_end(ex)
            self.finish()
            return
        if code != 0:
            status, body = self.tc.problem(code, msg, self.details, ex.head.path, ex.rid)
            self.respond(status, b"application/problem+json", body)
        elif self.tc.streaming:
            self.respond(200, self.tc.ctype, b"")
        elif self.unary is None:
            self.fail(502, "bad-gateway", b"no message from a unary method", 14, _failures.INVALID_RESPONSE)
        else:
            try:
                body = self.tc.response(self.unary)
            except Exception:
                self.fail(502, "bad-gateway", b"an undecodable response message", 14, _failures.INVALID_RESPONSE)
                return
            self.respond(200, b"application/json", body)

    cdef void respond(self, int status, bytes ctype, bytes body):
        """The whole answer, through the route's on_response phase as a policy's answer would go."""
        self.over = True
        headers = [(b"Content-Type", ctype)]
        if status >= 400:
            headers.append((b"Cache-Control", b"no-store"))
        self.ex.answer(Respond(status, headers, body))
