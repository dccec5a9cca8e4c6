"""The start of a connection on the port shared by HTTP/1.1 and h2c (docs/http2.md, "The connection
preface"): an invalid HTTP/2 preface gets HTTP/2's answer (GOAWAY PROTOCOL_ERROR, then close: RFC 9113 3.5,
h2spec http2/3.5/2), a start that is HTTP/1.x keeps HTTP/1.1's 400. A real gateway, raw sockets."""
from __future__ import annotations

import socket

import pytest
from h2client import PREFACE, PROTOCOL_ERROR, read_frames
from hyperframe.frame import GoAwayFrame


@pytest.fixture(scope="module")
def gw(gateway_launcher, echo_origin):
    return gateway_launcher.start({"echo": {"targets": [echo_origin.addr], "timeout": "10s"}},
                                  [{"name": "echo", "path": "/echo/*", "upstream": "echo"}])


def answer(gw, start: bytes) -> bytes:
    """Everything the gateway writes until it closes (5 s at most)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(start)
        out = b""
        s.settimeout(5)
        while True:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                return out + b"<not closed>"
            if not data:
                return out
            out += data


@pytest.mark.parametrize("start", [
    b"INVALID CONNECTION PREFACE\r\n\r\n",                 # h2spec http2/3.5/2
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",                    # preface-shaped, not the preface
    b"PRI * HTTP/2.0\r\n\r\nSX\r\n\r\n",                    # one byte off
])
def test_invalid_preface_gets_goaway_protocol_error(gw, start):
    out = answer(gw, start)
    assert out == GoAwayFrame(0, last_stream_id=0, error_code=PROTOCOL_ERROR).serialize()


def test_bad_first_frame_after_the_preface_gets_goaway(gw):
    """The exact preface, then a frame that is not SETTINGS (RFC 9113 3.4): PROTOCOL_ERROR from the
    HTTP/2 engine, after its own SETTINGS."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(PREFACE + b"\x00\x00\x01\x00\x00\x00\x00\x00\x01x")
        frames = read_frames(s, 5)
    assert [type(f).__name__ for f in frames][0] == "SettingsFrame"
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == PROTOCOL_ERROR


@pytest.mark.parametrize("start", [
    b"GET / HTTP/2.0\r\nHost: gw.test\r\n\r\n",            # an HTTP version, unsupported: HTTP/1.1's answer
    b"GET /\r\n\r\n",                                       # HTTP/0.9's shape
    b"GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: x\r\n\r\n",
])
def test_http1_shaped_starts_keep_the_400(gw, start):
    assert answer(gw, start).startswith(b"HTTP/1.1 400 ")


def test_goaway_only_for_the_first_request(gw):
    """After a good HTTP/1.1 request on the connection, bad bytes are HTTP/1.1's business (the reader
    drops them and closes after the answer): no GOAWAY."""
    out = answer(gw, b"GET /echo/ok HTTP/1.1\r\nHost: gw.test\r\n\r\nINVALID CONNECTION PREFACE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and out.count(b"HTTP/1.1 ") == 1
    assert GoAwayFrame(0, last_stream_id=0, error_code=PROTOCOL_ERROR).serialize() not in out
