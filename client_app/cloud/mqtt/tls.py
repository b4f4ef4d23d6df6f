"""Server-side TLS for the MQTT listeners: the context, and the certificate chain a client presented."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from cryptography import x509


def server_context(
    cert_chain_pem: Path,
    key_pem: Path,
    trust_pem: bytes,
    password: bytes | str | None = None,
) -> ssl.SSLContext:
    """TLS 1.2+ server context that requires a client certificate.

    `cert_chain_pem`: server leaf first, then its intermediates. `key_pem` may be encrypted (`password`).
    `trust_pem`: every CA certificate the service knows. PARTIAL_CHAIN lets an intermediate act as trust
    anchor, so a device that sends only its leaf is accepted when its issuing CA is known. TLS only proves the
    chain reaches some known CA; which CAs may connect as what is the services' decision.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # the SDK forces exactly TLS 1.2
    context.load_cert_chain(str(cert_chain_pem), str(key_pem), password)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    add_trusted(context, trust_pem)
    return context


def add_trusted(context: ssl.SSLContext, trust_pem: bytes) -> None:
    """Add CA certificates (PEM) to a live context; handshakes started afterwards accept them.

    OpenSSL cannot remove a trust anchor from a context: to revoke, check the chain in the handler.
    An empty `trust_pem` adds nothing (with no CA at all every client certificate is refused).
    """
    text = trust_pem.decode("ascii")
    if "-----BEGIN CERTIFICATE-----" in text:
        context.load_verify_locations(cadata=text)  # str = PEM; bytes would be read as DER
    elif text.strip():
        raise ValueError("trust_pem contains no PEM certificate")


def presented_chain(ssl_object: Any) -> list[x509.Certificate]:
    """Certificates the peer sent, leaf first, exactly as sent (not the verified path).

    `ssl_object`: ssl.SSLSocket or ssl.SSLObject (asyncio: writer.get_extra_info("ssl_object")).
    Public get_unverified_chain() exists from Python 3.13; on 3.10-3.12 only the private C method does.
    """
    method = getattr(ssl_object, "get_unverified_chain", None)
    if method is None:
        method = ssl_object._sslobj.get_unverified_chain
    return [x509.load_der_x509_certificate(_to_der(cert)) for cert in (method() or [])]


def _to_der(cert: Any) -> bytes:
    if isinstance(cert, bytes):
        return cert
    return cert.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]  # _ssl.Certificate (3.10-3.12)
