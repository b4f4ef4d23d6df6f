"""DPS custom allocation: call an enrollment group's webhook the way Azure DPS does.

Azure (learn.microsoft.com/azure/iot-dps/concepts-custom-allocation): the enrollment carries
`allocationPolicy: "custom"` and `customAllocationDefinition: {webhookUrl, apiVersion}`; DPS POSTs an
AllocationRequest `{enrollmentGroup | individualEnrollment, deviceRuntimeContext, linkedHubs}` and expects
an AllocationResponse `{iotHubHostName (one of linkedHubs), initialTwin?, payload?}`. The shape of
`deviceRuntimeContext.x509` is not published ("contains certificate details"); we send the certificate
details DPS publishes elsewhere (X509RegistrationResult: certificateInfo = X509CertificateInfo, and
enrollmentGroupId), never the certificate itself. Local differences: loopback IP literals only, a fixed
timeout, and the outcome codes in docs/local-cloud.md.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509

from client_app.cloud.dps.certificates import certificate_info
from client_app.cloud.errors import CloudError, bad_request
from client_app.cloud.hub.limits import check_initial_twin

log = logging.getLogger("client_app.cloud.dps.allocation")

ALLOCATION_POLICIES = ("hashed", "geoLatency", "static", "custom")  # Azure's enum; one hub here
WEBHOOK_TIMEOUT = 10.0  # seconds; Azure documents none
WEBHOOK_REFUSED = 401002  # our code for a refusing or failing webhook (Azure publishes none)


@dataclass(frozen=True)
class CustomAllocation:
    webhook_url: str
    api_version: str

    def to_json(self) -> dict[str, str]:
        return {"webhookUrl": self.webhook_url, "apiVersion": self.api_version}

    @classmethod
    def from_json(cls, raw: Any) -> CustomAllocation:
        if not isinstance(raw, dict) or not isinstance(raw.get("webhookUrl"), str):
            raise bad_request("customAllocationDefinition needs webhookUrl and apiVersion", 400001)
        api_version = raw.get("apiVersion")
        if not isinstance(api_version, str) or not api_version:
            raise bad_request("customAllocationDefinition.apiVersion is required", 400001)
        return cls(_loopback_url(raw["webhookUrl"]), api_version)


def _loopback_url(url: str) -> str:
    """The local cloud dials nothing off the machine and resolves no names: loopback IP literals only."""
    parts = urlsplit(url)
    try:
        loopback = parts.hostname is not None and ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme not in ("http", "https") or not loopback:
        raise bad_request(
            f"webhookUrl {url!r}: the local cloud calls only http(s) URLs on a loopback IP address", 400001
        )
    return url


def allocation_request(
    enrollment_group: dict[str, Any],
    registration_id: str,
    leaf: x509.Certificate,
    payload: Any,
    linked_hubs: list[str],
    previous: tuple[str, str] | None,
) -> dict[str, Any]:
    """AllocationRequest for a device registering through an X.509 enrollment group; `previous` is
    (hub host name, device id) of its last assignment."""
    context: dict[str, Any] = {
        "registrationId": registration_id,
        "x509": {
            "certificateInfo": certificate_info(leaf),
            "enrollmentGroupId": enrollment_group["enrollmentGroupId"],
        },
    }
    if previous is not None:
        context["currentIotHubHostName"], context["currentDeviceId"] = previous
    if payload is not None:
        context["payload"] = payload
    return {"enrollmentGroup": enrollment_group, "deviceRuntimeContext": context, "linkedHubs": linked_hubs}


@dataclass(frozen=True)
class Allocation:
    hub: str
    initial_twin: dict[str, Any] | None
    payload: Any


async def call_webhook(
    definition: CustomAllocation, request: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT
) -> Allocation:
    """POST the AllocationRequest; any failure (transport, timeout, non-2xx, bad body) refuses."""
    registration_id = request["deviceRuntimeContext"]["registrationId"]
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:  # no proxy variables
            response = await client.post(definition.webhook_url, json=request)  # the URL as configured
    except httpx.HTTPError as exc:
        raise _refused(
            registration_id, f"the custom allocation webhook failed: {type(exc).__name__}"
        ) from exc
    if not response.is_success:
        detail = response.text[:200].replace("\n", " ")
        raise _refused(
            registration_id, f"the custom allocation webhook answered {response.status_code}: {detail}"
        )
    try:
        body = response.json()
    except ValueError as exc:
        raise _refused(registration_id, "the custom allocation webhook answered no JSON") from exc
    hub = body.get("iotHubHostName") if isinstance(body, dict) else None
    if hub not in request["linkedHubs"]:
        raise _refused(registration_id, f"the custom allocation webhook chose no linked hub ({hub!r})")
    twin = body.get("initialTwin")
    if twin is not None:
        try:
            check_initial_twin(twin)  # IoT Hub's twin limits, as for a group's initialTwin
        except CloudError as exc:
            raise _refused(
                registration_id, f"the custom allocation webhook's initialTwin: {exc.message}"
            ) from exc
    return Allocation(hub, twin, body.get("payload"))


def _refused(registration_id: str, message: str) -> CloudError:
    log.warning("DPS %s: %s", registration_id, message)
    return CloudError(401, WEBHOOK_REFUSED, message)
