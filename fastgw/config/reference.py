"""Every key the config file accepts, read from the schema: what docs/configuration.md is checked against.

The schema is the root `Config` composed from the gateway's sections and each policy's (the registry,
fastgw/policies/__init__.py), so a key a policy registers is listed like any other. A key is written as
its path with a placeholder for names and positions: `upstreams.NAME.tls.ca`, `routes[].auth`,
`plans.NAME.limits[].rate`. Tables are not keys themselves; their keys are.

`python -m fastgw.config.reference` prints one reference row per key (type and default from the schema,
the meaning left for the writer), which is how a new key's row starts.
"""
from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from fastgw.config.schema import _unit_of

_NONE = type(None)
REQUIRED = "required"


@dataclass(frozen=True)
class Key:
    path: str            # e.g. "routes[].request_headers.add"
    type: Any            # the field's annotation (units kept: Duration, Size)
    default: Any         # the default as the schema holds it (seconds, bytes), msgspec.NODEFAULT if required

    @property
    def required(self) -> bool:
        return self.default is msgspec.NODEFAULT


def keys(cls: type[msgspec.Struct], prefix: str = "") -> Iterator[Key]:
    """Every key under `cls`, depth first in declaration order."""
    for f in msgspec.structs.fields(cls):
        path = f"{prefix}{f.encode_name}"
        if f.default is not msgspec.NODEFAULT:
            default = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
        else:
            default = msgspec.NODEFAULT
        structs = list(_structs(f.type, path))
        if not structs or _has_scalar_arm(f.type):
            yield Key(path, f.type, default)
        for sub, sub_prefix in structs:
            yield from keys(sub, sub_prefix)


def _structs(tp: Any, path: str) -> Iterator[tuple[type[msgspec.Struct], str]]:
    """The Struct types inside a field's type, each with the path prefix of its keys."""
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        yield tp, path + "."
    elif origin is list:
        yield from _structs(get_args(tp)[0], path + "[]")
    elif origin is dict:
        yield from _structs(get_args(tp)[1], path + ".NAME")
    elif origin in (Union, types.UnionType):
        for arm in get_args(tp):
            yield from _structs(arm, path)


def _has_scalar_arm(tp: Any) -> bool:
    """True when some value of the type is not a table: the key itself then takes a value."""
    if get_origin(tp) in (Union, types.UnionType):
        return any(_has_scalar_arm(a) for a in get_args(tp) if a is not _NONE)
    if get_origin(tp) in (list, dict):
        return _has_scalar_arm(get_args(tp)[-1])
    return not (isinstance(tp, type) and issubclass(tp, msgspec.Struct))


def type_name(tp: Any) -> str:
    """A short name for a field's type, as the reference's Type column writes it."""
    origin = get_origin(tp)
    if origin is Annotated:
        unit = _unit_of(tp)
        return unit.name if unit else type_name(get_args(tp)[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp) if a is not _NONE)
    if origin is list:
        return f"array of {_plural(type_name(get_args(tp)[0]))}"
    if origin is dict:
        return f"table of {_plural(type_name(get_args(tp)[1]))}"
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return "table"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, str(tp))


def _plural(name: str) -> str:
    return name if " or " in name or name.startswith('"') else name + "s"


def default_text(key: Key) -> str:
    """The default as the reference writes it: a TOML value in backticks, "required", or "unset"."""
    if key.required:
        return REQUIRED
    d = key.default
    if d is None:
        return "unset"
    unit = _unit_of(key.type) if get_origin(key.type) is Annotated else None
    if unit is not None and unit.name == "duration":
        return f'`"{_seconds(d)}"`'
    if unit is not None and unit.name == "size":
        return f'`"{_bytes(d)}"`'
    return f"`{_toml(d)}`"


def _seconds(s: float) -> str:
    for unit, n in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= n and s % n == 0:
            return f"{int(s // n)}{unit}"
    return f"{round(s * 1000)}ms" if s else "0s"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def row(key: Key, meaning: str = "") -> str:
    """One row of the reference table for `key`."""
    return f"| `{key.path}` | {type_name(key.type)} | {default_text(key)} | {meaning} |"


if __name__ == "__main__":
    from fastgw.config.root import Config

    for k in keys(Config):
        print(row(k))
