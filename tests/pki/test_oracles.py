"""Every chain the library makes passes `openssl verify -x509_strict` and pkilint; broken chains fail."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from pkilint.validation import ValidationFindingSeverity

from client_app.pki import CertificateAuthority, KeyType, PkiError, generate_key
from client_app.pki.verify import verify_client_chain

from .oracles import hand_made_ca, openssl_verify, pkilint_findings


def intermediates_of(ca: CertificateAuthority) -> list[x509.Certificate]:
    return [ca.certificate, *ca.chain[:-1]]


@pytest.fixture(scope="module")
def deep() -> CertificateAuthority:
    """root -> I1 (pathlen 2) -> I2 (pathlen 1) -> I3 (pathlen 0), RSA CAs for variety."""
    ca = CertificateAuthority.root(key_type=KeyType.RSA_2048)
    for k, path_length in enumerate([2, 1, 0], start=1):
        ca = ca.intermediate(f"I{k}", path_length=path_length, key_type=KeyType.RSA_2048)
    return ca


@pytest.mark.parametrize("hierarchy", ["issuing", "deep"])
def test_device_chain_passes_openssl_and_cryptography(
    request: pytest.FixtureRequest, tmp_path: Path, hierarchy: str
) -> None:
    ca: CertificateAuthority = request.getfixturevalue(hierarchy)
    leaf = ca.issue_device("device-1", generate_key().public_key())
    root = ca.chain[-1]
    result = openssl_verify(tmp_path, leaf, [root], intermediates_of(ca))
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stderr
    # DPS "verified intermediate" case: the issuing CA as the only trust anchor
    partial = openssl_verify(tmp_path, leaf, [ca.certificate], extra=["-partial_chain"])
    assert partial.returncode == 0, partial.stderr
    built = verify_client_chain(leaf, [root], intermediates_of(ca))
    assert built == [leaf, *intermediates_of(ca), root]


def test_server_cert_passes_openssl(tmp_path: Path, issuing: CertificateAuthority) -> None:
    server, _ = issuing.issue_server(["hub.local"], ["127.0.0.1"])
    result = openssl_verify(tmp_path, server, [issuing.chain[-1]], [issuing.certificate], purpose="sslserver")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("signer", ["root", "issuing"])
def test_verification_cert_chains_to_the_ca_being_verified(
    request: pytest.FixtureRequest, tmp_path: Path, signer: str
) -> None:
    """Proof of possession: DPS checks the signature with the uploaded certificate alone as the anchor."""
    ca: CertificateAuthority = request.getfixturevalue(signer)
    cert, _ = ca.issue_verification("0A1B2C")
    result = openssl_verify(tmp_path, cert, [ca.certificate], purpose="any", extra=["-partial_chain"])
    assert result.returncode == 0, result.stderr


def test_intermediate_as_untrusted_anchor_needs_partial_chain(
    tmp_path: Path, issuing: CertificateAuthority
) -> None:
    leaf = issuing.issue_device("device-1", generate_key().public_key())
    result = openssl_verify(tmp_path, leaf, [issuing.certificate])
    assert result.returncode != 0 and "unable to get issuer certificate" in result.stdout + result.stderr


def test_missing_intermediate_fails(
    tmp_path: Path, root: CertificateAuthority, issuing: CertificateAuthority
) -> None:
    leaf = issuing.issue_device("device-1", generate_key().public_key())
    result = openssl_verify(tmp_path, leaf, [root.certificate])
    assert (
        result.returncode != 0 and "unable to get local issuer certificate" in result.stdout + result.stderr
    )
    with pytest.raises(PkiError, match="verification failed"):
        verify_client_chain(leaf, [root.certificate])


def test_path_length_exceeded_fails(
    tmp_path: Path, root: CertificateAuthority, issuing: CertificateAuthority
) -> None:
    rogue = hand_made_ca(issuing, "Rogue CA under a pathlen-0 CA")
    leaf = rogue.issue_device("device-1", generate_key().public_key())
    result = openssl_verify(tmp_path, leaf, [root.certificate], [rogue.certificate, issuing.certificate])
    assert result.returncode != 0 and "path length constraint exceeded" in result.stdout + result.stderr
    with pytest.raises(PkiError, match="path length"):
        verify_client_chain(leaf, [root.certificate], [rogue.certificate, issuing.certificate])


def test_ca_without_key_cert_sign_fails(tmp_path: Path, root: CertificateAuthority) -> None:
    crippled = hand_made_ca(root, "CA without keyCertSign", path_length=0, key_cert_sign=False)
    leaf = crippled.issue_device("device-1", generate_key().public_key())
    result = openssl_verify(tmp_path, leaf, [root.certificate], [crippled.certificate])
    assert (
        result.returncode != 0
        and "key usage does not include certificate signing" in result.stdout + result.stderr
    )
    with pytest.raises(PkiError, match="keyCertSign"):
        verify_client_chain(leaf, [root.certificate], [crippled.certificate])


def test_expired_leaf_fails_at_a_later_time(
    tmp_path: Path, root: CertificateAuthority, issuing: CertificateAuthority
) -> None:
    leaf = issuing.issue_device("device-1", generate_key().public_key(), days=2)
    later = datetime.now(UTC) + timedelta(days=3)
    result = openssl_verify(
        tmp_path,
        leaf,
        [root.certificate],
        [issuing.certificate],
        extra=["-attime", str(int(later.timestamp()))],
    )
    assert result.returncode != 0 and "certificate has expired" in result.stdout + result.stderr
    with pytest.raises(PkiError, match="not valid"):
        verify_client_chain(leaf, [root.certificate], [issuing.certificate], at=later)


def test_server_cert_is_not_a_client_cert(
    tmp_path: Path, root: CertificateAuthority, issuing: CertificateAuthority
) -> None:
    server, _ = issuing.issue_server(["hub.local"])
    result = openssl_verify(tmp_path, server, [root.certificate], [issuing.certificate])
    assert result.returncode != 0 and "unsuitable certificate purpose" in result.stdout + result.stderr


def test_every_profile_lints_clean(issuing: CertificateAuthority, root: CertificateAuthority) -> None:
    certs = {
        "root": root.certificate,
        "intermediate": issuing.certificate,
        "device-ec": issuing.issue_device("dev", generate_key().public_key()),
        "device-rsa": issuing.issue_device("dev", generate_key(KeyType.RSA_2048).public_key()),
        "verification": issuing.issue_verification("ABC")[0],
        "server-ec": issuing.issue_server(["hub.local"], ["127.0.0.1"])[0],
    }
    findings = {
        name: pkilint_findings(cert, ValidationFindingSeverity.WARNING) for name, cert in certs.items()
    }
    assert findings == {name: [] for name in certs}


def test_pkilint_catches_a_bad_ca(root: CertificateAuthority) -> None:
    """Guards the oracle itself: a CA certificate without keyCertSign must be reported."""
    crippled = hand_made_ca(root, "CA without keyCertSign", key_cert_sign=False)
    assert any("ERROR" in finding for finding in pkilint_findings(crippled.certificate))


def test_rsa_4096_device_key(
    tmp_path: Path, root: CertificateAuthority, issuing: CertificateAuthority
) -> None:
    """The one slow key: Microsoft's scripts default to RSA-4096, so the profile must hold for it too."""
    leaf = issuing.issue_device("rsa-device", generate_key(KeyType.RSA_4096).public_key())
    assert leaf.public_key().key_size == 4096
    assert openssl_verify(tmp_path, leaf, [root.certificate], [issuing.certificate]).returncode == 0
    assert pkilint_findings(leaf) == []
