"""The compiled HTTP/2 wire layer (fastgw/_core/h2frames.pyx: H2Wire) against the `h2` library's server-side
H2Connection, the reference it replaced in the downstream engine: the same client bytes go into both and the
events and the frames out are compared, for valid sessions (also split at every byte offset) and for the
error cases. Where H2Wire deliberately differs from h2 the test pins both answers and says why
(DIFFERENCES). h2 is configured as the engine configured it before (fastgw/_core/h2engine.pyx history):
validation of fields off (the engine validates them), a client GOAWAY only reported, twice the stream limit.
"""
from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import Frame

from fastgw._core.h2frames import PREFACE, H2Error, H2Wire

MAX_STREAMS = 100
WINDOW = 65535
MAX_HEADERS = 65536

NO_ERROR, PROTOCOL, FLOW_CONTROL, STREAM_CLOSED, FRAME_SIZE, COMPRESSION, CALM = 0, 1, 3, 5, 6, 9, 11
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 1, 1, 4, 8, 0x20


class RefServer(h2.connection.H2Connection):
    """h2's server connection as the engine used it: a client GOAWAY is reported, nothing more."""

    def _receive_goaway_frame(self, frame):
        ev = h2.events.ConnectionTerminated()
        ev.error_code = frame.error_code
        ev.last_stream_id = frame.last_stream_id
        return [], [ev]


def ref_server() -> RefServer:
    cfg = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False,
                                    normalize_inbound_headers=False, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, split_outbound_cookies=False)
    h = RefServer(config=cfg)
    values = {SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS, SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
              SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADERS, SettingCodes.ENABLE_PUSH: 0}
    h.local_settings = h2.settings.Settings(client=False, initial_values=values)
    h.initiate_connection()
    values[SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * MAX_STREAMS
    h.local_settings = h2.settings.Settings(client=False, initial_values=values)
    return h


def our_server() -> H2Wire:
    w = H2Wire(MAX_STREAMS, WINDOW, MAX_HEADERS)
    w.initiate_connection()
    return w


# -- the client's bytes -----------------------------------------------------------------------------------
def enc(fields) -> bytes:
    """A header block that refers to no dynamic-table entry (a fresh encoder each time): blocks can be built
    in any order and fed to any connection."""
    return hpack.Encoder().encode(fields)


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def settings(*pairs: tuple[int, int], flags: int = 0) -> bytes:
    return frame(SETTINGS, flags, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def head(sid: int, path: bytes = b"/", method: bytes = b"GET", end: bool = True, extra=(), flags: int = 0) -> bytes:
    block = enc([(b":method", method), (b":scheme", b"http"), (b":authority", b"gw.test"),
                        (b":path", path), *extra])
    return frame(HEADERS, flags | END_HEADERS | (END_STREAM if end else 0), sid, block)


def block_frames(sid: int, block: bytes, flags: int = END_STREAM, size: int = 16000) -> bytes:
    """A header block as HEADERS and CONTINUATION frames of `size` bytes."""
    parts = [block[i:i + size] for i in range(0, len(block), size)]
    out = [frame(HEADERS, flags | (END_HEADERS if len(parts) == 1 else 0), sid, parts[0])]
    for i, part in enumerate(parts[1:], 2):
        out.append(frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, sid, part))
    return b"".join(out)


def data(sid: int, body: bytes, end: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end else 0, sid, body)


def window(sid: int, inc: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc))


START = PREFACE + settings()


# -- normalising what both sides say ----------------------------------------------------------------------
EVENT_NAMES = {1: "request", 2: "data", 3: "end", 4: "reset", 5: "window", 6: "ping", 7: "ping_ack",
               8: "priority", 9: "settings", 10: "trailers", 11: "goaway", 12: "settings_ack"}


