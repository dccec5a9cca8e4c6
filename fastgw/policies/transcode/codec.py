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
    try:
        msg = b.input(**_plain(desc, doc))           # the message built by the runtime from plain values
    except _Slow:
        msg = b.input()
        try:
            json_format.ParseDict(doc, msg)
        except json_format.ParseError as e:
            raise BadRequest(str(e)) from None
    except (ValueError, TypeError) as e:             # an unknown enum name, a value out of range
        raise BadRequest(str(e)) from None
    return msg.SerializeToString()


# -- the fast path: proto3 JSON -> constructor arguments --------------------------------------------------
# json_format.ParseDict walks every field in Python, reading the descriptors each time (bench/transcode.py:
# ~60% of the request's cost). For a message without well-known types the proto3 JSON mapping is a renaming
# and a few conversions (json_name to name, int64 strings to ints, base64 to bytes, null as absent): a plan
# per field, made once from the descriptors, does them, and the runtime's constructor (C, upb) builds the
# message and checks enum numbers and ranges. A well-known type (Timestamp, Duration, wrappers, Struct, Any,
# FieldMask...) has its own JSON form: such a message goes the json_format way (_Slow).

K_MESSAGE, K_INT, K_STRING, K_BOOL, K_ENUM, K_FLOAT, K_BYTES, K_SLOW = range(8)
_INTS = frozenset((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                   FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_INT32,
                   FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_FIXED32,
                   FieldDescriptor.TYPE_SFIXED32))
_INT64S = frozenset((FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                     FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64))
_FLOATS = frozenset((FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE))
_BY_TYPE = {FieldDescriptor.TYPE_STRING: K_STRING, FieldDescriptor.TYPE_BOOL: K_BOOL,
            FieldDescriptor.TYPE_ENUM: K_ENUM, FieldDescriptor.TYPE_BYTES: K_BYTES,
            **{t: K_INT for t in _INTS}, **{t: K_FLOAT for t in _FLOATS}}


class _Slow(Exception):
    """The message needs json_format (a well-known type)."""


class _Plan:
    """How one field is read from JSON and printed to it."""

    __slots__ = ("name", "json_name", "kind", "sub", "repeated", "key", "value", "int64", "enum")

    def __init__(self, f: Any) -> None:
        self.name, self.json_name = f.name, f.json_name
        self.repeated = f.is_repeated
        self.key: _Plan | None = None
        self.value: _Plan | None = None
        m = f.message_type
        if m is not None and m.GetOptions().map_entry:
            self.key, self.value = _Plan(m.fields_by_name["key"]), _Plan(m.fields_by_name["value"])
            self.repeated = False
        if m is not None:
            self.kind = K_SLOW if m.full_name.startswith("google.protobuf.") else K_MESSAGE
        else:
            self.kind = _BY_TYPE.get(f.type, K_SLOW)
        self.sub = m
        self.int64 = f.type in _INT64S
        self.enum = f.enum_type


_PLANS: dict[Any, dict[str, _Plan]] = {}     # message descriptor -> JSON key (json_name and name) -> plan
_FIELDS: dict[Any, _Plan] = {}               # field descriptor -> plan (printing)


def _plans(desc: Any) -> dict[str, _Plan]:
    plans = _PLANS.get(desc)
    if plans is None:
        plans = {}
        for f in desc.fields:
            _FIELDS[f] = plan = _Plan(f)
            plans[f.json_name] = plans[f.name] = plan
        _PLANS[desc] = plans
    return plans


