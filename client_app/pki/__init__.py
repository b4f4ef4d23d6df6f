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
from client_app.pki.names import validate_registration_id

__all__ = [
    "ISSUER_BUNDLE_PASSPHRASE",
    "CertificateAuthority",
    "KeyType",
    "PkiError",
    "PrivateKey",
    "atomic_write",
    "certificate_to_pem",
    "generate_key",
    "load_certificates",
    "load_issuer_bundle",
    "load_private_key",
    "private_key_to_pem",
    "sha1_thumbprint",
    "sha256_thumbprint",
    "validate_registration_id",
    "write_issuer_bundle",
]
