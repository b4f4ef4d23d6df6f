"""Revoke one release: refuse its intermediate at DPS and disable its devices at the hub, locally or on Azure.

The seed: "If it should become necessary to revoke the intermediate, only a subset of device certificates will
stop functioning". DPS lets the enrollment group closest to the leaf decide (an individual enrollment still
comes first; Azure docs "How to disenroll or revoke a device", "disallow an X.509 intermediate or root CA
certificate"), so a disabled group whose signing certificate is the intermediate refuses that release while
the other releases under the same root still provision. The group carries the intermediate itself
(`signingCertificates`), so only the DPS service API is needed: a DPS connection string, no ARM access. A
caReferences group on the intermediate (as the former revoke-signer made) is found through ARM when the client
has it, and disabled in its place; DPS would refuse a second group on the same certificate.
Devices already in the hub are found by the issuer thumbprint the device core reports
(`properties.reported.issuer_thumbprint`) and disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from client_app.cloud.service.client import ServiceClient, ServiceError
from client_app.pki import certificate_to_pem, sha1_thumbprint, sha256_thumbprint


@dataclass
class Revocation:
    certificate: str  # the intermediate: subject and SHA-256 thumbprint
    group_id: str
    group_created: bool
    disabled: list[str] = field(default_factory=list)  # hub devices disabled now
    already_disabled: list[str] = field(default_factory=list)
    left: int = 0  # hub devices still enabled (other releases)

    def lines(self) -> list[str]:
        how = "created disabled" if self.group_created else "disabled"
        return [
            f"enrollment group {self.group_id} on signing certificate {self.certificate}: {how}",
            f"devices disabled: {len(self.disabled)}"
            + (f" ({', '.join(self.disabled)})" if self.disabled else ""),
            f"devices already disabled: {len(self.already_disabled)}",
            f"devices left enabled: {self.left}",
        ]


def revoke_signer(client: ServiceClient, signer: x509.Certificate) -> Revocation:
    sha256 = sha256_thumbprint(signer)
    described = f"{signer.subject.rfc4514_string()} (SHA-256 {sha256})"
    groups = client.groups()
    group = next((g for g in groups if sha256 in _signing_thumbprints(g)), None)
    group = group or _ca_reference_group(client, groups, signer)
    if group is None:
        group_id = f"revoked-{sha256[:16].lower()}"
        try:
            client.create_group(group_id, enabled=False, signing_certificate=certificate_to_pem(signer))
        except ServiceError as exc:
            if exc.status != 409:
                raise
            # DPS holds a certificate in one enrollment only: a caReferences group has it, and without ARM
            # access there is no telling which (its certificate is known by name only).
            raise ValueError(
                f"{exc.message}: a group references this certificate by its DPS certificate name; disable"
                " that group (`enrollment-groups disable GROUP_ID`) or run revoke-signer with ARM access"
            ) from exc
        revocation = Revocation(described, group_id, True)
    else:
        if group["provisioningStatus"] != "disabled":
            client.set_group_status(group["enrollmentGroupId"], False)
        revocation = Revocation(described, group["enrollmentGroupId"], False)
    for twin in client.query(
        f"SELECT * FROM devices WHERE properties.reported.issuer_thumbprint = '{sha256}'"
    ):
        if twin.get("status") == "disabled":
            revocation.already_disabled.append(twin["deviceId"])
        else:
            client.set_device_status(twin["deviceId"], False)
            revocation.disabled.append(twin["deviceId"])
    counted = client.query("SELECT COUNT() AS n FROM devices WHERE status = 'enabled'")
    revocation.left = int(counted[0]["n"]) if counted else 0
    return revocation


def _ca_reference_group(
    client: ServiceClient, groups: list[dict[str, Any]], signer: x509.Certificate
) -> dict[str, Any] | None:
    """The group whose caReferences name the signer's DPS certificate (as the former revoke-signer made),
    when ARM certificate access tells the names; ARM gives a certificate's SHA-1 or SHA-256 thumbprint."""
    if client.certificates is None:
        return None
    thumbprints = {sha1_thumbprint(signer), sha256_thumbprint(signer)}
    names = {
        c.name for c in client.certificates.list() if (c.properties.thumbprint or "").upper() in thumbprints
    }
    return next((g for g in groups if _ca_reference(g) in names), None)


def _ca_reference(group: dict[str, Any]) -> str | None:
    references = (group.get("attestation", {}).get("x509") or {}).get("caReferences") or {}
    return references.get("primary")


def _signing_thumbprints(group: dict[str, Any]) -> set[str]:
    """SHA-256 thumbprints of a group's signing certificates, from the `info` DPS returns for them."""
    entries = (group.get("attestation", {}).get("x509") or {}).get("signingCertificates") or {}
    infos = [(entry or {}).get("info") or {} for entry in entries.values()]
    return {str(info.get("sha256Thumbprint", "")).upper() for info in infos} - {""}
