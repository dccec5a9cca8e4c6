"""A service's methods from a binary FileDescriptorSet (`protoc --descriptor_set_out --include_imports`),
loaded into the protobuf package's descriptor pool, and its HTTP bindings: the google.api.http rules of
each method (get/put/post/delete/patch/custom, body, response_body, additional_bindings) compiled into
matchers; a method without a rule is bound to `POST /<package.Service>/<Method>` with body "*".

No compiled code of fastgw here: `fastgw check` loads the descriptors and reports template conflicts
before anything is built.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

HTTP_RULE_FIELD = 72295728        # google.api.http: the extension of MethodOptions holding an HttpRule
HTTP_RULE = "google.api.HttpRule"
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")


class DescriptorError(Exception):
    """An unusable descriptor set or rule; the message names the file, service or method."""


@dataclass
class Binding:
    """One HTTP binding of a method: `regex` matches the request path; `variables` are the field paths
    its groups set; `body` is "" (no body), "*" or a field name; `response_body` "" or a field name."""

    verb: str
    template: str
    regex: re.Pattern[str]
    variables: list[str]
    body: str
    response_body: str
    method: Any                        # the MethodDescriptor
    input: Any                         # the request message class
    output: Any                        # the response message class
    server_streaming: bool
    client_streaming: bool
    path: bytes = b""                  # the gRPC :path, /package.Service/Method
    fixed: int = 0                     # literal characters of the template (more wins a tie)
    pool: Any = None                   # the descriptor pool (status details' types)

    def classes(self, name: str) -> Any:
        """The message class of the type `name` in the descriptor set (KeyError when it is not there)."""
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(name))


@dataclass
class Service:
    name: str
    bindings: list[Binding] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 127) << shift
        shift += 7
        if not b & 128:
            return v, i


def _extension_bytes(options: bytes, number: int) -> list[bytes]:
    """The length-delimited values of field `number` in serialised options (the extension's bytes, read
    without registering the extension: the rule's message class comes from the descriptor set)."""
    out = []
    i = 0
    while i < len(options):
        key, i = _varint(options, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = _varint(options, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        elif wt == 2:
            n, i = _varint(options, i)
            if num == number:
                out.append(options[i:i + n])
            i += n
        else:
            raise DescriptorError(f"unreadable method options (wire type {wt})")
    return out


def compile_template(template: str) -> tuple[re.Pattern[str], list[str], int]:
    """A google.api.http path template -> (regex over the request path, variables in group order, literal
    characters). Segments: literal, `*` (one segment), `**` (the rest), `{field}`, `{field=pattern}`;
    an optional `:verb` at the end."""
    if not template.startswith("/"):
        raise DescriptorError(f'path template "{template}" must start with "/"')
    verb = ""
    last = template.rsplit("/", 1)[-1]
    if ":" in last and "}" not in last.split(":", 1)[1]:
        template, verb = template.rsplit(":", 1)
    variables: list[str] = []
    out = []
    fixed = 0
    pos = 0

    def segments(text: str) -> str:
        nonlocal fixed
        parts = []
        for seg in text.split("/"):
            if seg == "**":
                parts.append(".+")
            elif seg == "*":
                parts.append("[^/]+")
            else:
                fixed += len(seg)
                parts.append(re.escape(seg))
        return "/".join(parts)

    for m in _VAR.finditer(template):
        out.append(segments(template[pos:m.start()]) if m.start() > pos else "")
        variables.append(m.group(1))
        out.append("(" + segments(m.group(2) or "*") + ")")
        pos = m.end()
    if pos < len(template):
        out.append(segments(template[pos:]))
    rx = "".join(out) + (re.escape(":" + verb) if verb else "")
    fixed += len(verb)
    return re.compile(rx), variables, fixed


def load(path: str, service: str) -> Service:
    """The service `service` of the descriptor set at `path`, with its bindings."""
    try:
        with open(path, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    except OSError as e:
        raise DescriptorError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:       # noqa: BLE001 (the protobuf runtime's decode error type varies)
        raise DescriptorError(f"{path}: not a FileDescriptorSet ({e})") from None
    pool = descriptor_pool.DescriptorPool()
    try:
        for fd in fds.file:
            pool.Add(fd)
        svc = pool.FindServiceByName(service)
    except KeyError:
        raise DescriptorError(f'{path}: no service "{service}" (compile with --include_imports)') from None
    except Exception as e:       # noqa: BLE001
        raise DescriptorError(f"{path}: {e}") from None
    try:
        rule_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(HTTP_RULE))
    except KeyError:
        rule_class = None
    out = Service(service)
    for m in svc.methods:
        rules = []
        raw = m.GetOptions().SerializeToString() if m.has_options else b""
        for blob in _extension_bytes(raw, HTTP_RULE_FIELD) if raw else []:
            if rule_class is None:
                raise DescriptorError(f"{path}: {m.full_name} has a google.api.http rule but the set lacks "
                                      "google/api/http.proto (compile with --include_imports)")
            rule = rule_class.FromString(blob)
            rules.append(rule)
            rules.extend(rule.additional_bindings)
        grpc_path = f"/{service}/{m.name}"
        if not rules:
            out.bindings.append(_binding(m, "POST", grpc_path, "*", "", grpc_path))
            continue
        for rule in rules:
            kind = rule.WhichOneof("pattern")
            if kind == "custom":
                verb, template = rule.custom.kind.upper(), rule.custom.path
            elif kind in ("get", "put", "post", "delete", "patch"):
                verb = kind.upper()
                template = {"get": rule.get, "put": rule.put, "post": rule.post, "delete": rule.delete,
                            "patch": rule.patch}[kind]
            else:
                raise DescriptorError(f"{m.full_name}: a google.api.http rule without a pattern")
            out.bindings.append(_binding(m, verb, template, rule.body, rule.response_body, grpc_path))
    _check(out)
    return out


def _field_path_ok(message: Any, path: str) -> bool:
    desc = message
    for i, name in enumerate(path.split(".")):
        f = desc.fields_by_name.get(name)
        if f is None:
            return False
        if i < len(path.split(".")) - 1:
            if f.message_type is None:
                return False
            desc = f.message_type
    return True


def _binding(m: Any, verb: str, template: str, body: str, response_body: str, grpc_path: str) -> Binding:
    rx, variables, fixed = compile_template(template)
    for v in variables:
        if not _field_path_ok(m.input_type, v):
            raise DescriptorError(f'{m.full_name}: "{template}": {v} is not a field of {m.input_type.full_name}')
    if body not in ("", "*") and body not in m.input_type.fields_by_name:
        raise DescriptorError(f'{m.full_name}: body "{body}" is not a field of {m.input_type.full_name}')
    if response_body and response_body not in m.output_type.fields_by_name:
        raise DescriptorError(f'{m.full_name}: response_body "{response_body}" is not a field of '
                              f"{m.output_type.full_name}")
    return Binding(verb, template, rx, variables, body, response_body, m,
                   message_factory.GetMessageClass(m.input_type), message_factory.GetMessageClass(m.output_type),
                   m.server_streaming, m.client_streaming, grpc_path.encode(), fixed, m.containing_service.file.pool)


def _check(svc: Service) -> None:
    """Two bindings with the same verb and template are a conflict (which method would a request call?)."""
    seen: dict[tuple[str, str], str] = {}
    for b in svc.bindings:
        shape = (b.verb, _VAR.sub("{}", b.template))
        if shape in seen and seen[shape] != b.method.full_name:
            svc.conflicts.append(f"{b.verb} {b.template}: {seen[shape]} and {b.method.full_name}")
        seen.setdefault(shape, b.method.full_name)
    # The most literal template first: "/v1/accounts:search" before "/v1/accounts/{id}".
    svc.bindings.sort(key=lambda b: -b.fixed)
