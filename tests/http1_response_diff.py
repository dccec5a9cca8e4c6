"""The HTTP/1.1 response readers side by side: fastgw's own (fastgw/_core/http1_response.pyx ResponseReader)
and the reference, httptools' HttpResponseParser (llhttp, strict mode) driven as fastgw drove it before
(a Python callback per event, 1xx interim heads skipped, a 101 taken only for a tunnel request and only with
Upgrade). Both get the same bytes split the same way; `outcome` is what each made of one response: its
status, kept fields (hop-by-hop ones, the Connection-listed names and the route's removed names dropped),
Content-Length value, body bytes, how it ended (its end, the connection's end, a switch with the bytes
after the 101, or an error) and whether the connection may be reused. Used by
tests/test_http1_response_differential.py and the fuzzer (bench/fuzz_http1.py, target http1_response).

Where fastgw differs on purpose (`agree`): a response to HEAD (RFC 9112 6.3: it ends with its head; llhttp
cannot be told the method: pinned in the tests, not generated); RTSP/ and ICE/ status lines (refused:
not HTTP); chunk-extension bytes over MAX_CHUNK_SLACK (4 KiB, refused; not generated); a status code under 100 (refused, RFC 9110 15); and an input cut
inside a line one reader already refuses and the other refuses only once the line ends.
"""
from __future__ import annotations

import random

import httptools

from fastgw._core.http1 import ResponseReader
from fastgw.headers import RESPONSE

RE_NEED, RE_HEAD, RE_BODY, RE_END, RE_ERROR, RE_SWITCH = range(6)
REMOVE = frozenset({b"x-secret"})


def _fields(pieces: list) -> tuple:
    out = []
    for line in b"".join(pieces).split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        out.append((name, value.lstrip(b" \t")))
    return tuple(out)


def ours(chunks, tunnel=False, remove=REMOVE, head=False) -> tuple:
    r = ResponseReader()
    r.start(head, tunnel, remove)
    ev, body = [], b""
    for c in list(chunks) + [None]:
        if c is None:
            if r.eof():
                ev.append(("end", body, "eof"))
            elif not ev or ev[-1][0] not in ("end", "error", "switch"):
                ev.append(("cut",))
            break
        r.feed(c)
        while True:
            e = r.next()
            if e == RE_NEED:
                break
            if e == RE_HEAD:
                ev.append(("head", r.status, _fields(r.pieces), r.length))
            elif e == RE_BODY:
                body += r.body
            elif e == RE_END:
                ev.append(("end", body, r.keep_alive))
                break
            elif e == RE_SWITCH:
                ev.append(("switch", _fields(r.pieces), r.rest()))
                break
            else:
                ev.append(("error",))
                break
        if ev and ev[-1][0] in ("end", "error", "switch"):
            break
    return tuple(ev)


class _Reference:
    def __init__(self, tunnel, remove):
        self.tunnel, self.remove = tunnel, remove
        self.p = httptools.HttpResponseParser(self)
        self.ev: list = []
        self.fields: list = []
        self.body = b""
        self.head_done = False
        self.ended = False
        self.switch = False

    def on_header(self, name, value):
        self.fields.append((name, value))

    def on_headers_complete(self):
        if self.ended:
            return
        status = self.p.get_status_code()
        fields, self.fields = self.fields, []
        if status < 200 and status != 101:
            return                                   # interim: skipped
        drop = set(RESPONSE) | set(self.remove or ())
        for n, v in fields:
            if n.lower() == b"connection":
                drop |= {t.strip().lower().decode("latin-1") for t in v.split(b",")} - {"close", "keep-alive", ""}
        drop = {d.encode("latin-1") if isinstance(d, str) else d for d in drop}
        kept = tuple((n, v) for n, v in fields if n.lower() not in drop)
        cl = [v.strip(b" \t") for n, v in fields if n.lower() == b"content-length"]
        if status == 101:
            if not self.tunnel or not self.p.should_upgrade():
                raise ValueError("unexpected 101")
            self.switch = kept
            return
        self.head_done = True
        te = [v for n, v in fields if n.lower() == b"transfer-encoding"]
        # llhttp's framing: chunked when the last coding of the last field is (SP, not HTAB, may follow it)
        self.chunked = bool(te) and te[-1].split(b",")[-1].strip(b" \t") == te[-1].split(b",")[-1].lstrip(b" \t").rstrip(b" ") \
            and te[-1].split(b",")[-1].strip(b" \t").lower() == b"chunked"
        self.has_cl = bool(cl)
        self.ev.append(("head", status, kept, cl[0] if cl else None))

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        if self.head_done and not self.ended:
            self.ended = True
            self.ev.append(("end", self.body, self.p.should_keep_alive()))


def reference(chunks, tunnel=False, remove=REMOVE) -> tuple:
    r = _Reference(tunnel, remove)
    for c in chunks:
        try:
            r.p.feed_data(c)
        except httptools.HttpParserUpgrade as u:
            if r.switch is not False:
                r.ev.append(("switch", r.switch, c[u.args[0]:]))
            else:
                r.ev.append(("error",))
            return tuple(r.ev)
        except (httptools.HttpParserError, ValueError):
            if not r.ended:
                r.ev.append(("error",))
            return tuple(r.ev)
        if r.ended:
            return tuple(r.ev)
    if r.head_done and not r.chunked and not r.has_cl:
        r.ev.append(("end", r.body, "eof"))      # a body delimited by the close (RFC 9112 6.3 rule 8)
    else:
        r.ev.append(("cut",))
    return tuple(r.ev)


