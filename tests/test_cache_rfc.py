"""The response cache against RFC 9111's shared-cache rules, one test per rule, each with real origin
responses (tests/cacheutil.py CacheOrigin: the test's query sets the status and header lines) through a
real gateway process, with httpx: what is stored and what is not (status, no-store, private, Set-Cookie,
Authorization, Vary: *), freshness from s-maxage / max-age / Expires and never heuristically, Age and
Cache-Status (RFC 9211), Vary variants (normalised, at most 16), the key's query allow-list and consumer,
no-cache revalidation, invalidation by unsafe methods, HEAD from a GET entry, max_object pass-through and
the body captured while it streams to the first client."""
from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

from tests.cacheutil import KEY_A, KEY_B, CacheOrigin, config, start
from tests.upstreams import pattern_digest

# RFC 9211 §2: a list member "fastgw" with its parameters.
STATUS = re.compile(r"fastgw(; [a-z-]+(=[^;]+)?)+")


@pytest.fixture(scope="module")
def origin() -> Iterator[CacheOrigin]:
    o = CacheOrigin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: Any, origin: CacheOrigin) -> Iterator[Any]:
    g = start(tmp_path_factory.mktemp("cache"), config(origin.addr, f"127.0.0.1:{free_port()}"))
    yield g
    g.close()


@pytest.fixture()
def c(gw: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.base, timeout=10) as client:
        yield client


def cs(r: httpx.Response) -> str:
    v = r.headers["cache-status"]
    assert STATUS.fullmatch(v), v
    return v


def get(c: httpx.Client, path: str, *hdr: str, **kw: Any) -> httpx.Response:
    return c.get(path, params=[("hdr", h) for h in hdr] + list(kw.pop("params", [])), **kw)


def test_fresh_response_is_stored_and_served_with_age(c: httpx.Client, origin: CacheOrigin) -> None:
    r1 = get(c, "/c/fresh", "Cache-Control: max-age=60")
    assert r1.status_code == 200 and "age" not in r1.headers
    assert cs(r1) == "fastgw; fwd=uri-miss; fwd-status=200; stored"
    time.sleep(1.1)
    r2 = get(c, "/c/fresh", "Cache-Control: max-age=60")
    assert r2.status_code == 200 and r2.content == r1.content
    assert int(r2.headers["age"]) >= 1
    assert re.fullmatch(r"fastgw; hit; ttl=(5[0-9])", cs(r2))
    assert r2.headers["x-request-id"] != r1.headers["x-request-id"]
    assert origin.n("/c/fresh") == 1


def test_s_maxage_wins_over_max_age(c: httpx.Client, origin: CacheOrigin) -> None:
    get(c, "/c/smax", "Cache-Control: max-age=0, s-maxage=60")
    assert cs(get(c, "/c/smax", "Cache-Control: max-age=0, s-maxage=60")).startswith("fastgw; hit")
    assert origin.n("/c/smax") == 1


def test_expires_minus_date_is_the_lifetime(c: httpx.Client, origin: CacheOrigin) -> None:
    now = time.time()
    later = f"Expires: {formatdate(now + 120, usegmt=True)}"
    date = f"Date: {formatdate(now, usegmt=True)}"
    get(c, "/c/expires", later, date)
    r = get(c, "/c/expires", later, date)
    assert re.fullmatch(r"fastgw; hit; ttl=1[01][0-9]", cs(r)) and origin.n("/c/expires") == 1
    past = f"Expires: {formatdate(now - 10, usegmt=True)}"
    get(c, "/c/expired", past, date)
    assert "detail=no-freshness" in cs(get(c, "/c/expired", past, date))
    assert origin.n("/c/expired") == 2


def test_no_heuristic_freshness(c: httpx.Client, origin: CacheOrigin) -> None:
    lm = f"Last-Modified: {formatdate(time.time() - 86400 * 30, usegmt=True)}"
    for _ in range(2):
        assert cs(get(c, "/c/heuristic", lm)) == "fastgw; fwd=uri-miss; fwd-status=200; detail=no-freshness"
    assert origin.n("/c/heuristic") == 2


@pytest.mark.parametrize("directive,reason", [("no-store", "no-store"), ("private", "private"),
                                              ('private="X-Account", max-age=60', "private")])
def test_no_store_and_private_are_not_stored(c: httpx.Client, origin: CacheOrigin, directive: str,
                                             reason: str) -> None:
    path = "/c/ns-" + hashlib.sha1(directive.encode()).hexdigest()[:8]
    for _ in range(2):
        assert cs(get(c, path, f"Cache-Control: {directive}, max-age=60")).endswith(f"detail={reason}")
    assert origin.n(path) == 2


