# cython: language_level=3
"""The per-process data plane: the Worker (client connections, coarse clock, timeout sweep, drain,
counting, request ids), with the modules whose types refer to one another included as one extension:

  stats.pyx         the per-worker counters (layout of observe/metrics.py)
  protocol.pyx      write batching, the TLS handshake protocol
  upstream.pyx      Upstream: how an exchange drives its route's upstream, whatever it speaks (upstream.pxd)
  upstream_h1.pyx   UpstreamConn: pooled HTTP/1.1 upstream connections reading responses; H1Upstream
  exchange.pyx      Exchange: one request and its response, the failure path, the policy API
  upstream_request.pyx  the request an upstream receives: upstream_head (HTTP/1.1), upstream_fields (HTTP/2)
  retry.pyx         the one retry decision (decide_retry) and the access log's attempts
  downstream.pyx    Downstream: what an exchange asks of its client side (downstream.pxd), the shared part
  h1engine.pyx      ClientConn: the client connection's protocol and its HTTP/1.1 session (a Downstream)
  h2engine.pyx      H2Conn: the downstream HTTP/2 engine
  h2stream.pyx      H2Stream: one HTTP/2 request stream, a Downstream
  h2call.pyx        H2Call: one exchange on an HTTP/2 upstream stream (upstream_h2.pyx), from either engine;
                    H2Upstream
  upstream_grpc.pyx GrpcCall: its gRPC kind (message limits, gRPC statuses for the gateway's errors)
  tunnel.pyx        Tunnel: the byte relay after an origin's 101 (WebSocket), its timers and close frames
  transcode.pyx     TranscodeCall: H2Call's HTTP/JSON -> gRPC kind (one JSON request, JSON or NDJSON answers)

Rules kept here (and why):
* Output produced while handling one read is written once, after the read (one syscall, not one per event).
* Backpressure both ways: a side whose peer's write buffer is over its high-water mark stops reading.
* Pipelined requests are served one at a time, in order; at most `max_pipelined` wait, beyond that the
  connection answers the queued ones and closes (a client may always retry an unanswered request).
* Timeouts are swept by the Worker every quarter second from a coarse clock: no timer per request.
* A failure before any response byte reached the client is retried by one decision (retry.pyx decide_retry:
  the upstream's retry.on, idempotency, attempts, budget, deadline), on another target when there is one.
* If the upstream fails after the response started, the client connection is closed: a truncated
  response is never presented as a complete one.
"""
import asyncio
import ssl

from fastgw import failures as _failures

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_SET_ITEM
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF

cdef extern from "Python.h":
    # The bytes macros on a borrowed pointer (a list's item): no reference counting around them.
    PyTypeObject PyBytes_Type
    Py_ssize_t PTR_BYTES_SIZE "PyBytes_GET_SIZE" (PyObject* o) noexcept
    char* PTR_BYTES_DATA "PyBytes_AS_STRING" (PyObject* o) noexcept
from libc.stdint cimport uint64_t
from libc.stdlib cimport abort
from libc.string cimport memchr, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastgw._core.http1 cimport (
    FIELD_DUPLICATE, RE_BODY, RE_END, RE_HEAD, RE_NEED, RE_SWITCH, ST_BODY, ST_DEAD, ST_HEAD, ST_IDLE, RequestHead,
    RequestReader, ResponseReader, take_field,
)
from fastgw._core.router cimport Router
from fastgw._core.wire cimport (
    A_ALIAS, A_CONN_SPECIFIC, A_CONNECTION, A_CONTENT_LENGTH, A_CREDENTIALS, A_FORWARD, A_FORWARDED_FOR,
    A_HOST, A_REQUEST_ID, A_TE, A_TRACEPARENT, A_TRACESTATE, A_TRANSFER_ENCODING, A_UNDERSCORE, CHARS,
    C_HOST, C_NAME, C_PATH, C_REQUEST_ID, HeaderTable, R_CONNECTION, R_CONTENT_LENGTH, R_HOP, R_KEEP,
    R_TRANSFER_ENCODING, bad_path, ieq, name_lengths, only, response_kind,
)
from fastgw._core.wire import CONNECTION_SPECIFIC
from fastgw._core.tracecontext cimport FLAG_SAMPLED, TP_LINE, trace_start, traceparent_bytes, tracestate_ok
from fastgw._core.balancer cimport Target, UpstreamGroup
from fastgw._core.gateway_error cimport (
    SRC_DOWNSTREAM, SRC_POLICY, SRC_STORE, SRC_UPSTREAM_CONNECT, SRC_UPSTREAM_RESPONSE, GatewayError, gateway_error,
)
from fastgw._core.runtime cimport H2Limits, Problem, RouteRT, Runtime, json_bytes
from fastgw._core cimport phases as _ph
from fastgw._core.phases cimport Respond
from fastgw._core.gates cimport Chain, Gate
from fastgw._core.runtime import H2Limits, Problem, RouteRT, Runtime, json_bytes

