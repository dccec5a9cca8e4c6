"""Config layer: units, schema, validation messages (with their key paths) and `fastgw check`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import msgspec
import pytest

from fastgw.config import schema as cfgmod
from fastgw.config.root import Config, ConfigError, config_hash, load, loads
from fastgw.config.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "fastgw.toml"

BASE = """
[upstreams.accounts]
targets = ["127.0.0.1:9000"]

[upstreams.payments]
targets = ["[::1]:9001", "payments.internal:80"]

[[routes]]
name = "accounts"
path = "/v1/accounts/{id}"
methods = ["GET"]
upstream = "accounts"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def route(**fields: str) -> str:
    """A [[routes]] table with sensible defaults, fields given as raw TOML values."""
    values = {"name": '"r"', "path": '"/r"', "upstream": '"accounts"', **fields}
    return "\n[[routes]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


# --- units ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("10s", 10.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0), ("0s", 0.0), ("0.5ms", 0.0005),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert type(parse_duration(text)) is float


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"), ("-1s", "negative"), ("10", "missing unit"), ("10x", "invalid duration"),
    ("10S", "invalid duration"), ("1.s", "invalid duration"), ("s", "invalid duration"), (" 1s", "invalid duration"),
    ("1d", "invalid duration"), ("inf", "invalid duration"), ("1m30s", "invalid duration"),
])
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize(("value", "size"), [
    ("512", 512), ("512B", 512), ("8KB", 8000), ("1MB", 10**6), ("2GB", 2 * 10**9), ("32KiB", 32768),
    ("1MiB", 2**20), ("1GiB", 2**30), ("1.5KiB", 1536), ("0", 0), (4096, 4096), (0, 0),
])
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size
    assert type(parse_size(value)) is int


@pytest.mark.parametrize(("value", "reason"), [
    ("", "empty"), ("-1KiB", "negative"), (-1, "negative"), ("1XB", "invalid size"), ("1kib", "invalid size"),
    ("1 MiB", "invalid size"), ("0.5B", "whole number"), ("KiB", "invalid size"), (True, "expected"),
    (1.5, "expected"),
])
def test_parse_size_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size(value)  # type: ignore[arg-type]


# --- the example config and the schema --------------------------------------------------------------

def test_example_config_loads() -> None:
    cfg = load(EXAMPLE)
    assert cfg.server.listen == ["127.0.0.1:8080"]
    assert list(cfg.upstreams) == ["echo"]
    assert cfg.upstreams["echo"].targets == ["127.0.0.1:9000"]
    kinds = {r.path for r in cfg.routes}
    assert any("{" in p for p in kinds) and any(p.endswith("/*") for p in kinds)
    assert any(r.strip_prefix for r in cfg.routes)
    assert any(r.request_headers.add and r.request_headers.remove for r in cfg.routes)


