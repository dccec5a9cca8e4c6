"""The route matcher: one test per rule, then a differential test against tests/router_ref.py.

The rule is stated in fastgw/_core/router.pyx's docstring; router_ref.py implements it by sorting
every matching route by a specificity key, so agreement on random route sets is meaningful.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_ref import RefRouter

from fastgw._core.router import Router


def build(*routes):
    """Routes as (path, methods, host=None); the value is the route's index."""
    rows = []
    for i, r in enumerate(routes):
        path, methods, host = (*r, None)[:3]
        rows.append((host, path, methods, i))
    return Router(rows)


def hit(router, path, method=b"GET", host=b"example.com"):
    status, value, params = router.match(method, host, path)
    assert status == 0, (path, status, value)
    return value, params


# --- precedence -----------------------------------------------------------------------------------

def test_literal_beats_param_beats_prefix():
    r = build(("/a/*", None), ("/a/{x}", None), ("/a/b", None))
    assert hit(r, b"/a/b") == (2, None)
    assert hit(r, b"/a/c") == (1, {"x": "c"})
    assert hit(r, b"/a/c/d") == (0, None)


def test_order_of_input_does_not_change_precedence():
    r = build(("/a/b", None), ("/a/{x}", None), ("/a/*", None))
    assert hit(r, b"/a/b")[0] == 0
    assert hit(r, b"/a/c")[0] == 1
    assert hit(r, b"/a/c/d")[0] == 2


def test_longer_prefix_beats_shorter():
    r = build(("/*", None), ("/a/*", None), ("/a/b/*", None))
    assert hit(r, b"/a/b/c")[0] == 2
    assert hit(r, b"/a/b")[0] == 2
    assert hit(r, b"/a/c")[0] == 1
    assert hit(r, b"/z")[0] == 0


def test_exact_beats_prefix_ending_at_the_same_segment():
    r = build(("/api/*", None), ("/api", None))
    assert hit(r, b"/api")[0] == 1
    assert hit(r, b"/api/")[0] == 0


def test_leftmost_segment_decides_first():
    # at segment 2, literal "b" beats {x}, even though the other route is longer and has literals after
    r = build(("/a/{x}/c", None), ("/a/b/*", None))
    assert hit(r, b"/a/b/c")[0] == 1
    assert hit(r, b"/a/z/c") == (0, {"x": "z"})


def test_backtracks_when_the_literal_branch_dead_ends():
    r = build(("/a/b/c", None), ("/a/{x}/d", None), ("/*", None))
    assert hit(r, b"/a/b/d") == (1, {"x": "b"})
    assert hit(r, b"/a/b/e")[0] == 2


def test_backtracks_on_method_mismatch():
    r = build(("/a/b", ["POST"]), ("/a/{x}", ["GET"]), ("/a/*", ["DELETE"]))
    assert hit(r, b"/a/b", b"POST")[0] == 0
    assert hit(r, b"/a/b", b"GET") == (1, {"x": "b"})
    assert hit(r, b"/a/b", b"DELETE")[0] == 2


def test_same_shape_keeps_input_order():
    r = build(("/u/{id}", ["GET"]), ("/u/{name}", ["GET", "POST"]))
    assert hit(r, b"/u/7") == (0, {"id": "7"})
    assert hit(r, b"/u/7", b"POST") == (1, {"name": "7"})


# --- methods ---------------------------------------------------------------------------------------

def test_get_implies_head_and_none_means_any():
    r = build(("/g", ["GET"]), ("/any", None))
    assert hit(r, b"/g", b"HEAD")[0] == 0
    assert hit(r, b"/any", b"BREW")[0] == 1
    assert r.match(b"POST", b"h", b"/g") == (405, b"GET, HEAD", None)


def test_head_route_does_not_imply_get():
    r = build(("/h", ["HEAD"]),)
    assert r.match(b"GET", b"h", b"/h") == (405, b"HEAD", None)


def test_methods_are_case_sensitive():
    r = build(("/m", ["GET"]),)
    assert r.match(b"get", b"h", b"/m")[0] == 405


def test_405_allow_is_sorted_union_of_all_path_matches():
    r = build(("/a/b", ["PUT", "GET"]), ("/a/{x}", ["POST"]), ("/a/*", ["DELETE", "PUT"]), ("/c", ["PATCH"]))
    assert r.match(b"OPTIONS", b"h", b"/a/b") == (405, b"DELETE, GET, HEAD, POST, PUT", None)
    assert r.match(b"OPTIONS", b"h", b"/a/z") == (405, b"DELETE, POST, PUT", None)
    assert r.match(b"OPTIONS", b"h", b"/a/z/y") == (405, b"DELETE, PUT", None)
    assert r.match(b"OPTIONS", b"h", b"/zzz") == (404, None, None)


# --- hosts -----------------------------------------------------------------------------------------

def test_host_is_lowercased_and_port_stripped():
    r = Router([("api.example.com", "/x", None, "host"), (None, "/x", None, "any")])
    for h in (b"api.example.com", b"API.Example.COM", b"api.example.com:8443", b"Api.example.com:"):
        assert r.match(b"GET", h, b"/x")[1] == "host", h
    for h in (b"", None, b"other", b"api.example.com.evil", b":8080"):
        assert r.match(b"GET", h, b"/x")[1] == "any", h


