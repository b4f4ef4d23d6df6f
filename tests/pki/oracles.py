"""Independent oracles (openssl CLI, pkilint) and a builder for deliberately broken CA certificates."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

from client_app.pki import CertificateAuthority, KeyType, certificate_to_pem, generate_key


def write_pem(path: Path, certs: Sequence[x509.Certificate]) -> Path:
    path.write_bytes(b"".join(certificate_to_pem(cert) for cert in certs))
    return path


def openssl_verify(
    tmp_path: Path,
    leaf: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    untrusted: Sequence[x509.Certificate] = (),
    *,
    purpose: str = "sslclient",
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -x509_strict` with only the given anchors (-trusted) and intermediates (-untrusted)."""
    command = ["openssl", "verify", "-x509_strict", "-purpose", purpose, *extra]
    command += ["-trusted", str(write_pem(tmp_path / "trusted.pem", trusted))]
    if untrusted:
        command += ["-untrusted", str(write_pem(tmp_path / "untrusted.pem", untrusted))]
    command.append(str(write_pem(tmp_path / "leaf.pem", [leaf])))
    return subprocess.run(command, capture_output=True, text=True, check=False)


_LINTER = certificate.create_pkix_certificate_validator_container(
    certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
    [
        certificate.create_issuer_validator_container([]),
        certificate.create_validity_validator_container(),
        certificate.create_subject_validator_container([]),
        certificate.create_extensions_validator_container([]),
        certificate.create_spki_validator_container([]),
    ],
)


def pkilint_findings(
    cert: x509.Certificate, severity: ValidationFindingSeverity = ValidationFindingSeverity.WARNING
) -> list[str]:
    """pkilint RFC 5280 findings at or above `severity` as 'SEVERITY code' (the lint_pkix_cert checks)."""
    document = loader.RFC5280CertificateDocumentLoader().load_der_document(
        cert.public_bytes(serialization.Encoding.DER), "certificate"
    )
    results = _LINTER.validate(document.root)
    return [
        f"{description.finding.severity} {description.finding.code}"
        for result in results
        for description in result.finding_descriptions
        if description.finding.severity <= severity  # FATAL = 0 ... DEBUG = 5
    ]


def hand_made_ca(
    issuer: CertificateAuthority,
    common_name: str,
    *,
    path_length: int | None = None,
    key_cert_sign: bool = True,
    not_after: datetime | None = None,
) -> CertificateAuthority:
    """A CA certificate built with cryptography directly, bypassing the library's safety checks."""
    key = generate_key(KeyType.EC_P256)
    now = datetime.now(UTC)
    usage = x509.KeyUsage(True, False, False, False, False, key_cert_sign, key_cert_sign, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=2))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
        .sign(issuer.key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key, (issuer.certificate, *issuer.chain))
