"""A raw HTTP/2 client for the gateway's HTTP/2 tests: h2 (client side) for the ordinary frames,
hyperframe for the frames h2 refuses to send and for reading what follows a GOAWAY."""
from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import Frame, HeadersFrame, RstStreamFrame

CALM = 11          # ENHANCE_YOUR_CALM
PROTOCOL_ERROR = 1
CANCEL = 8
REFUSED_STREAM = 7
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"gw.test"), (b":path", b"/echo/bad")]


class Raw:
    def __init__(self, port: int, window: int | None = None, timeout: float = 5.0, prefix: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if prefix:
            self.sock.sendall(prefix)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        if window is not None:
            self.h2.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.h2.initiate_connection()
        self.out()
        self.events: list = []
        self.closed = False

    def out(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", headers: list | None = None, end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        hs = headers if headers is not None else [
            (b":method", method.encode()), (b":scheme", b"http"), (b":authority", b"gw.test"),
            (b":path", path.encode())]
        self.h2.send_headers(sid, hs, end_stream=end)
        self.out()
        return sid

    def pump(self, until, timeout: float = 5.0) -> bool:
        """Read and handle events until until(self) is true, the connection closes, or the timeout."""
        deadline = time.monotonic() + timeout
        while not until(self):
            if self.closed or time.monotonic() > deadline:
                return bool(until(self))
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                self.closed = True
                continue
            if not data:
                self.closed = True
                continue
            try:
                evs = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                continue
            for ev in evs:
                if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.events += evs
            try:
                self.out()
            except OSError:
                self.closed = True
        return bool(until(self))

    def read_unacked(self, until, timeout: float) -> None:
        """Read and parse until until(self), the close or the timeout, never acknowledging DATA (pump
        would): the client's windows stay as they are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until(self):
            self.sock.settimeout(0.2)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                break
            self.events += self.h2.receive_data(data)

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for ev in self.events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                return ev
        return None

    def response(self, sid: int) -> tuple[dict, bytes, bool]:
        head: dict = {}
        body = b""
        ended = False
        for ev in self.events:
            if getattr(ev, "stream_id", None) != sid:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                head = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
        return head, body, ended

    def reset_code(self, sid: int) -> int | None:
        for ev in self.events:
            if isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                return int(ev.error_code)
        return None

    def close(self) -> None:
        self.sock.close()


def done(sid: int):
    return lambda r: r.response(sid)[2] or r.reset_code(sid) is not None or r.closed


def headers_frame(sid: int, c: Raw, end: bool = True) -> bytes:
    f = HeadersFrame(sid)
    f.data = c.h2.encoder.encode(BASE)
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    return f.serialize()


def rst(sid: int) -> bytes:
    f = RstStreamFrame(sid)
    f.error_code = CANCEL
    return f.serialize()


def read_frames(sock: socket.socket, timeout: float, until=None) -> list:
    """Every frame until the server closes, the timeout, or until(frames) is true (h2's client state
    machine stops at a GOAWAY, so frames after it are parsed here with hyperframe)."""
    buf = b""
    frames: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(0.2)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
        while len(buf) >= 9:
            f, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            f.parse_body(memoryview(buf[9:9 + length]))
            frames.append(f)
            buf = buf[9 + length:]
        if until is not None and until(frames):
            break
    return frames


def drained(launcher, g) -> None:
    """The gateway exits 0 after its drain; by design, so not a crash for the launcher."""
    assert g.proc.wait(10) == 0
    launcher.started.remove(g)
    g.stop()
