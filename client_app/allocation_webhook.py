"""DPS custom allocation webhook that refuses identity takeover on Azure (issue 13, docs/pki.md).

Azure DPS POSTs an AllocationRequest for every registration through an enrollment with
`allocationPolicy: "custom"` and assigns the device only on a 2xx AllocationResponse `{iotHubHostName}`
naming one of `linkedHubs` (learn.microsoft.com/azure/iot-dps/concepts-custom-allocation). A refusal here
leaves the hub's device record, bound to the victim's thumbprint, untouched.

DPS passes certificate details in `deviceRuntimeContext.x509` (thumbprints) but not the certificate, so
the device sends its leaf in the registration payload (pki.registration_payload); this webhook accepts it
only if (1) its thumbprint is one DPS authenticated in the TLS handshake, (2) its CN is the registration
ID and (3) that ID is the self-certifying ID of the leaf's own key. Anything missing refuses (fail closed).

ASGI app: `client_app.allocation_webhook:app` (POST /api/allocate); Azure Functions wrapper:
deploy/allocation-webhook/function_app.py.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from client_app.pki import certifies_own_key, sha1_thumbprint, sha256_thumbprint
from client_app.pki.names import PAYLOAD_CERTIFICATE

log = logging.getLogger("client_app.allocation_webhook")

ROUTE = "/api/allocate"
_THUMBPRINT_FIELDS = ("sha1Thumbprint", "sha256Thumbprint")


class Refused(Exception):
    """The registration must not be assigned; the message says why (one line)."""


def decide(request: Any) -> dict[str, Any]:
    """AllocationResponse for an AllocationRequest, or Refused."""
    if not isinstance(request, dict):
        raise Refused("the request body is not an AllocationRequest object")
    context = request.get("deviceRuntimeContext")
    linked = request.get("linkedHubs")
    if not isinstance(context, dict) or not isinstance(context.get("registrationId"), str):
        raise Refused("deviceRuntimeContext.registrationId is missing")
    if not isinstance(linked, list) or not linked or not all(isinstance(h, str) for h in linked):
        raise Refused("linkedHubs is missing")
    registration_id: str = context["registrationId"]
    leaf = _payload_certificate(context.get("payload"))
    authenticated = {t.replace(":", "").upper() for t in _thumbprints(context.get("x509"))}
    if not authenticated:
        raise Refused("DPS passed no certificate thumbprint: the payload certificate cannot be bound")
    if not {sha1_thumbprint(leaf), sha256_thumbprint(leaf)} & authenticated:
        raise Refused("the payload certificate is not the certificate the device authenticated with")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or str(names[0].value).lower() != registration_id.lower():
        raise Refused(f"the certificate's CN is not the registration ID {registration_id!r}")
    if not certifies_own_key(leaf):
        raise Refused(f"{registration_id!r} is not the self-certifying ID of the certificate's key")
    return {"iotHubHostName": _hub_for(registration_id, context.get("currentIotHubHostName"), linked)}


def _payload_certificate(payload: Any) -> x509.Certificate:
    pem = payload.get(PAYLOAD_CERTIFICATE) if isinstance(payload, dict) else None
    if not isinstance(pem, str):
        raise Refused(f"the registration payload carries no {PAYLOAD_CERTIFICATE}")
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError as exc:  # UnicodeEncodeError is a ValueError
        raise Refused(f"the registration payload's {PAYLOAD_CERTIFICATE} is not a PEM certificate") from exc


def _thumbprints(node: Any) -> Iterator[str]:
    """Every sha1Thumbprint/sha256Thumbprint under deviceRuntimeContext.x509, wherever DPS nests them
    (Azure documents the object only as "certificate details")."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name in _THUMBPRINT_FIELDS and isinstance(value, str):
                yield value
            else:
                yield from _thumbprints(value)
    elif isinstance(node, list):
        for item in node:
            yield from _thumbprints(item)


def _hub_for(registration_id: str, current: Any, linked: list[str]) -> str:
    """Stay on the current hub if it is still linked, else a stable hash over the linked hubs."""
    if current in linked:
        return str(current)
    digest = hashlib.sha256(registration_id.lower().encode()).digest()
    hubs = sorted(linked)
    return hubs[int.from_bytes(digest[:8], "big") % len(hubs)]


async def allocate(request: Request) -> JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"message": "the request body is not JSON"}, status_code=400)
    try:
        answer = decide(body)
    except Refused as exc:
        log.warning("allocation refused: %s", exc)
        return JSONResponse({"message": str(exc)}, status_code=403)  # any non-2xx makes DPS refuse
    log.info("allocated %s to %s", body["deviceRuntimeContext"]["registrationId"], answer["iotHubHostName"])
    return JSONResponse(answer)


app = Starlette(routes=[Route(ROUTE, allocate, methods=["POST"])])
