"""The operator's side of the command line: --version and --help, errors that point at the line, warnings,
the bind check, `fastgw reload`, the serving line, and output into a closed pipe."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fastgw import __version__
from fastgw.cli import EXAMPLES
from fastgw.config.locate import key_lines
from fastgw.config.root import ConfigError, load, loads
from tests.conftest import free_port
from tests.procutil import ROOT, Gateway, Origin, admin_get, config


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastgw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


BASE = """[upstreams.accounts]
targets = ["127.0.0.1:9000"]

[[routes]]
name = "accounts"
path = "/v1/accounts/*"
upstream = "accounts"
"""


# --- --version, --help -----------------------------------------------------------------------------

def test_version_flag() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"fastgw {__version__}\n"


@pytest.mark.parametrize("command", list(EXAMPLES))
def test_help_gives_an_example_per_command(command: str) -> None:
    top = run_cli("--help").stdout
    assert EXAMPLES[command][0][0] in top
    proc = run_cli(command, "--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    for line, what in EXAMPLES[command]:
        assert line in proc.stdout and what in proc.stdout


# --- errors with lines, in one pass ----------------------------------------------------------------

def test_errors_name_the_line_and_suggest(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(BASE + """
[upstreams.payments]
targets = ["127.0.0.1:9001"]
balance = "round_robn"

