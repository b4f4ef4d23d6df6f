"""PKI library: a small CA object, DPS X.509 certificate profiles, files and the issuer bundle."""

from client_app.pki.bundle import ISSUER_BUNDLE_PASSPHRASE, load_issuer_bundle, write_issuer_bundle
from client_app.pki.ca import CertificateAuthority
from client_app.pki.errors import PkiError
from client_app.pki.files import (
    atomic_write,
    certificate_to_pem,
    load_certificates,
    sha1_thumbprint,
    sha256_thumbprint,
)
from client_app.pki.keys import KeyType, PrivateKey, generate_key, load_private_key, private_key_to_pem
from client_app.pki.names import (
    SELF_CERTIFYING_PREFIX,
    certifies_own_key,
    key_id,
    self_certifying_id,
    validate_registration_id,
)

__all__ = [
    "ISSUER_BUNDLE_PASSPHRASE",
    "SELF_CERTIFYING_PREFIX",
    "CertificateAuthority",
    "KeyType",
    "PkiError",
    "PrivateKey",
    "atomic_write",
    "certificate_to_pem",
    "certifies_own_key",
    "generate_key",
    "key_id",
    "load_certificates",
    "load_issuer_bundle",
    "load_private_key",
    "private_key_to_pem",
    "self_certifying_id",
    "sha1_thumbprint",
    "sha256_thumbprint",
    "validate_registration_id",
    "write_issuer_bundle",
]
