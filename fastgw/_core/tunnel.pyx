# The tunnel after an Upgrade (included by worker.pyx): once an origin answers 101 to a request a policy
# made a tunnel request (fastgw/policies/websocket), the client's and the origin's connections relay bytes
# both ways until either side ends.
#
# Rules kept here (and why):
# * Bytes go as received: each read is written to the other side whole (no copy beyond the transport's).
# * Backpressure both ways: a side whose write buffer passes TUNNEL_WRITE_HIGH stops the other side's
#   reading until it drains (a client that stops reading costs at most that buffer, not the origin's
#   stream).
# * The frames are followed, not parsed: only their headers are read, so that the gateway's own frames (a
#   close, a ping) go between two frames, never inside one (RFC 6455 5.4: control frames may be injected
#   between fragments of a message, not into a frame).
# * The gateway ends a tunnel with close frames to both sides (RFC 6455 7.4.1 codes): 1001 when it is idle
#   or its route was removed by a reload (after the route's grace), 1008 when the credential it was opened
#   with expires (a token checked once at the handshake must not outlive its `exp`), 1012 on SIGTERM
#   (spread over the drain window). A close frame waits at most CLOSE_WAIT for the frame in flight, then
#   both connections are cut.
# * A reload never touches a live tunnel: it keeps its session; only a removed route closes it.

import os as _os
import random as _random
import time as _time


cdef bytes close_frame(int code, bytes reason, bint masked):
    """A close frame (RFC 6455 5.5.1) with `code` and `reason`: masked towards the origin (the gateway is
    its client), unmasked towards the client (the gateway is its server)."""
    cdef bytes payload = bytes(((code >> 8) & 255, code & 255)) + reason[:123]
    cdef Py_ssize_t i, n = len(payload)
    if not masked:
        return bytes((0x88, n)) + payload
    key = _os.urandom(4)
    return bytes((0x88, 0x80 | n)) + key + bytes([payload[i] ^ key[i & 3] for i in range(n)])


cdef bytes PING = b"\x89\x00"        # a ping without payload, to the client (the gateway is its server)


cdef class TunnelEnd:
    # -- asyncio protocol (set on the connection's transport at the switch) -----------------------------
    def data_received(self, bytes data):
        cdef Tunnel t = self.t
        cdef Py_ssize_t n = len(data), k
        t.last = t.w.clock.now
        self.nbytes += n
        if self.peer.gone:
            return
        if self.inject is None:
            if t.closing != 0:
                return                        # this side's close frame went: what follows is dropped
            self.advance(data, n, False)
            self.peer.transport.write(data)
            return
        k = self.advance(data, n, True)
        if k < 0:
            self.peer.transport.write(data)   # still inside the frame in flight
            return
        if k > 0:
            self.peer.transport.write(data[:k])
        self.write_inject()

    def eof_received(self):
        return False                          # the tunnel ends with either side (connection_lost)

    def connection_lost(self, exc):
        self.gone = True
        self.t.end_lost(self)

    def pause_writing(self):
        if not self.peer.gone:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if not self.peer.gone:
            self.peer.transport.resume_reading()

    cdef void write_inject(self):
        """The close frame queued for the peer goes now (at a frame boundary), then the peer's connection
        is closed once its buffer is written."""
        frame = self.inject
        self.inject = None
        if not self.peer.gone:
            self.peer.transport.write(frame)
            self.peer.transport.close()

    cdef Py_ssize_t advance(self, const unsigned char* p, Py_ssize_t n, bint stop):
        """Follow the frames over p[:n]. `stop`: return the offset of the first frame boundary in it (0
        when at one already), or -1 if there is none; otherwise n. The status code of a close frame is
        noted for the metrics (the first one seen either way)."""
        cdef Py_ssize_t i = 0, take
        cdef int l7, want, k
        cdef long long ln
        cdef unsigned char b
        if stop and self.hn == 0 and self.need == 0:
            return 0
        while i < n:
            if self.need > 0:
                while self.op == 8 and self.cpos < 2 and self.need > 0 and i < n:
                    b = p[i]
                    if self.mask_at >= 0:
                        b ^= self.hb[self.mask_at + ((self.plen - self.need) & 3)]
                    self.cval = (self.cval << 8) | b
                    self.cpos += 1
                    i += 1
                    self.need -= 1
                    if self.cpos == 2 and self.t.code == 0:
                        self.t.code = self.cval
                take = n - i
                if take > self.need:
                    take = <Py_ssize_t>self.need
                i += take
                self.need -= take
                if self.need == 0 and stop:
                    return i
                continue
            self.hb[self.hn] = p[i]
            self.hn += 1
            i += 1
            if self.hn < 2:
                continue
            l7 = self.hb[1] & 127
            want = 2 + (2 if l7 == 126 else 8 if l7 == 127 else 0) + (4 if self.hb[1] & 128 else 0)
            if self.hn < want:
                continue
            if l7 == 126:
                ln = (self.hb[2] << 8) | self.hb[3]
            elif l7 == 127:
                ln = self.hb[2] & 127
                for k in range(3, 10):
                    ln = (ln << 8) | self.hb[k]
            else:
                ln = l7
            self.op = self.hb[0] & 15
            self.mask_at = want - 4 if self.hb[1] & 128 else -1
            self.plen = ln
            self.need = ln
            self.cpos = 0
            self.cval = 0
            self.hn = 0
            if ln == 0 and stop:
                return i
        return -1 if stop else n


