"""An OpenAPI 3.0 / 3.1 document read for request validation: its operations by method and path template,
each with its path, query and header parameters and its JSON body schema, compiled once (at config load)
with jsonschema-rs (Rust; the fastest of the candidates measured in bench/validation.py, and it implements
JSON Schema 2020-12, the dialect of OpenAPI 3.1).

OpenAPI 3.0's schema objects are a JSON Schema draft 4 dialect: before compiling, `nullable: true` becomes
a "null" type, boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric keywords, and the 3.0-only
annotations that 2020-12 would misread (`example`, `discriminator`, `xml`) are dropped. `$ref`s point into
the document ("#/components/..."): each compiled schema carries the document's components, so they resolve
as written. References to other files are refused (`fastgw check`): the document must stand alone.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM = re.compile(r"\{([^{}/]+)\}")


class DocumentError(ValueError):
    """The document does not load, is not OpenAPI 3.0/3.1, or a schema in it does not compile."""


@dataclass
class Param:
    name: str
    where: str                   # "path" | "query" | "header"
    required: bool
    kind: str | None             # the schema's "type" (how a string from the URL is read), or None
    validator: Any               # compiled schema, or None
    items_kind: str | None = None    # an array's items' "type" (query arrays: form style, explode or commas)


@dataclass
class Operation:
    method: str                  # upper case
    template: str                # "/payments/{id}"
    regex: re.Pattern[str]
    literal: int                 # characters outside {params}: the more, the more specific
    params: list[Param] = field(default_factory=list)
    body: Any = None             # compiled schema of the application/json body, or None
    body_required: bool = False
    body_types: tuple[str, ...] = ()   # media types the operation accepts (empty: no requestBody)


def _convert30(node: Any) -> Any:
    """An OpenAPI 3.0 schema (and everything under it) in JSON Schema 2020-12."""
    if isinstance(node, list):
        return [_convert30(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert30(v) for k, v in node.items() if k not in ("example", "discriminator", "xml", "nullable")}
    if node.get("nullable") is True:
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
        elif "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    for kw, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(kw) is True and bound in out:
            out[kw] = out.pop(bound)
        elif out.get(kw) is False:
            del out[kw]
    return out


def _external_refs(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            out.append(ref)
        for v in node.values():
            _external_refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _external_refs(v, out)


def _deref(doc: dict[str, Any], node: Any) -> Any:
    """A Parameter / Request Body object that is a "#/..." reference, resolved (one level at a time)."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 16:
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise DocumentError(f"unresolvable $ref {node['$ref']!r}")
            target = target[part]
        node, seen = target, seen + 1
    return node


def _compile(schema: Any, components: Any, where: str) -> Any:
    root = dict(schema) if isinstance(schema, dict) else {"allOf": [schema]}
    if components:
        root["components"] = components
    try:
        return jsonschema_rs.Draft202012Validator(root, validate_formats=True)
    except Exception as exc:       # (jsonschema_rs raises ValidationError / ValueError / ReferencingError)
        raise DocumentError(f"{where}: the schema does not compile: {exc}") from None


def _param(doc: dict[str, Any], raw: Any, components: Any, where: str) -> Param | None:
    p = _deref(doc, raw)
    if not isinstance(p, dict) or "name" not in p or "in" not in p:
        raise DocumentError(f"{where}: a parameter needs name and in")
    if p["in"] not in ("path", "query", "header"):
        return None                                       # cookie parameters are not validated
    schema = p.get("schema")
    kind = schema.get("type") if isinstance(schema, dict) else None
    validator = _compile(schema, components, f"{where} {p['name']}") if schema is not None else None
    items = schema.get("items") if isinstance(schema, dict) else None
    items_kind = items.get("type") if isinstance(items, dict) else None
    return Param(str(p["name"]), p["in"], bool(p.get("required") or p["in"] == "path"),
                 kind if isinstance(kind, str) else None, validator,
                 items_kind if isinstance(items_kind, str) else None)


def load(path: str | Path) -> list[Operation]:
    """The document's operations, compiled; DocumentError when it cannot be used."""
    try:
        text = Path(path).read_text()
        doc = yaml.safe_load(text) if not str(path).endswith(".json") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DocumentError(f"cannot read it: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise DocumentError("not an OpenAPI document (no paths object)")
    version = str(doc.get("openapi", ""))
    if not (version.startswith("3.0.") or version.startswith("3.1.")):
        raise DocumentError(f"openapi {version!r}: only OpenAPI 3.0.x and 3.1.x are read")
    ext: list[str] = []
    _external_refs(doc, ext)
    if ext:
        raise DocumentError(f"$ref to another document ({ext[0]!r}): bundle the document first")
    if version.startswith("3.0."):
        doc = {**doc, "components": _convert30(doc.get("components") or {}), "paths": _convert30(doc["paths"])}
    components = doc.get("components") or {}
    ops = []
    for template, item in doc["paths"].items():
        if not isinstance(item, dict) or not str(template).startswith("/"):
            raise DocumentError(f"paths: {template!r} is not a path item")
        # The i-th {param} is the regex's group p<i> (param_names gives the names).
        regex = re.compile("".join(f"(?P<p{i // 2}>[^/]+)" if i % 2 else re.escape(piece)
                                   for i, piece in enumerate(_PARAM.split(template))))
        shared = item.get("parameters") or []
        for method in METHODS:
            raw = item.get(method)
            if not isinstance(raw, dict):
                continue
            where = f"paths.{template}.{method}"
            op = Operation(method.upper(), template, regex, len(_PARAM.sub("", template)))
            by_key: dict[tuple[str, str], Param] = {}
            for rawp in [*shared, *(raw.get("parameters") or [])]:
                p = _param(doc, rawp, components, where)
                if p is not None:
                    by_key[(p.where, p.name.lower() if p.where == "header" else p.name)] = p
            op.params = list(by_key.values())
            body = _deref(doc, raw.get("requestBody"))
            if isinstance(body, dict):
                content = body.get("content") or {}
                op.body_types = tuple(str(t).lower() for t in content)
                op.body_required = bool(body.get("required"))
                media = next((m for t, m in content.items() if _is_json(str(t))), None)
                if isinstance(media, dict) and media.get("schema") is not None:
                    op.body = _compile(media["schema"], components, f"{where}.requestBody")
            ops.append(op)
    # The most specific template first (RFC 6570 literal characters), as OpenAPI says a concrete path wins.
    ops.sort(key=lambda o: -o.literal)
    return ops


def _is_json(media: str) -> bool:
    m = media.split(";")[0].strip().lower()
    return m == "application/json" or (m.startswith("application/") and m.endswith("+json"))


def param_names(op: Operation) -> list[str]:
    """The {param} names of the operation's template, in order (group p<i> is the i-th)."""
    return _PARAM.findall(op.template)


_CACHE: dict[tuple[str, int, int], list[Operation]] = {}


def cached(path: str) -> list[Operation]:
    """load(path), once per version of the file (its mtime and size): the check and every route using the
    document share one compile."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise DocumentError(f"cannot read it: {exc}") from None
    key = (path, st.st_mtime_ns, st.st_size)
    ops = _CACHE.get(key)
    if ops is None:
        ops = _CACHE[key] = load(path)
    return ops
