"""fastgw's HTTP/1.1 request parser (fastgw/_core/http1.pyx) against the reference, httptools/llhttp in
strict mode (fastgw/_core/http1_llhttp.pyx, the reader fastgw used before): the same bytes, split the same
ways, must give the same requests (every head field fastgw uses, each body), or the same refusal (status
and slug), and the same protocol switch. Inputs: the byte-split suites' own (tests/test_http1_reader.py,
test_proxy_strict.py), single bytes of every value at each place of the grammar, and generated requests
(tests/http1_diff.py). The fuzzer (bench/fuzz_http1.py) runs the same check on atheris' inputs.
"""
from __future__ import annotations

import random

import pytest
from http1_diff import agree, both, generate, in_scope, splits
from test_http1_reader import BAD, GOOD
from test_proxy_strict import MALFORMED, MALFORMED_BODY


def same(data: bytes, rng: random.Random | None = None, every: bool = False, **kw) -> None:
    for chunks in splits(data, rng, every):
        ours, ref = both(chunks, **kw)
        assert agree(ours, ref, data, **kw), (data, [len(c) for c in chunks][:3], ours, ref)


SUITES = {**{f"good-{i}": d for i, d in enumerate(GOOD)}, **{f"bad-{k}": d for k, (d, _) in BAD.items() if in_scope(d)},
          **{f"strict-{k}": b(f"m{k}") for k, b in MALFORMED + MALFORMED_BODY}}


@pytest.mark.parametrize("name", sorted(SUITES))
def test_the_suites_inputs_at_every_split(name):
    data = SUITES[name]
    if len(data) > 2000:                       # the 8-40 KiB ones: whole, byte by byte and 60 cuts
        same(data, random.Random(name), every=False)
    else:
        same(data, every=True)


TEMPLATES = {
    "method": (b"G", b"T / HTTP/1.1\r\nHost: h\r\n\r\n"),
    "target": (b"GET /a", b"b HTTP/1.1\r\nHost: h\r\n\r\n"),
    "query": (b"GET /a?", b"b HTTP/1.1\r\nHost: h\r\n\r\n"),
    "version": (b"GET / HTTP/1", b"1\r\nHost: h\r\n\r\n"),
    "after-version": (b"GET / HTTP/1.1", b"\nHost: h\r\n\r\n"),
    "name": (b"GET / HTTP/1.1\r\nHost: h\r\nX", b"y: v\r\n\r\n"),
    "name-start": (b"GET / HTTP/1.1\r\nHost: h\r\n", b"X: v\r\n\r\n"),
    "value": (b"GET / HTTP/1.1\r\nHost: h\r\nX: a", b"b\r\n\r\n"),
    "value-start": (b"GET / HTTP/1.1\r\nHost: h\r\nX:", b"b\r\n\r\n"),
    "value-end": (b"GET / HTTP/1.1\r\nHost: h\r\nX: a", b"\r\n\r\n"),
    "host": (b"GET / HTTP/1.1\r\nHost: a", b"\r\n\r\n"),
    "content-length": (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1", b"\r\n\r\nhello world"),
    "end-of-head": (b"GET / HTTP/1.1\r\nHost: h\r\n", b"\r\n"),
    "between": (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    "after-close": (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", b""),
    "chunk-size": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5", b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-name": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a", b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-start": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;", b"=b\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-value": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b", b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-ext-quoted": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b", b"\"\r\nhello\r\n0\r\n\r\n"),
    "chunk-data-end": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello", b"\n0\r\n\r\n"),
    "last-chunk": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0", b"\r\n\r\n"),
    "trailer": (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", b"\r\n"),
}


@pytest.mark.parametrize("place", sorted(TEMPLATES))
def test_every_byte_value_at_each_place_of_the_grammar(place):
    pre, post = TEMPLATES[place]
    for c in range(256):
        data = pre + bytes([c]) + post
        ours, ref = both([data])
        assert ours == ref, data
        ours, ref = both([data[:len(pre)], data[len(pre):]])
        assert ours == ref, data


def test_limits_give_the_same_answers():
    """The request-line, header-count and head-size limits (smaller ones, so the cases stay short)."""
    kw = dict(max_request_line=64, max_header_bytes=256, max_headers=5)
    cases = [
        b"GET /" + b"a" * 63 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /" + b"a" * 64 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 4 + b"\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 5 + b"\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 240 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 300 + b"\r\n\r\n",
    ]
    for data in cases:
        same(data, every=True, **kw)


N_GENERATED = 3000


def test_generated_requests():
    rng = random.Random(20)
    n = 0
    while n < N_GENERATED:
        data = generate(rng)
        if not in_scope(data):
            continue
        n += 1
        same(data, rng)
