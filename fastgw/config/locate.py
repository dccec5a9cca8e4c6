"""Where a key is written in the TOML source: the line numbers that `fastgw check` puts before an error.

tomllib (the parser) keeps no positions, so after it has accepted the text this module scans it again for
what it needs and no more: table headers (`[a.b]`, `[[routes]]`, counted so that the third `[[routes]]`
is `routes[2]`) and the `key = value` lines of each table. A value that spans lines (an array, a
multi-line string) is skipped to its end; keys inside an inline table or an array are located at the line
of the key that holds them. An error is located at its own key, else at the nearest enclosing key that is
written in the file ("routes[3].limits[0].rate" falls back to "routes[3].limits", then "routes[3]", the
line of its `[[routes]]` header); a key that is not written at all (a missing required key) gets the line
of its table, or no line.

Key paths are written as fastgw/config/schema.py `keypath` writes them: bare keys as they are, others in
double quotes, array elements as `[i]`.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

# One key of a dotted key: bare, "basic" or 'literal' (TOML 1.0 §Keys).
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = re.compile(rf"\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*")
_PART = re.compile(_KEY_PART)
_BARE = re.compile(r"[A-Za-z0-9_-]+")
# The key path at the start of an error line ("routes[2].upstream: unknown upstream ...").
_PATH_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")(?:\[\d+\])*'
_ERROR_PATH = re.compile(rf"({_PATH_PART}(?:\.{_PATH_PART})*): ")
_TAIL = re.compile(r'(?:\[\d+\]|\.(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"))$')


def _unquote(part: str) -> str:
    if part.startswith('"'):
        return str(json.loads(part))
    if part.startswith("'"):
        return part[1:-1]
    return part


def _show(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _keys(dotted: str) -> list[str]:
    return [_unquote(m[0]) for m in _PART.finditer(dotted)]


def key_lines(text: str) -> dict[str, int]:
    """Key path -> 1-based line of the header or `key =` line that writes it."""
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}          # array-of-tables path -> index of its last element
    table = ""
    depth = 0                            # open [ and { of a value that spans lines
    in_string: str | None = None         # the delimiter of an open multi-line string
    for n, line in enumerate(text.splitlines(), 1):
        if in_string is not None or depth:
            in_string, depth = _skip_value(line, in_string, depth)
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            double = stripped.startswith("[[")
            m = _DOTTED.match(stripped[2 if double else 1:])
            if m is None:
                continue
            path = ""
            parts = _keys(m[1])
            for i, key in enumerate(parts):
                path = f"{path}.{_show(key)}" if path else _show(key)
                if path in arrays and (i < len(parts) - 1 or not double):
                    path = f"{path}[{arrays[path]}]"
                lines.setdefault(path, n)
            if double:
                base = path
                arrays[base] = arrays.get(base, -1) + 1
                path = f"{base}[{arrays[base]}]"
                lines.setdefault(base, n)
            table = path
            lines.setdefault(path, n)
            continue
        m = _DOTTED.match(line)
        if m is None or not line[m.end():].startswith("="):
            continue
        path = table
        for key in _keys(m[1]):
            path = f"{path}.{_show(key)}" if path else _show(key)
            lines.setdefault(path, n)
        in_string, depth = _skip_value(line[m.end() + 1:], None, 0)
    return lines


def _skip_value(text: str, in_string: str | None, depth: int) -> tuple[str | None, int]:
    """Follow a value through `text`: returns the open multi-line string delimiter (or None) and the
    bracket depth at the end of the line. Comments and one-line strings are stepped over."""
    i = 0
    while i < len(text):
        if in_string is not None:
            end = text.find(in_string, i)
            if end < 0:
                return in_string, depth
            i = end + 3
            in_string = None
            continue
        c = text[i]
        if c == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            in_string = text[i:i + 3]
            i += 3
            continue
        if c in "\"'":
            end = i + 1
            while end < len(text) and text[end] != c:
                end += 2 if c == '"' and text[end] == "\\" else 1
            i = end + 1
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return in_string, max(depth, 0)


def error_path(error: str) -> str | None:
    """The key path an error line starts with, or None (a syntax or file error)."""
    m = _ERROR_PATH.match(error)
    return m[1] if m else None


def _parents(path: str) -> list[str]:
    """`path` and each enclosing key path, innermost first."""
    out = [path]
    while True:
        m = _TAIL.search(path)
        if m is None:
            return out
        path = path[: m.start()]
        out.append(path)


def line_of(path: str, lines: dict[str, int]) -> int | None:
    for p in _parents(path):
        if p in lines:
            return lines[p]
    return None


def locate(errors: Sequence[str], text: str, source: str) -> list[str]:
    """The errors as "source:LINE: key.path: reason" (without LINE when the key is nowhere in the file)."""
    lines = key_lines(text)
    out = []
    for e in errors:
        path = error_path(e)
        if path is None:
            out.append(e if e.startswith(source) else f"{source}: {e}")
            continue
        n = line_of(path, lines)
        out.append(f"{source}:{n}: {e}" if n else f"{source}: {e}")
    return out


def under(path: str, parent: str) -> bool:
    """True when key path `path` is `parent` or inside it."""
    return path == parent or path.startswith(parent + ".") or path.startswith(parent + "[")
