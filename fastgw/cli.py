"""Command line: `fastgw run | check | reload | version` (also `python -m fastgw ...`); `fastgw --help`
shows an example per command.

Exit codes: 0 clean exit, 1 runtime failure, 2 invalid config or usage (argparse also uses 2).
Only `run` imports the serving code (and so the compiled core): `check`, `reload` and `version` must work
in CI before anything is compiled.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from fastgw import __version__
from fastgw.config.checks import parse_hostport
from fastgw.config.locate import locate
from fastgw.config.root import Config, ConfigError, config_hash, load
from fastgw.config.upstreams import address, resolve_warnings, weight
from fastgw.policies import POLICIES

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "config/fastgw.toml"
RELOAD_WAIT = 30.0           # `fastgw reload` waits this long for every worker to serve the new config

# (command line, what it does): the first of each command is in `fastgw --help`, all in `fastgw CMD --help`.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "run": [("fastgw run -c /etc/fastgw/fastgw.toml", "serve until SIGTERM (drain) or SIGINT"),
            ("fastgw run -c fastgw.toml --workers 2 --pid-file /run/fastgw.pid", "two workers, pid file for reload")],
    "check": [("fastgw check -c /etc/fastgw/fastgw.toml", "validate: every error with its line; exit 2 if invalid"),
              ("fastgw check -c new.toml --bind-check", "also try to bind its listen addresses")],
    "reload": [("fastgw reload -c /etc/fastgw/fastgw.toml", "validate, SIGHUP the gateway found via admin.listen"),
               ("fastgw reload -c fastgw.toml --pid-file /run/fastgw.pid", "the gateway of that pid file"),
               ("kubectl exec deploy/fastgw -- fastgw reload -c /etc/fastgw/fastgw.toml", "in a pod (no kill binary)")],
    "version": [("fastgw version", "fastgw, Python and library versions (fastgw --version: fastgw's alone)")],
}


def _examples(rows: list[tuple[str, str]]) -> str:
    width = max(len(cmd) for cmd, _ in rows)
    return "examples:\n" + "\n".join(f"  {cmd:<{width}}  # {what}" for cmd, what in rows)


def default_config_path() -> str:
    return os.environ.get("FASTGW_CONFIG") or DEFAULT_CONFIG


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="fastgw", description="A fast, strict API gateway.", formatter_class=raw,
        epilog=_examples([rows[0] for rows in EXAMPLES.values()])
        + "\n\n`fastgw COMMAND --help` describes a command. Docs: docs/README.md in the repository.")
    parser.add_argument("--version", action="version", version=f"fastgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_help = f"config file (default: $FASTGW_CONFIG, else {DEFAULT_CONFIG})"

    run = sub.add_parser("run", help="serve with the given config", epilog=_examples(EXAMPLES["run"]), formatter_class=raw,
                         description="Start the supervisor and its workers. SIGHUP reloads, SIGTERM drains, "
                                     "SIGINT stops at once.")
    run.add_argument("-c", "--config", metavar="PATH", help=config_help)
    run.add_argument("--workers", type=_positive_int, metavar="N",
                     help="worker processes (overrides server.workers)")
    run.add_argument("--pid-file", metavar="PATH", help="write the supervisor's pid here while it runs")

    check = sub.add_parser("check", help="validate the config and print a summary of its routes",
                           epilog=_examples(EXAMPLES["check"]), formatter_class=raw,
                           description="Validate the config: every error with its line and key, then a "
                                       "summary. Exit 0 valid, 2 invalid.")
    check.add_argument("-c", "--config", metavar="PATH", help=config_help)
    check.add_argument("--bind-check", action="store_true",
                       help="also try to bind every listen address and admin.listen (fails if one is in use)")

    reload = sub.add_parser("reload", help="validate the config, then make the running gateway reload it",
                            epilog=_examples(EXAMPLES["reload"]), formatter_class=raw,
                            description="Validate the config; if valid, send SIGHUP to the running "
                                        "supervisor (no kill binary needed) and wait until every worker "
                                        "serves it. The supervisor is found by --pid, --pid-file, or by "
                                        "asking the admin listener of the config (admin.listen).")
    reload.add_argument("-c", "--config", metavar="PATH", help=config_help)
    target = reload.add_mutually_exclusive_group()
    target.add_argument("--pid-file", metavar="PATH", help="the pid file `fastgw run --pid-file` wrote")
    target.add_argument("--pid", type=_positive_int, metavar="PID", help="the supervisor's pid (systemd: $MAINPID)")

    sub.add_parser("version", help="print fastgw and runtime library versions", epilog=_examples(EXAMPLES["version"]),
                   formatter_class=raw)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args.config or default_config_path(), args.workers, args.pid_file)
        if args.command == "check":
            return cmd_check(args.config or default_config_path(), args.bind_check)
        if args.command == "reload":
            return cmd_reload(args.config or default_config_path(), args.pid_file, args.pid)
        if args.command == "version":
            return cmd_version()
    except BrokenPipeError:
        # The reader went away (`fastgw check | head -1`): not an error of ours. Point stdout at /dev/null
        # so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def _load_or_report(path: str, warnings: list[str] | None = None) -> Config | None:
    try:
        return load(path, warnings)
    except ConfigError as e:
        for line in e.located:
            print(line, file=sys.stderr)
        n = len(e.errors)
        print(f"fastgw: {path}: config rejected ({n} error{'s' if n != 1 else ''})", file=sys.stderr)
        return None


def cmd_run(path: str, workers: int | None, pid_file: str | None = None) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    # Imported here so that the config commands never load the compiled core or uvloop.
    from fastgw.process.supervisor import StartupError, serve

    try:
        rc = serve(path, workers, pid_file)
    except ConfigError as e:  # the file changed since it was checked above
        for line in e.located:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, StartupError) as e:  # the listen address is taken, a worker cannot start: a runtime failure
        print(f"fastgw: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK if rc is None else int(rc)


def cmd_check(path: str, bind_check: bool = False) -> int:
    warnings: list[str] = []
    cfg = _load_or_report(path, warnings)
    if cfg is None:
        return EXIT_CONFIG
    found = resolve_warnings(cfg)
    warnings += locate(found, Path(path).read_text(), path) if found else []
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if bind_check:
        from fastgw.process.binding import bind_check as try_bind

        errors = try_bind(cfg)
        if errors:
            for line in locate(errors, Path(path).read_text(), path):
                print(line, file=sys.stderr)
            print(f"fastgw: {path}: {len(errors)} listen address(es) cannot be bound", file=sys.stderr)
            return EXIT_RUNTIME
    print(summary(cfg, path))
    sys.stdout.flush()
    return EXIT_OK


def _admin_url(cfg: Config) -> str | None:
    """Where this host reaches the admin listener of `cfg` (None: an ephemeral port, unknown)."""
    host, port = parse_hostport(cfg.admin.listen, allow_port_zero=True)
    if port == 0:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _admin_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def cmd_reload(path: str, pid_file: str | None, pid: int | None) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    admin = _admin_url(cfg)
    try:
        if pid is None and pid_file is not None:
            pid = int(Path(pid_file).read_text().strip())
        elif pid is None:
            if admin is None:
                print("fastgw: admin.listen has port 0: give --pid-file or --pid", file=sys.stderr)
                return EXIT_RUNTIME
            status, body = _admin_get(admin + "/pid")
            if status != 200:
                print(f"fastgw: {admin}/pid answered {status}: is it a fastgw admin listener?", file=sys.stderr)
                return EXIT_RUNTIME
            pid = int(body.strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as e:
        where = f"pid {pid}" if pid is not None else (pid_file or admin)
        print(f"fastgw: cannot reach the running gateway ({where}): {e}", file=sys.stderr)
        return EXIT_RUNTIME
    want = config_hash(path)
    if admin is None:
        print(f"fastgw: sent SIGHUP to {pid} (config {want}); its log says whether it applied it")
        return EXIT_OK
    # Every worker serving the new config shows in /readyz; an admin.listen that changed only takes effect
    # at a restart, so the old one is asked (the gateway answers there until then).
    deadline = time.monotonic() + RELOAD_WAIT
    body = ""
    while time.monotonic() < deadline:
        try:
            status, body = _admin_get(admin + "/readyz")
        except OSError as e:
            body = str(e)
        else:
            if status == 200 and want in body:
                print(f"fastgw: reloaded {path}: {body.strip()}")
                return EXIT_OK
        time.sleep(0.1)
    print(f"fastgw: sent SIGHUP to {pid}, but after {RELOAD_WAIT:g}s the gateway does not serve config {want} "
          f"(/readyz: {body.strip()}); see its log (config_reload_failed)", file=sys.stderr)
    return EXIT_RUNTIME


def summary(cfg: Config, path: str) -> str:
    """Human-readable overview printed by `fastgw check`."""
    lines = [
        f"{path}: OK (config hash {config_hash(path)})",
        f"listen: {', '.join(cfg.server.listen)}  admin: {cfg.admin.listen}  workers: {cfg.server.workers}",
        "",
        f"upstreams ({len(cfg.upstreams)}):",
    ]
    width = max((len(n) for n in cfg.upstreams), default=0)
    for name, up in cfg.upstreams.items():
        shown = [address(t) + (f" (weight {weight(t)})" if weight(t) != 1 else "") for t in up.targets]
        lines.append(f"  {name:<{width}}  {', '.join(shown)}" + ("" if up.balance == "round_robin" else f"  ({up.balance})"))
    lines += ["", f"routes ({len(cfg.routes)}):"]
    rows = [("NAME", "HOST", "METHODS", "PATH", "UPSTREAM")]
    for r in cfg.routes:
        path_shown = r.path + ("  (strip prefix)" if r.strip_prefix else "") + ("  (grpc)" if r.protocol == "grpc" else "")
        rows.append((r.name, r.host or "*", ",".join(r.methods) if r.methods else "*", path_shown, r.upstream))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    t = cfg.tracing
    if t.otlp_endpoint:           # (trace context itself is on for every request: nothing to say)
        lines += ["", f"tracing: spans to {t.otlp_endpoint}  sample_ratio {t.sample_ratio}  incoming {t.incoming}"
                  + (f"  errors and slower than {t.slow:g}s always" if t.export_errors else "")]
    workers = cfg.server.workers if isinstance(cfg.server.workers, int) else len(os.sched_getaffinity(0))
    for p in POLICIES:
        if p.summary is not None:
            lines += p.summary(cfg, workers)
    return "\n".join(lines)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_version() -> int:
    print(f"fastgw {__version__}")
    print(f"python {platform.python_version()} ({platform.python_implementation()})")
    for dep in ("uvloop", "h2"):
        print(f"{dep} {_dist_version(dep)}")
    return EXIT_OK