def ours_events(evs) -> list:
    out = []
    for e in evs:
        name = EVENT_NAMES.get(e.kind)
        if name is None:                      # EV_IGNORED: no counterpart in h2's events
            continue
        if name == "request" or name == "trailers":
            out.append((name, e.stream_id, [tuple(f) for f in e.headers]))
        elif name == "data":
            out.append((name, e.stream_id, e.data, e.flow_controlled_length))
        elif name == "reset":
            out.append((name, e.stream_id, e.error_code))
        elif name in ("ping", "ping_ack"):
            out.append((name, e.ping_data))
        elif name == "goaway":
            out.append((name, e.error_code, e.last_stream_id))
        else:
            out.append((name, e.stream_id))
    return out


def ref_events(evs) -> list:
    E = h2.events
    out = []
    for e in evs:
        if isinstance(e, E.RequestReceived):
            out.append(("request", e.stream_id, [tuple(f) for f in e.headers]))
        elif isinstance(e, E.TrailersReceived):
            out.append(("trailers", e.stream_id, [tuple(f) for f in e.headers]))
        elif isinstance(e, E.DataReceived):
            out.append(("data", e.stream_id, e.data, e.flow_controlled_length))
        elif isinstance(e, E.StreamEnded):
            out.append(("end", e.stream_id))
        elif isinstance(e, E.StreamReset):
            out.append(("reset", e.stream_id, int(e.error_code)))
        elif isinstance(e, E.WindowUpdated):
            out.append(("window", e.stream_id))
        elif isinstance(e, E.PingReceived):
            out.append(("ping", e.ping_data))
        elif isinstance(e, E.PingAckReceived):
            out.append(("ping_ack", e.ping_data))
        elif isinstance(e, E.PriorityUpdated):
            out.append(("priority", e.stream_id))
        elif isinstance(e, E.RemoteSettingsChanged):
            out.append(("settings", 0))
        elif isinstance(e, E.SettingsAcknowledged):
            out.append(("settings_ack", 0))
        elif isinstance(e, E.ConnectionTerminated):
            out.append(("goaway", int(e.error_code), e.last_stream_id))
        # UnknownFrameReceived: ignored by both
    return out


def frames_out(raw: bytes, dec: hpack.Decoder) -> list:
    """The frames in `raw` as comparable tuples (header blocks decoded: the two HPACK encoders differ)."""
    out = []
    pos = 0
    while pos < len(raw):
        f, length = Frame.parse_frame_header(memoryview(raw[pos:pos + 9]))
        f.parse_body(memoryview(raw[pos + 9:pos + 9 + length]))
        pos += 9 + length
        t = f.type
        flags = tuple(sorted(f.flags))
        if t == HEADERS:
            out.append(("HEADERS", f.stream_id, flags, [tuple(x) for x in dec.decode(f.data, raw=True)]))
        elif t == DATA:
            out.append(("DATA", f.stream_id, flags, f.data))
        elif t == SETTINGS:
            out.append(("SETTINGS", flags, dict(f.settings)))
        elif t == WINDOW_UPDATE:
            out.append(("WINDOW_UPDATE", f.stream_id, f.window_increment))
        elif t == RST:
            out.append(("RST_STREAM", f.stream_id, f.error_code))
        elif t == GOAWAY:
            out.append(("GOAWAY", f.last_stream_id, f.error_code))
        elif t == PING:
            out.append(("PING", flags, f.opaque_data))
        else:
            out.append((type(f).__name__, f.stream_id))
    return out


