"""Request validation on a route: the request against the OpenAPI operation its method and path match
(openapi.py), before the upstream sees it. Path and query parameters (read by their schema's type from the
URL's text), required headers, the content type and the JSON body. A request that fails gets
`400 validation-failed` with an `errors` list, each {"in", "pointer" (body) or "name" (parameter),
"reason"}, at most max_errors; a valid request goes upstream byte for byte as it came (the body is read to
be checked, never re-serialised).

Limits on what the client controls: the body is read up to max_body (more: 413), nesting deeper than
max_depth is refused before the schema runs, and every reason is cut to 200 characters.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import msgspec

from fastgw._core.gates import Gate
from fastgw._core.phases import Respond
from fastgw.errors import PROBLEMS
from fastgw.policies.validate.openapi import Operation, cached, param_names

if TYPE_CHECKING:
    from fastgw.config.root import Config
    from fastgw.config.routes import Route
    from fastgw.policies.contract import Rejection
    from fastgw.policies.validate.config import Validate

SLUG = "validation-failed"
HEADERS = [(b"Content-Type", b"application/problem+json"), (b"Cache-Control", b"no-store")]
REASON_MAX = 200
_INT = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _from_text(kind: str | None, text: str) -> Any:
    """A parameter's text read as its schema's type says (form style, no explode of objects); the text
    itself when it does not read as that type (the schema then reports it)."""
    if kind == "integer" and _INT.fullmatch(text):
        return int(text)
    if kind == "number" and _NUMBER.fullmatch(text):
        return float(text) if not _INT.fullmatch(text) else int(text)
    if kind == "boolean" and text in ("true", "false"):
        return text == "true"
    return text


def _too_deep(body: bytes, limit: int) -> bool:
    """JSON nesting deeper than `limit` (strings skipped). Only scanned when the body has more brackets
    than the limit at all: a body under it cannot be too deep."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_str, esc = 0, False, False
    for c in body:
        if in_str:
            if esc:
                esc = False
            elif c == 92:
                esc = True
            elif c == 34:
                in_str = False
        elif c == 34:
            in_str = True
        elif c == 91 or c == 123:
            depth += 1
            if depth > limit:
                return True
        elif c == 93 or c == 125:
            depth -= 1
    return False


class ValidatePolicy(Gate):
    def __init__(self, ops: list[Operation], v: Validate) -> None:
        self.ops = ops
        self.names = {id(o): param_names(o) for o in ops}
        self.max_body = v.max_body
        self.max_depth = v.max_depth
        self.max_errors = v.max_errors
        s = PROBLEMS[SLUG]
        self.head = {"type": f"urn:fastgw:problem:{SLUG}", "title": s.title, "status": s.status, "detail": s.detail}

    def match(self, method: bytes, path: str) -> tuple[Operation | None, Any]:
        m = method.decode("latin-1")
        for op in self.ops:
            if op.method == m:
                hit = op.regex.fullmatch(path)
                if hit is not None:
                    return op, hit
        return None, None

    def on_request(self, ex: Any) -> Any:
        path = unquote(ex.path.decode("latin-1"))
        op, hit = self.match(ex.method, path)
        if op is None:
            return self.refuse(ex, [{"in": "path", "name": "", "reason":
                                     f"no operation of the API's description matches {ex.method.decode()} {path}"}])
        errors: list[dict[str, str]] = []
        self.check_params(ex, op, hit, errors)
        if op.body_types:
            return self.with_body(ex, op, errors)
        return self.refuse(ex, errors) if errors else None

    def check_params(self, ex: Any, op: Operation, hit: Any, errors: list[dict[str, str]]) -> None:
        names = self.names[id(op)]
        query: dict[str, list[str]] = {}
        if op.params and ex.query:
            for k, val in parse_qsl(ex.query[1:].decode("latin-1"), keep_blank_values=True):
                query.setdefault(k, []).append(val)
        for p in op.params:
            if p.where == "path":
                i = names.index(p.name) if p.name in names else -1
                raw: Any = hit.group(f"p{i}") if i >= 0 else None
                value: Any = _from_text(p.kind, raw) if raw is not None else None
            elif p.where == "query":
                vals = query.get(p.name)
                if vals is None:
                    value = None
                elif p.kind == "array":
                    value = [_from_text(p.items_kind, x) for y in vals for x in y.split(",")]
                else:
                    value = _from_text(p.kind, vals[-1])
            else:
                h = ex.header(p.name.lower().encode("latin-1"))
                value = _from_text(p.kind, h.decode("latin-1")) if h is not None else None
            if value is None:
                if p.required:
                    errors.append({"in": p.where, "name": p.name, "reason": "required"})
                continue
            if p.validator is not None:
                for e in p.validator.iter_errors(value):
                    errors.append({"in": p.where, "name": p.name, "reason": e.message[:REASON_MAX]})
                    break

    async def with_body(self, ex: Any, op: Operation, errors: list[dict[str, str]]) -> Rejection | Respond | None:
        body = await ex.read_body(self.max_body)
        if body is None:
            return (413, "payload-too-large", b"The request body exceeds the route's validate.max_body.", None)
        ctype = (ex.header(b"content-type") or b"").decode("latin-1").split(";")[0].strip().lower()
        if not body:
            if op.body_required:
                errors.append({"in": "body", "pointer": "", "reason": "a request body is required"})
        elif ctype not in op.body_types and not any(t.endswith("/*") and ctype.startswith(t[:-1])
                                                    for t in op.body_types):
            errors.append({"in": "header", "name": "Content-Type",
                           "reason": f"{ctype or 'none'}: the operation takes {', '.join(op.body_types)}"})
        elif op.body is not None:
            if _too_deep(body, self.max_depth):
                errors.append({"in": "body", "pointer": "", "reason": f"nested deeper than {self.max_depth}"})
            else:
                try:
                    doc = msgspec.json.decode(body)
                except (msgspec.DecodeError, RecursionError) as exc:
                    errors.append({"in": "body", "pointer": "", "reason": f"not JSON: {exc}"[:REASON_MAX]})
                else:
                    for e in op.body.iter_errors(doc):
                        errors.append({"in": "body", "pointer": _pointer(e.instance_path),
                                       "reason": e.message[:REASON_MAX]})
                        if len(errors) >= self.max_errors:
                            break
        return self.refuse(ex, errors) if errors else None

    def refuse(self, ex: Any, errors: list[dict[str, str]]) -> Respond:
        doc = {**self.head, "instance": ex.path.decode("latin-1"), "request_id": ex.request_id.decode("latin-1"),
               "errors": errors[:self.max_errors]}
        return Respond(400, HEADERS, json.dumps(doc, ensure_ascii=True).encode())


def build(cfg: Config, route: Route, services: dict[str, Any], mslot: int = -1) -> ValidatePolicy | None:
    v = route.validate
    if v is None:
        return None
    return ValidatePolicy(cached(v.openapi), v)


# -- registered hooks (fastgw/policies/contract.py Runtime) ----------------------------------------------


def shm_sections(cfg: Config, workers: int) -> list[Any]:
    return []


def attach(shm: Any, slot: int, services: dict[str, Any]) -> None:
    return None


def metrics(shm: Any, workers: int, live: list[int], cfg: Config) -> list[str]:
    return []
