# Declarations of the exchange (see exchange.pyx; included by worker.pxd).

from fastgw._core.balancer cimport B_LEAST_REQUEST, OV_REQUESTS, REASON_STATUS, Target
from fastgw._core.gateway_error cimport (
    RC_502, RC_CONNECT, RC_NONE, RC_REFUSED, RC_RESPONSE, RC_SEND, RC_TIMEOUT, GatewayError,
)
from fastgw._core.gates cimport PolicyExchange
from fastgw._core.http1 cimport RequestHead
from fastgw._core.phases cimport Respond
from fastgw._core.runtime cimport RouteRT, Runtime
from fastgw._core.tracecontext cimport TraceCtx

cdef enum:
    PENDING_LIMIT = 262144    # request body bytes held while the upstream connection is not ready


@cython.final
cdef class Exchange(PolicyExchange):
    # (from PolicyExchange, gates.pxd: head, up_extra, resp_extra, resp_view, viewed, identity)
    cdef Downstream client                # the client side (downstream.pxd): an HTTP/1.1 connection or an HTTP/2 stream
    cdef Runtime rt
    cdef RouteRT route
    cdef bytes rid
    cdef bytes up_head
    cdef list pending                     # body bytes held (hold), None until some are
    cdef Py_ssize_t pending_bytes
    cdef list out                         # request bytes batched for the upstream (to_upstream), or None
    cdef UpstreamConn up
    cdef Upstream drv                     # the route's upstream driver (upstream.pxd), once routed
    cdef H2Call call                      # the HTTP/2 upstream stream's call (h2call.pyx), or None
    cdef Target target
    cdef object connect_task
    cdef double connect_deadline
    cdef double up_last
    cdef long long body_bytes
    cdef long long resp_bytes             # response body bytes from the upstream written to the client (metering)
    cdef long long body_seen              # body_bytes at the last minimum-rate check (Downstream.body_slow)
    cdef double body_allow                # seconds the body may still take at the minimum rate
    cdef double body_tick                 # when body_allow was last updated (0: not yet)
    cdef bytes resp_trailers              # an HTTP/1.1 client's trailer section (lines), or None
    cdef double try_timeout               # this try's response timeout (RouteRT.try_timeout, less on a retry)
    cdef list replay                      # the body bytes sent on this try, kept to send again (or None)
    cdef list attempts                    # "target outcome" of each try that failed and was retried, or None
    cdef object retry_handle              # the backoff's timer, or None
    cdef GatewayError err                 # the failure that ended this exchange (or, queued, will), or None
    cdef GatewayError retried_err         # the failure the exchange was retried after, or None
    cdef bytes err_extra                  # header lines for the problem response (Allow, a policy's)
    cdef object params                    # the route's {param} captures (dict) or None
    cdef list after                       # callables run once when the exchange completes
    cdef object gate_task
    cdef public object ctx                # per-request policy state: None unless a policy sets it
    cdef public list states               # each policy's own state (gates.pyx Gate.state), by its slot in
                                          #   the route's policies: None until one keeps some
    cdef list resp_blocks                 # while on_response runs: the header blocks the response came with
    cdef object body_waiter               # read_body's future while a policy waits for the whole body, or None
    cdef long long body_limit             # ...and the most it may hold (more: the future gives None)
    cdef long long t0                    # monotonic ns at the request head (metrics)
    cdef long long tu0                   # monotonic ns when the upstream's part began (0: never): proceed
    cdef bytes tp                        # tc as the HTTP/1.1 traceparent line, made on first use (traceparent_line)
    cdef public object tunnel            # a policy's tunnel session (WebSocket): the origin's 101 opens a
                                         #   Tunnel (tunnel.pyx); None on every other request
    cdef public object transcode         # a policy's transcoding call (HTTP/JSON -> gRPC): h2_start opens a
                                         #   TranscodeCall (transcode.pyx); None on every other request
    cdef TraceCtx tc                     # the request's trace (tracecontext.pyx), started in new_exchange
    # (4-byte fields last, together: no padding between them and the 8-byte ones)
    cdef bint body_done
    cdef bint has_body
    cdef bint sent
    cdef bint resp_started
    cdef bint resp_chunked
    cdef bint resp_nobody
    cdef bint done
    cdef bint retried
    cdef bint counted                     # the target counts this request in flight (least_request)
    cdef bint close_after
    cdef bint admitted                    # counted in its upstream's requests in flight (limits.max_requests)
    cdef bint retrying                    # holds one of its upstream's retry-budget slots
    cdef int tries                        # retries made (retry.attempts bounds them)
    cdef bint resent                      # retried once after a stale pooled connection (reset-before-send)
    cdef public bint retry_safe           # a policy validated the request's Idempotency-Key: a non-idempotent
                                          #   request may be retried like an idempotent one
    cdef bint phased                      # on_response ran: an answer made from here on skips it
    cdef int status                      # response status sent to the client (metrics)
    cdef int grpc_code                   # grpc-status + 1 of a call on a grpc route (0: none); access log
    cdef void request_data(self, bytes data)
    cdef void request_end(self)
    cdef void hold(self, bytes data)
    cdef void to_upstream(self, bytes data)
    cdef void flush_upstream(self)
    cdef void acquire(self, bint fresh)
    cdef void connected(self, UpstreamConn c)
    cdef void connect_failed(self, int status, str slug, bytes detail, str kind=*)
    cdef void name_failure(self, GatewayError err)
    cdef bytes failure_members(self)
    cdef void attach(self, UpstreamConn c)
    cdef void release_upstream(self, bint reusable)
    cdef void upstream_failed(self, int status, str slug, bytes detail, str kind=*)
    cdef void failed(self, GatewayError err)
    cdef void overloaded(self, int which)
    cdef void release_slots(self)
    cdef void resp_head(self, UpstreamConn c, int status)
    cdef void switch(self, UpstreamConn c, bytes tail)
    cdef void resp_body(self, bytes data)
    cdef void resp_end(self, bint reusable)
    cdef void body_tap(self, bytes data, bint end)
    cdef void complete(self)
    cdef void drop(self)
    cdef void run_after(self)
    cdef void respond_problem(self, GatewayError err)
    cdef void run(self)
    cdef void proceed(self)
    cdef void reject(self, tuple res)
    cdef void gate_done(self, object res)
    cdef list edit_view(self)
    cdef bint upstream_request_phase(self)
    cdef object response_phase(self, tuple fns, list blocks, int status)
    cdef bytes phase_lines(self)
    cdef bint upstream_response(self, UpstreamConn c, int status)
    cdef void answer(self, Respond r)
    cdef void send_answer(self, int status, bytes lines, bytes body)
    cdef void policy_failed(self)
    cdef void settle(self, int status)
    cdef bytes traceparent_line(self)
    cdef bytes traceparent(self)
    cdef void body_ready(self)
    cdef bytes held_body(self)