class Pair:
    """Both servers, fed and driven alike."""

    def __init__(self) -> None:
        self.ours, self.ref = our_server(), ref_server()
        self.dec_ours, self.dec_ref = hpack.Decoder(), hpack.Decoder()
        first_ours = frames_out(self.ours.data_to_send(), self.dec_ours)
        first_ref = frames_out(self.ref.data_to_send(), self.dec_ref)
        # The server preface: the same values for what both send; h2 also sends its defaults (and
        # ENABLE_PUSH=0, meaningless from a server, RFC 9113 6.5.2), H2Wire does not.
        s_ours, s_ref = first_ours[0][2], first_ref[0][2]
        assert s_ours == {k: s_ref[k] for k in s_ours}
        assert set(s_ours) == {SettingCodes.MAX_CONCURRENT_STREAMS, SettingCodes.INITIAL_WINDOW_SIZE,
                               SettingCodes.MAX_HEADER_LIST_SIZE}

    def feed(self, raw: bytes):
        """(events, frames out, GOAWAY code or None) of each side."""
        return (self._feed(self.ours, self.dec_ours, raw, ours_events, H2Error),
                self._feed(self.ref, self.dec_ref, raw, ref_events, h2.exceptions.ProtocolError))

    @staticmethod
    def _feed(side, dec, raw, norm, err):
        try:
            evs, code = norm(side.receive_data(raw)), None
        except err:
            evs, code = None, "error"
        out = frames_out(side.data_to_send(), dec)
        if code == "error":
            code = out[-1][2] if out and out[-1][0] == "GOAWAY" else "no GOAWAY"
        return evs, out, code

    def both(self, method: str, *args):
        getattr(self.ours, method)(*args)
        getattr(self.ref, method)(*args)
        return (frames_out(self.ours.data_to_send(), self.dec_ours),
                frames_out(self.ref.data_to_send(), self.dec_ref))


def same(pair: Pair, raw: bytes):
    """Both sides took `raw` without a connection error, with the same events and frames out."""
    ours, ref = pair.feed(raw)
    assert ours == ref
    assert ours[2] is None
    return ours


# -- valid sessions: the same events and the same frames out ----------------------------------------------
SESSIONS = {
    "get": [START + settings(flags=ACK) + head(1)],
    "post_body_ping_windows": [START + head(1, b"/up", b"POST", end=False) + data(1, b"a" * 1000)
                               + frame(PING, 0, 0, b"12345678") + window(0, 1000) + window(1, 10),
                               data(1, b"b" * 16000) + data(1, b"", end=True)],
    "continuation_and_trailers": [START + frame(HEADERS, 0, 1, enc([(b":method", b"POST"),
                                                                          (b":scheme", b"http")]))
                                  + frame(CONTINUATION, 0, 1, enc([(b":authority", b"a")]))
                                  + frame(CONTINUATION, END_HEADERS, 1, enc([(b":path", b"/t")]))
                                  + data(1, b"xyz")
                                  + frame(HEADERS, END_HEADERS | END_STREAM, 1, enc([(b"grpc-status", b"0")]))],
    "padding_priority_unknown": [START + frame(HEADERS, END_HEADERS | PADDED, 1,
                                               b"\x03" + enc([(b":method", b"PUT"), (b":path", b"/p")]) + b"\0\0\0")
                                 + frame(DATA, PADDED | END_STREAM, 1, b"\x02hi\0\0")
                                 + frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 15))
                                 + frame(0x42, 0, 0, b"whatever")],
    "many_streams_client_reset_settings": [START + b"".join(head(s, end=False) for s in (1, 3, 5, 7))
                                           + frame(RST, 0, 3, struct.pack(">I", 8))
                                           + settings((4, 100000), (5, 20000), (1, 1024))
                                           + window(5, 7),
                                           frame(GOAWAY, 0, 0, struct.pack(">II", 7, 0))],
}


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_valid_session_matches_h2(name):
    pair = Pair()
    for raw in SESSIONS[name]:
        evs, _out, code = same(pair, raw)
        assert code is None and evs