def test_set_cookie_is_never_stored(c: httpx.Client, origin: CacheOrigin) -> None:
    for _ in range(2):
        r = get(c, "/c/cookie", "Cache-Control: public, max-age=60", "Set-Cookie: sid=secret")
        assert r.headers["set-cookie"] == "sid=secret"          # the requester's own, passed on
        assert cs(r).endswith("detail=set-cookie")
    assert origin.n("/c/cookie") == 2


@pytest.mark.parametrize("status,stored", [(200, True), (404, True), (410, True), (301, True),
                                           (302, False), (500, False), (206, False)])
def test_only_understood_final_statuses_are_stored(c: httpx.Client, origin: CacheOrigin, status: int,
                                                   stored: bool) -> None:
    path = f"/c/status-{status}"
    for _ in range(2):
        r = get(c, path, "Cache-Control: max-age=60", params=[("status", str(status))])
        assert r.status_code == status
    assert origin.n(path) == (1 if stored else 2)


def test_authorization_request_not_shared_unless_public(c: httpx.Client, origin: CacheOrigin) -> None:
    auth = {"Authorization": "Bearer alice"}
    for _ in range(2):
        assert cs(get(c, "/c/authz", "Cache-Control: max-age=60", headers=auth)).endswith("detail=authorization")
    assert origin.n("/c/authz") == 2
    get(c, "/c/authz-public", "Cache-Control: public, max-age=60", headers=auth)
    assert cs(get(c, "/c/authz-public", "Cache-Control: public, max-age=60")).startswith("fastgw; hit")
    assert origin.n("/c/authz-public") == 1


def test_api_key_route_shares_only_s_maxage(c: httpx.Client, origin: CacheOrigin) -> None:
    a, b = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
    get(c, "/auth/own", "Cache-Control: max-age=60", headers=a)
    assert cs(get(c, "/auth/own", "Cache-Control: max-age=60", headers=b)).endswith("detail=authorization")
    assert origin.n("/auth/own") == 2
    get(c, "/auth/shared", "Cache-Control: s-maxage=60", headers=a)
    assert cs(get(c, "/auth/shared", "Cache-Control: s-maxage=60", headers=b)).startswith("fastgw; hit")
    assert origin.n("/auth/shared") == 1
    r = c.get("/auth/shared")                         # no key: the 401 comes first, never the entry
    assert r.status_code == 401 and cs(r) == "fastgw; fwd=bypass; detail=gateway-answer"


def test_per_consumer_keys_entries_by_consumer(c: httpx.Client, origin: CacheOrigin) -> None:
    a, b = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
    ra = get(c, "/mine/x", "Cache-Control: max-age=60", headers=a)
    rb = get(c, "/mine/x", "Cache-Control: max-age=60", headers=b)
    assert "stored" in cs(ra) and "stored" in cs(rb) and origin.n("/mine/x") == 2
    assert ra.json()["seq"] != rb.json()["seq"] or ra.json()["conn"] != rb.json()["conn"]
    again = get(c, "/mine/x", "Cache-Control: max-age=60", headers=a)
    assert cs(again).startswith("fastgw; hit") and again.content == ra.content
    assert origin.n("/mine/x") == 2


def test_vary_selects_the_variant_normalised(c: httpx.Client, origin: CacheOrigin) -> None:
    h = ("Cache-Control: max-age=60", "Vary: Accept-Language")
    en = get(c, "/c/vary", *h, headers={"Accept-Language": "en, fr"})
    de = get(c, "/c/vary", *h, headers={"Accept-Language": "de"})
    assert origin.n("/c/vary") == 2
    again = get(c, "/c/vary", *h, headers={"Accept-Language": "EN,fr"})      # same after normalising
    assert cs(again).startswith("fastgw; hit") and again.content == en.content
    assert get(c, "/c/vary", *h, headers={"Accept-Language": "de"}).content == de.content
    assert cs(get(c, "/c/vary", *h)) == "fastgw; fwd=vary-miss; fwd-status=200; stored"   # no value: a third
    assert origin.n("/c/vary") == 3


def test_vary_star_is_not_stored(c: httpx.Client, origin: CacheOrigin) -> None:
    for _ in range(2):
        assert cs(get(c, "/c/vstar", "Cache-Control: max-age=60", "Vary: *")).endswith("detail=vary-star")
    assert origin.n("/c/vstar") == 2


def test_vary_on_a_gateway_set_field_is_not_stored(c: httpx.Client, origin: CacheOrigin) -> None:
    r = get(c, "/c/vconsumer", "Cache-Control: max-age=60", "Vary: X-Consumer")
    assert cs(r).endswith("detail=vary-gateway-field")


