"""fastgw's HTTP/1.1 response reader (fastgw/_core/http1_response.pyx) against the reference, httptools'
HttpResponseParser (llhttp in strict mode, driven as fastgw drove it before): the same bytes, split the
same ways, must give the same response (status, kept fields, Content-Length, body bytes, how it ends,
whether the connection may be reused) or both refuse it. Inputs: responses written for each rule, single
bytes of every value at each place of the grammar, and generated responses (tests/http1_response_diff.py).
The differences on purpose are pinned at the end, each with its rule. The fuzzer (bench/fuzz_http1.py,
target http1_response) runs the same check on atheris' inputs.
"""
from __future__ import annotations

import random

import pytest
from http1_diff import splits
from http1_response_diff import (
    RE_BODY,
    RE_END,
    RE_ERROR,
    RE_HEAD,
    RE_NEED,
    RE_SWITCH,
    agree,
    both,
    generate,
    ours,
    reference,
)

from fastgw._core.http1 import ResponseReader


def same(data: bytes, rng: random.Random | None = None, every: bool = True, **kw) -> None:
    for chunks in splits(data, rng, every):
        for tunnel in (False, True):
            a, b = both(chunks, tunnel=tunnel, **kw)
            assert agree(a, b, data, tunnel=tunnel, **kw), (data, [len(c) for c in chunks][:4], tunnel, a, b)


CASES = {
    "cl": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n0123456789",
    "cl-zero": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "cl-ows": b"HTTP/1.1 200 OK\r\nContent-Length:  3 \t\r\n\r\nabc",
    "cl-dup": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "cl-overflow": b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
    "cl-sign": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=\"y z\"\r\n world\r\n0\r\n\r\n",
    "chunked-trailers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nX-U:\r\n\r\n",
    "chunked-bad-trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX T: 1\r\n\r\n",
    "chunked-not-last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    "te-twice": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    "eof": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end",
    "http10": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab",
    "http10-keepalive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nab",
    "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab",
    "conn-names": b"HTTP/1.1 200 OK\r\nConnection: X-A, close\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n",
    "proxy-connection": b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n",
    "removed": b"HTTP/1.1 200 OK\r\nX-Secret: s\r\nx-secret: t\r\nX-Kept: k\r\nContent-Length: 0\r\n\r\n",
    "hop": b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nTE: x\r\nTrailer: y\r\nUpgrade: z\r\nContent-Length: 0\r\n\r\n",
    "204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    "101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\n\x81\x00",
    "101-no-upgrade": b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
    "no-reason": b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    "empty-reason": b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
    "leading-crlf": b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "bare-cr": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
    "version-12": b"HTTP/1.2 200 OK\r\n\r\n",
    "status-2-digits": b"HTTP/1.1 20 OK\r\n\r\n",
    "status-4-digits": b"HTTP/1.1 2000 OK\r\n\r\n",
    "lowercase-http": b"http/1.1 200 OK\r\n\r\n",
    "garbage": b"Z" * 40,
    "chunk-size-space": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "chunk-too-long": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_cases_at_every_split(name):
    same(CASES[name])


TEMPLATES = {
    "version": (b"HTTP/1", b"1 200 OK\r\nContent-Length: 1\r\n\r\nx"),
    "minor": (b"HTTP/1.", b" 200 OK\r\nContent-Length: 1\r\n\r\nx"),
    "after-version": (b"HTTP/1.1", b"200 OK\r\nContent-Length: 1\r\n\r\nx"),
    "status": (b"HTTP/1.1 2", b"0 OK\r\nContent-Length: 1\r\n\r\nx"),
    "after-status": (b"HTTP/1.1 200", b"OK\r\nContent-Length: 1\r\n\r\nx"),
    "reason": (b"HTTP/1.1 200 O", b"K\r\nContent-Length: 1\r\n\r\nx"),
    "status-line-end": (b"HTTP/1.1 200 OK", b"\nContent-Length: 1\r\n\r\nx"),
    "name-start": (b"HTTP/1.1 200 OK\r\n", b"A: v\r\nContent-Length: 1\r\n\r\nx"),
    "name": (b"HTTP/1.1 200 OK\r\nX", b"A: v\r\nContent-Length: 1\r\n\r\nx"),
    "value": (b"HTTP/1.1 200 OK\r\nX-A: a", b"b\r\nContent-Length: 1\r\n\r\nx"),
    "value-end": (b"HTTP/1.1 200 OK\r\nX-A: a", b"\r\nContent-Length: 1\r\n\r\nx"),
    "connection": (b"HTTP/1.1 200 OK\r\nConnection: close", b"\r\nContent-Length: 1\r\n\r\nx"),
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1", b"\r\n\r\nxyzxyzxyzxyz"),
    "transfer-encoding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
    "end-of-head": (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", b"\r\nx"),
    "chunk-size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1", b"\r\nx\r\n0\r\n\r\n"),
    "chunk-ext": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a", b"\r\nx\r\n0\r\n\r\n"),
    "chunk-ext-value": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=", b"\r\nx\r\n0\r\n\r\n"),
    "chunk-ext-quoted": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\"", b"\"\r\nx\r\n0\r\n\r\n"),
    "chunk-data-end": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx", b"\n0\r\n\r\n"),
    "trailer-start": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", b"T: 1\r\n\r\n"),
    "trailer-value": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: 1", b"\r\n\r\n"),
    "last-line": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", b"\n"),
    "101-upgrade": (b"HTTP/1.1 101 S\r\nUpgrade: w\r\nConnection: upgrade", b"\r\n\r\nxy"),
    # (a long name: its first, second and third eight bytes)
    "name-word-1": (b"HTTP/1.1 200 OK\r\nX-Lon", b"g-Header-Name: v\r\nContent-Length: 1\r\n\r\nx"),
    "name-word-2": (b"HTTP/1.1 200 OK\r\nX-Long-Head", b"r-Name: v\r\nContent-Length: 1\r\n\r\nx"),
    "name-tail": (b"HTTP/1.1 200 OK\r\nX-Long-Header-Na", b"e: v\r\nContent-Length: 1\r\n\r\nx"),
}


