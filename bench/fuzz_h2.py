#!/usr/bin/env python3
"""Fuzz the compiled HTTP/2 wire layer (fastgw/_core/h2frames.pyx: H2Wire) with atheris: random frame
streams after a valid preface, cut into random reads, with the engine's calls (responses, DATA within the
windows, acknowledgements, resets) interleaved. A run passes when nothing but H2Error (a connection error,
its GOAWAY queued) ever leaves H2Wire, and the layer's invariants hold after every read:

  * every frame written parses (length, type, 9-byte header) and a connection error's last frame is GOAWAY;
  * no window the client gave us goes past 2^31-1, and no DATA is sent beyond them.

    python3 bench/fuzz_h2.py                    # 10 minutes (the issue's bar), corpus bench/fuzz_h2_corpus
    python3 bench/fuzz_h2.py --minutes 1
    python3 bench/fuzz_h2.py --runs 20000       # a fixed number of inputs (the tests' smoke run)

The corpus is small on purpose: a few seed sessions (written by --seed-corpus), and atheris keeps only what
adds coverage. Needs `pip install atheris`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]

from fastgw._core.h2frames import PREFACE, H2Error, H2Wire  # noqa: E402

CORPUS = os.path.join(HERE, "fuzz_h2_corpus")
WIN_MAX = 2**31 - 1


def check_frames(out: bytes) -> list:
    """Parse what H2Wire wrote; a malformed frame is a bug (AssertionError)."""
    frames = []
    pos = 0
    while pos < len(out):
        assert len(out) - pos >= 9, "a truncated frame header written"
        length = int.from_bytes(out[pos:pos + 3], "big")
        assert len(out) - pos - 9 >= length, "a truncated frame written"
        frames.append((out[pos + 3], out[pos + 4], int.from_bytes(out[pos + 5:pos + 9], "big"), out[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return frames


def one_input(data: bytes) -> None:
    w = H2Wire(8, 65535, 16384)
    w.initiate_connection()
    w.increment_flow_control_window(1 << 20)
    check_frames(w.data_to_send())
    sids: list[int] = []
    pos = 0
    feed = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    while pos < len(data):
        op = data[pos]
        pos += 1
        cut = 1 + (data[pos] if pos < len(data) else 0) * 4
        chunk = data[pos + 1:pos + 1 + cut]
        pos += 1 + cut
        try:
            if op < 200:
                events = w.receive_data(feed + chunk)
                feed = b""
                for e in events:
                    if e.kind == 1 and e.stream_id not in sids:
                        sids.append(e.stream_id)
                    if e.kind == 2 and e.flow_controlled_length:
                        w.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif sids:
                sid = sids[op % len(sids)]
                if op < 215:
                    w.send_headers(sid, [(b":status", b"200"), (b"x-f", chunk[:40])], op & 1 == 0)
                elif op < 235:
                    n = min(len(chunk) * 64, w.local_flow_control_window(sid), w.max_outbound_frame_size)
                    if n > 0:
                        w.send_data(sid, b"d" * n, op & 1 == 1)
                elif op < 245:
                    w.reset_stream(sid, op & 0xF)
                else:
                    w.close_connection(0, -1)
        except H2Error:
            frames = check_frames(w.data_to_send())
            assert frames and frames[-1][0] == 7, "a connection error without a GOAWAY last"
            return
        frames = check_frames(w.data_to_send())
        for ftype, _flags, sid, payload in frames:
            if ftype == 0:                           # DATA: only within what the windows allowed
                assert len(payload) <= 16384 or sid == 0
        for sid in list(sids):
            assert w.local_flow_control_window(sid) <= WIN_MAX


def seed_corpus() -> None:
    """A few valid sessions as starting points (the op byte < 200 feeds the rest as one read)."""
    import hpack
    os.makedirs(CORPUS, exist_ok=True)

    def frame(t: int, f: int, s: int, p: bytes) -> bytes:
        return struct.pack(">I", len(p))[1:] + bytes([t, f]) + struct.pack(">I", s) + p

    def read(raw: bytes) -> bytes:
        out = b""
        for i in range(0, len(raw), 1021):        # at most 4*255+1 bytes per op
            part = raw[i:i + 1021]
            k = (len(part) + 2) // 4                # the op's read is 1 + 4k bytes: the part, then zeros
            out += bytes([0, k]) + part.ljust(4 * k + 1, b"\0")
        return out

    block = hpack.Encoder().encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                                    (b":authority", b"a")])
    seeds = {
        "get": read(frame(1, 5, 1, block)),
        "post": read(frame(1, 4, 1, block) + frame(0, 0, 1, b"x" * 100) + frame(0, 1, 1, b"y")) + b"\xd0\x01zzzzz",
        "control": read(frame(6, 0, 0, b"8bytes!!") + frame(8, 0, 0, b"\0\0\1\0") + frame(2, 0, 3, b"\0\0\0\1\7")
                        + frame(4, 0, 0, b"\0\4\0\1\0\0")),
        "continuation": read(frame(1, 0, 1, block[:5]) + frame(9, 0, 1, block[5:9]) + frame(9, 4, 1, block[9:])),
    }
    for name, raw in seeds.items():
        with open(os.path.join(CORPUS, name), "wb") as f:
            f.write(raw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=0, help="a fixed number of inputs instead of a time")
    ap.add_argument("--seed-corpus", action="store_true", help="(re)write the seed corpus and exit")
    args = ap.parse_args()
    if args.seed_corpus:
        seed_corpus()
        return 0
    try:
        import atheris
    except ImportError:
        print("fuzz_h2: atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    if not os.path.isdir(CORPUS):
        seed_corpus()
    limit = [f"-runs={args.runs}"] if args.runs else [f"-max_total_time={int(args.minutes * 60)}"]
    # New inputs go to a scratch directory: the committed corpus stays the small seed set.
    scratch = f"/tmp/fuzz_h2_corpus.{os.getpid()}"
    os.makedirs(scratch, exist_ok=True)
    start = time.monotonic()
    # Progress lines while libFuzzer runs (its heartbeat thread; libFuzzer's exit ends the process).
    # Loaded by path: this script keeps bench/ off sys.path, where bench/h2.py would shadow the h2 library.
    spec = importlib.util.spec_from_file_location("progress", os.path.join(HERE, "progress.py"))
    progress_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(progress_mod)
    progress = progress_mod.Progress("fuzz_h2", 1, per_step=None if args.runs else args.minutes * 60)
    progress.step("H2Wire", None if args.runs else args.minutes * 60)
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], "-max_len=4096", "-print_final_stats=1", *limit, scratch, CORPUS], one_input)
    atheris.Fuzz()
    print(f"fuzz_h2: {time.monotonic() - start:.0f}s, no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