def test_responses_and_flow_control_match_h2():
    """What the engine sends: heads, DATA within the windows, trailers, resets, acknowledgements (h2's
    WINDOW_UPDATE batching), the windows themselves, and GOAWAY."""
    pair = Pair()
    same(pair, START + head(1, end=False) + head(3) + head(5, end=False))
    for sid in (1, 3, 5):
        assert pair.ours.local_flow_control_window(sid) == pair.ref.local_flow_control_window(sid) == 65535
    ours, ref = pair.both("send_headers", 3, [(b":status", b"200"), (b"content-type", b"text/plain")], False)
    assert ours == ref
    ours, ref = pair.both("send_data", 3, b"x" * 16384, False)
    assert ours == ref
    ours, ref = pair.both("send_data", 3, b"y" * 1000, True)
    assert ours == ref
    assert pair.ours.local_flow_control_window(5) == pair.ref.local_flow_control_window(5) == 65535 - 17384
    same(pair, data(1, b"q" * 15000) * 2 + data(5, b"r" * 10000) * 3)
    for n, sid in ((100, 1), (20000, 1), (20000, 5), (5000, 1), (10000, 5)):   # h2's batching rule
        ours, ref = pair.both("acknowledge_received_data", n, sid)
        assert ours == ref, (n, sid)
    ours, ref = pair.both("send_headers", 1, [(b":status", b"404")], True)
    assert ours == ref
    ours, ref = pair.both("reset_stream", 5, 8)
    assert ours == ref == [("RST_STREAM", 5, 8)]
    same(pair, window(0, 1000) + window(3, 5))      # WINDOW_UPDATE on a closed stream: ignored by both
    pair.ours.close_connection(0, 5)
    pair.ref.close_connection(0, None, 5)
    assert (frames_out(pair.ours.data_to_send(), pair.dec_ours) == frames_out(pair.ref.data_to_send(), pair.dec_ref)
            == [("GOAWAY", 5, 0)])


def test_acknowledgements_match_h2():
    pair = Pair()
    same(pair, START + head(1, b"/up", b"POST", end=False) + data(1, b"z" * 15000) * 4)
    for n in (1000, 31000, 2000, 26000):
        ours, ref = pair.both("acknowledge_received_data", n, 1)
        assert ours == ref, n
    same(pair, data(1, b"w" * 15000) * 2 + data(1, b"w" * 9000, end=True))    # within what was given back
    ours, ref = pair.both("acknowledge_received_data", 39000, 1)
    assert ours == ref


@pytest.mark.parametrize("name", ["get", "post_body_ping_windows", "continuation_and_trailers",
                                  "padding_priority_unknown"])
def test_split_at_every_offset_gives_the_same_events(name):
    """One read or two, cut anywhere (in the preface, a frame header, a payload): the same events in order
    and the same bytes out as h2 given the whole."""
    raw = b"".join(SESSIONS[name])
    ref = ref_server()
    ref.data_to_send()
    want = ref_events(ref.receive_data(raw))
    want_out = ref.data_to_send()
    for cut in range(1, len(raw)):
        w = our_server()
        w.data_to_send()
        got = ours_events(w.receive_data(raw[:cut]) + w.receive_data(raw[cut:]))
        assert got == want, cut
        assert frames_out(w.data_to_send(), hpack.Decoder()) == frames_out(want_out, hpack.Decoder()), cut


# -- error cases: the connection or stream error each side answers ----------------------------------------
def closed_stream_data():
    return START + head(1) + data(1, b"late")