def _structs_in(tp: object) -> list[type[msgspec.Struct]]:
    """The Struct types in a field's type, however nested (X | None, list[X], dict[str, X])."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return [tp]
    return [s for arg in typing.get_args(tp) for s in _structs_in(arg)]


def _schema_keys(cls: type[msgspec.Struct]) -> set[str]:
    keys: set[str] = set()
    for f in msgspec.structs.fields(cls):
        keys.add(f.encode_name)
        for sub in _structs_in(f.type):
            if sub is not cls:
                keys |= _schema_keys(sub)
    return keys


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    keys = _schema_keys(Config)
    assert {"max_pipelined", "strip_prefix", "response_headers", "balance", "remove"} <= keys
    # A key counts as documented when it is set, shown commented out, listed in a comment, or a table name.
    missing = sorted(k for k in keys
                     if not re.search(rf"^#?\s*{k}\b|^#\s+\.?{k}\b|^\[\[?([\w.]*\.)?{k}\b", text, re.M))
    assert not missing, f"config/fastgw.toml does not mention: {missing}"
    # The example runs with no Redis, no certificates and no key material: those tables stay commented out.
    assert not re.search(r"^\[(redis|auth|consumers|server\.tls)", text, re.M)


def test_example_prose_is_current() -> None:
    """The example's comments describe what the gateway accepts today: no key is announced for a later
    issue or said to be rejected, and every table the comments name is one the schema has."""
    text = EXAMPLE.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert not re.search(r"later issue|not here yet|rejected as unknown", comments, re.I), \
        re.findall(r".*(?:later issue|not here yet|rejected as unknown).*", comments, re.I)
    keys = _schema_keys(Config)
    named = set(re.findall(r"(?<![\w\]])\[\[?([a-z_]\w*)(?:\.[\w*.]+)?\]\]?", comments))
    assert named and named <= keys, named - keys


def test_defaults_and_types() -> None:
    cfg = loads(BASE)
    lim = cfg.server.limits
    assert (lim.max_header_bytes, lim.max_headers, lim.max_request_line, lim.max_body) == (32768, 100, 8192, 2**20)
    assert (lim.header_timeout, lim.idle_timeout, lim.body_timeout) == (10.0, 60.0, 30.0)
    assert (lim.max_requests_per_connection, lim.max_pipelined) == (1000, 16)
    assert cfg.server.workers == "auto" and cfg.admin.listen == "127.0.0.1:9901"
    up = cfg.upstreams["accounts"]
    assert (up.keepalive, up.connect_timeout, up.timeout, up.idle_timeout, up.balance) == (
        128, 3.0, 15.0, 60.0, "round_robin")
    r = cfg.routes[0]
    assert r.host is None and r.strip_prefix is False and r.max_body is None
    assert r.request_headers.add == {} and r.response_headers.remove == []
    with pytest.raises(AttributeError):
        r.name = "x"  # type: ignore[misc]


def test_units_become_numbers() -> None:
    cfg = loads(BASE.replace("[upstreams.accounts]", '[server.limits]\nmax_body = "8KB"\nheader_timeout = "250ms"\n'
                             'max_header_bytes = 1024\n[upstreams.accounts]\nconnect_timeout = "1.5s"')
                + route(name='"big"', path='"/big"', max_body='"2MiB"'))
    assert cfg.server.limits.max_body == 8000 and type(cfg.server.limits.max_body) is int
    assert cfg.server.limits.header_timeout == 0.25 and type(cfg.server.limits.header_timeout) is float
    assert cfg.server.limits.max_header_bytes == 1024
    assert cfg.upstreams["accounts"].connect_timeout == 1.5
    assert cfg.routes[1].max_body == 2 * 2**20


def test_route_host_is_lowercased() -> None:
    cfg = loads(BASE + route(host='"API.Bank.Example"'))
    assert cfg.routes[1].host == "api.bank.example"


def test_ipv6_listen_and_workers() -> None:
    cfg = loads('[server]\nlisten = ["[::]:8080", "0.0.0.0:0"]\nworkers = 4\n' + BASE)
    assert cfg.server.listen == ["[::]:8080", "0.0.0.0:0"] and cfg.server.workers == 4


# --- errors name the key path ---------------------------------------------------------------------

def test_unknown_keys_all_reported() -> None:
    errs = errors_of("[server]\nbogus = 1\n[server.limits]\nmax_bodyy = 1\n" + BASE + route(frobnicate="true")
                     + "[routes.request_headers]\nappend = {}\n")
    assert errs == [
        "server.bogus: unknown key",
        'server.limits.max_bodyy: unknown key (did you mean "max_body"?)',
        "routes[1].frobnicate: unknown key",
        "routes[1].request_headers.append: unknown key",
    ]


def test_unknown_top_level_section() -> None:
    assert errors_of(BASE + '[rediss]\nurl = "redis://x"\n') == ['rediss: unknown key (did you mean "redis"?)']
    assert errors_of(BASE + '[frobnicate]\nurl = "redis://x"\n') == ["frobnicate: unknown key"]


def test_bad_size() -> None:
    errs = errors_of('[server.limits]\nmax_body = "1XB"\n' + BASE)
    assert errs == ['server.limits.max_body: invalid size "1XB" (use e.g. "512KiB", "1MiB")']


def test_bad_route_max_body() -> None:
    assert errors_of(BASE + route(max_body='"-1KiB"')) == ['routes[1].max_body: invalid size "-1KiB": must not be negative']


def test_bad_duration() -> None:
    errs = errors_of('[server.limits]\nidle_timeout = "10x"\nheader_timeout = 10\n' + BASE)
    assert errs[0].startswith('server.limits.idle_timeout: invalid duration "10x"')
    assert errs[1] == 'server.limits.header_timeout: expected a duration such as "10s" or "250ms", got integer 10'
    errs = errors_of(BASE.replace("[upstreams.payments]", '[upstreams.payments]\ntimeout = "-3s"'))
    assert errs == ['upstreams.payments.timeout: invalid duration "-3s": must not be negative']


def test_zero_timeout_and_limits() -> None:
    errs = errors_of('[server]\nworkers = 0\n[server.limits]\nbody_timeout = "0s"\nmax_headers = 0\n' + BASE.replace(
        "[upstreams.payments]", "[upstreams.payments]\nkeepalive = -1"))
    assert errs == [
        'server.workers: must be at least 1 or "auto", got 0',
        "server.limits.max_headers: must be greater than 0",
        "server.limits.body_timeout: must be greater than 0",
        "upstreams.payments.keepalive: must not be negative (0 disables pooling)",
    ]


def test_slow_peer_and_connection_limits() -> None:
    lim = loads(BASE).server.limits
    assert (lim.min_body_rate, lim.send_timeout, lim.max_connections) == (500, 60.0, "auto")
    lim = loads('[server.limits]\nmin_body_rate = "0"\nsend_timeout = "5s"\nmax_connections = 2000\n' + BASE).server.limits
    assert (lim.min_body_rate, lim.send_timeout, lim.max_connections) == (0, 5.0, 2000)
    # Schema errors and the checks of the other keys in one pass.
    errs = errors_of('[server.limits]\nsend_timeout = "0s"\nmax_connections = 0\nmin_body_rate = "-1B"\n' + BASE)
    assert errs == ['server.limits.min_body_rate: invalid size "-1B": must not be negative',
                    "server.limits.send_timeout: must be greater than 0",
                    'server.limits.max_connections: must be between 1 and 10000000 or "auto", got 0']
    errs = errors_of('[server.limits]\nsend_timeout = "0s"\nmax_connections = 0\n' + BASE)
    assert errs == ["server.limits.send_timeout: must be greater than 0",
                    'server.limits.max_connections: must be between 1 and 10000000 or "auto", got 0']
    errs = errors_of('[server.limits]\nmax_connections = "lots"\n' + BASE)
    assert errs == ['server.limits.max_connections: expected an integer or "auto", got string "lots"']


def test_wrong_types() -> None:
    errs = errors_of('[server]\nworkers = "many"\nlisten = "127.0.0.1:80"\n' + BASE + route(
        methods='"GET"', strip_prefix='"yes"'))
    assert errs == [
        'server.workers: expected an integer or "auto", got string "many"',
        'server.listen: expected an array, got string "127.0.0.1:80"',
        'routes[1].methods: expected an array, got string "GET"',
        'routes[1].strip_prefix: expected true or false, got string "yes"',
    ]


def test_missing_required_keys() -> None:
    errs = errors_of('[upstreams.a]\nkeepalive = 1\n[[routes]]\nname = "x"\n')
    assert errs == [
        "upstreams.a.targets: required key is missing",
        "routes[0].path: required key is missing",
        "routes[0].upstream: required key is missing",
    ]
    assert errors_of("") == ["upstreams: required key is missing", "routes: required key is missing"]


def test_unknown_upstream_lists_known() -> None:
    errs = errors_of(BASE + route() + route(name='"r2"', path='"/r2"', upstream='"acounts"'))
    assert errs == ['routes[2].upstream: unknown upstream "acounts" (known: accounts, payments)']


@pytest.mark.parametrize(("path", "reason"), [
    ("v1/x", 'must start with "/"'),
    ("/a//b", "empty segment"),
    ("/a/*/b", '"*" is only allowed as the last segment'),
    ("/a*", '"*" is only allowed as the whole last segment'),
    ("/u/v{id}", "a parameter must be a whole segment"),
    ("/u/{1d}", "bad parameter name"),
    ("/u/{id}/{id}", 'parameter "{id}" appears twice'),
    ("/a/../b", '".." segments are not allowed'),
    ("/a b", "characters not allowed"),
    ("/a?b", "characters not allowed"),
])
def test_bad_route_path(path: str, reason: str) -> None:
    errs = errors_of(BASE + route(path=f'"{path}"'))
    assert len(errs) == 1
    assert errs[0].startswith(f'routes[1].path: invalid path "{path}": ')
    assert reason in errs[0]


@pytest.mark.parametrize("path", ["/", "/a/", "/api/*", "/*", "/u/{id}/orders/{order_id}", "/t/{id}/*",
                                  "/a%20b/~x-y_z.json", "/v1/@me:x"])
def test_good_route_paths(path: str) -> None:
    loads(BASE + route(path=f'"{path}"'))


def test_duplicate_route_names() -> None:
    errs = errors_of(BASE + route(name='"accounts"', path='"/other"'))
    assert errs == ['routes[1].name: duplicate route name "accounts" (also routes[0])']


def test_invalid_route_name() -> None:
    assert errors_of(BASE + route(name='"a b"')) == ['routes[1].name: invalid name "a b" (use letters, digits, "_", ".", "-")']


def test_strip_prefix_on_non_prefix_route() -> None:
    errs = errors_of(BASE + route(path='"/exact"', strip_prefix="true"))
    assert errs == ['routes[1].strip_prefix: only valid on a prefix route (a path ending in "/*"), not "/exact"']


def test_conflicting_routes() -> None:
    # Same host and path shape (param names do not matter); GET also serves HEAD, so GET vs HEAD overlaps.
    errs = errors_of(BASE + route(path='"/v1/accounts/{acct}"', methods='["HEAD", "POST"]'))
    assert errs == ['routes[1].path: routes "accounts" (routes[0]) and "r" (routes[1]) both match host * '
                    'path "/v1/accounts/{acct}" for HEAD']
    errs = errors_of(BASE + route(path='"/x"') + route(name='"r2"', path='"/x"'))
    assert errs == ['routes[2].path: routes "r" (routes[1]) and "r2" (routes[2]) both match host * path "/x" '
                    'for any method']


def test_non_conflicting_routes() -> None:
    loads(BASE + route(path='"/v1/accounts/{id}"', methods='["POST"]')
          + route(name='"r2"', path='"/v1/accounts/{id}"', host='"api.example"')
          + route(name='"r3"', path='"/v1/accounts/{id}/"'))


def test_header_names_fastgw_owns_are_refused_with_the_reason() -> None:
    """Routes, claims and credentials are checked against the one header table (fastgw/headers.py),
    under any spelling an upstream folds to the same name."""
    errs = errors_of(BASE + route() + """
