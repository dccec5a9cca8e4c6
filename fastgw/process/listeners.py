"""The worker's listening sockets: binding them (in the supervisor, which keeps them for the workers' whole
lives), serving them with listeners that can pause at the connection cap, and TLS behind PROXY protocol.

Pausing: a uvloop server cannot stop accepting without closing its listening handle, so a paused
`Listener` closes its server, which listens on a duplicate of the worker's socket: the socket itself
stays open, and the kernel keeps completing handshakes into its backlog (up to `backlog`, then SYNs are
dropped and clients retry) until the worker resumes and a new server accepts them [HAProxy maxconn pauses
its listeners the same way]. ProxiedTLS runs its own accept loop and waits instead. How many connections
a worker admits: fastgw/process/admission.py.
"""
from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from fastgw import proxyproto
from fastgw.compile import split_hostport
from fastgw.observe.log import log

if TYPE_CHECKING:
    from fastgw._core.worker import Worker
    from fastgw.config.root import Config

BACKLOG = 4096            # listen(2) backlog; the kernel caps it at net.core.somaxconn
HANDSHAKE_TIMEOUT = 10.0  # seconds a client TLS handshake may take (every TLS listener)


def bind(addr: str, reuse_port: bool = True, backlog: int = BACKLOG) -> socket.socket:
    host, port = split_hostport(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


PROXY_TLS_PEEK = proxyproto.V2_MAX     # the longest PROXY header we accept (v1 is shorter)
PROXY_TLS_PENDING = 4096               # connections waiting for their PROXY header or TLS handshake, per worker


class ProxiedTLS:
    """A TLS listener behind PROXY protocol (server.proxy_protocol with [[server.tls]]): the balancer's
    header comes before the TLS handshake, so connections are accepted here, the header is read without
    reading past it (MSG_PEEK shows what is there; bytes of an incomplete header are consumed, since they
    can only be header; the complete header is consumed to its exact length, so a ClientHello sent in the
    same segment stays in the kernel buffer), and the socket is handed to the TLS server machinery
    (loop.connect_accepted_socket) with the client address from the header. A connection without a valid
    header within server.limits.header_timeout is closed, as on plain listeners; at most PROXY_TLS_PENDING
    connections may be waiting for their header or handshake at once (more are closed at accept).
    Each counts against server.limits.max_connections from its accept: at the cap the loop waits
    (pause/resume) and the kernel backlog holds new connections."""

    def __init__(self, owner: Listeners, sock: socket.socket, n: int) -> None:
        self.owner = owner
        self.sock = sock
        self.n = n
        self.ctx = owner.contexts[n]             # kept if a reload removes this [[server.tls]] table
        self.sock.setblocking(False)
        self.pending: set[asyncio.Task[None]] = set()
        self.open = asyncio.Event()
        self.open.set()
        self.waiter: asyncio.Task[tuple[socket.socket, Any]] | None = None
        self.task = asyncio.get_running_loop().create_task(self.accept())
        self.task.add_done_callback(lambda _t: self.sock.close())

    def close(self) -> None:
        self.task.cancel()                       # the listening socket closes once the accept loop ends

    def pause(self) -> None:
        self.open.clear()
        if self.waiter is not None:
            self.waiter.cancel()                 # an accept not yet made is not made
            self.waiter = None

    def resume(self) -> None:
        self.open.set()

    async def accept(self) -> None:
        loop = asyncio.get_running_loop()
        w = self.owner.w
        me = asyncio.current_task()
        assert w is not None and me is not None
        while True:
            await self.open.wait()
            self.waiter = loop.create_task(loop.sock_accept(self.sock))
            try:
                conn, _ = await self.waiter
            except asyncio.CancelledError:
                if me.cancelling():
                    raise                         # close()
                continue                          # pause()
            except OSError as e:                  # EMFILE and the like: back off, keep the listener
                log("accept_failed", level="warning", error=str(e))
                await asyncio.sleep(0.1)
                continue
            if len(self.pending) >= PROXY_TLS_PENDING:
                conn.close()
                continue
            w.admit()
            t = loop.create_task(self.serve(conn))
            self.pending.add(t)
            t.add_done_callback(self.pending.discard)

    async def serve(self, conn: socket.socket) -> None:
        """Serve one accepted connection, admitted (Worker.admit) by the accept loop: until the
        protocol is made (and counts itself), every way out gives the place back."""
        made = False
        try:
            made = await self.hand_over(conn)
        finally:
            if not made and self.owner.w is not None:
                self.owner.w.release()

    async def hand_over(self, conn: socket.socket) -> bool:
        loop = asyncio.get_running_loop()
        cfg, w = self.owner.cfg, self.owner.w
        assert cfg is not None and w is not None
        conn.setblocking(False)
        try:
            hdr = await asyncio.wait_for(self.read_header(conn), cfg.server.limits.header_timeout)
        except (TimeoutError, proxyproto.ProxyProtocolError, OSError):
            conn.close()
            return False
        source = hdr.source.encode() if hdr.source is not None else None
        contexts = self.owner.contexts
        if self.n < len(contexts):
            self.ctx = contexts[self.n]

        made = False

        def make() -> Any:
            nonlocal made
            h = w.tls_protocol(True)             # counted at accept already; from here it counts itself
            made = True
            h.proxied_peer = source
            return h
        try:
            await loop.connect_accepted_socket(make, conn, ssl=self.ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError):          # a failed or slow handshake (ssl.SSLError is an OSError)
            conn.close()
        except Exception as e:                   # not the client's doing: say so, keep serving
            log("tls_handover_failed", level="error", error=f"{type(e).__name__}: {e}")
            conn.close()
        return made

    @staticmethod
    async def read_header(conn: socket.socket) -> proxyproto.Header:
        loop = asyncio.get_running_loop()
        fd = conn.fileno()
        got = b""                                # bytes of the header consumed so far
        while True:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            data = conn.recv(PROXY_TLS_PEEK - len(got), socket.MSG_PEEK)
            if not data:
                raise OSError("connection closed before the PROXY header")
            res = proxyproto.parse(got + data)
            if res is not None:
                if res.consumed > len(got):
                    conn.recv(res.consumed - len(got))   # exactly the rest of the header
                return res
            # Incomplete: everything seen so far can only be header (v1: no CRLF yet; v2: fewer bytes
            # than its length field says), so consume it: the socket is readable again only when more
            # arrives (no wake-up loop on a client that stops mid-header).
            got += conn.recv(len(data))
            if len(got) >= PROXY_TLS_PEEK:
                raise proxyproto.ProxyProtocolError("PROXY header too long")


class Listener:
    """One listening socket served by a uvloop server that can be paused (see the module docstring).
    `ssl` may be replaced (certificate reload): new connections get the new context."""

    def __init__(self, sock: socket.socket, factory: Any, backlog: int, ssl: Any = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.sock = sock
        self.factory = factory
        self.backlog = backlog
        self.ssl = ssl
        self.handshake_timeout = handshake_timeout
        self.server: asyncio.AbstractServer | None = None
        self.task: asyncio.Task[None] | None = None
        self.want = True                 # serving wanted (not paused)
        self.closed = False

    async def start(self) -> None:
        self.server = await self._open()

    async def _open(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        kw: dict[str, Any] = {}
        if self.ssl is not None:
            kw = {"ssl": self.ssl, "ssl_handshake_timeout": self.handshake_timeout}
        return await loop.create_server(self.factory, sock=self.sock.dup(), backlog=self.backlog, **kw)

    def pause(self) -> None:
        self.want = False
        self._sync()

    def resume(self) -> None:
        self.want = True
        self._sync()

    def close(self) -> None:
        self.closed = True
        self._sync()

    async def set_ssl(self, ctx: Any) -> None:
        """A new context: a new server on the same socket replaces the serving one (if any)."""
        self.ssl = ctx
        if self.server is None:
            return
        new = await self._open()
        old, self.server = self.server, new
        old.close()
        self._sync()

    def _sync(self) -> None:
        if self.closed or not self.want:
            if self.server is not None:
                self.server.close()      # the listening handle only: connections are not touched
                self.server = None
        elif self.server is None and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        try:
            if self.closed:
                return
            srv = await self._open()
        except OSError:                  # the socket was closed meanwhile (drain)
            return
        finally:
            self.task = None
        if self.server is not None:
            srv.close()
        else:
            self.server = srv
        self._sync()


class Listeners:
    """A worker's listening sockets (plain, TLS, TLS behind PROXY protocol) and the servers on them: what
    protocol each serves, pausing them at the connection cap, the TLS swap on reload, and closing them.
    `w` and `cfg` are the worker and the config it serves (ProxiedTLS reads its header timeout from it)."""

    def __init__(self, socks: list[socket.socket], kinds: list[str]) -> None:
        self.socks = socks
        self.kinds = kinds                       # per socket: "plain" or "tls:<server.tls index>"
        self.servers: list[Any] = []             # Listeners and ProxiedTLS loops (close, pause, resume)
        self.tls_servers: dict[int, Listener] = {}
        self.contexts: list[Any] = []            # current [[server.tls]] contexts (ProxiedTLS reads them)
        self.w: Worker | None = None
        self.cfg: Config | None = None
        self.draining = False                    # certificates are no longer reloaded

    def protocol_factory(self) -> Any:
        """Plain listeners: ClientConn, which first reads a PROXY header when server.proxy_protocol."""
        w = self.w
        assert w is not None and self.cfg is not None
        if not self.cfg.server.proxy_protocol:
            return w.protocol

        def make() -> Any:
            c = w.protocol()
            c.want_proxy = True
            return c
        return make

    async def serve(self, w: Worker, cfg: Config) -> None:
        self.w, self.cfg = w, cfg
        contexts = self.contexts = self.tls_contexts()
        for i, (s, kind) in enumerate(zip(self.socks, self.kinds, strict=True)):
            if kind == "plain":
                srv = Listener(s, self.protocol_factory(), BACKLOG)
            elif cfg.server.proxy_protocol:
                self.servers.append(ProxiedTLS(self, s.dup(), int(kind[4:])))
                continue
            else:
                srv = Listener(s, w.tls_protocol, BACKLOG, ssl=contexts[int(kind[4:])])
                self.tls_servers[i] = srv
            await srv.start()
            self.servers.append(srv)
        if w.full:
            self.pause()

    def pause(self) -> None:
        """The worker holds server.limits.max_connections connections (Worker.admit): stop accepting."""
        if self.w is not None and self.w.full:
            for srv in self.servers:
                srv.pause()

    def resume(self) -> None:
        for srv in self.servers:
            srv.resume()

    def tls_contexts(self) -> list[Any]:
        assert self.cfg is not None
        if not self.cfg.server.tls:
            return []
        from fastgw.tls import build_context  # (cryptography is a slow import: only when TLS is used)
        return [build_context(t) for t in self.cfg.server.tls]

    async def reload_tls(self) -> None:
        """Certificates are read again on every reload: new TLS connections get the new contexts (a new
        server on the same socket replaces the old one); established connections are not touched."""
        if not self.contexts or self.draining:
            return
        try:
            contexts = self.tls_contexts()
        except Exception as e:
            log("tls_reload_failed", level="error", error=f"{type(e).__name__}: {e}")
            return
        self.contexts = contexts                 # ProxiedTLS listeners use them from the next connection
        for i, srv in list(self.tls_servers.items()):
            n = int(self.kinds[i][4:])
            if n >= len(contexts):      # [[server.tls]] tables removed: that takes a restart (logged)
                continue
            await srv.set_ssl(contexts[n])
        log("tls_reloaded", listeners=len(contexts))

    def stop(self) -> None:
        """Stop accepting (the listening sockets stay open)."""
        for srv in self.servers:
            srv.close()
        self.servers = []

    def close(self) -> None:
        """Stop accepting and close the listening sockets (the servers listened on duplicates)."""
        self.stop()
        for sock in self.socks:
            sock.close()