ERRORS = {
    # name: (client bytes after START unless they start with the preface, our answer, h2's answer)
    # An answer is ("goaway", code) for a connection error, ("rst", sid, code) for a stream error.
    "enable_push_2": (settings((2, 2)), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "initial_window_too_big": (settings((4, 2**31)), ("goaway", FLOW_CONTROL), ("goaway", FLOW_CONTROL)),
    "max_frame_size_too_small": (settings((5, 100)), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "max_frame_size_too_big": (settings((5, 2**24)), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "settings_length": (frame(SETTINGS, 0, 0, b"\0\1\0\0\0"), ("goaway", FRAME_SIZE), ("goaway", FRAME_SIZE)),
    "settings_on_stream": (frame(SETTINGS, 0, 1, b""), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "conn_window_overflow": (window(0, 2**31 - 1), ("goaway", FLOW_CONTROL), ("goaway", FLOW_CONTROL)),
    "stream_window_overflow": (head(1, end=False) + window(1, 2**31 - 1), ("rst", 1, FLOW_CONTROL),
                               ("rst", 1, FLOW_CONTROL)),
    "settings_window_overflow": (head(1, end=False) + window(1, 2**31 - 65536) + settings((4, 65537)),
                                 ("goaway", FLOW_CONTROL), ("goaway", FLOW_CONTROL)),
    "window_update_0_conn": (window(0, 0), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "window_update_length": (frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"), ("goaway", FRAME_SIZE), ("goaway", FRAME_SIZE)),
    "data_idle_stream": (data(1, b"x"), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "data_stream_0": (data(0, b"x"), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "data_closed_stream": (head(1) + data(1, b"late"), ("rst", 1, STREAM_CLOSED), ("rst", 1, STREAM_CLOSED)),
    "data_beyond_stream_window": (head(1, end=False) + data(1, b"x" * 16384) * 4 + data(1, b"x" * 1000),
                                  ("goaway", FLOW_CONTROL), ("goaway", FLOW_CONTROL)),
    "even_stream": (head(2), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "decreasing_stream": (head(5) + head(3), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "oversized_frame": (data(1, b"x" * 16385), ("goaway", FRAME_SIZE), ("goaway", FRAME_SIZE)),
    "continuation_interleaved": (frame(HEADERS, 0, 1, enc([(b":method", b"GET")])) + data(1, b"x"),
                                 ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "continuation_other_stream": (frame(HEADERS, 0, 1, enc([(b":method", b"GET")]))
                                  + frame(CONTINUATION, END_HEADERS, 3, b""), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "continuation_alone": (frame(CONTINUATION, END_HEADERS, 1, b""), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "push_promise": (frame(PUSH, END_HEADERS, 1, b"\0\0\0\2"), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "rst_idle": (frame(RST, 0, 1, b"\0\0\0\0"), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "rst_length": (head(1, end=False) + frame(RST, 0, 1, b"\0\0\0"), ("goaway", FRAME_SIZE), ("goaway", FRAME_SIZE)),
    "ping_length": (frame(PING, 0, 0, b"1234567"), ("goaway", FRAME_SIZE), ("goaway", FRAME_SIZE)),
    "ping_on_stream": (frame(PING, 0, 1, b"12345678"), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "goaway_on_stream": (frame(GOAWAY, 0, 1, b"\0" * 8), ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "data_pad_too_long": (head(1, end=False) + frame(DATA, PADDED, 1, b"\x05abc"), ("goaway", PROTOCOL),
                          ("goaway", PROTOCOL)),
    "priority_length": (frame(PRIORITY, 0, 1, b"\0\0\0\0"), ("goaway", FRAME_SIZE), ("goaway", FRAME_SIZE)),
    "too_many_streams": (b"".join(head(1 + 2 * i, end=False) for i in range(2 * MAX_STREAMS + 1)),
                         ("goaway", PROTOCOL), ("goaway", PROTOCOL)),
    "header_list_too_big": (block_frames(1, enc([(b":method", b"GET")] + [(b"x-big%d" % i, b"v" * 14000) for i in range(5)])),
                            ("goaway", CALM), ("goaway", CALM)),
    "headers_after_end_stream": (head(1) + frame(HEADERS, END_HEADERS | END_STREAM, 1, enc([(b"x", b"1")])),
                                 ("rst", 1, STREAM_CLOSED), ("rst", 1, STREAM_CLOSED)),
    # DIFFERENCES (each: why H2Wire answers otherwise)
    # RFC 9113 3.5: an invalid preface is a connection error PROTOCOL_ERROR; h2 closes without a GOAWAY.
    "bad_preface": (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings(), ("goaway", PROTOCOL), ("close",)),
    # RFC 9113 6.5: a SETTINGS ACK with a payload is FRAME_SIZE_ERROR; h2 says PROTOCOL_ERROR.
    "settings_ack_payload": (settings((1, 1), flags=ACK), ("goaway", FRAME_SIZE), ("goaway", PROTOCOL)),
    # RFC 9113 6.9: a WINDOW_UPDATE of 0 on a stream is a stream error; h2 ends the connection.
    "window_update_0_stream": (head(1, end=False) + window(1, 0), ("rst", 1, PROTOCOL), ("goaway", PROTOCOL)),
    # RFC 9113 4.3: a header block that does not decode is COMPRESSION_ERROR; h2 says PROTOCOL_ERROR (the
    # engine used to rewrite h2's GOAWAY code for this).
    "hpack_garbage": (frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff"), ("goaway", COMPRESSION),
                      ("goaway", PROTOCOL)),
    # RFC 9113 3.4: the client preface's SETTINGS must be its first frame; h2 does not check.
    "first_frame_not_settings": (PREFACE + head(1), ("goaway", PROTOCOL), None),
    # RFC 9113 8.1: a second HEADERS without END_STREAM makes the request malformed, a stream error; h2
    # ends the whole connection.
    "trailers_without_end_stream": (head(1, end=False) + frame(HEADERS, END_HEADERS, 1, enc([(b"x", b"1")])),
                                    ("rst", 1, PROTOCOL), ("goaway", PROTOCOL)),
    # RFC 9113 5.3.1: a stream depending on itself is a stream error PROTOCOL_ERROR (the other streams go
    # on); h2 ends the connection.
    "headers_depends_on_itself": (head(1, flags=PRIO)[:9] + struct.pack(">IB", 1, 15) + head(1)[9:],
                                  ("rst", 1, PROTOCOL), ("goaway", PROTOCOL)),
    "priority_depends_on_itself": (frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15)), ("rst", 1, PROTOCOL),
                                   ("goaway", PROTOCOL)),
}


def answer(code, out) -> tuple | None:
    if code == "no GOAWAY":
        return ("close",)
    if code is not None:
        return ("goaway", code)
    rst = [f for f in out if f[0] == "RST_STREAM"]
    return ("rst", rst[0][1], rst[0][2]) if rst else None


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_case(name):
    raw, want_ours, want_ref = ERRORS[name]
    if name == "headers_depends_on_itself":
        raw = bytearray(raw)
        raw[2] += 5                                  # the length with the priority fields
        raw[4] |= PRIO
        raw = bytes(raw)
    if not raw.startswith(PREFACE[:3]):
        raw = START + raw
    pair = Pair()
    (_e1, out_ours, code_ours), (_e2, out_ref, code_ref) = pair.feed(raw)
    assert answer(code_ours, out_ours) == want_ours
    assert answer(code_ref, out_ref) == want_ref


def test_data_on_a_stream_we_reset_is_ignored():
    """RFC 9113 5.1: after our RST_STREAM, frames already in flight are ignored; the connection window is
    given back all the same. (h2 answers each such DATA with another RST_STREAM: a difference.)"""
    pair = Pair()
    same(pair, START + head(1, b"/up", b"POST", end=False))
    pair.both("reset_stream", 1, 7)
    (evs, out, code), (_evs_ref, out_ref, _code_ref) = pair.feed(data(1, b"x" * 16000) * 3)
    assert code is None and evs == [] and out == [("WINDOW_UPDATE", 0, 48000)]
    assert ("RST_STREAM", 1, STREAM_CLOSED) in out_ref
    (evs, out, code), _ = pair.feed(frame(HEADERS, END_HEADERS | END_STREAM, 1, enc([(b"t", b"1")])))
    assert code is None and out == []                # trailers in flight: decoded (HPACK state), dropped


def test_a_connection_error_stops_the_read():
    """Events before the error in the same read are not delivered (as h2): the connection is over."""
    w = our_server()
    w.data_to_send()
    with pytest.raises(H2Error) as e:
        w.receive_data(START + head(1) + data(2, b"x"))
    assert e.value.code == PROTOCOL
    assert frames_out(w.data_to_send(), hpack.Decoder())[-1] == ("GOAWAY", 1, PROTOCOL)


def test_random_frame_streams_end_only_in_connection_errors():
    """bench/fuzz_h2.py's target (atheris runs it for 10 minutes; here a fixed-seed sample of mutated seed
    sessions): nothing but H2Error leaves H2Wire, every frame it writes parses, a connection error ends
    with GOAWAY."""
    import importlib.util
    import random
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "bench"
    spec = importlib.util.spec_from_file_location("bench_fuzz_h2", bench / "fuzz_h2.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    seeds = [p.read_bytes() for p in sorted((bench / "fuzz_h2_corpus").iterdir())]
    assert len(seeds) >= 4
    rnd = random.Random(20)
    for _ in range(3000):
        buf = bytearray(rnd.choice(seeds))
        for _m in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(buf) + 1)
            what = rnd.random()
            if what < 0.5 and buf:
                buf[min(i, len(buf) - 1)] = rnd.randrange(256)
            elif what < 0.8:
                buf[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 12)))
            else:
                del buf[i:i + rnd.randint(1, 6)]
        fuzz.one_input(bytes(buf))


def test_closed_stream_frames_match_h2():
    """A stream closed both ways (h2spec http2/5.1 "closed"): DATA on it is a stream error STREAM_CLOSED,
    HEADERS a connection error STREAM_CLOSED (RFC 9113 5.1), on both sides; a lower id never opened is
    PROTOCOL_ERROR instead (5.1.1: told apart by the closed streams H2Wire remembers)."""
    pair = Pair()
    same(pair, START + head(1) + head(5))
    ours, ref = pair.both("send_headers", 1, [(b":status", b"204")], True)
    assert ours == ref
    (_e, out, code), (_e2, out_ref, code_ref) = pair.feed(data(1, b"x"))
    assert code is None and code_ref is None
    assert answer(code, out) == answer(code_ref, out_ref) == ("rst", 1, STREAM_CLOSED)
    (_e, out, code), (_e2, out_ref, code_ref) = pair.feed(head(1))
    assert code == code_ref == STREAM_CLOSED
    pair = Pair()
    same(pair, START + head(1) + head(5))
    (_e, out, code), (_e2, out_ref, code_ref) = pair.feed(head(3))
    assert code == code_ref == PROTOCOL


@pytest.mark.parametrize("length, bodies", [
    (1, [b"test"]),                  # h2spec http2/8.1.2.6/1: more than announced, in one DATA frame
    (1, [b"test", b"test"]),         # h2spec http2/8.1.2.6/2: more than announced, over several
    (10, [b"test"]),                 # less than announced
], ids=["longer", "longer-in-two-frames", "shorter"])
def test_body_against_content_length_is_the_engines_rule(length, bodies):
    """A request body that disagrees with its content-length is malformed (RFC 9113 8.1.1): a stream error
    PROTOCOL_ERROR. H2Wire only frames, so it hands the request, the DATA and the end up as they came, and
    the engine, which reads content-length while validating the fields, resets the stream (h2engine.pyx;
    tests/test_h2.py test_body_that_disagrees_with_content_length_is_reset); h2 makes it a connection
    error (InvalidBodyLengthError): a difference, pinned here."""
    raw = START + head(1, b"/up", b"POST", end=False, extra=[(b"content-length", b"%d" % length)])
    raw += b"".join(data(1, b, end=i == len(bodies) - 1) for i, b in enumerate(bodies))
    pair = Pair()
    (evs, out, code), (_evs_ref, out_ref, code_ref) = pair.feed(raw)
    assert code is None and answer(code, out) is None
    assert [e[0] for e in evs if e[0] != "settings"] == ["request", *["data"] * len(bodies), "end"]
    assert answer(code_ref, out_ref) == ("goaway", PROTOCOL)