def test_at_most_16_variants_per_key(c: httpx.Client, origin: CacheOrigin) -> None:
    h = ("Cache-Control: max-age=60", "Vary: X-Variant")
    for i in range(17):
        get(c, "/c/variants", *h, headers={"X-Variant": str(i)})
    assert origin.n("/c/variants") == 17
    assert cs(get(c, "/c/variants", *h, headers={"X-Variant": "16"})).startswith("fastgw; hit")
    assert cs(get(c, "/c/variants", *h, headers={"X-Variant": "0"})).startswith("fastgw; fwd=vary-miss")  # the oldest went
    assert origin.n("/c/variants") == 18


def test_key_has_allow_listed_query_sorted(c: httpx.Client, origin: CacheOrigin) -> None:
    h = "Cache-Control: max-age=60"
    r1 = get(c, "/c/q", h, params=[("page", "1"), ("sort", "a"), ("utm", "x")])
    r2 = get(c, "/c/q", h, params=[("sort", "a"), ("utm", "y"), ("page", "1")])
    assert cs(r2).startswith("fastgw; hit") and r2.content == r1.content
    assert cs(get(c, "/c/q", h, params=[("page", "2"), ("sort", "a")])).startswith("fastgw; fwd=uri-miss")
    assert origin.n("/c/q") == 2


def test_host_is_part_of_the_key(c: httpx.Client, origin: CacheOrigin) -> None:
    h = "Cache-Control: max-age=60"
    get(c, "/c/host", h, headers={"Host": "a.example"})
    assert cs(get(c, "/c/host", h, headers={"Host": "b.example"})).startswith("fastgw; fwd=uri-miss")
    assert cs(get(c, "/c/host", h, headers={"Host": "A.example"})).startswith("fastgw; hit")
    assert origin.n("/c/host") == 2


def test_no_cache_is_revalidated_every_time(c: httpx.Client, origin: CacheOrigin) -> None:
    h = ("Cache-Control: no-cache",)
    r1 = get(c, "/c/nocache", *h, params=[("etag", '"v1"')])
    assert "stored" in cs(r1)
    before = len(origin.seen)
    r2 = get(c, "/c/nocache", *h, params=[("etag", '"v1"')])
    assert r2.status_code == 200 and r2.content == r1.content
    assert cs(r2) == "fastgw; fwd=stale; fwd-status=304; ttl=0"
    assert origin.seen[before].values("if-none-match") == ['"v1"']       # the conditional request went up
    assert origin.n("/c/nocache") == 2


def test_client_validator_gets_304_from_the_entry(c: httpx.Client, origin: CacheOrigin) -> None:
    h = "Cache-Control: max-age=60"
    get(c, "/c/inm", h, params=[("etag", '"e1"')])
    r = get(c, "/c/inm", h, params=[("etag", '"e1"')], headers={"If-None-Match": 'W/"e1"'})
    assert r.status_code == 304 and r.headers["etag"] == '"e1"' and r.content == b""
    assert cs(r).startswith("fastgw; hit") and origin.n("/c/inm") == 1


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_unsafe_method_invalidates_the_url(c: httpx.Client, origin: CacheOrigin, method: str) -> None:
    path = f"/c/inv-{method.lower()}"
    h = "Cache-Control: max-age=60"
    get(c, path, h)
    r = c.request(method, path, content=b"x")
    assert r.status_code == 200 and cs(r) == "fastgw; fwd=method"
    assert cs(get(c, path, h)).startswith("fastgw; fwd=uri-miss")
    assert origin.n(path) == 2


def test_failed_unsafe_method_keeps_the_entry(c: httpx.Client, origin: CacheOrigin) -> None:
    h = "Cache-Control: max-age=60"
    get(c, "/c/inv-fail", h)
    assert c.post("/c/inv-fail", params={"status": "500"}).status_code == 500
    assert cs(get(c, "/c/inv-fail", h)).startswith("fastgw; hit")


def test_head_is_answered_from_the_get_entry(c: httpx.Client, origin: CacheOrigin) -> None:
    h = "Cache-Control: max-age=60"
    r = c.head("/c/head", params={"hdr": h})          # a HEAD miss goes up, and is not stored
    assert r.status_code == 200 and cs(r).endswith("detail=head")
    g = get(c, "/c/head", h)
    r = c.head("/c/head", params={"hdr": h})
    assert r.status_code == 200 and r.content == b"" and cs(r).startswith("fastgw; hit")
    assert r.headers["content-length"] == str(len(g.content))
    assert origin.n("/c/head", "HEAD") == 1 and origin.n("/c/head") == 1


