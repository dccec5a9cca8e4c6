"""HTTP/2 connection and stream lifecycle (docs/http2.md): how many streams one read may open, GOAWAY
from either side (the client's, the two-step drain), the timers that end a stream or a connection
(stall, upstream, header block) and HPACK errors. A real gateway process, the real echo origin, raw
frames (tests/h2client.py) and h2load.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from h2client import CANCEL, PROTOCOL_ERROR, REFUSED_STREAM, Raw, done, drained, headers_frame, read_frames
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

COMPRESSION_ERROR = 9
LAST_ID = 2**31 - 1


def h2_section(**keys: object) -> str:
    return "\n[server.http2]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def echo(gateway, echo_origin, timeout: str = "10s", limits: dict | None = None, **h2: object):
    return gateway.start({"echo": {"targets": [echo_origin.addr], "timeout": timeout}},
                         [{"name": "echo", "path": "/echo/*", "upstream": "echo"}],
                         limits=limits, extra=h2_section(**h2) if h2 else "")


def status(frames: list, sid: int, c: Raw) -> str | None:
    for f in frames:
        if isinstance(f, HeadersFrame) and f.stream_id == sid:
            return dict(c.h2.decoder.decode(f.data))[":status"]
    return None


def ended(frames: list, sid: int) -> bool:
    return any("END_STREAM" in f.flags for f in frames if f.stream_id == sid and isinstance(f, (HeadersFrame, DataFrame)))


def goaways(frames: list) -> list[GoAwayFrame]:
    return [f for f in frames if isinstance(f, GoAwayFrame)]


def pinged(frames: list) -> bool:
    return any(isinstance(f, PingFrame) and "ACK" not in f.flags for f in frames)


# ---------------------------------------------------------------------------------------------------
# New streams in one read: the cap follows max_concurrent_streams, streams over the limit are refused


def test_h2load_with_more_streams_than_100(gateway, echo_origin):
    """max_concurrent_streams = 200 and h2load -m150 on one connection: every request succeeds (the
    per-read cap was a fixed 100, so a read with more than 100 of the client's new streams was taken for
    a flood: GOAWAY ENHANCE_YOUR_CALM)."""
    g = echo(gateway, echo_origin, max_concurrent_streams=200)
    for _ in range(5):              # how many new streams share a read varies: five runs
        out = subprocess.run(["h2load", "-n", "600", "-c", "1", "-m", "150", g.url + "/echo/m150"],
                             capture_output=True, text=True, timeout=60)
        assert "600 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout[-1500:]
        assert "600 2xx" in out.stdout


def test_150_new_streams_in_one_read_under_a_limit_of_200(gateway, echo_origin):
    g = echo(gateway, echo_origin, max_concurrent_streams=200)
    c = Raw(g.port)
    # 150 answers (~67 KB of bodies) are more than the connection's initial 65,535-byte window: without
    # more window the last streams cannot end, and the read waited its whole 5 s for them.
    c.raw(WindowUpdateFrame(0, window_increment=1 << 20).serialize()
          + b"".join(headers_frame(1 + 2 * i, c) for i in range(150)))
    frames = read_frames(c.sock, 5, until=lambda fs: sum(ended([f], f.stream_id) for f in fs) >= 150)
    assert all(ended(frames, 1 + 2 * i) for i in range(150))
    assert not goaways(frames) and not [f for f in frames if isinstance(f, RstStreamFrame)]
    assert len({f.stream_id for f in frames if isinstance(f, HeadersFrame)}) == 150
    c.close()


def test_streams_over_the_limit_in_one_read_are_refused(gateway, echo_origin):
    """A client that sends its first 150 requests before it has seen the server's SETTINGS (the initial
    limit is unlimited, RFC 9113 6.5.2) gets 100 answers and 50 REFUSED_STREAM, not a GOAWAY."""
    g = echo(gateway, echo_origin)
    c = Raw(g.port)
    c.raw(b"".join(headers_frame(1 + 2 * i, c) for i in range(150)))

    def settled(fs: list) -> bool:
        return (sum(isinstance(f, RstStreamFrame) for f in fs) >= 50
                and sum(ended([f], f.stream_id) for f in fs) >= 100)

    # Read until the 150 are settled (not a fixed 3 s), then 0.5 s more for anything sent after them.
    frames = read_frames(c.sock, 5, until=settled)
    frames += read_frames(c.sock, 0.5)
    refused = {f.stream_id for f in frames if isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM}
    answered = {f.stream_id for f in frames if isinstance(f, HeadersFrame)}
    assert not goaways(frames)
    assert len(answered) == 100 and len(refused) == 50 and not answered & refused
    assert {f.stream_id for f in frames if isinstance(f, RstStreamFrame)} == refused
    c.close()


# ---------------------------------------------------------------------------------------------------
# The client's GOAWAY: streams already taken complete (RFC 9113 6.8)


def test_stream_in_flight_completes_after_the_client_goaway(gateway, echo_origin):
    g = echo(gateway, echo_origin)
    c = Raw(g.port)
    sid = c.request("/echo/after-client-goaway?delay=0.5")
    assert echo_origin.wait_for(lambda: echo_origin.requests_for("/echo/after-client-goaway"), timeout=5)
    c.raw(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    frames = read_frames(c.sock, 5)
    assert status(frames, sid, c) == "200" and ended(frames, sid), frames
    assert not [f for f in frames if isinstance(f, RstStreamFrame)]
    # Then fastgw says goodbye too (naming the stream it took) and closes the connection.
    assert [(f.last_stream_id, f.error_code) for f in goaways(frames)] == [(sid, 0)]
    c.close()


def test_new_stream_after_the_client_goaway_is_refused(gateway, echo_origin):
    g = echo(gateway, echo_origin)
    c = Raw(g.port)
    slow = c.request("/echo/slow-before-goaway?delay=0.5")
    c.raw(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize() + headers_frame(slow + 2, c))
    frames = read_frames(c.sock, 5)
    assert {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)} == {slow + 2: REFUSED_STREAM}
    assert status(frames, slow, c) == "200" and ended(frames, slow)
    c.close()


# ---------------------------------------------------------------------------------------------------
# Drain: GOAWAY(2^31-1) and a PING, then GOAWAY(last stream) once the PING is answered


def test_drain_two_step_goaway_serves_a_racing_request(gateway, echo_origin):
    """A request the client sent before it saw the drain's first GOAWAY is served: the first GOAWAY names
    2^31-1, and the real last stream is named only after a PING round trip."""
    g = echo(gateway, echo_origin)
    c = Raw(g.port)
    first = c.request("/echo/drain-first?delay=0.8")
    assert echo_origin.wait_for(lambda: echo_origin.requests_for("/echo/drain-first"), timeout=5)
    g.proc.send_signal(signal.SIGTERM)
    buf = read_frames(c.sock, 5, until=pinged)         # the first GOAWAY and its PING
    assert [f.last_stream_id for f in goaways(buf)] == [LAST_ID], buf
    ping = [f for f in buf if isinstance(f, PingFrame)][0]
    assert "ACK" not in ping.flags
    # A request racing the GOAWAY (sent before the client answers the PING) is taken, then the PING ack.
    racing = first + 2
    c.raw(headers_frame(racing, c))
    time.sleep(0.2)
    c.raw(PingFrame(0, opaque_data=ping.opaque_data, flags=["ACK"]).serialize())
    frames = read_frames(c.sock, 8)
    final = goaways(frames)
    assert [(f.last_stream_id, f.error_code) for f in final] == [(racing, 0)], frames
    assert status(frames, racing, c) == "200" and ended(frames, racing)
    assert status(frames, first, c) == "200" and ended(frames, first)
    assert not [f for f in frames if isinstance(f, RstStreamFrame)]
    c.close()
    drained(gateway, g)


def test_drain_refuses_streams_after_the_final_goaway(gateway, echo_origin):
    g = echo(gateway, echo_origin)
    c = Raw(g.port)
    first = c.request("/echo/drain-final?delay=1")
    assert echo_origin.wait_for(lambda: echo_origin.requests_for("/echo/drain-final"), timeout=5)
    g.proc.send_signal(signal.SIGTERM)
    buf = read_frames(c.sock, 5, until=pinged)
    ping = [f for f in buf if isinstance(f, PingFrame)][0]
    c.raw(PingFrame(0, opaque_data=ping.opaque_data, flags=["ACK"]).serialize())
    buf += read_frames(c.sock, 5, until=lambda fs: goaways(fs))
    assert [f.last_stream_id for f in goaways(buf)] == [LAST_ID, first]
    late = first + 2
    c.raw(headers_frame(late, c))
    frames = read_frames(c.sock, 5)
    assert {f.stream_id: f.error_code for f in frames if isinstance(f, RstStreamFrame)} == {late: REFUSED_STREAM}
    assert status(buf + frames, first, c) == "200" and ended(buf + frames, first)
    c.close()
    drained(gateway, g)


# ---------------------------------------------------------------------------------------------------
# Timers: stall (the client's window) and upstream (the upstream's silence) are independent


def test_stalled_stream_is_reset_at_stall_timeout_not_the_upstream_timeout(gateway, echo_origin):
    """The upstream answers at once; the client never opens its window. The upstream timeout (1 s) does
    not run while fastgw itself holds the response back: the stream is reset with CANCEL at
    stall_timeout (2.5 s)."""
    g = echo(gateway, echo_origin, timeout="1s", stall_timeout="2500ms")
    c = Raw(g.port, window=16384)
    t0 = time.monotonic()
    sid = c.request("/echo/big?size=1000000")
    c.read_unacked(lambda r: r.reset_code(sid) is not None, 8)     # the window stays shut
    elapsed = time.monotonic() - t0
    assert c.reset_code(sid) == CANCEL
    assert 2.3 < elapsed < 5, elapsed
    c.close()


def test_slow_but_moving_reader_is_not_stalled(gateway, echo_origin):
    """stall_timeout measures time without progress: a client that opens its 16 KiB window every 0.3 s
    keeps its 160 KB download going for ~3 s, past a 1 s stall_timeout."""
    g = echo(gateway, echo_origin, stall_timeout="1s")
    c = Raw(g.port, window=16384)
    sid = c.request("/echo/slowread?size=160000")
    got = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not done(sid)(c):
        c.sock.settimeout(0.3)
        try:
            data = c.sock.recv(65536)
        except TimeoutError:
            data = None
        if data == b"":
            break
        if data:
            c.events += c.h2.receive_data(data)
        body = c.response(sid)[1]
        if len(body) > got:
            time.sleep(0.3)
            c.h2.acknowledge_received_data(len(body) - got, sid)
            c.out()
            got = len(body)
    head, body, fin = c.response(sid)
    assert c.reset_code(sid) is None
    assert head[":status"] == "200" and fin and len(body) == 160000
    c.close()


# ---------------------------------------------------------------------------------------------------
# The header timeout covers a whole header block


def unfinished_block(c: Raw, sid: int) -> bytes:
    f = HeadersFrame(sid, data=c.h2.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                                    (b":path", b"/echo/slowloris")]))
    return f.serialize()                               # no END_HEADERS: CONTINUATION must follow


@pytest.mark.parametrize("how", ["continuation", "dribbled-frame"])
def test_header_block_slowloris_is_closed_at_header_timeout(gateway, echo_origin, how):
    """HEADERS without END_HEADERS, then a 1-byte CONTINUATION every 0.4 s (or a HEADERS frame sent one
    byte at a time): each byte is activity, but the header block is not finished within header_timeout
    (2 s), so the connection gets GOAWAY PROTOCOL_ERROR and is closed."""
    g = echo(gateway, echo_origin, limits={"header_timeout": "2s"})
    t0 = time.monotonic()         # the clock runs from the preface (the connection's start), not the first frame
    c = Raw(g.port)
    c.pump(lambda r: False, timeout=0.2)
    if how == "continuation":
        c.raw(unfinished_block(c, 1))
        pieces = [ContinuationFrame(1, data=b"\x40").serialize()] + [
            ContinuationFrame(1, data=b"a").serialize() for _ in range(30)]
    else:
        frame = HeadersFrame(1, data=c.h2.encoder.encode([(b":method", b"GET"), (b":scheme", b"http"),
                                                          (b":path", b"/echo/slowloris")] + [
            (b"x-pad", b"p" * 20)]), flags=["END_HEADERS", "END_STREAM"]).serialize()
        pieces = [frame[i:i + 1] for i in range(len(frame))]
    closed_at = None
    frames: list = []
    for piece in pieces:
        try:
            c.raw(piece)
        except OSError:
            closed_at = time.monotonic()
            break
        frames += read_frames(c.sock, 0.4, until=goaways)
        if goaways(frames):
            closed_at = time.monotonic()
            break
        if time.monotonic() - t0 > 8:
            break
    frames += read_frames(c.sock, 1)
    assert closed_at is not None, "still open after %.1f s" % (time.monotonic() - t0)
    assert 1.8 < closed_at - t0 < 4, closed_at - t0
    assert [f.error_code for f in goaways(frames)] == [PROTOCOL_ERROR]
    assert not echo_origin.requests_for("/echo/slowloris")
    c.close()


def test_slow_body_and_quiet_connection_are_not_header_timeouts(gateway, echo_origin):
    """The header timer covers header blocks only: a body sent in small DATA frames for 1.5 s and a
    connection that is quiet for 1 s between requests outlive a 0.5 s header_timeout (3 and 2 times it;
    the test's first form: 3 s and 1.5 s against 1 s)."""
    g = echo(gateway, echo_origin, limits={"header_timeout": "500ms"})
    c = Raw(g.port)
    sid = c.request("/echo/slow-body", method="POST", end=False)
    for i in range(10):
        c.raw(DataFrame(sid, data=b"x" * 10, flags=["END_STREAM"] if i == 9 else []).serialize())
        time.sleep(0.15)
    assert c.pump(done(sid), timeout=5)
    assert c.response(sid)[0][":status"] == "200"
    assert json.loads(c.response(sid)[1])["body_sha256"]
    time.sleep(1.0)
    sid2 = c.request("/echo/after-quiet")
    assert c.pump(done(sid2), timeout=5)
    assert c.response(sid2)[0][":status"] == "200" and not c.goaway()
    c.close()


@pytest.fixture(scope="module")
def plain(gateway_launcher, echo_origin):
    return gateway_launcher.start({"echo": {"targets": [echo_origin.addr]}},
                                  [{"name": "echo", "path": "/echo/*", "upstream": "echo"}])


# ---------------------------------------------------------------------------------------------------
# HPACK decoding errors are COMPRESSION_ERROR (RFC 9113 4.3)


@pytest.mark.parametrize("block", [b"\x80", b"\xbe", b"\xff", b"\x40\x05ab", b"\x44\x8f\xff", b"\x3f\xe2\x1f"],
                         ids=["index-0", "unknown-index", "truncated-int", "short-literal", "bad-huffman",
                              "table-too-big"])
def test_hpack_error_is_compression_error(plain, block):
    g = plain
    c = Raw(g.port)
    c.pump(lambda r: False, timeout=0.2)
    c.raw(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    frames = read_frames(c.sock, 3)
    assert [f.error_code for f in goaways(frames)] == [COMPRESSION_ERROR], frames
    c.close()


def test_window_update_frames_are_not_header_blocks(gateway, echo_origin):
    """Frames of other types between requests (WINDOW_UPDATE, PING) never start the header timer."""
    g = echo(gateway, echo_origin, limits={"header_timeout": "1s"})
    c = Raw(g.port)
    for i in range(8):
        c.raw(WindowUpdateFrame(0, window_increment=1).serialize() + PingFrame(0, opaque_data=b"%08d" % i).serialize())
        time.sleep(0.25)
    sid = c.request("/echo/after-pings")
    assert c.pump(done(sid), timeout=5)
    assert c.response(sid)[0][":status"] == "200" and not c.goaway()
    c.close()
