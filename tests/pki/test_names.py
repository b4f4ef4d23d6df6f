import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_app.pki import PkiError, validate_registration_id


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
