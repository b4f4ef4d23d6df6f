"""Certificate profiles, field by field."""

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_app.pki import CertificateAuthority, KeyType, PkiError, generate_key
from client_app.pki.ca import BACKDATE

from .oracles import hand_made_ca


def ext(cert: x509.Certificate, kind: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(kind)


def common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def usages(cert: x509.Certificate) -> set[str]:
    ku = ext(cert, x509.KeyUsage).value
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment"]
    names += ["key_agreement", "key_cert_sign", "crl_sign"]
    return {name for name in names if getattr(ku, name)}


def assert_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    cert.verify_directly_issued_by(issuer)
    aki = ext(cert, x509.AuthorityKeyIdentifier)
    assert not aki.critical
    assert aki.value.key_identifier == ext(issuer, x509.SubjectKeyIdentifier).value.digest


def assert_common(cert: x509.Certificate) -> None:
    assert cert.version == x509.Version.v3
    assert 2**63 <= cert.serial_number < 2**159  # >= 64 random bits, positive, <= 20 octets
    ski = ext(cert, x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    oids = [extension.oid for extension in cert.extensions]
    assert len(oids) == len(set(oids))


def test_root_profile(root: CertificateAuthority) -> None:
    cert = root.certificate
    assert_common(cert)
    assert cert.subject == cert.issuer
    assert common_name(cert) == "Test Root CA"
    cert.verify_directly_issued_by(cert)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    assert ext(cert, x509.KeyUsage).critical
    assert usages(cert) == {"key_cert_sign", "crl_sign", "digital_signature"}
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.AuthorityKeyIdentifier)
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.ExtendedKeyUsage)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp384r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=3650) + BACKDATE
    assert root.is_root() and root.chain == () and root.path_length is None


def test_intermediate_profile(root: CertificateAuthority, issuing: CertificateAuthority) -> None:
    cert = issuing.certificate
    assert_common(cert)
    assert_signed_by(cert, root.certificate)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ext(cert, x509.KeyUsage).critical
    assert usages(cert) == {"key_cert_sign", "crl_sign", "digital_signature"}
    assert cert.public_key().curve.name == "secp384r1"
    assert issuing.chain == (root.certificate,)
    assert not issuing.is_root() and issuing.path_length == 0
    # inside the root's window, shorter than the root
    assert root.certificate.not_valid_before_utc <= cert.not_valid_before_utc
    assert cert.not_valid_after_utc < root.certificate.not_valid_after_utc


def test_chain_of_intermediates_counts_down_path_length() -> None:
    top = CertificateAuthority.root(path_length=2)
    first = top.intermediate("I1", path_length=1)
    second = first.intermediate("I2", path_length=0)
    assert [top.path_length, first.path_length, second.path_length] == [2, 1, 0]
    assert second.chain == (first.certificate, top.certificate)
    with pytest.raises(PkiError, match="pathLenConstraint 0"):
        second.intermediate("I3")
    with pytest.raises(PkiError, match="pathLenConstraint 1"):
        first.intermediate("I2b", path_length=1)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_device_profile(issuing: CertificateAuthority, key_type: KeyType) -> None:
    key = generate_key(key_type)
    cert = issuing.issue_device("Device-01.a_b:c-", key.public_key())
    assert_common(cert)
    assert_signed_by(cert, issuing.certificate)
    assert common_name(cert) == "Device-01.a_b:c-"
    assert list(cert.subject) == [x509.NameAttribute(NameOID.COMMON_NAME, "Device-01.a_b:c-")]
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca and bc.value.path_length is None
    assert ext(cert, x509.KeyUsage).critical
    expected = {"digital_signature", "key_agreement"} if key_type.startswith("ec") else {"digital_signature"}
    assert usages(cert) == expected
    eku = ext(cert, x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)
    assert cert.public_key() == key.public_key()
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)  # signed by a P-384 CA


