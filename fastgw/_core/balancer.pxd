# Declarations of the upstream groups and targets (see balancer.pyx).

cdef class UpstreamGroup:
    cdef public str name
    cdef public list targets
    cdef public object ssl                 # ssl.SSLContext for TLS upstreams, else None
    cdef public str server_name            # SNI / verified name override (None: the target's host)
    cdef public Py_ssize_t rr
    cdef public double connect_timeout
    cdef public double timeout
    cdef public double idle_timeout
    cdef Target pick(self)

cdef class Target:
    cdef public str host
    cdef public int port
    cdef public int keepalive
    cdef public list idle
    cdef public UpstreamGroup group
    cdef public bytes hostport
    cdef public object h2pool              # upstream_h2.pyx H2Pool of an HTTP/2 upstream (protocol "h2" or "grpc")