[routes.request_headers]
add = { "X-Request-ID" = "x", "traceparent" = "y", "X-Env" = "prod" }
remove = ["X_Forwarded_Port"]
[auth.api_key]
header = "X_Key"
[auth.jwt.i]
issuer = "x"
algorithms = ["HS256"]
secret = "s"
header = "X-Roles"
claims_to_headers = { sub = "X-Forwarded-User", t = "X-Tenant" }
""")
    assert errs == [
        'auth.api_key.header: X_Key contains "_": such request headers are dropped '
        "(server.limits.allow_underscores = false)",
        "auth.jwt.i.header: X-Roles cannot carry a token (identity headers are set by fastgw from verified "
        "credentials)",
        "auth.jwt.i.claims_to_headers.sub: X-Forwarded-User cannot carry a claim (fastgw sets X-Forwarded-*)",
        "routes[1].request_headers.add.X-Request-ID: cannot add X-Request-ID: fastgw sets X-Request-ID",
        "routes[1].request_headers.add.traceparent: cannot add traceparent: fastgw sets trace context (it "
        "continues a valid traceparent)",
        "routes[1].request_headers.remove[0]: cannot remove X_Forwarded_Port: fastgw sets X-Forwarded-*",
    ]
    assert loads(BASE + route() + '[server.limits]\nallow_underscores = true\n[auth.api_key]\nheader = "X_Key"\n')


def test_methods() -> None:
    errs = errors_of(BASE + route(methods='["get", "GET", "GET", "P T"]') + route(name='"r2"', path='"/2"', methods="[]"))
    assert errs == [
        'routes[1].methods[0]: invalid method "get" (methods are case-sensitive: "GET")',
        'routes[1].methods[2]: duplicate method "GET"',
        'routes[1].methods[3]: invalid method "P T"',
        "routes[2].methods: must not be empty (omit the key to allow any method)",
    ]


def test_forbidden_and_bad_headers() -> None:
    errs = errors_of(BASE + route() + """