def test_ipv6_host():
    r = Router([("[::1]", "/x", None, "v6"), (None, "/x", None, "any")])
    assert r.match(b"GET", b"[::1]:8080", b"/x")[1] == "v6"
    assert r.match(b"GET", b"[::1]", b"/x")[1] == "v6"
    assert r.match(b"GET", b"[::2]:8080", b"/x")[1] == "any"


def test_host_table_falls_back_to_any_host_only_when_no_path_matched():
    r = Router([
        ("a.example", "/only-a", ["GET"], "a"),
        ("a.example", "/shared", ["POST"], "a-shared"),
        (None, "/shared", ["GET"], "any-shared"),
        (None, "/other", None, "any-other"),
    ])
    assert r.match(b"GET", b"a.example", b"/only-a")[1] == "a"
    assert r.match(b"GET", b"a.example", b"/other")[1] == "any-other"
    # the host defined /shared: its 405 wins, the any-host GET route is not consulted
    assert r.match(b"GET", b"a.example", b"/shared") == (405, b"POST", None)
    assert r.match(b"GET", b"b.example", b"/shared")[1] == "any-shared"
    assert r.match(b"GET", b"b.example", b"/only-a") == (404, None, None)


def test_host_prefix_shadows_any_host_routes():
    r = Router([("a.example", "/*", ["GET"], "a-all"), (None, "/x", None, "any-x")])
    assert r.match(b"GET", b"a.example", b"/x")[1] == "a-all"
    assert r.match(b"POST", b"a.example", b"/x")[0] == 405


def test_route_host_is_case_insensitive():
    r = Router([("API.Example.COM", "/x", None, 1)])
    assert r.match(b"GET", b"api.example.com", b"/x")[1] == 1


# --- paths -----------------------------------------------------------------------------------------

def test_prefix_matches_its_own_path_with_and_without_slash():
    r = build(("/api/*", None),)
    for p in (b"/api", b"/api/", b"/api/x", b"/api/x/y/z", b"/api//"):
        assert hit(r, p)[0] == 0, p
    for p in (b"/apix", b"/", b"/ap", b"/x/api"):
        assert r.match(b"GET", b"h", p)[0] == 404, p


def test_root_prefix_matches_everything():
    r = build(("/*", None),)
    for p in (b"/", b"/a", b"//", b"/a/b/c/"):
        assert hit(r, p)[0] == 0, p


def test_trailing_slash_and_empty_segments_are_significant():
    r = build(("/a", None), ("/a/", None), ("/", None), ("/a//b", None))
    assert hit(r, b"/a")[0] == 0
    assert hit(r, b"/a/")[0] == 1
    assert hit(r, b"/")[0] == 2
    assert hit(r, b"/a//b")[0] == 3
    for p in (b"//", b"/a/b", b"//a", b"/a//"):
        assert r.match(b"GET", b"h", p)[0] == 404, p


def test_param_never_matches_an_empty_segment():
    r = build(("/u/{id}", None), ("/u/{id}/x", None))
    assert r.match(b"GET", b"h", b"/u/")[0] == 404
    assert r.match(b"GET", b"h", b"/u//x")[0] == 404
    assert hit(r, b"/u/1/x") == (1, {"id": "1"})


def test_params_are_raw_latin1_text():
    r = build(("/f/{a}/{b}", None),)
    assert hit(r, b"/f/caf%C3%A9/x y") == (0, {"a": "caf%C3%A9", "b": "x y"})
    assert hit(r, b"/f/\xc3\xa9/\xff") == (0, {"a": "\xc3\xa9", "b": "\xff"})


def test_params_dict_is_fresh_and_none_without_params():
    r = build(("/p/{x}", None), ("/plain", None))
    first = hit(r, b"/p/1")[1]
    first["x"] = "mutated"
    assert hit(r, b"/p/1")[1] == {"x": "1"}
    assert r.match(b"GET", b"h", b"/plain") == (0, 1, None)


def test_non_ascii_literal_compares_as_utf8():
    r = build(("/café", None),)
    assert hit(r, "/café".encode())[0] == 0
    assert r.match(b"GET", b"h", b"/caf%C3%A9")[0] == 404


def test_paths_not_starting_with_slash_are_404():
    r = build(("/*", None),)
    for p in (b"", b"*", b"a/b", b"http://h/a"):
        assert r.match(b"GET", b"h", p) == (404, None, None)


def test_empty_router():
    assert Router([]).match(b"GET", b"h", b"/") == (404, None, None)


def test_deep_patterns_and_paths():
    deep = "/" + "/".join(f"s{i}" for i in range(100))
    r = Router([(None, deep, None, "deep"), (None, deep + "/{last}", None, "deeper"), (None, "/s0/*", None, "pre")])
    assert r.match(b"GET", b"h", deep.encode())[1] == "deep"
    assert r.match(b"GET", b"h", deep.encode() + b"/z") == (0, "deeper", {"last": "z"})
    assert r.match(b"GET", b"h", deep.encode() + b"/z/" * 500)[1] == "pre"
    shallow = build(("/a", None), ("/a/*", None))
    assert hit(shallow, b"/a" + b"/x" * 10_000)[0] == 1
    assert shallow.match(b"GET", b"h", b"/b" + b"/x" * 10_000)[0] == 404


