"""The config file as a whole: the root `Config` (one field per top-level key), loading, and validation
with errors that name the key.

`load(path)` returns a frozen `Config` or raises `ConfigError`, whose `.errors` lists every problem found
as "key.path: reason" (for example `routes[2].upstream: unknown upstream "acounts" (known: accounts,
payments)`), so `fastgw check` in CI reports a whole broken file at once rather than one error per run.

Loading has three passes:
1. TOML -> plain dicts (tomllib); a syntax error names the line and column.
2. A walk of the raw dicts against the Struct schema (fastgw/config/schema.py): unknown keys, missing
   keys, wrong types, and duration/size strings turned into float seconds / int bytes, every error with
   its key path.
3. msgspec.convert builds the Structs, then each section's semantic checks (route syntax, references
   between sections, header rules, addresses, limits) run on the typed result, again collecting every
   error.

Each section's schema and checks live with what it configures: fastgw/config/server.py, upstreams.py,
routes.py, consumers.py, and the policies' own (fastgw/policies/*/config.py), which the policy registry
(fastgw/policies/__init__.py) composes into the root, [[routes]] and [consumers.NAME].
"""
from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fastgw.config import consumers, routes, server, upstreams
from fastgw.config.consumers import Consumer
from fastgw.config.routes import Route
from fastgw.config.schema import _from_msgspec, _syntax_error, compose, walk_struct
from fastgw.config.server import Admin, Server
from fastgw.config.upstreams import Upstream
from fastgw.policies import POLICIES


class ConfigCore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The top-level keys of the gateway itself; `Config` adds each policy's sections (the registry)."""

    server: Server = msgspec.field(default_factory=Server)
    admin: Admin = msgspec.field(default_factory=Admin)
    upstreams: dict[str, Upstream]
    routes: list[Route]
    consumers: dict[str, Consumer] = msgspec.field(default_factory=dict)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...     # a policy's section (typed in its config module)


if TYPE_CHECKING:
    Config = ConfigCore
else:
    Config = compose("Config", ConfigCore, [p.sections for p in POLICIES], __name__)


class ConfigError(Exception):
    """An unusable config. `.errors` holds one "key.path: reason" line per problem."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


def load(path: str | Path) -> Config:
    """Read and validate the TOML file at `path`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not UTF-8 (byte {e.start})") from None
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> Config:
    """Validate TOML `text`; `source` names it in syntax errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_syntax_error(source, str(e), text)) from None
    errors: list[str] = []
    converted = walk_struct(Config, raw, "", errors)
    if errors:
        raise ConfigError(errors)
    try:
        cfg = msgspec.convert(converted, Config)
    except msgspec.ValidationError as e:  # the walk should have caught it; keep the key path anyway
        raise ConfigError(_from_msgspec(str(e))) from None
    errors = _validate(cfg)
    if errors:
        raise ConfigError(errors)
    return routes.normalise(cfg)


def config_hash(path_or_bytes: str | Path | bytes) -> str:
    """First 12 hex digits of the sha256 of the file's bytes: a short, stable config version label."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return hashlib.sha256(data).hexdigest()[:12]


def _validate(cfg: Config) -> list[str]:
    errors: list[str] = []
    server.check(cfg, errors)
    consumers.check(cfg, errors)
    for p in POLICIES:
        p.check(cfg, errors)
    upstreams.check(cfg, errors)
    routes.check(cfg, errors)
    return errors
