"""DPS registration-id rules (the registration id is the device leaf's subject CN) and self-certifying ids."""

import base64
import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from client_app.pki.errors import PkiError

# DPS: letters, digits and "- . _ :", last character alphanumeric or "-"; X.509 caps the CN at 64 (RFC 5280).
_REGISTRATION_ID = re.compile(r"[A-Za-z0-9\-._:]{0,63}[A-Za-z0-9\-]")

# "k1-" + 52 characters of unpadded base32 (RFC 4648, lower case) of SHA-256 over the SubjectPublicKeyInfo:
# 55 characters, within DPS's 64, and only [a-z2-7-], valid in every DPS and IoT Hub id position.
SELF_CERTIFYING_PREFIX = "k1-"


def validate_registration_id(registration_id: str) -> str:
    """Return the id unchanged if DPS accepts it as an X.509 registration id, else raise PkiError.

    Upper case is accepted (DPS ids are case-insensitive today) but lower case is recommended:
    older DPS versions rejected upper case.
    """
    if not isinstance(registration_id, str) or not _REGISTRATION_ID.fullmatch(registration_id):
        raise PkiError(
            f"invalid registration id {registration_id!r}: use 1-64 characters from letters, digits and"
            " '-._:', ending in a letter, digit or '-'"
        )
    return registration_id


def key_id(public_key: object) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo: names a key whatever certificate carries it."""
    return hashlib.sha256(_spki(public_key)).hexdigest()


def self_certifying_id(public_key: object) -> str:
    """The registration id that only the holder of this key's private half can present (see docs/pki.md)."""
    digest = hashlib.sha256(_spki(public_key)).digest()
    return SELF_CERTIFYING_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def certifies_own_key(certificate: x509.Certificate) -> bool:
    """True if the certificate's CN is the self-certifying id of the certificate's own public key.

    Registration ids are case-insensitive in DPS, so the comparison is too: the hash leaves no room for a
    second id that differs only in case.
    """
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return False
    return str(names[0].value).lower() == self_certifying_id(certificate.public_key())


def _spki(public_key: object) -> bytes:
    try:
        return public_key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise PkiError(f"not a public key: {type(public_key).__name__}") from exc


# The device sends its leaf in the DPS registration payload: Azure passes the payload to a custom allocation
# webhook (deviceRuntimeContext.payload) but not the certificate, only its details (allocation_webhook.py).
PAYLOAD_CERTIFICATE = "deviceCertificate"


def registration_payload(leaf: x509.Certificate) -> dict[str, str]:
    return {PAYLOAD_CERTIFICATE: leaf.public_bytes(serialization.Encoding.PEM).decode("ascii")}