include "stats.pyx"
include "protocol.pyx"
include "upstream.pyx"
include "upstream_h1.pyx"
include "exchange.pyx"
include "upstream_request.pyx"
include "retry.pyx"
include "downstream.pyx"
include "h1engine.pyx"
include "h2engine.pyx"
include "h2stream.pyx"
include "h2call.pyx"
include "upstream_grpc.pyx"
include "tunnel.pyx"
include "transcode.pyx"

cdef const char* HEXDIGITS = b"0123456789abcdef"


def upstream_for(str protocol):
    """The upstream driver (upstream.pxd) of a route whose upstream speaks `protocol` ("http1", "h2",
    "grpc"): what compile.py sets as RouteRT.upstream."""
    if protocol == "grpc":
        return GRPC_UPSTREAM
    if protocol == "h2":
        return H2_UPSTREAM
    if protocol == "http1":
        return H1_UPSTREAM
    raise ValueError(f"unknown upstream protocol {protocol!r}")


cdef class Clock:
    pass


cdef class Worker:
    def __init__(self, Runtime rt, loop, bytes id_prefix):
        self.rt = rt
        self.loop = loop
        self.clock = Clock()
        self.conns = set()
        self.tunnels = set()
        self.id_prefix = id_prefix
        self.id_counter = 0
        self.parked = []

    def protocol(self, bint reserved=False):
        """The protocol factory of every listener, called as each connection is accepted. `reserved`:
        the connection was counted at accept already (admit(), by fastgw.worker.ProxiedTLS)."""
        cdef ClientConn c = ClientConn(self)
        if not reserved:
            self.admit()
        c.admitted = True
        # uvloop accepts everything queued in one go before the pause can act: connections past the cap
        # are held unread, as the kernel backlog would hold them, and served in order as room appears.
        c.parked = self.max_conns != 0 and self.nconns > self.max_conns
        return c

    cpdef admit(self):
        """Count one more client connection; at the cap, accepting pauses [HAProxy maxconn pauses
        its listeners; nginx worker_connections]."""
        self.nconns += 1
        self.check_full()

    cdef void check_full(self):
        if self.max_conns != 0 and not self.full and self.nconns >= self.max_conns:
            self.full = True
            self.count(M_CONN_FULL)
            if self.on_full is not None:
                self.loop.call_soon(self.on_full)   # not from inside uvloop's accept callback

    def tls_protocol(self, bint reserved=False):
        """The protocol factory of TLS listeners: a Handshake, which becomes a ClientConn once the
        handshake completes."""
        cdef Handshake h = Handshake.__new__(Handshake)
        if not reserved:
            self.admit()
        h.w = self
        h.parked = self.max_conns != 0 and self.nconns > self.max_conns
        return h

    cpdef release(self):
        """One client connection is gone (or was never handed over)."""
        self.nconns -= 1
        self.make_room()

    cdef void make_room(self):
        cdef ClientConn c
        while self.parked and (self.max_conns == 0 or self.nconns - len(self.parked) < self.max_conns):
            c = <ClientConn>self.parked.pop(0)
            c.unpark()
        if self.full and not self.parked and (self.max_conns == 0 or self.nconns < self.max_conns):
            self.full = False
            if self.on_room is not None:
                self.on_room()

    cdef void count(self, Py_ssize_t word):
        """Increment a per-worker counter of the metrics header (M_OVERRUNS, M_CONN_FULL)."""
        if self.mbuf != NULL:
            self.mbuf[word] += 1

    cdef bytes next_id(self):
        """id_prefix + the request counter as 12 hex digits (snprintf cost ~900 instructions)."""
        cdef char buf[64]
        cdef Py_ssize_t plen = len(self.id_prefix)
        cdef unsigned long long v
        cdef int i
        self.id_counter += 1
        v = self.id_counter
        if plen > 40:
            plen = 40
        memcpy(buf, <char*>self.id_prefix, plen)
        for i in range(11, -1, -1):
            buf[plen + i] = HEXDIGITS[v & 15]
            v >>= 4
        return PyBytes_FromStringAndSize(buf, plen + 12)

    def sweep(self, double now, bytes date):
        """Advance the coarse clock and enforce every connection's timeouts."""
        cdef ClientConn c
        self.clock.now = now
        self.clock.date = date
        for c in list(self.conns):
            c.check(now)
        if self.tunnels:
            for t in list(self.tunnels):
                (<Tunnel>t).check(now)
        # The cap may have changed on reload, and connections freed without connection_lost.
        if self.full:
            self.make_room()
        else:
            self.check_full()

    def drain(self, double fresh_idle=-1.0):
        """Stop keep-alive: idle connections close now, busy ones after their response.

        A connection that has not sent its first request yet is only closed once it has been silent for
        `fresh_idle` seconds (never if negative): while the listeners still accept, such a connection was
        just opened by a client whose request is on its way, and closing it would fail that request.
        """
        cdef ClientConn c
        self.draining = True
        for c in list(self.conns):
            c.draining = True
            if c.h2 is not None:
                c.h2.drain()                  # GOAWAY; in-flight streams finish, then it closes
                continue
            if c.active is None and c.reader._state == ST_IDLE and (
                    c.nreq > 0 or (fresh_idle >= 0 and self.clock.now - c.head_start > fresh_idle)):
                c.close()

    def drain_tunnels(self, double window):
        """SIGTERM: each open tunnel gets its close (1012 "service restart") at its own instant, spread
        evenly over `window` seconds from now (jittered), so their clients do not all reconnect at once
        [block/buzz#2575: without a close frame clients only learn of a restart from a reset]."""
        tunnel_spread(self, window)

    @property
    def open_tunnels(self):
        return len(self.tunnels)

    # -- metrics and access log (layout: fastgw/metrics.py) -------------------------------------------
    def attach_metrics(self, buf, Py_ssize_t routes):
        """Count into `buf` (a writable buffer: this worker's region of the shared metrics memory)."""
        cdef unsigned char[::1] view = buf
        if view.shape[0] < (M_HEADER + routes * M_ROUTE) * 8:
            raise ValueError("metrics buffer too small")
        self.mkeep = view
        self.mroutes = routes
        self.mbuf = <uint64_t*>&view[0]

    cdef void observe(self, Exchange ex):
        """One finished response: plain increments into this worker's own region (no lock: one writer;
        the supervisor reads aligned 64-bit words), a tuple for the access log when it is on, and the
        span's fields when it is exported (export_span).

        The duration splits at ex.tu0, when the request passed the gateway's part (routing, policies,
        Redis, waiting for its turn) and the upstream's began (connecting or a pooled connection, the
        request and its streamed body, the response until its last byte): "is it us or them?"."""
        cdef uint64_t* m = self.mbuf
        cdef Runtime rt = ex.rt
        cdef Target t
        cdef long long dur, up = -1, now
        cdef int cls
        cdef Py_ssize_t slot = 0
        cdef int b = 0
        if m == NULL and self.access_log is None and not rt.trace_export:
            return
        now = mono_ns()
        dur = now - ex.t0
        if ex.tu0 != 0:
            up = now - ex.tu0
        if ex.route is not None:
            slot = ex.route.mslot
        if m != NULL:
            if slot < 0 or slot >= self.mroutes:
                slot = 0
            m = m + M_HEADER + slot * M_ROUTE
            cls = ex.status // 100 - 1
            if cls < 0 or cls > 4:
                cls = 4
            m[method_index(ex.head.method if ex.head is not None else None) * 5 + cls] += 1
            while b < M_NBOUNDS and dur > HIST_NS[b]:
                b += 1
            m[M_HIST + b] += 1
            m[M_SUM_US] += <uint64_t>(dur // 1000)
            count_time(m + M_GW_HIST, dur - up if up >= 0 else dur)
            if up >= 0:
                count_time(m + M_UP_HIST, up)
        if self.access_log is not None:         # (fields: fastgw/_core/accesslog.pyx format_lines)
            t = ex.target
            self.access_log.append((ex.t0 + dur, dur, ex.status, ex.head, ex.client.peer, ex.client.tcp_peer,
                                    ex.rid, ex.route.name if ex.route is not None else None,
                                    t.group.name if t is not None else None, t.hostport if t is not None else None,
                                    ex.err.kind if ex.err is not None else None,
                                    ex.grpc_code - 1 if ex.grpc_code else None, ex.err, ex.retried_err,
                                    ex.traceparent_line(), up,
                                    attempt_log(ex) if ex.attempts is not None else None))
        if rt.trace_export and self.spans is not None and (
                ex.tc.flags & FLAG_SAMPLED or (rt.trace_errors and (ex.status >= 500 or dur >= rt.trace_slow_ns))):
            self.export_span(ex, now, dur, up)

    cdef void export_span(self, Exchange ex, long long now, long long dur, long long up):
        """The finished span's fields into the bounded export buffer (a deque the exporter thread empties,
        fastgw/observe/tracing.py): when it is full the oldest span goes, counted."""
        cdef Target t = ex.target
        cdef RequestHead h = ex.head
        if len(self.spans) >= self.spans.maxlen and self.mbuf != NULL:
            self.mbuf[M_SPANS_DROPPED] += 1
        self.spans.append((now, dur, up, ex.tc.hi, ex.tc.lo, ex.tc.span, ex.tc.parent, ex.tc.flags, ex.status,
                           h, ex.client.proto, isinstance(ex.client, H2Stream), ex.client.peer, ex.rid,
                           ex.route.name if ex.route is not None else None,
                           t.group.name if t is not None else None, t.hostport if t is not None else None,
                           ex.retried_err is not None, ex.err, ex.identity,
                           ex.grpc_code - 1 if ex.grpc_code else None))

    cdef void headers_dropped(self, Exchange ex):
        """Header fields the wire table dropped for their "_" (RequestHead.dropped, fastgw/headers.py):
        counted by reason (fastgw_headers_dropped_total), and one debug log line per request."""
        cdef tuple d
        if self.mbuf != NULL:
            for d in ex.head.dropped:
                self.mbuf[HDROP_ALIAS if <int>d[0] == A_ALIAS else HDROP_UNDERSCORE] += 1
        if self.debug_log is not None:
            self.debug_log(ex.rid, ex.client.peer,
                           [(HEADER_DROPS[HDROP_ALIAS - H_HDROP if <int>d[0] == A_ALIAS
                                          else HDROP_UNDERSCORE - H_HDROP], d[1]) for d in ex.head.dropped])

    cdef void upstream_error(self, Exchange ex, int status):
        cdef uint64_t* m = self.mbuf
        cdef Py_ssize_t slot = 0
        if m == NULL:
            return
        if ex.route is not None and 0 <= ex.route.mslot < self.mroutes:
            slot = ex.route.mslot
        m[M_HEADER + slot * M_ROUTE + M_UPERR + (0 if status == 502 else 1 if status == 503 else 2)] += 1