cdef class Tunnel:
    cdef void check(self, double now):
        """The tunnel's timers (Worker.sweep): a close frame that waited too long, a reload that removed
        the route, a planned close (drain, removal), the credential's expiry, idleness, the next ping."""
        cdef Runtime rt = self.w.rt
        if self.ended:
            return
        if self.closing != 0:
            if now - self.closing > CLOSE_WAIT:
                if not self.cend.gone:
                    self.cend.transport.abort()
                if not self.oend.gone:
                    self.oend.transport.abort()
            return
        if rt is not self.rt0:
            self.rt0 = rt
            if rt.tunnel_routes is None or self.route not in rt.tunnel_routes:
                self.plan(now + self.grace, 1001, b"route removed")
        if self.close_at != 0 and now >= self.close_at:
            self.close(self.close_code, self.close_reason)
        elif self.expires != 0 and now >= self.expires:
            self.close(1008, b"token expired")
        elif self.idle != 0 and now - self.last > self.idle:
            self.close(1001, b"idle timeout")
        elif self.ping != 0 and now - self.last_ping >= self.ping:
            self.last_ping = now
            if self.oend.hn == 0 and self.oend.need == 0 and not self.cend.gone:
                self.cend.transport.write(PING)      # (between frames only; else at the next tick)

    cdef void plan(self, double at, int code, bytes reason):
        if self.close_at == 0 or at < self.close_at:
            self.close_at = at
            self.close_code = code
            self.close_reason = reason

    cdef void close(self, int code, bytes reason):
        """Close frames to both sides, each at the next frame boundary of the stream towards it."""
        if self.closing != 0 or self.ended:
            return
        self.closing = self.w.clock.now or 1e-9
        if self.code == 0:
            self.code = code
        self.cend.inject = close_frame(code, reason, True)      # towards the origin
        self.oend.inject = close_frame(code, reason, False)     # towards the client
        if self.cend.hn == 0 and self.cend.need == 0:
            self.cend.write_inject()
        if self.oend.hn == 0 and self.oend.need == 0:
            self.oend.write_inject()

    cdef void end_lost(self, TunnelEnd e):
        """One side's connection is gone: the other is closed once what it was sent is written (cut after
        CLOSE_WAIT if it does not take it)."""
        if not e.peer.gone:
            if self.closing == 0:
                self.closing = self.w.clock.now or 1e-9
            e.peer.transport.close()
        else:
            self.finish()

    cdef void finish(self):
        cdef double secs
        if self.ended:
            return
        self.ended = True
        self.w.tunnels.discard(self)
        self.cl.connection_lost(None)         # the client's connection slot (it left Worker.conns at the 101)
        secs = (mono_ns() - self.t0) / 1e9
        try:
            self.session.closed(secs, self.cend.nbytes, self.oend.nbytes, self.code or 1006)
        except Exception as exc:              # a policy bug must not take the worker down
            _report_policy_error("tunnel closed", exc)

    @property
    def route_name(self):
        return self.route


cdef Tunnel open_tunnel(ClientConn cl, object otransport, object session, bytes tail):
    """The 101 went to the client: the client's and the origin's transports get the tunnel's ends as their
    protocols; the client's connection leaves Worker.conns (its HTTP timers) for Worker.tunnels."""
    cdef Worker w = cl.w
    cdef Tunnel t = Tunnel.__new__(Tunnel)
    cdef TunnelEnd c = TunnelEnd.__new__(TunnelEnd)
    cdef TunnelEnd o = TunnelEnd.__new__(TunnelEnd)
    cdef double now = w.clock.now
    c.t = o.t = t
    c.client = True
    c.peer, o.peer = o, c
    c.transport, o.transport = cl.transport, otransport
    c.mask_at = o.mask_at = -1
    t.w, t.cl, t.cend, t.oend = w, cl, c, o
    t.session = session
    t.route = session.route
    t.rt0 = w.rt
    t.opened = t.last = t.last_ping = now
    t.t0 = mono_ns()
    t.idle = session.idle
    t.ping = session.ping
    t.grace = session.grace
    if session.expires:
        t.expires = now + (session.expires - _time.time())
    w.conns.discard(cl)
    w.tunnels.add(t)
    otransport.set_write_buffer_limits(high=TUNNEL_WRITE_HIGH)
    cl.transport.set_write_buffer_limits(high=TUNNEL_WRITE_HIGH)
    cl.transport.set_protocol(c)
    otransport.set_protocol(o)
    if cl.rpause:
        cl.rpause = 0
        cl.transport.resume_reading()
    if cl.wpaused:
        otransport.pause_reading()
    else:
        otransport.resume_reading()
    if tail:
        o.data_received(tail)
    return t


cdef void tunnel_spread(Worker w, double window):
    cdef Tunnel t
    cdef list ts = list(w.tunnels)
    cdef Py_ssize_t i, n = len(ts)
    cdef double now = w.clock.now
    for i in range(n):
        t = <Tunnel>ts[i]
        t.plan(now + window * (i + _random.random()) / n, 1012, b"service restart")
