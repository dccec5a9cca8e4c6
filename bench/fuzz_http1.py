"""Fuzz fastgw's HTTP/1.1 parsers with atheris, each against its reference over httptools/llhttp.

http1_request: each input is fed to fastgw's request reader (fastgw/_core/http1.pyx) and to the reference
reader (fastgw/_core/http1_llhttp.pyx), whole and split where the input's first two bytes say, with the
default limits or small ones; the two must agree (tests/http1_diff.py `agree`: the same heads, bodies,
refusal and protocol switch).
http1_response: each input is an upstream's response, fed to fastgw's response reader
(fastgw/_core/http1_response.pyx) and to httptools' HttpResponseParser, whole and split where the first two
bytes say, for a plain or a tunnel request; the two must agree (tests/http1_response_diff.py `agree`: the
same status, kept fields, body, end, reuse, switch or refusal).
A disagreement or any exception from fastgw's parser is a crash.

The compiled parser carries no coverage instrumentation, so libFuzzer's guidance is weak: the seed corpus
(bench/fuzz_corpus/<target>/: the byte-split suites' own inputs, a handful of responses) and the dictionary of the grammar's
tokens do most of the work. Run from the repository root after building:

    python3 bench/fuzz_http1.py                 # 10 minutes per target
    python3 bench/fuzz_http1.py --minutes 1

Prints each target's executions and crashes; exit status 1 if any target crashed (the crashing input is
saved by libFuzzer as crash-* in the current directory).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "bench", "fuzz_corpus")
TARGETS = ("http1_request", "http1_response")

DICT = [b"\r\n", b"\r\n\r\n", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"GET /", b"POST /", b"CONNECT ", b"PRI * HTTP/2.0",
        b"Host: h\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n",
        b"Connection: keep-alive\r\n", b"Connection: upgrade\r\n", b"Upgrade: x\r\n", b"Expect: 100-continue\r\n",
        b"0\r\n\r\n", b";a=b", b';a="b"', b"\t", b" ", b":", b"?", b"#", b"%2e", b"%2f", b"/../", b"\x00", b"\x7f",
        b"\x80", b"X-API-Key: ", b"X_User_ID: ", b"TE: trailers\r\n", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 ",
        b"HTTP/1.1 101 ", b"HTTP/1.1 100 Continue\r\n\r\n", b" 204 ", b" 304 ", b"Proxy-Connection: ", b"X-T: 1\r\n"]


def one_input_response(data: bytes) -> None:
    from http1_response_diff import agree, both
    if len(data) < 2:
        return
    cut, tunnel, body = data[0] | (data[1] & 0x7F) << 8, bool(data[1] & 0x80), data[2:]
    cut = cut % (len(body) + 1)
    for chunks in ([body], [body[:cut], body[cut:]]):
        ours, ref = both(chunks, tunnel=tunnel)
        if not agree(ours, ref, body, tunnel=tunnel):
            raise AssertionError(f"readers disagree on {body!r} split at {[len(c) for c in chunks]}:\n"
                                 f"  fastgw:    {ours}\n  reference: {ref}")


def one_input(data: bytes) -> None:
    from http1_diff import agree, both
    if len(data) < 2:
        return
    cut, small, body = data[0] | (data[1] & 0x7F) << 8, data[1] & 0x80, data[2:]
    kw = dict(max_request_line=64, max_header_bytes=256, max_headers=5) if small else {}
    cut = cut % (len(body) + 1)
    for chunks in ([body], [body[:cut], body[cut:]]):
        ours, ref = both(chunks, **kw)
        if not agree(ours, ref, body, **kw):
            raise AssertionError(f"parsers disagree on {body!r} split at {[len(c) for c in chunks]}:\n"
                                 f"  fastgw:    {ours}\n  reference: {ref}")


def child(target: str, seconds: int) -> None:
    """Run one target under libFuzzer (in a process of its own: atheris.Fuzz never returns)."""
    import atheris
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    corpus = os.path.join(CORPUS, target)
    work = tempfile.mkdtemp(prefix=f"fuzz-{target}-")       # new inputs go here, not into the repo
    with tempfile.NamedTemporaryFile("w", suffix=".dict", delete=False) as d:
        for tok in DICT:
            d.write('"' + "".join(f"\\x{b:02x}" for b in tok) + '"\n')
    atheris.Setup([sys.argv[0], work, corpus, f"-max_total_time={seconds}", f"-dict={d.name}",
                   "-max_len=4096", "-print_final_stats=1"],
                  one_input_response if target == "http1_response" else one_input)
    atheris.Fuzz()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="per target (default 10)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, max(1, int(args.minutes * 60)))
        return 0
    failed = []
    targets = args.targets.split(",")
    from progress import Progress  # bench/progress.py (this script's directory is on sys.path)
    progress = Progress("fuzz_http1", len(targets), per_step=args.minutes * 60)
    for target in targets:
        progress.step(target, args.minutes * 60)
        p = subprocess.run([sys.executable, __file__, "--child", target, "--minutes", str(args.minutes)],
                           cwd=ROOT, capture_output=True, text=True)
        stats = [ln for ln in p.stderr.splitlines() if ln.startswith("stat::number_of_executed_units")
                 or "ERROR" in ln or "AssertionError" in ln or "Traceback" in ln]
        for ln in stats[-6:]:
            print(f"[fuzz] {target}: {ln}", flush=True)
        if p.returncode != 0:
            failed.append(target)
            print(p.stderr[-4000:], file=sys.stderr)
    progress.finish()
    print(f"[fuzz] {'crashes in ' + ', '.join(failed) if failed else '0 crashes'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
