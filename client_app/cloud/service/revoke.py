"""Revoke one release: refuse its intermediate at DPS and disable its devices at the hub, locally or on Azure.

The seed: "If it should become necessary to revoke the intermediate, only a subset of device certificates will
stop functioning". DPS lets the enrollment group closest to the leaf decide (an individual enrollment still
comes first; Azure docs "How to disenroll or revoke a device", "disallow an X.509 intermediate or root CA
certificate"), so a disabled group on the intermediate refuses that release while the other releases under the
same root still provision. Devices already in the hub are found by the issuer thumbprint the device core
reports (`properties.reported.issuer_thumbprint`) and disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from client_app.cloud.service.client import ServiceClient
from client_app.pki import certificate_to_pem, sha1_thumbprint, sha256_thumbprint


@dataclass
class Revocation:
    certificate: str  # the DPS certificate name of the intermediate
    group_id: str
    group_created: bool
    disabled: list[str] = field(default_factory=list)  # hub devices disabled now
    already_disabled: list[str] = field(default_factory=list)
    left: int = 0  # hub devices still enabled (other releases)

    def lines(self) -> list[str]:
        how = "created disabled" if self.group_created else "disabled"
        return [
            f"enrollment group {self.group_id} on certificate {self.certificate}: {how}",
            f"devices disabled: {len(self.disabled)}"
            + (f" ({', '.join(self.disabled)})" if self.disabled else ""),
            f"devices already disabled: {len(self.already_disabled)}",
            f"devices left enabled: {self.left}",
        ]


def revoke_signer(client: ServiceClient, signer: x509.Certificate) -> Revocation:
    if client.certificates is None:
        raise ValueError("revoking needs DPS certificate access (ARM): pass --subscription, --resource-group "
                         "and --dps-name for Azure")  # fmt: skip
    thumbprints = {sha1_thumbprint(signer), sha256_thumbprint(signer)}
    known = [c for c in client.certificates.list() if (c.properties.thumbprint or "").upper() in thumbprints]
    name = known[0].name if known else f"signer-{sha256_thumbprint(signer)[:16].lower()}"
    if not known:  # uploaded as verified: it only ever backs a disabled group
        client.certificates.upload(name, certificate_to_pem(signer), verified=True)
    group = next((g for g in client.groups() if _ca_of(g) == name), None)
    if group is None:
        group_id = f"revoked-{name}"[:128]
        client.create_group(group_id, name, enabled=False)
        revocation = Revocation(name, group_id, True)
    else:
        if group["provisioningStatus"] != "disabled":
            client.set_group_status(group["enrollmentGroupId"], False)
        revocation = Revocation(name, group["enrollmentGroupId"], False)
    sha256 = sha256_thumbprint(signer)
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


def _ca_of(group: dict) -> str | None:
    references = (group.get("attestation", {}).get("x509") or {}).get("caReferences") or {}
    return references.get("primary")
