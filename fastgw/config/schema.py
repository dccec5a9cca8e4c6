"""The TOML-against-Struct walker: pass 2 of loading (fastgw/config/root.py), and how key paths are written.

A walk of the raw dicts (tomllib) against the Struct schema finds unknown keys, missing keys and wrong
types, and turns duration/size strings into float seconds / int bytes. It collects every error with its
key path ("routes[2].upstream", "auth.jwt.\"my idp\".issuer"). msgspec alone stops at the first error and
cannot say which key of a table was wrong; msgspec.convert then builds the Structs from what the walk
returns. Fields whose TOML value is a unit string are annotated `Duration` or `Size` (defined here).

A table whose keys several owners declare (the root, [[routes]], [consumers.NAME]: the gateway's own keys
plus each policy's, fastgw/policies/__init__.py) is one Struct built by `compose`.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import types
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec

from fastgw.config.units import parse_duration, parse_size


class _Unit:
    """Marks a field (via Annotated) whose TOML value is a unit string converted by `parse`."""

    def __init__(self, name: str, parse: Callable[[Any], Any], accepts: tuple[type, ...]) -> None:
        self.name = name
        self.parse = parse
        self.accepts = accepts

    def __repr__(self) -> str:
        return f"<{self.name}>"


class _File:
    """Marks a field (via Annotated) that names a file: a relative path is resolved against the folder of
    the config file (`base`), as nginx does with its prefix, so the gateway reads the same files whatever
    its working directory (systemd, a container, a test runner)."""

    def __repr__(self) -> str:
        return "<file>"


# Durations must be strings: a bare number would leave the reader guessing between s and ms.
# A size may also be a TOML integer, meaning bytes.
Duration = Annotated[float, _Unit("duration", parse_duration, (str,))]
Size = Annotated[int, _Unit("size", parse_size, (str, int))]
FilePath = Annotated[str, _File()]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' when a choice is a likely misspelling of `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {json.dumps(close[0])}?)" if close else ""


def compose(name: str, core: type[msgspec.Struct], parts: Iterable[type[msgspec.Struct]],
            module: str) -> type[msgspec.Struct]:
    """One Struct named `name` (a subclass of `core`) with the fields of `core` and of every part, in that
    order. A key declared by two owners is a programming error, raised at import."""
    owner = {f.encode_name: core.__qualname__ for f in msgspec.structs.fields(core)}
    fields: list[tuple[str, Any, Any]] = []
    for part in parts:
        for f in msgspec.structs.fields(part):
            if f.encode_name in owner:
                raise TypeError(f"{name}.{f.encode_name}: declared by {owner[f.encode_name]} and {part.__module__}")
            owner[f.encode_name] = part.__module__
            spec: dict[str, Any] = {"default": f.default, "default_factory": f.default_factory}
            fields.append((f.name, f.type, msgspec.field(**spec, name=f.encode_name)))
    return msgspec.defstruct(name, fields, bases=(core,), module=module, frozen=True, forbid_unknown_fields=True,
                             kw_only=True)


def _syntax_error(source: str, message: str, text: str) -> str:
    # tomllib ends its messages with "(at line N, column M)" or "(at end of document)"; put the position
    # up front so the reader (or an editor) can jump to it.
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if m:
        return f"{source}: line {m[1]}, column {m[2]}: TOML syntax error: {message[: m.start()]}"
    m = re.search(r"\s*\(at end of document\)$", message)
    if m:
        line, col = text.count("\n") + 1, len(text) - text.rfind("\n")
        return f"{source}: line {line}, column {col}: TOML syntax error: {message[: m.start()]} (at end of file)"
    return f"{source}: TOML syntax error: {message}"


def _from_msgspec(message: str) -> str:
    """ "Expected `int`, got `str` - at `$.routes[0].foo`" -> "routes[0].foo: Expected `int`, got `str`"."""
    reason, sep, where = message.rpartition(" - at `")
    if not sep:
        return message
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    return f"{path or '<root>'}: {reason}"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NONE = type(None)


def keypath(path: str, key: str) -> str:
    """Append a TOML key to a path, quoting it as TOML would when it is not a bare key."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{part}" if path else part


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, datetime | date | time):
        return "date-time"
    return type(value).__name__


