import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from client_app.pki import (
    CertificateAuthority,
    KeyType,
    PkiError,
    atomic_write,
    certificate_to_pem,
    generate_key,
    load_certificates,
    load_private_key,
    private_key_to_pem,
    sha1_thumbprint,
    sha256_thumbprint,
)
from client_app.pki.files import atomic_write_all
from client_app.pki.keys import pem_begin


def test_atomic_write_sets_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "secret.pem"
    atomic_write(path, b"one", mode=0o600)
    atomic_write(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(tmp_path / "public.pem", b"x")
    assert stat.S_IMODE((tmp_path / "public.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public.pem", "secret.pem"]


def test_atomic_write_failure_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="cannot write"):
        atomic_write(tmp_path / "missing-dir" / "x.pem", b"x")
    target = tmp_path / "is-a-dir"
    (target / "child").mkdir(parents=True)
    with pytest.raises(PkiError, match="cannot write"):
        atomic_write(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["is-a-dir"]  # temp file cleaned up


def test_atomic_write_all_writes_every_file_or_none(tmp_path: Path) -> None:
    (tmp_path / "old.pem").write_bytes(b"old")
    outputs = {tmp_path / "old.pem": (b"new", 0o644), tmp_path / "missing-dir" / "b.pem": (b"b", 0o644)}
    with pytest.raises(PkiError, match=r"cannot write .*missing-dir"):
        atomic_write_all({tmp_path / "a.key": (b"a", 0o600), **outputs})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pem"]  # no new file, no temp file
    assert (tmp_path / "old.pem").read_bytes() == b"old"
    atomic_write_all({tmp_path / "a.key": (b"a", 0o600), tmp_path / "old.pem": (b"new", 0o644)})
    assert (tmp_path / "a.key").read_bytes() == b"a" and (tmp_path / "old.pem").read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "a.key").stat().st_mode) == 0o600


def test_load_certificates_pem_der_and_errors(tmp_path: Path, issuing: CertificateAuthority) -> None:
    pem = certificate_to_pem(issuing.certificate) + certificate_to_pem(issuing.chain[0])
    assert load_certificates(pem) == [issuing.certificate, issuing.chain[0]]
    der = tmp_path / "c.cer"
    der.write_bytes(issuing.certificate.public_bytes(serialization.Encoding.DER))
    assert load_certificates(der) == [issuing.certificate]
    assert load_certificates(str(der)) == [issuing.certificate]
    with pytest.raises(PkiError, match="not a readable"):
        load_certificates(b"garbage")
    with pytest.raises(PkiError, match="no certificate"):
        load_certificates(private_key_to_pem(generate_key(), b"pw"))
    with pytest.raises(PkiError, match="cannot read"):
        load_certificates(tmp_path / "absent.pem")


def test_thumbprints_match_openssl(tmp_path: Path, issuing: CertificateAuthority) -> None:
    path = tmp_path / "c.pem"
    path.write_bytes(certificate_to_pem(issuing.certificate))
    for digest, ours in (("-sha1", sha1_thumbprint), ("-sha256", sha256_thumbprint)):
        out = subprocess.run(
            ["openssl", "x509", "-in", path, "-noout", "-fingerprint", digest],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip().split("=", 1)[1].replace(":", "") == ours(issuing.certificate)
    assert (
        sha1_thumbprint(issuing.certificate).isupper() and len(sha256_thumbprint(issuing.certificate)) == 64
    )


def test_private_key_pem_is_encrypted_pkcs8_readable_by_openssl(tmp_path: Path) -> None:
    key = generate_key(KeyType.EC_P256)
    pem = private_key_to_pem(key, b"pass phrase")
    assert pem.startswith(pem_begin("ENCRYPTED PRIVATE KEY"))
    path = tmp_path / "k.pem"
    path.write_bytes(pem)
    subprocess.run(
        ["openssl", "pkey", "-in", path, "-passin", "pass:pass phrase", "-noout"],
        check=True,
        capture_output=True,
    )
    assert load_private_key(pem, b"pass phrase", "k").private_numbers() == key.private_numbers()
    with pytest.raises(PkiError, match="wrong passphrase"):
        load_private_key(pem, b"wrong", "k")
    with pytest.raises(PkiError, match="no passphrase"):
        load_private_key(pem, None, "k")
    with pytest.raises(PkiError, match="not a readable"):
        load_private_key(pem_begin("PRIVATE KEY") + b"\nAA==\n-----END PRIVATE KEY-----\n", None, "k")
    assert private_key_to_pem(key, None).startswith(pem_begin("PRIVATE KEY"))