def both(chunks, **kw) -> tuple[tuple, tuple]:
    return ours(chunks, **kw), reference(chunks, **kw)


def _under_100(data: bytes) -> bool:
    """A status line with a code under 100 (llhttp reads it; RFC 9110 15: invalid), after any interim."""
    for line in data.replace(b"\r", b"").split(b"\n"):
        if line[:5] == b"HTTP/" and line[9:12].isdigit():
            if line[9:10] == b"0":
                return True
            if line[9:10] != b"1" or line[9:12] == b"101":
                return False
    return False


def agree(a: tuple, b: tuple, data: bytes, **kw) -> bool:
    """The same outcome, or a difference allowed (see the module docstring)."""
    if a == b:
        return True
    if a and a[-1] == ("error",) and (data.lstrip(b"\r\n").startswith((b"RTSP/", b"ICE/")) or _under_100(data)):
        return True
    # One refuses a line the input cuts short, the other only once it ends: complete the line and compare.
    if (a[-1:] == (("cut",),) and b[-1:] == (("error",),)) or (b[-1:] == (("cut",),) and a[-1:] == (("error",),)):
        longer = data + b"\r\n\r\n"
        x, y = both([longer], **kw)
        return x[-1:] == y[-1:] == (("error",),) and x[:-1] == a[:-1] and y[:-1] == b[:-1]
    return False


# -- generated responses -------------------------------------------------------------------------------
STATUS = [b"HTTP/1.1 200 OK", b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.0 200 OK", b"HTTP/1.1 404 Not Found",
          b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early",
          b"HTTP/1.1 101 Switching", b"HTTP/2.0 200 OK", b"HTTP/0.9 200 OK", b"HTTP/1.2 200 OK", b"HTTP/1.1 20 OK",
          b"HTTP/1.1 2000 OK", b"HTTP/1.1  200 OK", b"http/1.1 200 OK", b"HTTP/1.1 099 x", b"HTTP/1.1 200 \x80\x01",
          b"HTTP/1.1 502 Bad Gateway"]
FIELDS = [b"Content-Type: text/plain", b"X-A: 1", b"x-a:2", b"X-Secret: s", b"Server:  fastgw  ", b"Set-Cookie: a=b",
          b"Connection: close", b"Connection: keep-alive", b"Connection: X-A", b"Connection: Upgrade",
          b"Connection: close, X-B", b"connection: KEEP-ALIVE , x-c", b"Upgrade: websocket", b"Keep-Alive: timeout=5",
          b"Proxy-Connection: close", b"Trailer: X-T", b"TE: trailers", b"X-B: \t", b"X-Empty:", b"X-Obs: \x80\xff",
          b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, gzip",
          b"transfer-encoding: CHUNKED", b"Transfer-Encoding: gzip", b"Content-Length: 3", b"Content-Length: 0",
          b"content-length:  5 ", b"Content-Length: 3x", b"Content-Length: +3", b"Content-Length: ",
          b"Content-Length: 99999999999999999999999", b"Content-Length: 18446744073709551615",
          b"X Bad: 1", b"X-Bad : 1", b": nameless", b" obs-fold", b"X-Ctl: a\x01b", b"X-Del: \x7f", b"X-CR: a\rb",
          b"X-Tok\"en: 1"]
CHUNKS = [b"3\r\nabc\r\n", b"A\r\n0123456789\r\n", b"3;ext=1\r\nabc\r\n", b'3;e="q v"\r\nabc\r\n', b"03\r\nabc\r\n",
          b"3 \r\nabc\r\n", b"3\r\nabcd\r\n", b"g\r\n", b"3\nabc\r\n", b"3;\r\nabc\r\n", b"3;=x\r\nabc\r\n"]
LAST = [b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"0\r\nX-T: 1\r\nX-U: 2\r\n\r\n", b"0;e\r\n\r\n", b"0\r\nBad Trailer\r\n\r\n",
        b"0\r\n \r\n\r\n", b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", b"0\r\n\r\r\n", b"0\r\n"]


def generate(rng: random.Random) -> bytes:
    """One response (sometimes after an interim one, sometimes followed by more bytes), from the parts above,
    then sometimes one byte changed."""
    out = b""
    if rng.random() < 0.1:
        out += b"HTTP/1.1 100 Continue\r\n\r\n"
    if rng.random() < 0.05:
        out += b"\r\n"
    out += rng.choice(STATUS) + b"\r\n"
    fields = [rng.choice(FIELDS) for _ in range(rng.randrange(5))]
    out += b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    if any(b"chunked" in f.lower() for f in fields) and rng.random() < 0.8:
        out += b"".join(rng.choice(CHUNKS) for _ in range(rng.randrange(3))) + rng.choice(LAST)
    else:
        out += rng.choice([b"", b"abc", b"abcde", b"ab", b"0123456789" * 3])
    if rng.random() < 0.2 and out:
        i = rng.randrange(len(out))
        out = out[:i] + bytes([rng.randrange(256)]) + out[i + 1:]
    return out