def _got(value: object) -> str:
    kind = _toml_type(value)
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{kind} {json.dumps(shown)}"
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    if isinstance(value, int | float):
        return f"{kind} {value}"
    return kind


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        unit = _unit_of(tp)
        return f"a {unit.name}" if unit else _describe(get_args(tp)[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not _NONE)
    if origin is list:
        return "an array"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _unit_of(tp: Any) -> _Unit | None:
    for meta in get_args(tp)[1:]:
        if isinstance(meta, _Unit):
            return meta
    return None


def walk_struct(cls: type[msgspec.Struct], raw: object, path: str, errors: list[str], base: str | None = None) -> Any:
    """The table `raw` checked against `cls`, units converted and file paths resolved against `base`.

    A value in error is left out (its default applies) or, for a required key, replaced by a placeholder
    of its type, so that the cross-reference checks still run on the rest and report their errors in the
    same pass; root.py drops what they say about keys that are already in error."""
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected a table, got {_got(raw)}")
        raw = {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field = fields.get(key)
        if field is None:
            errors.append(f"{keypath(path, key)}: unknown key{did_you_mean(key, fields)}")
            continue
        n = len(errors)
        converted = _walk(field.type, value, keypath(path, key), errors, base)
        if len(errors) == n or converted is not None:
            out[key] = converted
        elif field.required:
            out[key] = placeholder(field.type)
    for name, field in fields.items():
        if field.required and name not in raw:
            errors.append(f"{keypath(path, name)}: required key is missing")
            out[name] = placeholder(field.type)
    return out


def placeholder(tp: Any) -> Any:
    """A value of type `tp` standing in for one in error (see walk_struct)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return placeholder(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not _NONE]
        return None if len(arms) < len(get_args(tp)) else placeholder(arms[0])
    if origin is Literal:
        return get_args(tp)[0]
    if origin is list:
        return []
    if origin is dict:
        return {}
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return walk_struct(tp, {}, "", [])
    return {bool: False, int: 0, float: 0.0, str: ""}.get(tp)


def _walk(tp: Any, value: object, path: str, errors: list[str], base: str | None = None) -> Any:
    """Check `value` against `tp`, returning it with units converted; append errors with their path."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not _NONE]
        if len(arms) == 1:  # X | None: TOML has no null, so an absent key is the only way to get None
            return _walk(arms[0], value, path, errors, base)
        if isinstance(value, dict):   # a scalar-or-table key (`"host:port"` or `{ address, weight }`)
            for a in arms:
                if isinstance(a, type) and issubclass(a, msgspec.Struct):
                    return walk_struct(a, value, path, errors, base)
    if origin is Annotated:
        if any(isinstance(m, _File) for m in get_args(tp)[1:]):
            value = _walk(get_args(tp)[0], value, path, errors)
            if isinstance(value, str) and value and base is not None:
                return os.path.join(base, os.path.expanduser(value))
            return value
        unit = _unit_of(tp)
        if unit is None:
            return _walk(get_args(tp)[0], value, path, errors, base)
        if not isinstance(value, unit.accepts) or isinstance(value, bool):
            errors.append(f"{path}: expected {_describe(tp)} such as {_UNIT_EXAMPLE[unit.name]}, got {_got(value)}")
            return None
        try:
            return unit.parse(value)
        except ValueError as e:
            errors.append(f"{path}: {e}")
            return None
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return walk_struct(tp, value, path, errors, base)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected an array, got {_got(value)}")
            return None
        (item,) = get_args(tp)
        return [_item(item, v, f"{path}[{i}]", errors, base) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a table, got {_got(value)}")
            return None
        _, item = get_args(tp)
        return {k: _item(item, v, keypath(path, k), errors, base) for k, v in value.items()}
    if _scalar_ok(tp, value):
        return float(value) if tp is float else value  # type: ignore[arg-type]
    hint = did_you_mean(value, _literals(tp)) if isinstance(value, str) else ""
    errors.append(f"{path}: expected {_describe(tp)}, got {_got(value)}{hint}")
    return None


def _item(tp: Any, value: object, path: str, errors: list[str], base: str | None) -> Any:
    """An array element or table value: a placeholder when it is in error (the indexes stay right)."""
    converted = _walk(tp, value, path, errors, base)
    return placeholder(tp) if converted is None else converted


def _literals(tp: Any) -> list[str]:
    """The string values a Literal (or a union holding Literals) allows."""
    if get_origin(tp) in (Union, types.UnionType):
        return [s for a in get_args(tp) for s in _literals(a)]
    return [a for a in get_args(tp) if isinstance(a, str)] if get_origin(tp) is Literal else []


_UNIT_EXAMPLE = {"duration": '"10s" or "250ms"', "size": '"1MiB" or "512KiB"'}


def _scalar_ok(tp: Any, value: object) -> bool:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_scalar_ok(a, value) for a in get_args(tp))
    if origin is Literal:
        # Compare types too: in Python True == 1, but TOML true is not the integer 1.
        return any(type(a) is type(value) and a == value for a in get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return False

