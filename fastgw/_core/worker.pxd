# Declarations of the data plane extension (see worker.pyx): the files it includes declare their types in
# their own .pxd, included here in dependency order.

cimport cython
from libc.stdint cimport uint64_t

from fastgw._core.runtime cimport Runtime

cdef class UpstreamConn
cdef class Upstream
cdef class Exchange
cdef class Downstream
cdef class ClientConn
cdef class Worker
cdef class H2Conn
cdef class H2Stream
cdef class Tunnel

include "stats.pxd"
include "protocol.pxd"
include "upstream.pxd"
include "upstream_h1.pxd"
include "h2call.pxd"
include "exchange.pxd"
include "downstream.pxd"
include "h1engine.pxd"
include "upstream_grpc.pxd"
include "h2engine.pxd"
include "h2stream.pxd"
include "tunnel.pxd"
include "transcode.pxd"


cdef class Clock:
    cdef public double now
    cdef public bytes date

cdef class Worker:
    cdef public Runtime rt
    cdef public object loop
    cdef public Clock clock
    cdef public set conns
    cdef public set tunnels               # open Tunnels (tunnel.pyx); their clients are out of `conns`
    cdef bytes id_prefix
    cdef unsigned long long id_counter
    cdef public bint draining             # new connections answer with Connection: close
    cdef public object access_log         # list of per-request tuples, or None (see observe)
    cdef public object debug_log          # None, or f(request_id, peer, dropped) at log level "debug"
    cdef uint64_t* mbuf                   # this worker's metrics region (fastgw.metrics layout), or NULL
    cdef Py_ssize_t mroutes               # route slots in the region
    cdef object mkeep                     # keeps the buffer behind mbuf alive
    # Connection cap (server.limits.max_connections; fastgw/process/listeners.py pauses and resumes accepting)
    cdef public Py_ssize_t max_conns      # 0: no cap
    cdef public Py_ssize_t nconns         # client connections accepted and not yet gone (TLS handshakes too)
    cdef public bint full                 # accepting is paused
    cdef public object on_full            # called soon after the cap is reached: pause the listeners
    cdef public object on_room            # called when a connection may be accepted again
    cdef public list parked               # accepted beyond the cap in one accept batch, not read yet
    cpdef admit(self)
    cdef void check_full(self)
    cpdef release(self)
    cdef void make_room(self)
    cdef void count(self, Py_ssize_t word)
    cdef bytes next_id(self)
    cdef void observe(self, Exchange ex)
    cdef void headers_dropped(self, Exchange ex)
    cdef void upstream_error(self, Exchange ex, int status)