# --- construction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "", "api", "/a*", "/*/a", "/a/*/", "/{}", "/{1x}", "/{a-b}", "/x{id}", "/{id}x", "/{a}/{a}",
    "/a b", "/a\tb", "/{", "/}", "/**", None, b"/a",
])
def test_bad_patterns_are_value_errors(path):
    with pytest.raises(ValueError):
        Router([(None, path, None, 0)])


@pytest.mark.parametrize("route", [
    ("", "/a", None, 0), ("h:80", "/a", None, 0), ("[::1]:80", "/a", None, 0), ("[::1", "/a", None, 0),
    (None, "/a", [], 0), (None, "/a", "GET", 0), (None, "/a", ["G T"], 0), (None, "/a", [""], 0),
    (None, "/a", None), "not a tuple",
])
def test_bad_routes_are_value_errors(route):
    with pytest.raises(ValueError):
        Router([route])


def test_accepts_any_iterable_and_good_patterns():
    Router(iter([(None, "/", None, 0), (None, "/*", ("GET",), 1), (None, "/_a/{_b9}/x-y.z~/*", None, 2)]))


# --- differential: Router == reference on random route sets -----------------------------------------

LITERALS = ["a", "b", "ab", ""]
REQUEST_SEGMENTS = [b"a", b"b", b"ab", b"", b"c", b"%41"]
HOSTS = [None, "h1.example", "h2.example"]
REQUEST_HOSTS = [b"", b"h1.example", b"H1.Example:8080", b"h2.example:1", b"other.example", None]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE"]
REQUEST_METHODS = [m.encode() for m in METHODS] + [b"PATCH"]


# The strategies are built once: a strategy built inside a composite is built and validated again at every
# draw, which cost most of these tests' time (7,800 draws per run); the values drawn are the same.
SHAPE = st.lists(st.one_of(st.sampled_from(LITERALS), st.just(None)), max_size=4)
ROUTE_METHODS = st.one_of(st.none(), st.lists(st.sampled_from(METHODS), min_size=1, max_size=3))
ROUTE_HOST = st.sampled_from(HOSTS)
SEGMENT = st.sampled_from(REQUEST_SEGMENTS)
WILDCARD_SEGMENTS = st.lists(SEGMENT, max_size=2)
RANDOM_SEGMENTS = st.lists(SEGMENT, max_size=6)
ODD_TARGET = st.sampled_from([b"", b"*", b"a/b"])
REQUEST_METHOD = st.sampled_from(REQUEST_METHODS)
REQUEST_HOST = st.sampled_from(REQUEST_HOSTS)


@st.composite
def route_sets(draw):
    n = draw(st.integers(0, 14))
    routes = []
    for i in range(n):
        shape = draw(SHAPE)
        parts = [f"{{p{k}}}" if s is None else s for k, s in enumerate(shape)]
        if draw(st.booleans()):
            parts.append("*")
        methods = draw(ROUTE_METHODS)
        routes.append((draw(ROUTE_HOST), "/" + "/".join(parts), methods, i))
    return routes


@st.composite
def requests(draw, routes):
    """Half the paths are built from a route's pattern (to reach hits and 405s), half at random."""
    if routes and draw(st.booleans()):
        _, path, _, _ = draw(st.sampled_from(routes))
        segs = []
        for part in path[1:].split("/"):
            if part == "*":
                segs += draw(WILDCARD_SEGMENTS)
            elif part.startswith("{"):
                segs.append(draw(SEGMENT))
            else:
                segs.append(part.encode())
        raw = b"/" + b"/".join(segs)
    elif draw(st.integers(0, 20)) == 0:
        raw = draw(ODD_TARGET)
    else:
        raw = b"/" + b"/".join(draw(RANDOM_SEGMENTS))
    return draw(REQUEST_METHOD), draw(REQUEST_HOST), raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_router_agrees_with_reference(data):
    routes = data.draw(route_sets())
    router, ref = Router(routes), RefRouter(routes)
    for _ in range(25):
        method, host, path = data.draw(requests(routes))
        assert router.match(method, host, path) == ref.match(method, host, path), (method, host, path)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_router_agrees_with_reference_on_exhaustive_paths(data):
    """Every path of up to 3 segments over the alphabet, against one random route set."""
    routes = data.draw(route_sets())
    router, ref = Router(routes), RefRouter(routes)
    paths = [b"/"]
    frontier = [b""]
    for _ in range(3):
        frontier = [p + b"/" + s for p in frontier for s in REQUEST_SEGMENTS]
        paths += frontier
    method = data.draw(REQUEST_METHOD)
    host = data.draw(REQUEST_HOST)
    for path in paths:
        assert router.match(method, host, path) == ref.match(method, host, path), (method, host, path)
