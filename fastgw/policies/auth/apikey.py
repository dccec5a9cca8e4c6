"""API keys: where a request carries one ([auth.api_key]: a header, else a query parameter) and which
consumer it belongs to (the sha256 of the key in [consumers.NAME].api_keys_sha256; keys themselves are
never stored). The compiled fast path (fastgw._core.gates.AuthGate) admits a request whose exact header
value already verified; this is the rest.
"""
from __future__ import annotations

import hashlib
import urllib.parse
from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Identity
from fastgw.policies.auth.identity import AuthError, consumer_identity

if TYPE_CHECKING:
    from fastgw.config.root import Config


class ApiKeys:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.by_hash = {h: name for name, c in cfg.consumers.items() for h in c.api_keys_sha256}
        self.idents: dict[str, Identity] = {}
        ak = cfg.auth.api_key
        self.header = ak.header.lower().encode()
        self.query = ak.query.encode() + b"=" if ak.query else None

    def read(self, ex: Any) -> bytes | None:
        """The key the request presents (the header first), or None."""
        v = ex.header(self.header)
        if v is not None:
            return v.strip()
        if self.query is not None and ex.query:
            for part in ex.query[1:].split(b"&"):
                if part.startswith(self.query):
                    return urllib.parse.unquote_to_bytes(part[len(self.query):])
        return None

    def identity(self, key: bytes) -> Identity:
        """The consumer holding `key`; raises AuthError for a key no consumer holds."""
        name = self.by_hash.get(hashlib.sha256(key).hexdigest())
        if name is None:
            raise AuthError("unknown API key")
        # An API key's identity depends on the config only: built once, shared read-only.
        ident = self.idents.get(name)
        if ident is None:
            ident = self.idents[name] = consumer_identity(self.cfg, name, "api_key")
        return ident
