"""fastgw/policies/cache/rules.py, rule by rule without a network: Cache-Control parsing, each reason a
response is not stored, freshness precedence, the stale windows bounded by the route's maxima and refused
by must-revalidate / proxy-revalidate / no-cache, the Age correction, the fields kept, the Vary names,
and the key's query part and Vary value normalisation."""
from __future__ import annotations

from email.utils import formatdate

import pytest

from fastgw.policies.cache.rules import directives, judge, normal, query_key

NOW = 1_800_000_000.0


def v(*fields: tuple[bytes, bytes], status: int = 200, auth: bool = False, per_consumer: bool = False,
      swr: float = 30.0, sie: float = 60.0):
    return judge(status, list(fields), auth, per_consumer, swr, sie, NOW)


def test_directives_parse_case_quotes_and_duplicates() -> None:
    assert directives(b'Max-Age=60, no-cache="Set-Cookie", private , s-maxage=5, max-age=1') == {
        b"max-age": b"60", b"no-cache": b"Set-Cookie", b"private": None, b"s-maxage": b"5"}
    assert directives(None) == {} and directives(b" , ,") == {}


@pytest.mark.parametrize("fields,reason", [
    ([(b"Cache-Control", b"max-age=60, no-store")], "no-store"),
    ([(b"Cache-Control", b"max-age=60"), (b"cache-control", b"private")], "private"),
    ([(b"Cache-Control", b"max-age=60"), (b"Set-Cookie", b"a=b")], "set-cookie"),
    ([(b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept, *")], "vary-star"),
    ([(b"Cache-Control", b"max-age=60"), (b"Vary", b"X-Forwarded-For")], "vary-gateway-field"),
    ([(b"Cache-Control", b"max-age=60"), (b"Vary", b"X-Consumer")], "vary-gateway-field"),
    ([(b"Last-Modified", b"Mon, 01 Jan 2024 00:00:00 GMT")], "no-freshness"),
    ([(b"Cache-Control", b"max-age=abc")], "no-freshness"),
    ([(b"Cache-Control", b"no-cache")], "no-cache-without-validator"),
])
def test_not_stored(fields: list, reason: str) -> None:
    assert v(*fields).reason == reason


def test_status_and_authorization() -> None:
    cc = (b"Cache-Control", b"max-age=60")
    assert v(cc, status=206).reason == "status" and v(cc, status=304).reason == "status"
    assert v(cc, auth=True).reason == "authorization"
    for ok in (b"public, max-age=60", b"s-maxage=60", b"max-age=60, must-revalidate"):
        assert v((b"Cache-Control", ok), auth=True).reason is None
    assert v(cc, auth=True, per_consumer=True).reason is None


def test_freshness_precedence() -> None:
    date = (b"Date", formatdate(NOW - 10, usegmt=True).encode())
    assert v((b"Cache-Control", b"max-age=60, s-maxage=5")).lifetime == 5
    assert v((b"Cache-Control", b"max-age=60"), (b"Expires", b"Thu, 01 Jan 2099 00:00:00 GMT")).lifetime == 60
    exp = (b"Expires", formatdate(NOW + 110, usegmt=True).encode())
    assert v(exp, date).lifetime == 120                          # Expires - Date, not Expires - now
    assert v((b"Expires", b"0")).reason == "no-freshness"         # invalid Expires: already expired [5.3]
    nc = v((b"Cache-Control", b"no-cache, max-age=600"), (b"ETag", b'"x"'))
    assert nc.reason is None and nc.lifetime == 0 and nc.etag == b'"x"'


def test_age_is_the_larger_of_age_and_date_apparent_age() -> None:
    date = (b"Date", formatdate(NOW - 30, usegmt=True).encode())
    assert v((b"Cache-Control", b"max-age=60"), date).age == 30
    assert v((b"Cache-Control", b"max-age=60"), date, (b"Age", b"45")).age == 45
    future = (b"Date", formatdate(NOW + 300, usegmt=True).encode())
    assert v((b"Cache-Control", b"max-age=60"), future).age == 0          # a clock ahead is no negative age


def test_stale_windows_bounded_and_refused() -> None:
    r = v((b"Cache-Control", b"max-age=1, stale-while-revalidate=999, stale-if-error=10"))
    assert (r.swr, r.sie) == (30, 10)
    for cc in (b"max-age=1, must-revalidate, stale-if-error=10", b"max-age=1, proxy-revalidate, stale-if-error=10"):
        r = v((b"Cache-Control", cc))
        assert (r.swr, r.sie) == (0, 0)


def test_kept_fields_and_vary_names() -> None:
    r = v((b"Cache-Control", b"max-age=60"), (b"Date", b"x"), (b"Age", b"3"), (b"X-Request-ID", b"r"),
          (b"Content-Type", b"application/json"), (b"Vary", b"Accept-Language, accept-encoding"),
          (b"vary", b"Accept-Language"))
    assert [n for n, _ in r.kept] == [b"Cache-Control", b"Content-Type", b"Vary", b"vary"]
    assert r.vary == (b"accept-encoding", b"accept-language")


def test_query_key_and_normal() -> None:
    allowed = frozenset({b"page", b"sort"})
    assert query_key(b"?sort=b&x=1&page=2", allowed) == b"page=2&sort=b"
    assert query_key(b"?x=1", allowed) == b"" and query_key(b"", allowed) == b""
    assert query_key(b"?page=1", frozenset()) == b""
    assert normal(b"EN,  fr ") == normal(b"en, fr") == b"en,fr"
    assert normal(None) is None
