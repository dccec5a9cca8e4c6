"""An idempotency record in the shared store: its key, the request's fingerprint, the two states a record
is in (a lock while the request is in flight, then the stored response) and the Lua that moves between
them, each one atomic call on the node owning the key.

  key          fastgw:idem:{H}, H = the first 32 hex digits of SHA-256(consumer, route, method, client key):
               who may replay it is part of it (a key is never shared across consumers or routes), and the
               client's key never reaches Redis as written.
  fingerprint  SHA-256(method, target, body), 32 bytes: the same key with another request is a mismatch.
  lock         b"L" + fingerprint + owner (16 random bytes, one per request), with PX lock_ttl.
  done         b"D" + fingerprint + msgpack [status, [[name, value]...], body or None], with PX ttl (body
               None: the response was larger than max_body and is not replayed).

BEGIN takes the lock when the key is free (the record's value otherwise); FINISH replaces the lock with
the response (or, with an empty value, deletes it) only while this request's lock is still the value, so a
request whose lock expired never overwrites a later request's record.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from fastgw.store.redis import Script

BEGIN = Script("idempotency_begin", """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
""", (b"fastgw:idem:{<tag>}",))

FINISH = Script("idempotency_finish", """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
""", (b"fastgw:idem:{<tag>}",))

SCRIPTS = [BEGIN, FINISH]
LOCKED = 76                            # b"L" (a done record starts with b"D")
FP = 32                                # fingerprint bytes

# The Idempotency-Key field (draft-ietf-httpapi-idempotency-key-header: an sf-string): a quoted string of
# printable ASCII with \" and \\ escapes. An unquoted value of visible ASCII without quotes, commas or
# backslashes is also taken (most clients send UUIDs bare, as Stripe's API documents them); both spellings
# of one key are the same key. 1 to 255 characters (Stripe's bound).
_QUOTED = re.compile(rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\\"]){1,255})"')
_BARE = re.compile(rb"[\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]{1,255}")
_ESCAPE = re.compile(rb'\\([\\"])')


def parse_key(raw: bytes) -> bytes | None:
    """The key an Idempotency-Key field value names, or None when it is malformed."""
    m = _QUOTED.fullmatch(raw)
    if m is not None:
        key = _ESCAPE.sub(rb"\1", m[1])
        return key if len(key) <= 255 else None
    return raw if _BARE.fullmatch(raw) else None


def record_key(consumer: str, route: str, method: bytes, key: bytes) -> bytes:
    h = hashlib.sha256(b"\0".join((consumer.encode(), route.encode(), method, key)))
    return b"fastgw:idem:{" + h.hexdigest()[:32].encode() + b"}"


def fingerprint(method: bytes, target: bytes, body: bytes) -> bytes:
    h = hashlib.sha256(method)
    h.update(b"\0" + target + b"\0")
    h.update(body)
    return h.digest()


def done_value(fp: bytes, status: int, headers: list[tuple[bytes, bytes]], body: bytes | None) -> bytes:
    return b"D" + fp + msgspec.msgpack.encode([status, headers, body])


def stored(value: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes | None]:
    """(status, header pairs, body or None) of a done record."""
    status, headers, body = msgspec.msgpack.decode(value[1 + FP:], type=tuple[int, list[tuple[bytes, bytes]],
                                                                          bytes | None])
    return status, headers, body


def decode_reply(reply: Any) -> bytes | None:
    """BEGIN's reply: None when this request took the lock, else the record's value."""
    return None if reply == 0 else bytes(reply)
