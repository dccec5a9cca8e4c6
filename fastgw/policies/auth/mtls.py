"""mTLS consumers: which consumer a verified client certificate names (its subject CN or a
subjectAltName entry, as listed in [consumers.NAME].cert_subjects). The certificate was verified in the
TLS handshake against the listener's client_ca (fastgw/tls.py); this only maps it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastgw._core.gates import Identity
from fastgw.policies.auth.identity import AuthError, consumer_identity

if TYPE_CHECKING:
    from fastgw.config.root import Config


class CertSubjects:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.by_subject = {sub: name for name, c in cfg.consumers.items() for sub in c.cert_subjects}

    def identity(self, cert: dict[str, Any]) -> Identity:
        """The consumer `cert` (ssl's getpeercert() dict) maps to; raises AuthError when none."""
        names = []
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    names.append(f"CN={v}")
        for kind, v in cert.get("subjectAltName", ()):
            names.append(f"{kind}:{v}")
        for n in names:
            name = self.by_subject.get(n)
            if name is not None:
                return consumer_identity(self.cfg, name, "mtls")
        raise AuthError("client certificate not mapped to a consumer")
