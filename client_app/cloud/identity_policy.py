"""Who may present a registration ID (issue 13): clientAuth EKU, self-certifying IDs, the key pinned at the
first registration (trust on first use). Pure rules over certificates; Enrollments stores the policy and pins.

Threat model and Azure comparison: docs/pki.md ("Identity takeover").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client_app.cloud.errors import bad_request
from client_app.pki import certifies_own_key, key_id


@dataclass(frozen=True)
class IdentityPolicy:
    """Per enrollment group; a local-cloud extension (Azure has no such fields: there the custom allocation
    webhook, client_app/allocation_webhook.py, applies the same rules)."""

    require_self_certifying_id: bool = False  # CN must be pki.self_certifying_id(leaf key)
    allow_key_change: bool = False  # re-registration of a known ID with another key (off = TOFU)

    def to_json(self) -> dict[str, bool]:
        return {
            "requireSelfCertifyingId": self.require_self_certifying_id,
            "allowKeyChange": self.allow_key_change,
        }

    @classmethod
    def from_json(cls, raw: Any) -> IdentityPolicy:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or not all(isinstance(v, bool) for v in raw.values()):
            raise bad_request("identityPolicy must be an object of booleans", 400001)
        unknown = set(raw) - {"requireSelfCertifyingId", "allowKeyChange"}
        if unknown:
            raise bad_request(f"identityPolicy: unknown field(s) {sorted(unknown)}", 400001)
        return cls(raw.get("requireSelfCertifyingId", False), raw.get("allowKeyChange", False))


def client_auth_refusal(leaf: x509.Certificate) -> str | None:
    """A device credential must say it is one: the clientAuth EKU (RFC 5280 §4.2.1.12, id-kp-clientAuth).

    Azure DPS requires it ("extendedKeyUsage = clientAuth was required", Azure/azure-iot-sdk-c#1519), even
    though RFC 5280 lets a certificate without EKU serve any purpose; so the DPS proof-of-possession
    certificate, which carries no EKU, never provisions or connects as a device.
    """
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "Invalid certificate: no extended key usage; a device certificate needs clientAuth"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return "Invalid certificate: the extended key usage does not include clientAuth"
    return None


def identity_refusal(
    policy: IdentityPolicy, registration_id: str, leaf: x509.Certificate, pinned_key: str | None
) -> str | None:
    """Why this leaf may not act as `registration_id`, or None. `pinned_key` is the key_id the ID first
    registered with (None: never registered)."""
    key = key_id(leaf.public_key())
    if pinned_key is not None and pinned_key != key and not policy.allow_key_change:
        return (
            f"registration ID '{registration_id}' is registered with another key; the enrollment does not"
            " allow a key change"
        )
    # An ID already registered with this very key is an install from before the policy (e.g. "ca-<hex>"):
    # it keeps working until it renews (renewal moves it to a self-certifying ID, docs/device.md).
    if policy.require_self_certifying_id and not certifies_own_key(leaf) and pinned_key != key:
        return f"certificate CN '{_cn(leaf)}' is not the self-certifying ID of the certificate's key"
    return None


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""
