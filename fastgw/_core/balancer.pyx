# cython: language_level=3
"""Which upstream target a request goes to.

  UpstreamGroup  one [upstreams.NAME]: its targets, TLS settings and timeouts; pick() chooses the target
                 (round-robin), called once per request where the upstream head is built (exchange.pyx)
  Target         one upstream address, with the list of its idle keep-alive connections (the pool's rules,
                 LIFO and bounded by `keepalive`, are upstream_h1.pyx's pool_take/pool_give)
"""


cdef class UpstreamGroup:
    cdef Target pick(self):
        cdef Py_ssize_t n = len(self.targets)
        cdef Target t
        if n == 1:
            return <Target>self.targets[0]
        self.rr += 1
        t = <Target>self.targets[self.rr % n]
        return t


cdef class Target:
    def __init__(self, str host, int port, int keepalive, UpstreamGroup group):
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.idle = []
        self.group = group
        self.hostport = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()

    def close_idle(self):
        """Close every idle pooled connection (a reload that drops this target)."""
        for c in self.idle:
            c.discard()
        self.idle.clear()
