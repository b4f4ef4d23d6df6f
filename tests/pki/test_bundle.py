import stat
from pathlib import Path

import pytest

from client_app.pki import (
    ISSUER_BUNDLE_PASSPHRASE,
    CertificateAuthority,
    PkiError,
    certificate_to_pem,
    generate_key,
    load_issuer_bundle,
    private_key_to_pem,
    write_issuer_bundle,
)
from client_app.pki.keys import pem_begin
from client_app.pki.verify import verify_client_chain

from .oracles import openssl_verify


def test_round_trip_and_leaf_from_bundle_verifies(
    tmp_path: Path, root: CertificateAuthority, issuing: CertificateAuthority
) -> None:
    path = tmp_path / "issuer-bundle.pem"
    write_issuer_bundle(issuing, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.count("-----BEGIN CERTIFICATE-----") == 2
    assert text.count(pem_begin("ENCRYPTED PRIVATE KEY").decode()) == 1
    assert pem_begin("PRIVATE KEY").decode() not in text
    assert text.startswith(certificate_to_pem(issuing.certificate).decode())  # issuing CA first, root last

    loaded = load_issuer_bundle(path)
    assert loaded.certificate == issuing.certificate
    assert loaded.chain == (root.certificate,)
    assert loaded.key.private_numbers() == issuing.key.private_numbers()
    assert loaded.path_length == 0 and not loaded.is_root()

    leaf = loaded.issue_device("self-issued-1", generate_key().public_key())
    assert verify_client_chain(leaf, [root.certificate], [loaded.certificate])[-1] == root.certificate
    result = openssl_verify(tmp_path, leaf, [root.certificate], [loaded.certificate])
    assert result.returncode == 0, result.stderr


def test_bundle_of_a_deeper_chain_holds_every_certificate_above(tmp_path: Path) -> None:
    top = CertificateAuthority.root()
    upper = top.intermediate("Upper", path_length=1)
    lower = upper.intermediate("Lower", path_length=0)
    write_issuer_bundle(lower, tmp_path / "b.pem", b"other passphrase")
    loaded = load_issuer_bundle(tmp_path / "b.pem", b"other passphrase")
    assert loaded.certificate == lower.certificate
    assert loaded.chain == (upper.certificate, top.certificate)
    assert (tmp_path / "b.pem").read_bytes().count(b"PRIVATE KEY-----") == 2  # one key block: BEGIN + END


def test_refuses_root_and_non_zero_path_length(tmp_path: Path, root: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="root"):
        write_issuer_bundle(root, tmp_path / "b.pem")
    with pytest.raises(PkiError, match="pathLenConstraint is 1"):
        write_issuer_bundle(root.intermediate("Upper", path_length=1), tmp_path / "b.pem")
    with pytest.raises(PkiError, match="pathLenConstraint is None"):
        write_issuer_bundle(root.intermediate("Unlimited", path_length=None), tmp_path / "b.pem")
    # a pathlen-0 root passed off with a chain is still a root: its key must not be bundled
    narrow = CertificateAuthority.root(path_length=0)
    padded = CertificateAuthority(narrow.certificate, narrow.key, [narrow.certificate])
    with pytest.raises(PkiError, match="root"):
        write_issuer_bundle(padded, tmp_path / "b.pem")
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path: Path, issuing: CertificateAuthority) -> None:
    path = tmp_path / "b.pem"
    with pytest.raises(PkiError, match="cannot read"):
        load_issuer_bundle(path)
    write_issuer_bundle(issuing, path)
    with pytest.raises(PkiError, match="wrong passphrase"):
        load_issuer_bundle(path, b"not the passphrase")
    certs_only = tmp_path / "certs.pem"
    certs_only.write_bytes(certificate_to_pem(issuing.certificate))
    with pytest.raises(PkiError, match="no private key"):
        load_issuer_bundle(certs_only)
    mismatch = tmp_path / "mismatch.pem"
    mismatch.write_bytes(
        certificate_to_pem(issuing.certificate) + private_key_to_pem(generate_key(), ISSUER_BUNDLE_PASSPHRASE)
    )
    with pytest.raises(PkiError, match="does not match"):
        load_issuer_bundle(mismatch)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(pem_begin("ENCRYPTED PRIVATE KEY") + b"\nnope\n-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(PkiError):
        load_issuer_bundle(garbage)
