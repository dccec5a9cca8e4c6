"""Command line: `fastgw run | check | version` (also `python -m fastgw ...`).

Exit codes: 0 clean exit, 1 runtime failure, 2 invalid config or usage (argparse also uses 2).
Only `run` imports the serving code (and so the compiled core): `check` and `version` must work in CI
before anything is compiled.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata

from fastgw import __version__
from fastgw.config.root import Config, ConfigError, config_hash, load
from fastgw.policies import POLICIES

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG = "config/fastgw.toml"


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
    parser = argparse.ArgumentParser(prog="fastgw", description="A fast, strict API gateway.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    config_help = f"config file (default: $FASTGW_CONFIG, else {DEFAULT_CONFIG})"

    run = sub.add_parser("run", help="serve with the given config")
    run.add_argument("-c", "--config", metavar="PATH", help=config_help)
    run.add_argument("--workers", type=_positive_int, metavar="N",
                     help="worker processes (overrides server.workers)")

    check = sub.add_parser("check", help="validate the config and print a summary of its routes")
    check.add_argument("-c", "--config", metavar="PATH", help=config_help)

    sub.add_parser("version", help="print fastgw and runtime library versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args.config or default_config_path(), args.workers)
    if args.command == "check":
        return cmd_check(args.config or default_config_path())
    if args.command == "version":
        return cmd_version()
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def _load_or_report(path: str) -> Config | None:
    try:
        return load(path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        n = len(e.errors)
        print(f"fastgw: {path}: config rejected ({n} error{'s' if n != 1 else ''})", file=sys.stderr)
        return None


def cmd_run(path: str, workers: int | None) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    # Imported here so that the config commands never load the compiled core or uvloop.
    from fastgw.process.supervisor import StartupError, serve

    try:
        rc = serve(path, workers)
    except ConfigError as e:  # the file changed since it was checked above
        for line in e.errors:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, StartupError) as e:  # the listen address is taken, a worker cannot start: a runtime failure
        print(f"fastgw: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK if rc is None else int(rc)


def cmd_check(path: str) -> int:
    cfg = _load_or_report(path)
    if cfg is None:
        return EXIT_CONFIG
    print(summary(cfg, path))
    return EXIT_OK


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
        lines.append(f"  {name:<{width}}  {', '.join(up.targets)}")
    lines += ["", f"routes ({len(cfg.routes)}):"]
    rows = [("NAME", "HOST", "METHODS", "PATH", "UPSTREAM")]
    for r in cfg.routes:
        path_shown = r.path + ("  (strip prefix)" if r.strip_prefix else "") + ("  (grpc)" if r.protocol == "grpc" else "")
        rows.append((r.name, r.host or "*", ",".join(r.methods) if r.methods else "*", path_shown, r.upstream))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
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
    for dep in ("uvloop", "httptools"):
        print(f"{dep} {_dist_version(dep)}")
    return EXIT_OK