def test_larger_than_max_object_passes_through(c: httpx.Client, origin: CacheOrigin) -> None:
    size = 100 * 1024                                   # max_object is 64KiB
    for _ in range(2):
        r = get(c, "/c/big", "Cache-Control: max-age=60", params=[("size", str(size))])
        assert hashlib.sha256(r.content).hexdigest() == pattern_digest(size)
    assert origin.n("/c/big") == 2


def test_body_is_captured_while_it_streams(gw: Any, c: httpx.Client, origin: CacheOrigin) -> None:
    """The first client has the first KiB before the origin sends the rest; the entry is the whole body."""
    size = 48 * 1024
    params = [("hdr", "Cache-Control: max-age=60"), ("size", str(size)), ("gate", "stream"), ("te", "chunked")]
    got = bytearray()
    first = threading.Event()
    with httpx.Client(base_url=gw.base, timeout=10) as cl, cl.stream("GET", "/c/stream", params=params) as r:
        for chunk in r.iter_raw():
            got += chunk
            if not first.is_set():
                first.set()
                assert len(got) < size
                origin.open_gate("stream")
    assert hashlib.sha256(bytes(got)).hexdigest() == pattern_digest(size)
    r2 = c.get("/c/stream", params=params)
    assert cs(r2).startswith("fastgw; hit") and hashlib.sha256(r2.content).hexdigest() == pattern_digest(size)
    assert origin.n("/c/stream") == 1


def test_http2_client_hit(gw: Any, origin: CacheOrigin) -> None:
    with httpx.Client(base_url=gw.base, timeout=10, http1=False, http2=True) as h2:
        a = get(h2, "/c/h2", "Cache-Control: max-age=60")
        b = get(h2, "/c/h2", "Cache-Control: max-age=60")
    assert b.http_version == "HTTP/2" and cs(b).startswith("fastgw; hit") and b.content == a.content
    assert origin.n("/c/h2") == 1


def test_route_without_cache_has_no_cache_status(c: httpx.Client) -> None:
    r = c.get("/other", params={"hdr": "Cache-Control: max-age=60"})
    assert "cache-status" not in r.headers and "age" not in r.headers


@pytest.mark.parametrize("path", ["/big/50000", "/trailers/t"])
def test_http2_upstream_response_is_captured(tmp_path: Path, path: str) -> None:
    """The body tap on an HTTP/2 upstream stream (DATA, then END_STREAM or trailers): stored whole, the
    second request a hit with the same bytes. The route declares the freshness (the origin sends none)."""
    from h2upstream import H2Origin

    o = H2Origin().start()
    text = f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.h2]
targets = ["{o.addr}"]
protocol = "h2"
[cache.c]
[[routes]]
name = "h2"
path = "/*"
upstream = "h2"
cache = "c"
[routes.response_headers]
add = {{ "Cache-Control" = "max-age=60" }}
'''
    gw = start(tmp_path, text)
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            first = c.get(path)
            again = c.get(path)
        assert first.status_code == 200 and "stored" in cs(first)
        assert cs(again).startswith("fastgw; hit") and again.content == first.content
        assert o.seen.count(path.encode()) == 1
    finally:
        gw.close()
        o.stop()


def test_cors_headers_are_added_after_the_lookup(tmp_path: Path, origin: CacheOrigin) -> None:
    """Entries hold the upstream's fields only: a hit for another origin carries that origin's CORS
    headers, never the first requester's (the cache stores ex.response_lines, before CORS adds its own)."""
    text = f'''
[server]
listen = ["127.0.0.1:0"]
[admin]
listen = "127.0.0.1:0"
[upstreams.origin]
targets = ["{origin.addr}"]
[cors.web]
origins = ["https://a.example", "https://b.example"]
[cache.c]
[[routes]]
name = "x"
path = "/*"
upstream = "origin"
cors = "web"
cache = "c"
'''
    gw = start(tmp_path, text)
    try:
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            a = get(c, "/cors-x", "Cache-Control: max-age=60", headers={"Origin": "https://a.example"})
            b = get(c, "/cors-x", "Cache-Control: max-age=60", headers={"Origin": "https://b.example"})
            none = get(c, "/cors-x", "Cache-Control: max-age=60")
        assert a.headers["access-control-allow-origin"] == "https://a.example" and "stored" in cs(a)
        assert cs(b).startswith("fastgw; hit") and b.headers["access-control-allow-origin"] == "https://b.example"
        assert b.headers.get_list("access-control-allow-origin") == ["https://b.example"]
        assert cs(none).startswith("fastgw; hit") and "access-control-allow-origin" not in none.headers
        assert none.headers["vary"] == "Origin"
        assert origin.n("/cors-x") == 1
    finally:
        gw.close()
