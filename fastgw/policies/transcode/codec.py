"""HTTP/JSON <-> gRPC messages for one binding (descriptors.py): the request message from the path
variables, the query and the JSON body; the response message as proto3 JSON; gRPC statuses as HTTP ones.

proto3 JSON mapping (the protobuf package's json_format): int64 as strings, enums as names, json_name
and original field names both accepted. Strict: an unknown query parameter, an unknown body field, a path
variable the body also sets, malformed JSON are 400 (a request is never passed on untranscoded).
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from fastgw.policies.transcode.descriptors import Binding

# gRPC status -> HTTP status, the table of google.rpc.Code (cloud.google.com/apis/design/errors) as
# Envoy's grpcToHttpStatus has it.
GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409,
                11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}
GRPC_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
              "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


class BadRequest(ValueError):
    """A request that cannot be transcoded: the message is the 400's detail."""


def _field(desc: Any, path: str) -> tuple[Any, list[str]]:
    names = path.split(".")
    f = None
    for i, name in enumerate(names):
        f = desc.fields_by_name.get(name) or next((x for x in desc.fields if x.json_name == name), None)
        if f is None:
            raise BadRequest(f'"{path}" is not a field of {desc.full_name}')
        names[i] = f.name
        if i < len(names) - 1:
            if f.message_type is None:
                raise BadRequest(f'"{path}" is not a field of {desc.full_name}')
            desc = f.message_type
    return f, names


def _scalar(f: Any, text: str) -> Any:
    """A path or query value (text) as the JSON value json_format takes for field `f`."""
    if f.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise BadRequest(f'{f.name}: "{text}" is not true or false')
        return text == "true"
    if f.message_type is not None and not f.message_type.full_name.startswith("google.protobuf."):
        raise BadRequest(f"{f.name}: a message field cannot be set from the path or the query")
    return text


def _put(d: dict[str, Any], names: list[str], value: Any, repeated: bool) -> None:
    for n in names[:-1]:
        d = d.setdefault(n, {})
    if repeated:
        d.setdefault(names[-1], []).append(value)
    else:
        d[names[-1]] = value


def request(b: Binding, groups: tuple[str, ...], query: bytes, body: bytes) -> bytes:
    """The serialised request message, or BadRequest."""
    desc = b.method.input_type
    doc: dict[str, Any] = {}
    if b.body:
        if body.strip():
            try:
                value = json.loads(body)
            except ValueError as e:
                raise BadRequest(f"malformed JSON body: {e}") from None
        else:
            value = {}
        if b.body == "*":
            if not isinstance(value, dict):
                raise BadRequest("the JSON body must be an object")
            doc = value
        else:
            doc = {b.body: value}
    elif body.strip():
        raise BadRequest("this method takes no body")
    for name, text in zip(b.variables, groups, strict=True):
        f, names = _field(desc, name)
        sub = doc
        for n in names[:-1]:
            sub = sub.get(n, {}) if isinstance(sub, dict) else {}
        if isinstance(sub, dict) and (names[-1] in sub or f.json_name in sub):
            raise BadRequest(f'"{name}" is both in the path and in the body')
        _put(doc, names, _scalar(f, unquote(text)), False)
    if query:
        for key, text in parse_qsl(query[1:].decode("utf-8", "replace"), keep_blank_values=True):
            f, names = _field(desc, key)
            if b.body == "*" or names[0] == b.body:
                raise BadRequest(f'query parameter "{key}" names a field the body sets')
            _put(doc, names, _scalar(f, text), f.is_repeated)
    msg = b.input()
    try:
        json_format.ParseDict(doc, msg)
    except json_format.ParseError as e:
        raise BadRequest(str(e)) from None
    return msg.SerializeToString()


def response(b: Binding, payload: bytes) -> bytes:
    """One response message as JSON (its response_body field alone when the rule names one)."""
    msg = b.output.FromString(payload)
    if b.response_body:
        value = json_format.MessageToDict(msg).get(b.output.DESCRIPTOR.fields_by_name[b.response_body].json_name)
        return json.dumps(value, separators=(",", ":")).encode()
    return json.dumps(json_format.MessageToDict(msg), separators=(",", ":")).encode()


def _fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) of a serialised message's varint and length-delimited fields."""
    from fastgw.policies.transcode.descriptors import _varint
    out: list[tuple[int, bytes | int]] = []
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        if key & 7 == 0:
            v, i = _varint(buf, i)
            out.append((key >> 3, v))
        elif key & 7 == 2:
            n, i = _varint(buf, i)
            out.append((key >> 3, buf[i:i + n]))
            i += n
        else:
            raise ValueError("unexpected wire type")
    return out


def status_details(b: Binding, value: bytes) -> list[Any] | None:
    """The details of a grpc-status-details-bin (a google.rpc.Status, base64): each Any as proto3 JSON when
    its type is in the descriptor set, else its type and bytes; None when absent or undecodable."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value + b"=" * (-len(value) % 4))
        out = []
        for num, any_ in _fields(raw):
            if num != 3 or not isinstance(any_, bytes):
                continue
            parts = dict(_fields(any_))
            url = parts.get(1, b"")
            data = parts.get(2, b"")
            assert isinstance(url, bytes) and isinstance(data, bytes)
            name = url.decode().rsplit("/", 1)[-1]
            try:
                cls = b.classes(name)
                out.append({"@type": url.decode(), **json_format.MessageToDict(cls.FromString(data))})
            except KeyError:
                out.append({"@type": url.decode(), "value": base64.b64encode(data).decode()})
        return out
    except (ValueError, binascii.Error, UnicodeDecodeError, AssertionError):
        return None


def problem(code: int, message: str, instance: bytes, rid: bytes,
            details: list[Any] | None = None) -> tuple[int, bytes]:
    """The HTTP status and problem+json body of a gRPC status other than OK."""
    status = GRPC_TO_HTTP.get(code, 500)
    name = GRPC_NAMES[code] if 0 <= code < len(GRPC_NAMES) else str(code)
    doc = {"type": f"urn:fastgw:problem:grpc-{name.lower().replace('_', '-')}", "title": name,
           "status": status, "detail": message or name, "instance": instance.decode("latin-1"),
           "request_id": rid.decode("latin-1"), "grpc_status": code}
    if details:
        doc["details"] = details
    return status, json.dumps(doc, separators=(",", ":")).encode()
