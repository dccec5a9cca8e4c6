"""TLS termination: one SSLContext per [[server.tls]] listener; and the client context for TLS upstreams.

- Certificates: `cert`/`key` is the default; each `sni` entry serves the DNS names of its certificate
  (subjectAltName, or the CN when there is no SAN; "*.example.com" wildcards match one label). The
  choice is made in the SNI callback by switching the connection to that certificate's context.
- Protocols: TLS 1.2 or later (`min_version`), TLS 1.2 limited to ECDHE with AES-GCM or ChaCha20-Poly1305
  (forward secrecy, AEAD only: the Mozilla "intermediate" profile), no compression, no renegotiation.
- ALPN: `alpn` (default h2, http/1.1) is advertised; the I/O shell reads what the client chose from the
  connection's ssl_object (none: HTTP/1.1).
- mTLS: with `client_ca`, client certificates are verified against that bundle, `client_auth` "required"
  (no valid certificate, no handshake) or "optional" (the request goes on without one). The verified
  certificate reaches the auth policy (Exchange.peercert) and can map to a consumer.
- Reload: the worker builds new contexts from the files on every config reload (SIGHUP), so rotated
  certificates are served to new connections; established ones keep theirs.
"""
from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:     # the config validates certificates with this module (fastgw/config/upstreams.py)
    from fastgw.config.server import TlsListener
    from fastgw.config.upstreams import UpstreamTLS

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


def cert_names(path: str) -> list[str]:
    """The DNS names a certificate (first PEM block of `path`) is valid for, lowercased."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n.lower() for n in names]


def _context(t: TlsListener, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if t.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(list(t.alpn))
    if t.client_ca:
        ctx.load_verify_locations(cafile=t.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if t.client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def build_context(t: TlsListener) -> ssl.SSLContext:
    """The listener's server context (raises OSError/ssl.SSLError/ValueError on unusable files)."""
    main = _context(t, t.cert, t.key)
    if not t.sni:
        return main
    exact: dict[str, ssl.SSLContext] = {}
    wild: dict[str, ssl.SSLContext] = {}
    for extra in t.sni:
        ctx = _context(t, extra.cert, extra.key)
        for name in cert_names(extra.cert):
            if name.startswith("*."):
                wild.setdefault(name[2:], ctx)
            else:
                exact.setdefault(name, ctx)

    def pick(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        ctx = exact.get(name)
        if ctx is None and "." in name:
            ctx = wild.get(name.split(".", 1)[1])
        if ctx is not None:
            sslobj.context = ctx
        return None

    main.sni_callback = pick
    return main


def upstream_context(t: UpstreamTLS, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """Client context for an upstream: certificate and host name verified unless `verify = false`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if t.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(alpn))
    if t.verify:
        if t.ca is not None:
            ctx.load_verify_locations(cafile=t.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if t.cert is not None and t.key is not None:
        ctx.load_cert_chain(t.cert, t.key)
    return ctx
