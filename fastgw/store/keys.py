"""Redis Cluster key placement: the hash tag of a key, its slot, and the rule every store user's keys obey.

A cluster runs a script only when all its keys live in one slot (else CROSSSLOT). The slot of a key is
CRC16 (XMODEM) of its hash tag — the text between the first "{" and the next "}", when that is not
empty — or of the whole key, modulo 16384. So every multi-key script declares its key templates
(Script.keys), and each template puts the one value that groups the keys (the limit's key, the consumer)
inside braces at the same place: `check_templates` proves it for every script, on the names a config
gives the templates' other parts, before a cluster ever answers CROSSSLOT.
"""
from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastgw.store.redis import Script

SLOTS = 16384
SAMPLE_TAGS = (b"0", b"7f3a9c", b"ffffffffffffffff")   # tag values the check renders each template with


def hash_tag(key: bytes) -> bytes:
    """The part of `key` that decides its slot."""
    i = key.find(b"{")
    if i >= 0:
        j = key.find(b"}", i + 1)
        if j > i + 1:
            return key[i + 1:j]
    return key


def slot(key: bytes) -> int:
    return binascii.crc_hqx(hash_tag(key), 0) & (SLOTS - 1)


def check_templates(scripts: Iterable[Script], names: Iterable[str], errors: list[str]) -> int:
    """Every key template of every script, rendered with each sample tag and each of `names` (the config's
    values for the templates' other parts), must carry the tag as its hash tag: then all keys of one call
    share a slot. Placeholders: <tag> the grouping value, <name> a config name, <n> a position (a script
    whose template has <n> takes several keys of that template). Appends "redis: ..." reasons to `errors`; returns the number of templates checked."""
    given = [n.encode() for n in names] or [b"name"]
    count = 0
    for s in scripts:
        if len(s.keys) == 1 and b"<n>" not in s.keys[0]:
            continue                                   # one key: one slot, whatever its name
        for template in s.keys:
            count += 1
            for tag in SAMPLE_TAGS:
                for name in given:
                    key = template.replace(b"<tag>", tag).replace(b"<name>", name).replace(b"<n>", b"0")
                    if hash_tag(key) != tag:
                        errors.append(f'redis: key template "{template.decode()}" of script {s.name} gives key '
                                      f'"{key.decode()}" whose hash tag is "{hash_tag(key).decode()}", not the '
                                      f'grouping value "{tag.decode()}": in a Redis Cluster its keys would not '
                                      "share one slot (CROSSSLOT)")
                        break
                else:
                    continue
                break
    return count