[routes.request_headers]
add = { "Transfer-Encoding" = "chunked", "X-A" = "a\\r\\nInjected: 1", "Bad Name" = "x", "X-Ok" = "ok" }
remove = ["Host", "x-ok", "x y"]
[routes.response_headers]
add = { "connection" = "close", "X-Uni" = "caf\u00e9" }
""")
    assert errs == [
        "routes[1].request_headers.add.Transfer-Encoding: cannot add Transfer-Encoding: fastgw manages framing "
        "and hop-by-hop headers itself",
        "routes[1].request_headers.add.X-A: value contains a control character (CR, LF and NUL are never allowed)",
        'routes[1].request_headers.add."Bad Name": invalid header name (RFC 9110 token characters only)',
        "routes[1].request_headers.remove[0]: cannot remove Host: fastgw manages framing and hop-by-hop "
        "headers itself",
        "routes[1].request_headers.remove[1]: x-ok is both added and removed (an added header already "
        "replaces the client's)",
        'routes[1].request_headers.remove[2]: invalid header name "x y" (RFC 9110 token characters only)',
        "routes[1].response_headers.add.connection: cannot add connection: fastgw manages framing and "
        "hop-by-hop headers itself",
        "routes[1].response_headers.add.X-Uni: value must be ASCII (RFC 9110 §5.5: other bytes are not portable)",
    ]


def test_route_host() -> None:
    errs = errors_of(BASE + route(host='"api.example:443"') + route(name='"r2"', path='"/2"', host='"*.example"'))
    assert errs == [
        'routes[1].host: "api.example:443" must not include a port (the request\'s port is ignored)',
        'routes[2].host: "*.example" is not a valid host name',
    ]


def test_addresses() -> None:
    errs = errors_of('[server]\nlisten = ["8080", "::1:80", "[::1]:8080", "1.2.3.4:99999", "[::1]:8080"]\n'
                     '[admin]\nlisten = "0.0.0.0:8080"\n'
                     + BASE.replace('"payments.internal:80"', '"bad_host:80", "10.0.0.300:80", "h:0"'))
    assert errs == [
        'server.listen[0]: invalid address "8080": missing port, expected "host:port", e.g. "127.0.0.1:8080"',
        'server.listen[1]: invalid address "::1:80": an IPv6 address must be in brackets, e.g. "[::1]:8080"',
        'server.listen[3]: invalid address "1.2.3.4:99999": port 99999 is out of range (1-65535)',
        'server.listen[4]: "[::1]:8080" is listed twice (also server.listen[2])',
        'admin.listen: "0.0.0.0:8080" overlaps a server.listen address',
        'upstreams.payments.targets[1]: invalid target "bad_host:80": "bad_host" is not a valid host name',
        'upstreams.payments.targets[2]: invalid target "10.0.0.300:80": "10.0.0.300" is not an IPv4 address',
        'upstreams.payments.targets[3]: invalid target "h:0": port 0 is out of range (1-65535)',
    ]


def test_upstream_needs_targets_and_a_good_name() -> None:
    errs = errors_of(BASE + '[upstreams."a b"]\ntargets = []\nbalance = "random"\n')
    assert errs == ['upstreams."a b".balance: expected "round_robin" or "least_request" or "hash", got string "random"',
                    'upstreams."a b": invalid upstream name "a b" (use letters, digits, "_", ".", "-")',
                    'upstreams."a b".targets: at least one target is required']
    errs = errors_of(BASE + '[upstreams."a b"]\ntargets = []\n')
    assert errs == ['upstreams."a b": invalid upstream name "a b" (use letters, digits, "_", ".", "-")',
                    'upstreams."a b".targets: at least one target is required']


def test_empty_routes_and_upstreams() -> None:
    errs = errors_of("upstreams = {}\nroutes = []\n")
    assert errs == ["upstreams: at least one upstream is required",
                    "routes: at least one route is required (with none, every request gets 404)"]


def test_toml_syntax_error_names_line() -> None:
    with pytest.raises(ConfigError) as info:
        loads('[server]\nlisten = ["a"\n', source="x.toml")
    assert info.value.errors == ["x.toml: line 3, column 1: TOML syntax error: Unclosed array (at end of file)"]
    with pytest.raises(ConfigError) as info:
        loads('[server]\nlisten = \n', source="x.toml")
    assert info.value.errors == ["x.toml: line 2, column 10: TOML syntax error: Invalid value"]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert info.value.errors == [f"{missing}: cannot read: No such file or directory"]


def test_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match="cannot read: not UTF-8"):
        load(bad)


def test_config_hash(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_bytes(b"abc")
    assert config_hash(p) == config_hash(b"abc") == config_hash(str(p)) == "ba7816bf8f01"


def test_msgspec_path_conversion() -> None:
    assert cfgmod._from_msgspec("Object contains unknown field `zz` - at `$.routes[0].foo`") == (
        "routes[0].foo: Object contains unknown field `zz`")


# --- the CLI --------------------------------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastgw", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_cli_check_example() -> None:
    proc = run_cli("check", "-c", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "echo" in proc.stdout and "127.0.0.1:9000" in proc.stdout
    assert re.search(r"NAME\s+HOST\s+METHODS\s+PATH\s+UPSTREAM", proc.stdout)
    assert re.search(r"user\s+\*\s+GET,PUT,DELETE\s+/users/\{id\}\s+echo", proc.stdout)


def test_cli_check_default_path_and_env(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASTGW_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "fastgw", "check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config/fastgw.toml: OK")
    other = tmp_path / "other.toml"
    other.write_text(BASE)
    proc = run_cli("check", env={"FASTGW_CONFIG": str(other)})
    assert proc.returncode == 0 and proc.stdout.startswith(f"{other}: OK")


def test_cli_check_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + route(upstream='"acounts"') + '[server]\nbogus = true\n')
    proc = run_cli("check", "-c", str(bad))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "server.bogus: unknown key\n" in proc.stderr
    bad.write_text(BASE + route(upstream='"acounts"'))
    proc = run_cli("check", "-c", str(bad))
    assert proc.returncode == 2
    assert 'routes[1].upstream: unknown upstream "acounts" (known: accounts, payments)\n' in proc.stderr


def test_cli_missing_file_and_usage(tmp_path: Path) -> None:
    proc = run_cli("check", "-c", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    proc = run_cli("run", "-c", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr
    assert run_cli().returncode == 2
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("run", "--workers", "0").returncode == 2


def test_cli_version() -> None:
    proc = run_cli("version")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"fastgw \d+\.\d+\.\d+\S*", lines[0])
    assert any(line.startswith("python ") for line in lines)
    # The runtime's own libraries (httptools is the test extra's reference reader since f3375ed).
    assert any(line.startswith("uvloop ") for line in lines) and any(line.startswith("h2 ") for line in lines)


def test_check_does_not_import_the_core() -> None:
    code = (f"import sys; from fastgw.cli import main; rc = main(['check', '-c', {str(EXAMPLE)!r}]); "
            "assert rc == 0; bad = [m for m in sys.modules if m.startswith(('fastgw._core', 'fastgw.process', "
            "'uvloop', 'httptools'))]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_upstream_protocol_is_validated() -> None:
    text = BASE.replace('[upstreams.payments]\n', '[upstreams.payments]\nprotocol = "http3"\n')
    errors = errors_of(text)
    assert any(e.startswith("upstreams.payments.protocol: expected") and '"grpc"' in e for e in errors), errors


def test_upstream_protocol_grpc_makes_its_routes_grpc() -> None:
    from fastgw.compile import compile_config
    text = BASE.replace('[upstreams.payments]\n', '[upstreams.payments]\nprotocol = "grpc"\n') + (
        '\n[[routes]]\nname = "pay"\npath = "/pay/*"\nupstream = "payments"\n')
    cfg = loads(text)
    assert cfg.upstreams["payments"].protocol == "grpc" and cfg.upstreams["accounts"].protocol == "http1"
    run = compile_config(cfg)
    pay = run.router.match(b"POST", b"gw.test", b"/pay/x")[1]
    accounts = run.router.match(b"GET", b"gw.test", b"/v1/accounts/7")[1]
    assert pay.name == "pay" and pay.grpc and pay.group.targets[0].h2pool is not None
    assert accounts.name == "accounts" and not accounts.grpc and accounts.group.targets[0].h2pool is None
