"""[consumers.NAME]: the API's clients, by name. The auth policy maps credentials to them (API-key
hashes, JWT subjects, certificate subjects) and gives them scopes and roles; the traffic policy gives them
a rate plan."""
from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from fastgw.config.checks import NAME
from fastgw.config.schema import keypath

if TYPE_CHECKING:
    from fastgw.config.root import Config


class Consumer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """[consumers.NAME]: identity fields (the traffic policy adds the consumer's plan here)."""

    api_keys_sha256: list[str] = msgspec.field(default_factory=list)
    jwt_subjects: list[str] = msgspec.field(default_factory=list)
    cert_subjects: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)
    roles: list[str] = msgspec.field(default_factory=list)
    plan: str | None = None                 # rate plan of this consumer ([plans.NAME]); overrides the route's



def check(cfg: Config, errors: list[str]) -> None:
    for name in cfg.consumers:
        if not NAME.fullmatch(name):
            errors.append(f'{keypath("consumers", name)}: invalid consumer name "{name}" (use letters, digits, "_", ".", "-")')