def test_device_validity_backdated_and_clamped(issuing: CertificateAuthority) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    cert = issuing.issue_device("dev", generate_key().public_key(), days=30)
    assert (
        before - BACKDATE - timedelta(seconds=1)
        <= cert.not_valid_before_utc
        <= before - BACKDATE + timedelta(seconds=5)
    )
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=30) + BACKDATE
    long = issuing.issue_device("dev", generate_key().public_key(), days=100_000)
    assert long.not_valid_after_utc == issuing.certificate.not_valid_after_utc


def test_child_not_before_is_clamped_into_a_fresh_parent() -> None:
    fresh = CertificateAuthority.root()
    child = fresh.intermediate("I")
    assert child.certificate.not_valid_before_utc >= fresh.certificate.not_valid_before_utc


def test_serials_are_random(issuing: CertificateAuthority) -> None:
    key = generate_key().public_key()
    serials = {issuing.issue_device("dev", key).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_verification_profile(issuing: CertificateAuthority) -> None:
    cert, key = issuing.issue_verification("0A1B2C3D4E5F")
    assert_common(cert)
    assert_signed_by(cert, issuing.certificate)
    assert common_name(cert) == "0A1B2C3D4E5F"
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert usages(cert) == {"digital_signature"}
    assert cert.public_key() == key.public_key()
    # Never a device credential: no clientAuth EKU (the local cloud refuses such leaves, docs/pki.md).
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
def test_server_profile(issuing: CertificateAuthority, key_type: KeyType) -> None:
    cert, key = issuing.issue_server(["hub.local", "dps.local"], ["127.0.0.1", "::1"], key_type=key_type)
    assert_common(cert)
    assert_signed_by(cert, issuing.certificate)
    assert common_name(cert) == "hub.local"
    assert not ext(cert, x509.BasicConstraints).value.ca
    expected = (
        {"digital_signature"} if key_type.startswith("ec") else {"digital_signature", "key_encipherment"}
    )
    assert usages(cert) == expected
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = ext(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["hub.local", "dps.local"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=825) + BACKDATE


def test_server_needs_a_name(issuing: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="at least one"):
        issuing.issue_server([])
    with pytest.raises(PkiError):
        issuing.issue_server(["ok"], ["not-an-ip"])
    cert, _ = issuing.issue_server([], ["10.0.0.1"])
    assert common_name(cert) == "10.0.0.1"


def test_rsa_keys_and_rsa_ca() -> None:
    ca = CertificateAuthority.root(key_type=KeyType.RSA_2048)
    assert isinstance(ca.key, rsa.RSAPrivateKey) and ca.key.key_size == 2048
    assert isinstance(ca.certificate.signature_hash_algorithm, hashes.SHA256)
    leaf = ca.issue_device("dev", generate_key().public_key())
    leaf.verify_directly_issued_by(ca.certificate)


@pytest.mark.parametrize(
    ("key_type", "size"), [(KeyType.EC_P256, 256), (KeyType.EC_P384, 384), (KeyType.RSA_3072, 3072)]
)
def test_generate_key(key_type: KeyType, size: int) -> None:
    key = generate_key(key_type)
    assert key.key_size == size
    assert generate_key(key_type.value).key_size == size  # CLI spellings work too


def test_expired_issuer_refuses(root: CertificateAuthority) -> None:
    expired = hand_made_ca(root, "Expired CA", path_length=0, not_after=datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(PkiError, match="not valid now"):
        expired.issue_device("dev", generate_key().public_key())
    with pytest.raises(PkiError, match="not valid now"):
        expired.issue_verification("code")


def test_invalid_input_raises_pki_error(issuing: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="invalid registration id"):
        issuing.issue_device("bad id", generate_key().public_key())
    with pytest.raises(PkiError, match="1-64"):
        issuing.issue_verification("x" * 65)
    with pytest.raises(PkiError, match="at least one day"):
        issuing.issue_device("dev", generate_key().public_key(), days=0)
    with pytest.raises(PkiError, match="does not match"):
        CertificateAuthority(issuing.certificate, generate_key(KeyType.EC_P384), issuing.chain)
