"""Device identity: EC P-256 key (keyring only), leaf issued from the embedded issuer bundle, chain on disk.

The SDK wants file paths, so `sdk_key_file` hands it the key in a temporary file encrypted under a one-time
passphrase; the caller deletes it as soon as the client object exists (the SDK loads it at creation).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from client_app.pki import (
    CertificateAuthority,
    PkiError,
    PrivateKey,
    certificate_to_pem,
    generate_key,
    load_issuer_bundle,
    private_key_to_pem,
    self_certifying_id,
    sha1_thumbprint,
    sha256_thumbprint,
)
from client_app.pki.keys import same_public_key


class IdentityError(Exception):
    """The identity cannot be created or used; message is one plain line."""


@dataclass(frozen=True)
class Identity:
    registration_id: str
    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]  # leaf first, then intermediates; never the root

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def thumbprint(self) -> str:
        return sha1_thumbprint(self.leaf)

    @property
    def issuer_thumbprint(self) -> str | None:
        """SHA-256 of the issuing CA (the release's intermediate): operators find a release by it."""
        return sha256_thumbprint(self.chain[1]) if len(self.chain) > 1 else None

    def chain_pem(self) -> bytes:
        return b"".join(certificate_to_pem(cert) for cert in self.chain)


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def subject_cn(cert: x509.Certificate) -> str:
    return _common_name(cert.subject)


def issuer_cn(cert: x509.Certificate) -> str:
    return _common_name(cert.issuer)


def load_issuer(path: Path) -> CertificateAuthority:
    try:
        return load_issuer_bundle(path)
    except PkiError as exc:
        raise IdentityError(f"cannot use the certificate issuer bundle: {exc}") from exc


def issue_leaf(issuer: CertificateAuthority, registration_id: str, key: PrivateKey, days: int) -> Identity:
    try:
        leaf = issuer.issue_device(registration_id, key.public_key(), days=days)
    except PkiError as exc:
        raise IdentityError(f"cannot issue the device certificate: {exc}. Install an updated app.") from exc
    above = tuple(cert for cert in (issuer.certificate, *issuer.chain) if not _is_self_signed(cert))
    return Identity(registration_id, key, (leaf, *above))


def create_identity(
    issuer: CertificateAuthority,
    days: int,
    registration_id: str | None = None,
) -> Identity:
    """New key + leaf. The registration ID is derived from the key (pki.self_certifying_id): only this
    install can present it (docs/pki.md, "Identity takeover"). `registration_id` is for tests only."""
    key = generate_key()
    return issue_leaf(issuer, registration_id or new_registration_id(key), key, days)


def new_registration_id(key: PrivateKey) -> str:
    """An install's registration ID, derived from its key: only this install can present it."""
    return self_certifying_id(key.public_key())


def renew_identity(issuer: CertificateAuthority, identity: Identity, days: int) -> Identity:
    """New leaf for the same key, so a self-certifying ID (and the key DPS pinned) survives renewal. An
    old-style ID ("ca-<hex>", from before self-certifying IDs) moves to its key's self-certifying ID here:
    the install registers as a new device, which no other install can claim."""
    return issue_leaf(issuer, new_registration_id(identity.key), identity.key, days)


def match_chain(chain: tuple[x509.Certificate, ...], registration_id: str, key: PrivateKey) -> Identity:
    """The identity if this chain (leaf first) belongs to this registration id and key, else IdentityError."""
    if subject_cn(chain[0]).lower() != registration_id.lower():
        raise IdentityError("the stored certificate belongs to another registration id")
    if not same_public_key(chain[0].public_key(), key.public_key()):
        raise IdentityError("the stored certificate does not match the key in the keyring")
    return Identity(registration_id, key, chain)


def renewal_due(identity: Identity, issued_at: datetime, fraction: float, now: datetime) -> bool:
    """Due once `fraction` of the life has passed, counted from our own issue time (not_before may be
    backdated, which would otherwise make a short-lived leaf due at once, forever)."""
    life = identity.not_after - issued_at
    return now >= issued_at + life * fraction


def issuer_replaced(identity: Identity, issuer: CertificateAuthority) -> bool:
    """An updated app may embed another issuer: the leaf should then come from the new one."""
    return len(identity.chain) < 2 or identity.chain[1] != issuer.certificate


@contextlib.contextmanager
def sdk_key_file(key: PrivateKey) -> Iterator[tuple[str, str]]:
    """Yield (path, passphrase) of a temporary encrypted key file; the file is gone after the block."""
    passphrase = secrets.token_urlsafe(32)
    directory = tempfile.mkdtemp(prefix="client-app-")  # 0700: only this user can even list it
    path = os.path.join(directory, "device-key.pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_to_pem(key, passphrase.encode()))
        yield path, passphrase
    finally:
        shutil.rmtree(directory, ignore_errors=True)
