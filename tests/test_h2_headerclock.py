"""HeaderClock (fastgw/_core/h2clock.pyx), the HTTP/2 header-block timer, against a reference
that knows every frame boundary: for any frame sequence cut into reads at any points, after each read
`since` is the time of the read in which the unfinished header block (or frame header, or the preface)
began, or 0 when the input is not inside one."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from fastgw._core.h2clock import HeaderClock

PREFACE = 24
T0 = 0.5                       # the connection's start; read k happens at time k + 1


def frame(ftype: int, flags: int, payload: bytes, sid: int = 1) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def block(n_cont: int, size: int) -> list[tuple[bytes, bool]]:
    """A header block: HEADERS then n_cont CONTINUATION frames, END_HEADERS on the last. (bytes, in_block)"""
    frames = [frame(1, 4 if n_cont == 0 else 0, b"h" * size)]
    for i in range(n_cont):
        frames.append(frame(9, 4 if i == n_cont - 1 else 0, b"c" * size))
    return [(f, True) for f in frames]


other = st.builds(lambda t, size: [(frame(t, 0, b"d" * size), False)], st.sampled_from([0, 4, 6, 8]),
                  st.integers(0, 30))
blocks = st.builds(block, st.integers(0, 3), st.integers(0, 20))


def spans(parts: list[tuple[bytes, bool]]) -> list[tuple[int, int]]:
    """Byte ranges [a, b) during which the input is unfinished: the preface, every frame header, and each
    header block from the first byte of its HEADERS frame to the last byte of its END_HEADERS frame."""
    out = [(0, PREFACE)]
    pos = PREFACE
    for data, in_block in parts:
        start, pos = pos, pos + len(data)
        if in_block and data[3] == 9:              # CONTINUATION: the block's span grows
            out[-1] = (out[-1][0], pos)
        else:
            out.append((start, pos) if in_block else (start, start + 9))
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(other, blocks), min_size=1, max_size=8).map(lambda ls: [p for x in ls for p in x]),
       st.lists(st.integers(1, 40), min_size=1, max_size=60))
def test_since_matches_the_reference(parts, cuts):
    stream = b"P" * PREFACE + b"".join(d for d, _ in parts)
    unfinished = spans(parts)
    bounds = []
    at = 0
    for c in cuts:
        at = min(len(stream), at + c)
        bounds.append(at)
        if at == len(stream):
            break
    if bounds[-1] != len(stream):
        bounds.append(len(stream))
    clock = HeaderClock(PREFACE, T0)
    start = 0
    read_of = {}                      # byte offset -> time of the read that carried it
    for k, end in enumerate(bounds):
        for b in range(start, end):
            read_of[b] = k + 1.0
        clock.feed(stream[start:end], k + 1.0)
        inside = [(a, b) for a, b in unfinished if a < end < b]
        if not inside:
            want = 0.0
        else:
            a = inside[0][0]
            want = T0 if a == 0 else read_of[a]
        assert clock.since == want, (end, inside, k)
        start = end


def test_preface_alone_keeps_the_clock_running():
    clock = HeaderClock(PREFACE, T0)
    clock.feed(b"P" * 10, 1.0)
    assert clock.since == T0
    clock.feed(b"P" * 14, 2.0)
    assert clock.since == 0


def test_one_byte_continuations_never_restart_the_clock():
    clock = HeaderClock(PREFACE, T0)
    clock.feed(b"P" * PREFACE + frame(1, 0, b"\x82\x86"), 1.0)
    assert clock.since == 1.0
    for t in range(2, 20):
        clock.feed(frame(9, 0, b"a"), float(t))
        assert clock.since == 1.0
    clock.feed(frame(9, 4, b"a"), 20.0)
    assert clock.since == 0
