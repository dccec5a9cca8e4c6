# Declarations of the compiled configuration (see runtime.pyx).

from libc.stdint cimport uint64_t

from fastgw._core.balancer cimport UpstreamGroup
from fastgw._core.wire cimport HeaderTable


cpdef bytes json_bytes(bytes raw)


cdef class Problem:
    cdef public int status
    cdef public bytes head        # status line + Content-Type
    cdef public bytes body_a      # '{"type":..,"title":..,"status":N,"detail":"'
    cdef public bytes detail      # default detail, JSON-escaped
    cdef public bytes body_b      # '","instance":"'
    cdef public bytes body_c      # '","request_id":"'
    cdef public bytes body_d      # '"' (then the extension members, if any, and '}')
    cdef public bytes extra       # extra constant headers (e.g. Allow is per request; this is for Retry-After)
    cpdef bytes render(self, bytes instance, bytes rid, bytes date, bytes detail=*, bytes extra=*, bint close=*, bytes members=*)
    cdef bytes body(self, bytes instance, bytes rid, bytes detail, bytes members)

cdef class RouteRT:
    cdef public str name
    cdef public UpstreamGroup group
    cdef public long long max_body
    cdef public Py_ssize_t strip          # leading path bytes removed before forwarding (strip_prefix)
    cdef public bytes req_add             # b"Name: value\r\n..." added to the upstream request
    cdef object _req_remove               # frozenset of lowercase names, or None (set as req_remove)
    cdef uint64_t req_remove_lengths      # name_lengths(_req_remove)
    cdef tuple req_remove_names           # _req_remove as a tuple (filter_headers compares in C), or None
    cdef public bytes resp_add
    cdef public bytes err_add             # the resp_add lines that also go on the gateway's errors (fastgw/headers.py)
    cdef public object resp_remove
    cdef public int mslot                 # metrics slot (fastgw.metrics); 0 = no route
    cdef public object gate               # None, or the route's on_request phase (its policies' chain): see
                                          #   Exchange "policy interface"
    # The other phases: tuples of the route's policies' methods, None when no policy implements one
    # (fastgw/policies/chain.py install_phases). With on_response, the route's response_headers.add lines
    # are in phase_resp_add (the policies see them) and resp_add is empty.
    cdef public tuple on_upstream_request
    cdef public tuple on_response
    cdef public tuple on_response_body    # called (ex, chunk, end) per response body chunk and at its end
    cdef public tuple on_log
    cdef public tuple line_gates          # Gates whose response_lines go on every answer (CORS, lifecycle), or None
    cdef public bytes phase_resp_add
    cdef public bint grpc                 # protocol = "grpc": HTTP/2 upstream streams (upstream_grpc.pyx)
    cdef public bint h2up                 # an HTTP/2 upstream (protocol "h2" or "grpc"): h2call.pyx
    cdef public double deadline           # seconds from the request head its retries must fit in (timeout)
    cdef public double try_timeout        # one try's response timeout: per_try_timeout within deadline
    cdef public object upstream           # the upstream driver (worker.upstream_for): how the exchange
                                          #   drives the route's upstream; None: HTTP/1.1

cdef class Runtime:
    cdef public object router
    cdef public dict problems
    cdef public HeaderTable headers       # the request readers' wire table (fastgw/_core/wire.pyx)
    cdef public long long max_body
    cdef public double header_timeout
    cdef public double idle_timeout
    cdef public double body_timeout
    cdef public double min_body_rate      # bytes/s a request body must keep up (0: off); see body_slow
    cdef public double send_timeout       # see ClientConn.check
    cdef public int max_requests
    cdef public int max_pipelined
    cdef public Py_ssize_t max_line
    cdef public Py_ssize_t max_hbytes
    cdef public Py_ssize_t max_headers
    cdef public str version
    cdef public object h2                 # H2Limits ([server.http2]), or None for the defaults
    # The phases of answers made before a route is chosen (400, 404, 405, 408, 431...): None, or tuples
    # of policy methods, as RouteRT's.
    cdef public tuple unrouted_response
    cdef public tuple unrouted_log
    cdef public frozenset tunnel_routes   # names of the routes whose policies open tunnels (WebSocket): a
                                          #   live tunnel whose route is not in a reloaded Runtime closes
    # Trace context and span export ([tracing]; fastgw/_core/tracecontext.pyx, fastgw/observe/tracing.py)
    cdef public bint trace_trust          # incoming = "trust": the caller's sampled flag is followed
    cdef public uint64_t trace_threshold  # head sampling: sample_ratio * 2**64 (0: nothing is sampled)
    cdef public bint trace_export         # an otlp_endpoint is configured: finished spans are buffered
    cdef public bint trace_errors         # export_errors: every 5xx and slow response is exported too
    cdef public long long trace_slow_ns   # `slow`, in ns

cdef class H2Limits:
    cdef public int max_streams
    cdef public int stream_window
    cdef public int conn_window
    cdef public double stall_timeout
