"""The config file as a whole: the root `Config` (one field per top-level key), loading, and validation
with errors that name the key.

`load(path)` returns a frozen `Config` or raises `ConfigError`, whose `.errors` lists every problem found
as "key.path: reason" (for example `routes[2].upstream: unknown upstream "acounts" (known: accounts,
payments)`), so `fastgw check` in CI reports a whole broken file at once rather than one error per run.

Loading has three passes:
1. TOML -> plain dicts (tomllib); a syntax error names the line and column.
2. A walk of the raw dicts against the Struct schema (fastgw/config/schema.py): unknown keys (with a
   "did you mean" for a near miss), missing keys, wrong types, duration/size strings turned into float
   seconds / int bytes, relative file paths resolved against the config file's folder; every error with
   its key path. A value in error is replaced by its default or a placeholder, so that:
3. msgspec.convert builds the Structs, then each section's semantic checks (route syntax, references
   between sections, header rules, addresses, limits) run on the typed result even when step 2 found
   errors: one run of `fastgw check` reports both kinds. A check may also add a `ConfigWarning` (a usable
   config that is probably not what was meant, such as a CIDR block with host bits set).
Errors and warnings name the line of their key in the file (fastgw/config/locate.py).

Each section's schema and checks live with what it configures: fastgw/config/server.py, upstreams.py,
routes.py, consumers.py, tracing.py, and the policies' own (fastgw/policies/*/config.py), which the policy registry
(fastgw/policies/__init__.py) composes into the root, [[routes]] and [consumers.NAME].
"""
from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fastgw.config import consumers, routes, server, tracing, upstreams
from fastgw.config.checks import ConfigWarning
from fastgw.config.consumers import Consumer
from fastgw.config.locate import error_path, locate, under
from fastgw.config.routes import Route
from fastgw.config.schema import _from_msgspec, _syntax_error, compose, walk_struct
from fastgw.config.server import Admin, Server
from fastgw.config.tracing import Tracing
from fastgw.config.upstreams import Upstream
from fastgw.policies import POLICIES


class ConfigCore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The top-level keys of the gateway itself; `Config` adds each policy's sections (the registry)."""

    server: Server = msgspec.field(default_factory=Server)
    admin: Admin = msgspec.field(default_factory=Admin)
    upstreams: dict[str, Upstream]
    routes: list[Route]
    consumers: dict[str, Consumer] = msgspec.field(default_factory=dict)
    tracing: Tracing = msgspec.field(default_factory=Tracing)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...     # a policy's section (typed in its config module)


if TYPE_CHECKING:
    Config = ConfigCore
else:
    Config = compose("Config", ConfigCore, [p.sections for p in POLICIES], __name__)


class ConfigError(Exception):
    """An unusable config. `.errors` holds one "key.path: reason" line per problem; `.located` the same
    lines with the file and line in front ("fastgw.toml:12: routes[0].upstream: ..."), as printed."""

    def __init__(self, errors: list[str] | str, located: list[str] | None = None) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        self.located: list[str] = located if located is not None else self.errors
        super().__init__("\n".join(self.errors))


def load(path: str | Path, warnings: list[str] | None = None) -> Config:
    """Read and validate the TOML file at `path`. Relative file paths in it are resolved against the
    folder of `path`. Warnings (the config is usable, but probably not what was meant) are appended to
    `warnings`, located like errors."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not UTF-8 (byte {e.start})") from None
    return loads(text, source=str(path), base=base_of(path), warnings=warnings)


def base_of(path: str | Path) -> str:
    """The folder relative file paths in the config file at `path` are resolved against."""
    return str(Path(path).resolve().parent)


def loads(text: str, source: str = "<string>", base: str | None = None, warnings: list[str] | None = None) -> Config:
    """Validate TOML `text`; `source` names it in errors; `base` is the folder relative file paths are
    resolved against (None: the working directory)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_error(source, str(e), text)) from None
    errors: list[str] = []
    converted = walk_struct(Config, raw, "", errors, base)
    cfg: Config | None = None
    try:
        cfg = msgspec.convert(converted, Config)
    except msgspec.ValidationError as e:  # the walk should have caught it; keep the key path anyway
        if not errors:
            errors.append(_from_msgspec(str(e)))
    if cfg is not None:
        findings = _validate(cfg, best_effort=bool(errors))
        if errors:   # what the checks say about keys already in error repeats it, or follows from a placeholder
            bad = [p for p in map(error_path, errors) if p is not None]
            findings = [f for f in findings if not any(under(error_path(f) or "", b) for b in bad)]
        errors += [f for f in findings if not isinstance(f, ConfigWarning)]
        if warnings is not None and not errors:
            found = [f for f in findings if isinstance(f, ConfigWarning)]
            warnings += locate(found, text, source) if source != "<string>" else found
    if errors:
        raise ConfigError(errors, locate(errors, text, source) if source != "<string>" else None)
    assert cfg is not None
    return routes.normalise(cfg)


def config_hash(path_or_bytes: str | Path | bytes) -> str:
    """First 12 hex digits of the sha256 of the file's bytes: a short, stable config version label."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


def _validate(cfg: Config, best_effort: bool = False) -> list[str]:
    """Every section's checks. `best_effort`: the config holds placeholders for values in error, which a
    check may trip over; what it found until then is kept."""
    errors: list[str] = []
    try:
        server.check(cfg, errors)
        tracing.check(cfg, errors)
        consumers.check(cfg, errors)
        for p in POLICIES:
            p.check(cfg, errors)
        upstreams.check(cfg, errors)
        routes.check(cfg, errors)
    except Exception:
        if not best_effort:
            raise
    return errors
