"""[consumers.NAME]: the API's clients, by name. Their keys are the policies' (the registry): the auth
policy maps credentials to them (API-key hashes, JWT subjects, certificate subjects) and gives them scopes
and roles; the traffic policy gives them a rate plan."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from fastgw.config.checks import NAME
from fastgw.config.schema import compose, keypath
from fastgw.policies import POLICIES

if TYPE_CHECKING:
    from fastgw.config.root import Config


class ConsumerCore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A consumer has a name (its key) and the keys the policies add; `Consumer` is composed from them."""

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...     # a key a policy adds (typed in its config module)


if TYPE_CHECKING:
    Consumer = ConsumerCore
else:
    Consumer = compose("Consumer", ConsumerCore, [p.consumer for p in POLICIES if p.consumer is not None], __name__)


def check(cfg: Config, errors: list[str]) -> None:
    for name in cfg.consumers:
        if not NAME.fullmatch(name):
            errors.append(f'{keypath("consumers", name)}: invalid consumer name "{name}" (use letters, digits, "_", ".", "-")')