[[routes]]
name = "payments"
path = "/v1/payments/*"
upstream = "paymnts"
max_bdy = "1MiB"
""")
    proc = run_cli("check", "-c", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    # Schema errors (unknown key, enum) and a cross-reference error (unknown upstream) in the same run.
    assert lines == [
        f'{path}:11: upstreams.payments.balance: expected "round_robin" or "least_request" or "hash", got string "round_robn" '
        '(did you mean "round_robin"?)',
        f'{path}:17: routes[1].max_bdy: unknown key (did you mean "max_body"?)',
        f'{path}:16: routes[1].upstream: unknown upstream "paymnts" (known: accounts, payments)',
        f"fastgw: {path}: config rejected (3 errors)",
    ]


def test_key_lines_follow_tables_arrays_and_multiline_values() -> None:
    text = ('[server]\nlisten = [\n  "a",\n  "b = c",\n]\nworkers = 2\n"quoted key" = """\nx = 1\n"""\n'
            '[[routes]]\nname = "a"\n[[routes]]\nname = "b"\n[routes.request_headers]\nadd = { "X-A" = "1" }\n'
            '[upstreams."a b".tls]\nca = "x"\n')
    lines = key_lines(text)
    assert lines["server.listen"] == 2 and lines["server.workers"] == 6
    assert lines['server."quoted key"'] == 7 and "x" not in lines and "server.x" not in lines
    assert lines["routes[0]"] == 10 and lines["routes[1].name"] == 13
    assert lines["routes[1].request_headers.add"] == 15
    assert lines['upstreams."a b".tls.ca'] == 17


def test_cidr_with_host_bits_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nip_allow = ["10.1.2.3/8", "192.168.0.0/16", "10.9.9.9"]\n' + BASE)
    proc = run_cli("check", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (f'warning: {path}:2: server.ip_allow[0]: "10.1.2.3/8" has host bits set: it means '
                           "10.0.0.0/8 (write 10.0.0.0/8, or the address alone for one host)\n")


def test_unresolvable_target_is_a_warning_in_check(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    # RFC 6761: names under .invalid never resolve.
    path.write_text(BASE.replace("127.0.0.1:9000", "accounts.fastgw-test.invalid:9000"))
    proc = run_cli("check", "-c", str(path))
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf'warning: {re.escape(str(path))}:2: upstreams.accounts.targets\[0\]: host '
                        r'"accounts.fastgw-test.invalid" does not resolve here \(.+\); fastgw resolves it again '
                        r"when it connects\n", proc.stderr), proc.stderr


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "idp.json").write_text('{"keys": []}')
    path = tmp_path / "gw.toml"
    path.write_text(BASE + '[auth.jwt.idp]\nissuer = "https://idp"\nalgorithms = ["RS256"]\n'
                    'jwks_file = "keys/idp.json"\n')
    assert load(path).auth.jwt["idp"].jwks_file == str(tmp_path / "keys" / "idp.json")
    proc = run_cli("check", "-c", "gw.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("check", "-c", str(path), cwd=ROOT)          # another working directory: the same file
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ConfigError) as info:        # loads() without a file: the working directory
        loads(path.read_text())
    assert 'auth.jwt.idp.jwks_file: cannot read "keys/idp.json"' in info.value.errors[0]


@pytest.mark.parametrize("alias", ["100/sec", "100/second", "100/m", "100/minute", "100/hour", "100/d"])
def test_undocumented_rate_spellings_are_refused(alias: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(BASE + f'[plans.p]\nlimits = [{{ rate = "{alias}" }}]\n')
    (error,) = info.value.errors
    assert f'invalid rate "{alias}" (the unit is "' in error and "<count>/<s|min|h|day>" in error


def test_check_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    # Enough routes that the summary overflows the pipe buffer after `head` has gone.
    routes = "".join(f'[[routes]]\nname = "r{i}"\npath = "/r{i}/*"\nupstream = "accounts"\n' for i in range(3000))
    path = tmp_path / "big.toml"
    path.write_text('[upstreams.accounts]\ntargets = ["127.0.0.1:9000"]\n' + routes)
    proc = subprocess.run(f"{sys.executable} -m fastgw check -c {path} | head -1", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.startswith(f"{path}: OK")
    assert proc.stderr == ""


# --- listen addresses ------------------------------------------------------------------------------

@pytest.fixture
def taken_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s, s.getsockname()[1]
    s.close()


def test_address_in_use_names_the_key(tmp_path: Path, taken_port: tuple[socket.socket, int]) -> None:
    _, port = taken_port
    path = tmp_path / "gw.toml"
    path.write_text(f'[server]\nlisten = ["127.0.0.1:{free_port()}", "127.0.0.1:{port}"]\n'
                    '[admin]\nlisten = "127.0.0.1:0"\n' + BASE)
    message = f"server.listen[1]: 127.0.0.1:{port} is already in use by another process"
    assert run_cli("check", "-c", str(path)).returncode == 0
    proc = run_cli("check", "-c", str(path), "--bind-check")
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"{path}:2: {message}\n" in proc.stderr
    proc = run_cli("run", "-c", str(path), "--workers", "1")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"fastgw: {message}"
    path.write_text(f'[admin]\nlisten = "127.0.0.1:{port}"\n' + BASE.replace("9000", "9000") +
                    f'[server]\nlisten = ["127.0.0.1:{free_port()}"]\n')
    proc = run_cli("run", "-c", str(path), "--workers", "1")
    assert proc.returncode == 1
    assert f"fastgw: admin.listen: 127.0.0.1:{port} is already in use by another process" in proc.stderr


# --- reload and the serving line ------------------------------------------------------------------

def test_reload_validates_then_signals_through_the_admin_listener(tmp_path: Path) -> None:
    origin = Origin()
    admin_port = free_port()
    path = tmp_path / "gw.toml"
    first = config(origin).replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{admin_port}"')
    path.write_text(first)
    gw = Gateway(path, workers=2)
    try:
        gw.wait_ready()
        assert httpx.get(gw.base + "/new").status_code == 200          # served by route "all"
        # An invalid file: exit 2 with the error, and the gateway is never signalled.
        path.write_text(first + '[[routes]]\nname = "new"\npath = "/new"\nupstream = "nowhere"\n')
        proc = run_cli("reload", "-c", str(path))
        assert proc.returncode == 2 and 'routes[2].upstream: unknown upstream "nowhere"' in proc.stderr
        time.sleep(0.3)
        assert not any(e.get("event", "").startswith("config_reload") for e in gw.events)
        # A valid one: SIGHUP, and the command returns once every worker serves it.
        path.write_text(first + '[[routes]]\nname = "new"\npath = "/new"\nupstream = "origin"\n'
                        '[routes.response_headers]\nadd = { "X-New" = "1" }\n')
        proc = run_cli("reload", "-c", str(path))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"fastgw: reloaded {path}: ready: 2 workers on config ")
        assert httpx.get(gw.base + "/new").headers.get("x-new") == "1"
        assert admin_get(gw.admin_base + "/pid")[1] == f"{gw.proc.pid}\n"
    finally:
        gw.close()
        origin.close()
    _, err = gw.proc.communicate(timeout=10)
    line = (f"fastgw {__version__} serving http://{gw.listen} (2 workers), admin http://127.0.0.1:{admin_port}")
    assert line in err.decode().splitlines()


def test_reload_with_a_pid_file(tmp_path: Path) -> None:
    origin = Origin()
    path = tmp_path / "gw.toml"
    pid_file = tmp_path / "fastgw.pid"
    path.write_text(config(origin))
    gw = Gateway(path, workers=1, args=["--pid-file", str(pid_file)])
    try:
        gw.wait_ready()
        assert pid_file.read_text() == f"{gw.proc.pid}\n"
        # admin.listen has port 0 here: the pid file is the only way to the gateway.
        assert run_cli("reload", "-c", str(path)).returncode == 1
        path.write_text(config(origin, routes='[[routes]]\nname = "x"\npath = "/x"\nupstream = "origin"\n'))
        proc = run_cli("reload", "-c", str(path), "--pid-file", str(pid_file))
        assert proc.returncode == 0, proc.stderr
        gw.wait_event("config_reload", routes=3)
    finally:
        gw.close()
        origin.close()
    assert not pid_file.exists()
