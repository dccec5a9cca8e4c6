"""What RFC 9111 lets a shared cache do with one response: whether it may be stored, for how long it is
fresh, how long it may be served stale (RFC 5861), and the variant key its Vary names. Pure functions over
bytes: no I/O, no clock of their own (the caller passes `now`), so each rule has a unit test.

Rules (RFC 9111 section in brackets):
- Only GET responses are stored [3], with a status this cache understands [3]: STORABLE below (206 is
  left out: ranges are not combined; 304 refreshes, it is never stored itself).
- `no-store` and `private` are never stored [5.2.2.5, 5.2.2.7]; neither is a response with Set-Cookie
  (a per-recipient field: replayed to strangers it hands them a session), nor `Vary: *` [4.1].
- A response to a request with Authorization is stored only when it says `public`, `s-maxage` or
  `must-revalidate` [3.5], or when the route keys entries per consumer (per_consumer). The gateway reads
  any verified credential (an API key, a client certificate) as Authorization here.
- Freshness is explicit only: s-maxage, else max-age, else Expires - Date [4.2.1]; no heuristics [4.2.2].
  `no-cache` stores the response for revalidation only (fresh for 0 s) [5.2.2.4], when it has a validator.
- Stale answers (stale-while-revalidate, stale-if-error) only as far as the response asks and the route
  allows, never with must-revalidate, proxy-revalidate or no-cache [4.2.4].
- Age: the larger of the response's own Age and the time since its Date (never negative) [4.2.3].
- Vary on a field the gateway sets itself (X-Consumer, X-Forwarded-For...) is not stored: the cache
  cannot see the value the upstream saw.
"""
from __future__ import annotations

from email.utils import mktime_tz, parsedate_tz

from fastgw import headers as _headers

# Final statuses whose responses may be stored when they carry explicit freshness.
STORABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 451, 501})
MAX_VARIANTS = 16          # variants kept per key (the oldest goes); a crafted Vary cannot grow a key further
# Fields not kept with a stored response: the gateway writes its own Date and the hit's Age.
# Request fields whose upstream value the gateway makes (the client's copy is not what the upstream saw).
_GATEWAY_SET = _headers.SET_BY_GATEWAY | {_headers.IDENTITY}
# Framing is the gateway's on every answer (an HTTP/2 upstream's content-length reaches the view).
NOT_STORED = frozenset({b"date", b"age", b"set-cookie", b"x-request-id", b"content-length", b"transfer-encoding",
                        b"connection", b"keep-alive"})


def directives(value: bytes | None) -> dict[bytes, bytes | None]:
    """Cache-Control's directives: lowercase names, values unquoted (None: no value)."""
    out: dict[bytes, bytes | None] = {}
    if not value:
        return out
    for part in value.split(b","):
        name, eq, v = part.strip().partition(b"=")
        if not name:
            continue
        out.setdefault(name.strip().lower(), v.strip().strip(b'"') if eq else None)
    return out


def seconds(v: bytes | None) -> int | None:
    """A delta-seconds value, or None when it is not one [1.2.2]."""
    if v is None or not v.isdigit():
        return None
    return min(int(v), 2 ** 31)


def http_date(v: bytes | None) -> float | None:
    if not v:
        return None
    try:
        t = parsedate_tz(v.decode("latin-1"))
    except (TypeError, ValueError):
        return None
    return float(mktime_tz(t)) if t is not None else None


def fields(lines: bytes) -> list[tuple[bytes, bytes]]:
    """The (name, value) pairs of header lines (names as written)."""
    out = []
    for line in lines.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name:
            out.append((name, value.strip(b" \t")))
    return out


class Verdict:
    """What the rules say of one response: `reason` (None: storable), and when storable its freshness
    lifetime, initial age, stale windows, validators and Vary names."""

    __slots__ = ("reason", "lifetime", "age", "swr", "sie", "etag", "last_modified", "vary", "kept")

    def __init__(self, reason: str | None) -> None:
        self.reason = reason
        self.lifetime = 0.0
        self.age = 0.0
        self.swr = 0.0
        self.sie = 0.0
        self.etag: bytes | None = None
        self.last_modified: bytes | None = None
        self.vary: tuple[bytes, ...] = ()
        self.kept: list[tuple[bytes, bytes]] = []


def judge(status: int, pairs: list[tuple[bytes, bytes]], authorized: bool, per_consumer: bool,
          max_swr: float, max_sie: float, now: float) -> Verdict:
    """The verdict on a GET response (`pairs`: its header fields) at wall-clock time `now`."""
    if status not in STORABLE:
        return Verdict("status")
    low = [(n.lower(), v) for n, v in pairs]
    get: dict[bytes, bytes] = {}
    vary: list[bytes] = []
    cc_parts = []
    for n, value in low:
        if n == b"cache-control":
            cc_parts.append(value)
        elif n == b"vary":
            vary.extend(t.strip().lower() for t in value.split(b",") if t.strip())
        elif n == b"set-cookie":
            return Verdict("set-cookie")
        else:
            get.setdefault(n, value)
    cc = directives(b", ".join(cc_parts))
    if b"no-store" in cc:
        return Verdict("no-store")
    if b"private" in cc:
        return Verdict("private")
    if b"*" in vary:
        return Verdict("vary-star")
    for name in vary:
        if name != b"host" and _headers.role(name.decode("latin-1")) in _GATEWAY_SET:
            return Verdict("vary-gateway-field")
    if authorized and not per_consumer and not (b"public" in cc or b"s-maxage" in cc or b"must-revalidate" in cc):
        return Verdict("authorization")
    date = http_date(get.get(b"date"))
    lifetime = seconds(cc.get(b"s-maxage"))
    if lifetime is None:
        lifetime = seconds(cc.get(b"max-age"))
    if lifetime is None and b"expires" in get:
        exp = http_date(get[b"expires"])
        lifetime = max(0, int(exp - (date if date is not None else now))) if exp is not None else 0
    etag = get.get(b"etag")
    lm = get.get(b"last-modified")
    if b"no-cache" in cc:
        if etag is None and lm is None:
            return Verdict("no-cache-without-validator")
        lifetime = 0
    if lifetime is None:
        return Verdict("no-freshness")
    if lifetime == 0 and etag is None and lm is None:
        return Verdict("no-freshness")
    v = Verdict(None)
    v.lifetime = float(lifetime)
    age = seconds(get.get(b"age")) or 0
    v.age = float(max(age, now - date if date is not None else 0, 0))
    if not (b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"no-cache" in cc):
        v.swr = float(min(seconds(cc.get(b"stale-while-revalidate")) or 0, max_swr))
        v.sie = float(min(seconds(cc.get(b"stale-if-error")) or 0, max_sie))
    v.etag = etag
    v.last_modified = lm
    v.vary = tuple(sorted(set(vary)))
    v.kept = [(n, val) for n, val in pairs if n.lower() not in NOT_STORED]
    return v


def normal(value: bytes | None) -> bytes | None:
    """A request field's value as a Vary key reads it: blanks collapsed, list items trimmed, lowercase
    (RFC 9111 4.1 allows normalising; these fields' values compare case-insensitively in practice)."""
    if value is None:
        return None
    return b",".join(b" ".join(item.split()) for item in value.lower().split(b","))


def query_key(query: bytes, allowed: frozenset[bytes]) -> bytes:
    """The allow-listed parameters of a query (b"" or b"?..."), sorted: the key's query part."""
    if not query or not allowed:
        return b""
    kept = sorted(p for p in query[1:].split(b"&") if p.partition(b"=")[0] in allowed)
    return b"&".join(kept)