@pytest.mark.parametrize("place", sorted(TEMPLATES))
def test_every_byte_value_at_each_place(place):
    before, after = TEMPLATES[place]
    for v in range(256):
        data = before + bytes([v]) + after
        for chunks in ([data], [before, bytes([v]) + after], [before + bytes([v]), after]):
            for tunnel in (False, True):
                a, b = both(chunks, tunnel=tunnel)
                assert agree(a, b, data, tunnel=tunnel), (place, v, [len(c) for c in chunks], tunnel, a, b)


def test_generated_responses():
    rng = random.Random(20)
    for _ in range(3000):
        same(generate(rng), rng, every=False)


# -- the differences on purpose -----------------------------------------------------------------------

def test_a_response_to_head_ends_with_its_head_and_keeps_the_connection():
    """RFC 9112 6.3 rule 1: a response to HEAD has no body whatever its framing fields say; llhttp cannot
    be told the method (fastgw used to finish the exchange itself and drop the connection)."""
    for framing in (b"Content-Length: 100\r\n", b"Transfer-Encoding: chunked\r\n", b""):
        head = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n"
        assert ours([head], head=True) == (("head", 200, (), b"100" if b"100" in framing else None),
                                           ("end", b"", True))
        assert reference([head])[-1][0] != "end" or reference([head])[-1][2] == "eof"   # llhttp waits for a body
    # the next response on the connection is read whole
    assert ours([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], head=True)[-1] == ("end", b"", True)


def test_refused_on_purpose():
    # not HTTP status lines (RTSP/ICE), a status under 100 (RFC 9110 15)
    for data in (b"RTSP/1.0 200 OK\r\n\r\n", b"ICE/1.0 200 OK\r\n\r\n", b"HTTP/1.1 099 x\r\nContent-Length: 0\r\n\r\n",
                 b"\nHTTP/1.1 050 Continue\r\n\r\n"):
        assert agree(ours([data]), reference([data]), data)
        assert ours([data])[-1] == ("error",)
        assert reference([data])[-1] != ("error",)
    # chunk extensions are bounded per response, as on the request side
    big = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1;" + b"a" * 5000 + b"\r\nx\r\n0\r\n\r\n"
    assert ours([big])[-1] == ("error",)
    # the head is bounded: size and lines
    long = b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70000 + b"\r\n\r\n"
    assert ours([long])[-1] == ("error",)
    assert ours([long[:40000], long[40000:]])[-1] == ("error",)
    many = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 257 + b"Content-Length: 0\r\n\r\n"
    assert ours([many])[-1] == ("error",)
    assert ours([b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 255 + b"Content-Length: 0\r\n\r\n"])[-1] == ("end", b"", True)


def test_a_tunnel_needs_its_request():
    data = CASES["101"]
    assert ours([data])[-1] == ("error",)
    assert ours([data], tunnel=True)[-1] == ("switch", ((b"Sec-WebSocket-Accept", b"a"),), b"\x81\x00")


def _run(r: ResponseReader, data: bytes) -> list:
    r.feed(data)
    out = []
    while True:
        e = r.next()
        out.append((e, r.body if e == RE_BODY else None))
        if e in (RE_NEED, RE_END, RE_ERROR, RE_SWITCH):
            return out


def test_bytes_after_the_end_are_left_unread():
    r = ResponseReader()
    r.start(False, False, None)
    ev = _run(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 200 OK\r\n\r\n")
    assert [e for e, _ in ev] == [RE_HEAD, RE_BODY, RE_END] and r.left() == 19
    r.start(False, False, None)
    assert [e for e, _ in _run(r, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\r\n")][-1] == RE_END
    assert r.left() == 2 and r.keep_alive


def test_a_read_that_is_all_body_is_passed_on_as_it_is():
    r = ResponseReader()
    r.start(False, False, None)
    _run(r, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    chunk = b"0123456789"
    ev = _run(r, chunk)
    assert ev[0][0] == RE_BODY and ev[0][1] is chunk and ev[1][0] == RE_END
    r.start(False, False, None)
    _run(r, b"HTTP/1.1 200 OK\r\n\r\n")
    assert _run(r, chunk)[0][1] is chunk and r.eof()


def test_a_handled_read_is_released():
    """After a read is handled the reader holds none of its bytes (upstream_h1.pyx calls release() at the
    end of every data_received): holding each connection's last 64 KiB read and body slice made glibc grow
    and trim the heap on every response (bench/run.py 64k fell to 0.65x nginx's req/s)."""
    r = ResponseReader()
    r.start(False, False, None)
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"x" * 65000
    ev = _run(r, data)
    assert [e for e, _ in ev] == [RE_HEAD, RE_BODY, RE_NEED] and r.body is not None
    r.release()
    assert r.body is None and r.left() == 0
    ev = _run(r, b"y" * 5000)                  # the response goes on after a release
    assert [e for e, _ in ev] == [RE_BODY, RE_END] and ev[0][1] == b"y" * 5000
