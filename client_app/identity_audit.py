"""Backend check for identity takeover on Azure's hub (issue 13, docs/pki.md "What remains on Azure").

The hub authenticates a DPS-provisioned device by the thumbprint DPS registered; it never checks that the
certificate behind that thumbprint is self-certifying. Every device of this app reports its leaf in the twin
(reported property `certificate`), so a backend can check, per twin (a twin query `SELECT * FROM devices`,
or one device):

* the device is thumbprint-authenticated ("selfSigned"), not CA-authenticated (then any certificate with
  this CN from the CA would do, whatever DPS decided);
* the reported certificate is the one the hub authenticates (its thumbprint is registered);
* its CN is the device ID and the self-certifying ID of its own key.

An attacker connected with a takeover certificate can report only its own certificate (it fails the last
rule) or someone else's (it fails the second), or none.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from client_app.pki import certifies_own_key, sha1_thumbprint, sha256_thumbprint

REPORTED_CERTIFICATE = "certificate"


def audit_twin(twin: dict[str, Any], device: dict[str, Any] | None = None) -> list[str]:
    """Problems with one device (empty = its identity holds). `twin` as the service API returns it; the
    authentication fields come from the twin (Azure) or from `device` (the registry's device identity)."""
    device_id = str(twin.get("deviceId", ""))
    authentication = (device or {}).get("authentication") or {}
    auth_type = twin.get("authenticationType", authentication.get("type"))
    thumbprints = twin.get("x509Thumbprint") or authentication.get("x509Thumbprint") or {}
    problems = []
    if auth_type != "selfSigned":
        problems.append(f"authentication {auth_type!r}: the hub does not pin the device to one certificate")
    pem = ((twin.get("properties") or {}).get("reported") or {}).get(REPORTED_CERTIFICATE)
    try:
        leaf = x509.load_pem_x509_certificate(pem.encode("ascii")) if isinstance(pem, str) else None
    except ValueError:
        leaf = None
    if leaf is None:
        return [*problems, "the device reports no readable certificate"]
    registered = {str(t).replace(":", "").upper() for t in thumbprints.values() if t}
    if not {sha1_thumbprint(leaf), sha256_thumbprint(leaf)} & registered:
        problems.append("the reported certificate is not the one the hub authenticates this device with")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or str(names[0].value).lower() != device_id.lower():
        problems.append("the reported certificate's CN is not the device ID")
    if not certifies_own_key(leaf):
        problems.append("the device ID is not the self-certifying ID of the certificate's key")
    return problems
