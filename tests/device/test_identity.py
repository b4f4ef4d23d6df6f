"""Identity and keyring, with the real PKI library and a real (private) Secret Service."""

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from client_app.device import identity as ids
from client_app.device import secrets as keystore
from client_app.device.paths import DataLayout
from client_app.device.state import Persister, StateCorrupt, StateFiles
from client_app.pki import CertificateAuthority, certifies_own_key, self_certifying_id, sha256_thumbprint
from client_app.pki.keys import pem_begin


def test_new_identities_have_self_certifying_ids(issuing_ca: CertificateAuthority):
    identities = [ids.create_identity(issuing_ca, days=1) for _ in range(20)]
    assert len({i.registration_id for i in identities}) == 20
    for identity in identities:
        assert re.fullmatch(r"k1-[a-z2-7]{52}", identity.registration_id)
        assert identity.registration_id == self_certifying_id(identity.key.public_key())
        assert certifies_own_key(identity.leaf)


def test_renewal_keeps_the_key_and_the_id(issuing_ca: CertificateAuthority):
    identity = ids.create_identity(issuing_ca, days=1)
    renewed = ids.renew_identity(issuing_ca, identity, days=30)
    assert renewed.key is identity.key
    assert renewed.registration_id == identity.registration_id == ids.subject_cn(renewed.leaf)
    assert renewed.leaf.serial_number != identity.leaf.serial_number
    assert renewed.not_after > identity.not_after


def test_renewal_moves_an_old_style_id_to_its_keys_self_certifying_id(issuing_ca: CertificateAuthority):
    legacy = ids.create_identity(issuing_ca, days=1, registration_id="ca-0123456789abcdef0123")
    renewed = ids.renew_identity(issuing_ca, legacy, days=30)
    assert renewed.key is legacy.key
    assert renewed.registration_id == self_certifying_id(legacy.key.public_key())
    assert certifies_own_key(renewed.leaf)


def test_leaf_profile_and_chain(issuing_ca: CertificateAuthority):
    identity = ids.create_identity(issuing_ca, days=30)
    leaf = identity.leaf
    assert ids.subject_cn(leaf) == identity.registration_id
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issuing_ca.certificate.not_valid_before_utc <= leaf.not_valid_before_utc
    assert leaf.not_valid_after_utc <= issuing_ca.certificate.not_valid_after_utc
    # leaf + intermediates, never the root
    assert identity.chain[1:] == (issuing_ca.certificate,)
    assert all(c.subject != c.issuer for c in identity.chain)
    assert identity.chain_pem().count(b"BEGIN CERTIFICATE") == 2
    # reported to the twin: operators find (and revoke) a release's devices by it
    assert identity.issuer_thumbprint == sha256_thumbprint(issuing_ca.certificate)


def test_renewal_due_and_issuer_replaced(issuing_ca: CertificateAuthority):
    identity = ids.create_identity(issuing_ca, days=10)
    issued = datetime.now(UTC)
    assert not ids.renewal_due(identity, issued, 0.8, issued + timedelta(days=7))
    assert ids.renewal_due(identity, issued, 0.8, issued + timedelta(days=8, minutes=1))
    assert not ids.issuer_replaced(identity, issuing_ca)
    other = CertificateAuthority.root("other root").intermediate("other issuing")
    assert ids.issuer_replaced(identity, other)


def test_sdk_key_file_is_encrypted_and_removed(issuing_ca: CertificateAuthority):
    identity = ids.create_identity(issuing_ca, days=1)
    with ids.sdk_key_file(identity.key) as (path, passphrase):
        data = Path(path).read_bytes()
        assert data.startswith(pem_begin("ENCRYPTED PRIVATE KEY"))
        assert os.stat(path).st_mode & 0o077 == 0
        key = serialization.load_pem_private_key(data, passphrase.encode())
        assert key.private_numbers() == identity.key.private_numbers()
    assert not Path(path).exists() and not Path(path).parent.exists()


def test_chain_must_match_keyring_key(tmp_path, issuing_ca: CertificateAuthority):
    identity = ids.create_identity(issuing_ca, days=1)
    persister = Persister()
    files = StateFiles(DataLayout(tmp_path), persister)
    files.write_chain(identity.chain_pem())
    chain = files.read_chain()
    assert ids.match_chain(chain, identity.registration_id, identity.key).leaf == identity.leaf
    other = ids.create_identity(issuing_ca, days=1)
    with pytest.raises(ids.IdentityError, match="does not match"):
        ids.match_chain(chain, identity.registration_id, other.key)
    with pytest.raises(ids.IdentityError, match="another registration id"):
        ids.match_chain(chain, other.registration_id, identity.key)
    persister.close()  # the durable copy is written, too
    files.chain_file.unlink()
    with pytest.raises(StateCorrupt, match="missing or unreadable"):
        files.read_chain()


def test_broken_issuer_bundle_is_one_clear_line(tmp_path):
    with pytest.raises(ids.IdentityError, match="issuer bundle") as info:
        ids.load_issuer(tmp_path / "missing.pem")
    assert "\n" not in str(info.value)


def test_keyring_round_trip_and_lock(keyring_env, issuing_ca: CertificateAuthority):
    identity = ids.create_identity(issuing_ca, days=1)
    keystore.store_key(identity.registration_id, identity.key)
    assert keystore.backend_name().startswith("keyring.backends.SecretService")
    loaded = keystore.load_key(identity.registration_id)
    assert loaded.private_numbers() == identity.key.private_numbers()
    keyring_env.lock()
    try:
        with pytest.raises(keystore.KeyringUnavailable, match="locked"):
            keystore.load_key(identity.registration_id)
    finally:
        keyring_env.unlock()
    keystore.delete_key(identity.registration_id)
    with pytest.raises(keystore.KeyMissing):
        keystore.load_key(identity.registration_id)
    keystore.delete_key(identity.registration_id)  # idempotent


def test_retry_finds_a_keyring_started_after_launch(secret_service, monkeypatch):
    """keyring lists backends once per process: a launch without a Secret Service must not stay blind."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    keystore.redetect_backend()
    with pytest.raises(keystore.KeyringUnavailable, match="No secure system keyring"):
        keystore.check_backend()
    for name, value in secret_service.env.items():  # the user starts GNOME Keyring, then presses Retry
        monkeypatch.setenv(name, value)
    keystore.check_backend()
    assert keystore.backend_name().startswith("keyring.backends.SecretService")
