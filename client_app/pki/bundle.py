"""The issuer bundle: what the desktop app embeds so that it can issue its own device leaf.

One PEM text: the issuing CA certificate, the certificates above it (root last) and the issuing
key as an ENCRYPTED PRIVATE KEY (PKCS#8). Never a root key.

Threat model. The app must be able to open the bundle without asking anyone, so the passphrase
(ISSUER_BUNDLE_PASSPHRASE by default) is not a secret: it only keeps the key from lying on disk as
plaintext, where indexers, backups and casual copying would pick it up. Anyone who has the app can
extract the key and issue leaves under this intermediate. The real containment is elsewhere:
  * pathLenConstraint 0: the key can issue end-entity certificates only, never another CA;
  * a short life and one intermediate per release, so a leaked key ages out with its release;
  * revocation by disabling the enrollment group that trusts this intermediate in DPS.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from client_app.pki.ca import CertificateAuthority
from client_app.pki.errors import PkiError
from client_app.pki.files import atomic_write, certificate_to_pem, load_certificates, read_file
from client_app.pki.keys import load_private_key, private_key_to_pem

ISSUER_BUNDLE_PASSPHRASE = b"client_app issuer bundle: obfuscation only, see the threat model"


def write_issuer_bundle(
    ca: CertificateAuthority, path: Path, passphrase: bytes = ISSUER_BUNDLE_PASSPHRASE
) -> None:
    """Write `ca` as an issuer bundle; refuses a root and any CA whose pathLenConstraint is not 0."""
    if ca.is_root():
        raise PkiError(f"refusing to bundle the root CA {ca.common_name}: bundle an issuing intermediate")
    if ca.path_length != 0:
        raise PkiError(
            f"refusing to bundle {ca.common_name}: its pathLenConstraint is {ca.path_length}, the issuing"
            " intermediate must have pathLenConstraint 0"
        )
    if not passphrase:
        raise PkiError("the issuer bundle passphrase must not be empty")
    certs = b"".join(certificate_to_pem(cert) for cert in (ca.certificate, *ca.chain))
    atomic_write(Path(path), certs + private_key_to_pem(ca.key, passphrase), mode=0o600)


def load_issuer_bundle(path: Path, passphrase: bytes = ISSUER_BUNDLE_PASSPHRASE) -> CertificateAuthority:
    """Open an issuer bundle; raises PkiError for a missing file, no key, wrong passphrase or a mismatch."""
    data = read_file(Path(path))
    if b"PRIVATE KEY-----" not in data:
        raise PkiError(f"{path}: not an issuer bundle (no private key in it)")
    certs = load_certificates(data)
    key = load_private_key(data, passphrase, str(path))
    try:
        is_ca = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{path}: the first certificate is not a CA certificate")
    return CertificateAuthority(certs[0], key, certs[1:])