def _value(p: _Plan, v: Any, where: str) -> Any:
    k = p.kind
    if k == K_STRING:
        if type(v) is not str:
            raise BadRequest(f"{where}: a string expected")
        return v
    if k == K_INT:
        if type(v) is int:
            return v
        if type(v) is str and (v.isdigit() or (v[:1] == "-" and v[1:].isdigit())):
            return int(v)
        raise BadRequest(f"{where}: an integer expected, not {json.dumps(v)[:40]}")
    if k == K_MESSAGE:
        if type(v) is not dict:
            raise BadRequest(f"{where}: an object expected")
        return _plain(p.sub, v)
    if k == K_ENUM:
        if type(v) is str:
            if p.enum.values_by_name.get(v) is None:
                raise BadRequest(f'{where}: "{v}" is not a value of {p.enum.full_name}')
            return v
        if type(v) is int:
            return v
        raise BadRequest(f"{where}: an enum name or number expected")
    if k == K_BOOL:
        if type(v) is not bool:
            raise BadRequest(f"{where}: true or false expected")
        return v
    if k == K_FLOAT:
        if type(v) in (int, float):
            return float(v)
        if type(v) is str:
            try:
                return float(v)
            except ValueError:
                pass
        raise BadRequest(f"{where}: a number expected")
    if k == K_BYTES:
        if type(v) is not str:
            raise BadRequest(f"{where}: base64 expected")
        try:
            return base64.b64decode(v.replace("-", "+").replace("_", "/") + "=" * (-len(v) % 4))
        except binascii.Error:
            raise BadRequest(f"{where}: base64 expected") from None
    raise _Slow


def _plain(desc: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` (proto3 JSON) as constructor arguments of `desc`; BadRequest for what the mapping refuses."""
    plans = _plans(desc)
    out: dict[str, Any] = {}
    for key, v in doc.items():
        p = plans.get(key)
        if p is None:
            raise BadRequest(f'{desc.full_name} has no field "{key}"')
        if v is None:
            continue                                   # null: the field's default
        if p.key is not None:
            if type(v) is not dict:
                raise BadRequest(f"{desc.full_name}.{p.name}: an object expected")
            if p.key.kind == K_BOOL:
                raise _Slow                            # ("true"/"false" keys: json_format's)
            kp, vp = p.key, p.value
            assert vp is not None
            where = f"{desc.full_name}.{p.name}"
            out[p.name] = {(k if kp.kind == K_STRING else _value(kp, k, where)): _value(vp, x, where)
                           for k, x in v.items()}
        elif p.repeated:
            if type(v) is not list:
                raise BadRequest(f"{desc.full_name}.{p.name}: an array expected")
            out[p.name] = [_value(p, x, f"{desc.full_name}.{p.name}") for x in v]
        else:
            out[p.name] = _value(p, v, f"{desc.full_name}.{p.name}") if p.kind != K_STRING or type(v) is not str \
                else v
    return out


def response(b: Binding, payload: bytes) -> bytes:
    """One response message as JSON (its response_body field alone when the rule names one)."""
    msg = b.output.FromString(payload)
    try:
        doc = _doc(msg)
    except _Slow:
        doc = json_format.MessageToDict(msg)
    value: Any = doc.get(b.output.DESCRIPTOR.fields_by_name[b.response_body].json_name) if b.response_body \
        else doc
    return json.dumps(value, separators=(",", ":")).encode()


# -- the fast path back: a message's set fields (ListFields, in C) as proto3 JSON -------------------------
# What MessageToDict prints with its defaults: json names, int64 (and uint64...) as strings, enums by name
# (a number the enum does not know as the number), bytes in base64, fields at their default left out.


def _out(p: _Plan, v: Any) -> Any:
    k = p.kind
    if k == K_MESSAGE:
        return _doc(v)
    if k == K_INT:
        return str(v) if p.int64 else v
    if k == K_ENUM:
        e = p.enum.values_by_number.get(v)
        return e.name if e is not None else v
    if k == K_BYTES:
        return base64.b64encode(v).decode()
    if k == K_FLOAT and (v != v or v in (float("inf"), float("-inf"))):
        raise _Slow                                    # ("NaN", "Infinity": json_format's spelling)
    if k == K_SLOW:
        raise _Slow
    return v


def _doc(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = _FIELDS
    for f, v in msg.ListFields():
        p = fields.get(f)
        if p is None:
            _plans(f.containing_type)
            p = fields[f]
        if p.key is not None:
            vp = p.value
            assert vp is not None
            out[p.json_name] = {str(k).lower() if type(k) is bool else str(k): _out(vp, x) for k, x in v.items()}
        elif p.repeated:
            out[p.json_name] = [_out(p, x) for x in v]
        else:
            out[p.json_name] = _out(p, v)
    return out


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
