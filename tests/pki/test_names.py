import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from client_app.pki import (
    SELF_CERTIFYING_PREFIX,
    CertificateAuthority,
    KeyType,
    PkiError,
    certifies_own_key,
    generate_key,
    key_id,
    self_certifying_id,
    validate_registration_id,
)


@pytest.mark.parametrize(
    "registration_id",
    ["a", "device-1", "Device-01", "a.b_c:d-", "x" * 64, "0", "ns:dev.42"],
)
def test_accepts_dps_registration_ids(registration_id: str) -> None:
    assert validate_registration_id(registration_id) == registration_id


@pytest.mark.parametrize(
    "registration_id",
    ["", "x" * 65, "dev.", "dev_", "dev:", "dev 1", "dev/1", "dev@home", "dévice", "dev\n", "a,b"],
)
def test_rejects_invalid_registration_ids(registration_id: str) -> None:
    with pytest.raises(PkiError, match="invalid registration id"):
        validate_registration_id(registration_id)


ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:")


@given(st.text(max_size=80))
def test_accepts_exactly_the_dps_alphabet(candidate: str) -> None:
    valid = 1 <= len(candidate) <= 64 and set(candidate) <= ALLOWED and candidate[-1] not in "._:"
    try:
        validate_registration_id(candidate)
    except PkiError:
        assert not valid
    else:
        assert valid


# ---- self-certifying registration ids ---------------------------------------------------------------


@pytest.mark.parametrize("key_type", list(KeyType))
def test_self_certifying_id_is_a_lower_case_dps_id_derived_from_the_key(key_type: KeyType) -> None:
    key = generate_key(key_type).public_key()
    registration_id = self_certifying_id(key)
    assert validate_registration_id(registration_id) == registration_id
    assert registration_id == registration_id.lower()
    assert registration_id.startswith(SELF_CERTIFYING_PREFIX)
    assert len(registration_id) == len(SELF_CERTIFYING_PREFIX) + 52  # 256 bits of base32, no padding
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = base64.b32decode(registration_id[3:].upper() + "====")
    assert digest == hashlib.sha256(spki).digest()  # independent recomputation
    assert self_certifying_id(key) == registration_id  # deterministic
    assert key_id(key) == hashlib.sha256(spki).hexdigest()


def test_only_the_key_holder_can_present_a_self_certifying_id(issuing: CertificateAuthority) -> None:
    victim = generate_key().public_key()
    attacker = generate_key().public_key()
    victim_id = self_certifying_id(victim)
    assert certifies_own_key(issuing.issue_device(victim_id, victim))
    assert certifies_own_key(issuing.issue_device(victim_id.upper(), victim))  # ids are case-insensitive
    assert not certifies_own_key(issuing.issue_device(victim_id, attacker))  # the takeover certificate
    assert not certifies_own_key(issuing.issue_device("ca-0123456789abcdef0123", victim))  # old-style id


def test_self_certifying_id_refuses_what_is_not_a_key() -> None:
    with pytest.raises(PkiError, match="not a public key"):
        self_certifying_id("k1-abc")
