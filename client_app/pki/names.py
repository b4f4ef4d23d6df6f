"""DPS registration-id rules (the registration id is the device leaf's subject CN)."""

import re

from client_app.pki.errors import PkiError

# DPS: letters, digits and "- . _ :", last character alphanumeric or "-"; X.509 caps the CN at 64 (RFC 5280).
_REGISTRATION_ID = re.compile(r"[A-Za-z0-9\-._:]{0,63}[A-Za-z0-9\-]")


def validate_registration_id(registration_id: str) -> str:
    """Return the id unchanged if DPS accepts it as an X.509 registration id, else raise PkiError.

    Upper case is accepted (DPS ids are case-insensitive today) but lower case is recommended:
    older DPS versions rejected upper case.
    """
    if not isinstance(registration_id, str) or not _REGISTRATION_ID.fullmatch(registration_id):
        raise PkiError(
            f"invalid registration id {registration_id!r}: use 1-64 characters from letters, digits and"
            " '-._:', ending in a letter, digit or '-'"
        )
    return registration_id
