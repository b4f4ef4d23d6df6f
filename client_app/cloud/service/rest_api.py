"""Azure's service REST APIs on the local cloud: IoT Hub (2021-04-12) and DPS (2021-10-01), SAS-authorized.

Paths, verbs, bodies, headers, status and error codes follow what Azure's service SDKs send and parse:
azure-iot-hub 2.7 (`azure/iot/hub/protocol/operations/*.py`), azure-iothub 1.16 and
azure-iot-provisioning-service 1.11 for Node (`provisioningserviceclient.ts`, azure-iot-http-base
`rest_api_client.ts`), and azure-rest-api-specs `iothub.json` / `service.json`. The logic lives in hub.py and
enrollment.py; this module only authorizes, decodes, pages and shapes errors. Where we differ from Azure is
listed in docs/local-cloud.md ("Service API").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.x509 import Certificate
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from client_app.cloud.dps.enrollment import (
    EnrollmentGroup,
    Enrollments,
    GroupOptions,
    IndividualEnrollment,
    client_certificates_from_json,
    signing_certificates_from_json,
)
from client_app.cloud.errors import CloudError, bad_request
from client_app.cloud.hub.hub import Hub
from client_app.cloud.hub.twin_query import QueryError, parse
from client_app.cloud.sas import AccessPolicy, SasError, verify_token

log = logging.getLogger("client_app.cloud.service.rest_api")

DEFAULT_PAGE = 100  # IoT Hub and DPS answer 100 items per page unless x-ms-max-item-count says otherwise
MAX_PAGE = 1000
MIN_METHOD_TIMEOUT, MAX_METHOD_TIMEOUT = (
    5,
    300,
)  # responseTimeoutInSeconds bounds (IoT Hub direct methods doc)
MAX_CONNECT_TIMEOUT = 300
DPS_PREFIXES = ("/enrollmentGroups", "/enrollments", "/registrations")

# IoT Hub error names for our numeric codes, as the `iothub-errorcode` header and the `ErrorCode:` prefix of
# `Message` carry them ("Understand and resolve Azure IoT Hub errors"; azure-iot-http-base parseErrorBody
# reads `Message` as "ErrorCode:<name>;<text>", and maps 404 + DeviceNotFound to DeviceNotFoundError).
_ERROR_NAMES = {
    401003: "IotHubUnauthorizedAccess",
    403002: "IotHubQuotaExceeded",
    403004: "DeviceMaximumQueueDepthExceeded",
    404001: "DeviceNotFound",
    404103: "DeviceNotOnline",
    409001: "DeviceAlreadyExists",
    412002: "PreconditionFailed",
    413001: "MessageTooLarge",
    504101: "GatewayTimeout",
}
_STATUS_NAMES = {400: "ArgumentInvalid", 401: "IotHubUnauthorizedAccess", 403: "Forbidden", 404: "NotFound",
                 405: "MethodNotAllowed", 409: "Conflict", 412: "PreconditionFailed", 413: "MessageTooLarge",
                 415: "UnsupportedMediaType", 503: "ServiceUnavailable"}  # fmt: skip

Handler = Callable[..., Awaitable[Any]]


def error_response(path: str, exc: CloudError) -> JSONResponse:
    """Azure's error body: IoT Hub's `Message`/`ExceptionMessage` pair, or DPS's errorCode/trackingId."""
    tracking = uuid.uuid4().hex
    now = datetime.now(UTC)
    if path.startswith("/subscriptions/"):  # ARM (arm_api.py): DPS's ErrorDetails + ARM's error object
        name = _STATUS_NAMES.get(exc.status, "Error")
        body = {"code": exc.error_code, "httpStatusCode": name, "message": exc.message,
                "error": {"code": name, "message": exc.message}}  # fmt: skip
        return JSONResponse(body, exc.status)
    if path.startswith(DPS_PREFIXES):  # DPS service API: ProvisioningServiceErrorDetails
        body: dict[str, Any] = {"errorCode": exc.error_code, "trackingId": tracking, "message": exc.message,
                                "timestampUtc": now.isoformat().replace("+00:00", "Z")}  # fmt: skip
        return JSONResponse(body, exc.status)
    name = _ERROR_NAMES.get(exc.error_code) or _STATUS_NAMES.get(exc.status, "ServerError")
    body = {
        "Message": f"ErrorCode:{name};{exc.message}",
        "ExceptionMessage": f"Tracking ID:{tracking}-G:0-TimeStamp:{now:%m/%d/%Y %H:%M:%S}",
        "errorCode": exc.error_code,
    }
    return JSONResponse(body, exc.status, headers={"iothub-errorcode": name})


class ServiceAuth:
    """SAS check per route: the token must name a policy of this service that holds one of the rights."""

    def __init__(
        self, audience: str, hub: Mapping[str, AccessPolicy], dps: Mapping[str, AccessPolicy]
    ) -> None:
        self.audience = audience
        self.hub = hub
        self.dps = dps

    def check(self, request: Request, policies: Mapping[str, AccessPolicy], rights: tuple[str, ...]) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise CloudError(401, 401003, "Unauthorized: no Authorization header (a SharedAccessSignature)")
        reason = "no right"
        for right in rights:
            try:
                verify_token(header, policies, self.audience, right)
                return
            except SasError as exc:
                reason = exc.reason
                if "lacks the" not in reason:
                    break  # the token itself is bad: no other right will help
        raise CloudError(401, 401003, f"Unauthorized: {reason}")


def create_service_app(
    hub: Hub,
    enrollments: Enrollments,
    auth: ServiceAuth,
    *,
    middleware: list[Any] | None = None,
) -> FastAPI:
    app = FastAPI(title="client-app-cloud service API (IoT Hub + DPS)", docs_url=None, redoc_url=None,
                  openapi_url=None, redirect_slashes=False)  # fmt: skip
    _install_errors(app)
    _hub_routes(app, hub, auth)
    _dps_routes(app, enrollments, auth)
    for cls in middleware or []:
        app.add_middleware(cls)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(CloudError)
    async def cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        log.warning("service %s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(request.url.path, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        log.warning("service %s %s -> %d", request.method, request.url.path, exc.status_code)
        return error_response(request.url.path, CloudError(exc.status_code, exc.status_code * 1000,
                                                           str(exc.detail)))  # fmt: skip


async def json_body(request: Request, *, required: bool = True) -> Any:
    """The body as JSON; malformed JSON, lone surrogates or nesting too deep for the parser are a 400."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise bad_request("the request needs a JSON body", 400004)
        return None
    try:
        value = json.loads(raw)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a "\ud800" escape parses but cannot be stored
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON ({str(exc)[:120]})", 400004) from None
    except UnicodeEncodeError:
        raise bad_request(
            "the body holds text that is not valid Unicode (a lone surrogate)", 400004
        ) from None
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object", 400004)
    return value


async def _named_body(request: Request, key: str, name: str) -> dict[str, Any]:
    """A PUT body (a JSON object) whose `key`, if present, names the same entity as the path."""
    body = _object(await json_body(request), "the body")
    if body.get(key, name) != name:
        raise bad_request(f"{key} in the body differs from the one in the path", 400004)
    return body


def _if_match(request: Request, body: Mapping[str, Any] | None = None) -> str | None:
    header = request.headers.get("if-match")
    if header is not None:
        return header
    etag = body.get("etag") if body else None
    return etag if isinstance(etag, str) and etag else None


def paged(request: Request, items: list[Any], item_type: str) -> JSONResponse:
    """One page and the continuation token for the next (`x-ms-max-item-count`, `x-ms-continuation`)."""
    size_header = request.headers.get("x-ms-max-item-count")
    try:
        size = DEFAULT_PAGE if size_header is None else int(size_header)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE:
        raise bad_request(f"x-ms-max-item-count must be 1..{MAX_PAGE}", 400004)
    token = request.headers.get("x-ms-continuation")
    offset = 0
    if token:
        try:
            offset = int(json.loads(base64.b64decode(token, validate=True))["offset"])
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise bad_request("x-ms-continuation is not a token this service issued", 400004) from None
    page = items[offset : offset + size]
    headers = {"x-ms-item-type": item_type}
    if offset + size < len(items):
        headers["x-ms-continuation"] = base64.b64encode(
            json.dumps({"offset": offset + size}).encode()
        ).decode()
    return JSONResponse(page, headers=headers)


# ---- IoT Hub ---------------------------------------------------------------------------------------------
def _hub_routes(app: FastAPI, hub: Hub, auth: ServiceAuth) -> None:
    # Rights (Azure docs "Control access to IoT Hub"): RegistryRead/RegistryWrite for identities,
    # ServiceConnect for twins, methods and the C2D queue; a twin read or query is also allowed with
    # RegistryRead, a twin write with RegistryWrite (both hold the identity registry the twins belong to).
    def need(*rights: str) -> Callable[[Request], None]:
        return lambda request: auth.check(request, auth.hub, rights)

    read, write = need("RegistryRead"), need("RegistryWrite")
    twin_read, twin_write = need("ServiceConnect", "RegistryRead"), need("ServiceConnect", "RegistryWrite")
    service = need("ServiceConnect")

    @app.get("/devices")
    @app.get("/devices/")  # azure-iothub's Registry.list asks for devicePath('') = "/devices/"
    async def list_devices(request: Request, top: int | None = None) -> Any:
        read(request)
        devices = hub.devices()
        return devices[: max(0, min(top, MAX_PAGE))] if top is not None else devices[:MAX_PAGE]

    @app.post("/devices/query")
    async def query(request: Request) -> Any:
        twin_read(request)
        body = _object(await json_body(request), "the query body")
        text = body.get("query")
        if not isinstance(text, str) or not text.strip():
            raise bad_request('the body needs a query string: {"query": "SELECT * FROM devices"}', 400004)
        try:
            parsed = parse(text)
        except QueryError as exc:
            raise bad_request(f"query: {exc}", 400004) from None
        return paged(request, hub.query(parsed), parsed.item_type)

    @app.get("/devices/{device_id}")
    async def get_device(request: Request, device_id: str) -> Any:
        read(request)
        return hub.device(device_id)

    @app.put("/devices/{device_id}")
    async def put_device(request: Request, device_id: str) -> Any:
        write(request)
        body = await _named_body(request, "deviceId", device_id)
        status = body.get("status", "enabled")
        if status not in ("enabled", "disabled"):
            raise bad_request("status must be enabled or disabled", 400004)
        if_match = _if_match(request, body)
        if if_match is None:  # create; replacing is explicit (If-Match or an etag in the body)
            return hub.create_device(device_id, _thumbprint(body), enabled=status == "enabled")
        hub.check_device_etag(device_id, if_match)
        return hub.set_enabled(device_id, status == "enabled")

    @app.delete("/devices/{device_id}", status_code=204)
    async def delete_device(request: Request, device_id: str) -> Response:
        write(request)
        hub.check_device_etag(device_id, request.headers.get("if-match"))
        hub.delete(device_id)
        return Response(status_code=204)

    @app.delete("/devices/{device_id}/commands")
    async def purge(request: Request, device_id: str) -> Any:
        service(request)
        return hub.purge_c2d(device_id)

    @app.get("/statistics/devices")
    async def device_statistics(request: Request) -> Any:
        read(request)
        return hub.statistics()

    @app.get("/statistics/service")
    async def service_statistics(request: Request) -> Any:
        service(request)
        return {"connectedDeviceCount": hub.connected_count()}

    @app.get("/twins/{device_id}")
    async def get_twin(request: Request, device_id: str) -> Any:
        twin_read(request)
        return hub.twin(device_id)

    async def update_twin(request: Request, device_id: str, *, replace: bool) -> Any:
        twin_write(request)
        body = _object(await json_body(request), "the twin")
        tags = body.get("tags")
        properties = body.get("properties") or {}
        desired = properties.get("desired") if isinstance(properties, dict) else None
        for name, value in (("tags", tags), ("properties.desired", desired)):
            if value is not None and not isinstance(value, dict):
                raise bad_request(f"{name} must be a JSON object", 400004)
        if isinstance(properties, dict) and properties.get("reported"):
            raise bad_request("reported properties are the device's: the service cannot write them", 400004)
        return hub.update_twin(device_id, tags, desired, if_match=_if_match(request), replace=replace)

    @app.patch("/twins/{device_id}")
    async def patch_twin(request: Request, device_id: str) -> Any:
        return await update_twin(request, device_id, replace=False)

    @app.put("/twins/{device_id}")
    async def replace_twin(request: Request, device_id: str) -> Any:
        return await update_twin(request, device_id, replace=True)

    @app.post("/twins/{device_id}/methods")
    async def invoke(request: Request, device_id: str) -> Any:
        service(request)
        body = _object(await json_body(request), "the method call")
        name = body.get("methodName")
        if not isinstance(name, str) or not 1 <= len(name) <= 256:
            raise bad_request("methodName must be a string of 1..256 characters", 400004)
        response_timeout = _seconds(
            body, "responseTimeoutInSeconds", 30, MIN_METHOD_TIMEOUT, MAX_METHOD_TIMEOUT
        )
        connect_timeout = _seconds(body, "connectTimeoutInSeconds", 0, 0, MAX_CONNECT_TIMEOUT)
        await _wait_online(hub, device_id, connect_timeout)
        status, payload = await hub.invoke(device_id, name, body.get("payload"), response_timeout)
        return {"status": status, "payload": payload}


def _thumbprint(body: Mapping[str, Any]) -> str:
    authentication = body.get("authentication") or {}
    kind = authentication.get("type") if isinstance(authentication, dict) else None
    thumbprints = authentication.get("x509Thumbprint") or {} if isinstance(authentication, dict) else {}
    primary = thumbprints.get("primaryThumbprint") if isinstance(thumbprints, dict) else None
    if kind != "selfSigned" or not isinstance(primary, str) or not primary:
        raise bad_request(
            "only X.509 thumbprint identities can be created here (authentication.type selfSigned with "
            "x509Thumbprint.primaryThumbprint); CA-authenticated devices are created by DPS registration",
            400004,
        )
    return primary.replace(":", "").lower()


def _seconds(body: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"{key} must be a number of seconds in {low}..{high}", 400004)
    return float(value)


async def _wait_online(hub: Hub, device_id: str, connect_timeout: float) -> None:
    """connectTimeoutInSeconds: how long IoT Hub waits for a disconnected device to connect before 404103."""
    deadline = time.monotonic() + connect_timeout
    while not hub.listening_for_methods(device_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


# ---- DPS -------------------------------------------------------------------------------------------------
def _dps_routes(app: FastAPI, enrollments: Enrollments, auth: ServiceAuth) -> None:
    # Rights (Azure docs "Control access to DPS with shared access signatures").
    def need(right: str) -> Callable[[Request], None]:
        return lambda request: auth.check(request, auth.dps, (right,))

    read, write = need("EnrollmentRead"), need("EnrollmentWrite")
    status_read, status_write = need("RegistrationStatusRead"), need("RegistrationStatusWrite")

    @app.post("/enrollmentGroups/query")
    async def query_groups(request: Request) -> Any:
        read(request)
        await _query_spec(request)
        return paged(request, [g.to_json() for g in enrollments.groups()], "enrollmentGroup")

    @app.get("/enrollmentGroups/{group_id}")
    async def get_group(request: Request, group_id: str) -> Any:
        read(request)
        return enrollments.group(group_id).to_json()

    @app.put("/enrollmentGroups/{group_id}")
    async def put_group(request: Request, group_id: str) -> Any:
        write(request)
        body = await _named_body(request, "enrollmentGroupId", group_id)
        initial_twin = body.get("initialTwin")
        if initial_twin is not None:
            _object(initial_twin, "initialTwin")
        ca_name, signing = _group_attestation(body, _existing_group(enrollments, group_id))
        if_match = _if_match(request, body)
        return enrollments.put_group(
            group_id,
            ca_name,
            enabled=_provisioning_status(body),
            initial_twin=_initial_twin(initial_twin),
            if_match=if_match,
            create_only=if_match is None,
            # allocationPolicy, customAllocationDefinition, identityPolicy
            options=GroupOptions.from_json(body),
            signing=signing,
        ).to_json()

    @app.delete("/enrollmentGroups/{group_id}", status_code=204)
    async def delete_group(request: Request, group_id: str) -> Response:
        write(request)
        enrollments.delete_group(group_id)
        return Response(status_code=204)

    @app.post("/enrollments/query")
    async def query_enrollments(request: Request) -> Any:
        read(request)
        await _query_spec(request)
        return paged(request, [e.to_json() for e in enrollments.enrollments()], "enrollment")

    @app.get("/enrollments/{registration_id}")
    async def get_enrollment(request: Request, registration_id: str) -> Any:
        read(request)
        return enrollments.enrollment(registration_id).to_json()

    @app.put("/enrollments/{registration_id}")
    async def put_enrollment(request: Request, registration_id: str) -> Any:
        write(request)
        body = await _named_body(request, "registrationId", registration_id)
        client = _client_certificates(body, enrollments.find_enrollment(registration_id))
        return enrollments.put_enrollment(
            registration_id, enabled=_provisioning_status(body), client=client
        ).to_json()

    @app.delete("/enrollments/{registration_id}", status_code=204)
    async def delete_enrollment(request: Request, registration_id: str) -> Response:
        write(request)
        enrollments.delete_enrollment(registration_id)
        return Response(status_code=204)

    @app.post("/registrations/{group_id}/query")
    async def query_registrations(request: Request, group_id: str) -> Any:
        status_read(request)
        enrollments.group(group_id)
        items = [r.to_json() for r in enrollments.registrations(group_id)]
        return paged(request, items, "deviceRegistration")

    @app.get("/registrations/{registration_id}")
    async def get_registration(request: Request, registration_id: str) -> Any:
        status_read(request)
        registration = enrollments.registration(registration_id)
        if registration is None:
            raise CloudError(404, 404202, f"registration {registration_id!r} not found")
        return registration.to_json()

    @app.delete("/registrations/{registration_id}", status_code=204)
    async def delete_registration(request: Request, registration_id: str) -> Response:
        status_write(request)
        enrollments.delete_registration(registration_id)
        return Response(status_code=204)


async def _query_spec(request: Request) -> None:
    body = await json_body(request, required=False)
    text = body.get("query", "*") if isinstance(body, dict) else "*"
    if text != "*":  # the SDKs and the portal send "*"; filters are not part of the DPS service API we serve
        raise bad_request(f'only the query "*" is supported, not {str(text)[:80]!r}', 400004)


def _provisioning_status(body: Mapping[str, Any]) -> bool:
    status = body.get("provisioningStatus", "enabled")
    if status not in ("enabled", "disabled"):
        raise bad_request("provisioningStatus must be enabled or disabled", 400004)
    return status == "enabled"


def _existing_group(enrollments: Enrollments, group_id: str) -> EnrollmentGroup | None:
    try:
        return enrollments.group(group_id)
    except CloudError:
        return None


def _group_attestation(
    body: Mapping[str, Any], existing: EnrollmentGroup | None
) -> tuple[str, list[Certificate]]:
    """(caReferences.primary, []) or ('', signing certificates): a group's X509Attestation (service.json
    2021-10-01), which names a verified CA or carries its own CA certificates (`signingCertificates`)."""
    attestation = body.get("attestation")
    x509 = attestation.get("x509") if isinstance(attestation, dict) else None
    if not isinstance(attestation, dict) or attestation.get("type") != "x509" or not isinstance(x509, dict):
        raise bad_request('attestation must be {"type": "x509", "x509": {...}}', 400004)
    if x509.get("signingCertificates") is not None:
        return "", signing_certificates_from_json(x509["signingCertificates"], existing)
    if x509.get("clientCertificates") is not None:  # C SDK attestation_mechanism.h: "NOT VALID" on a group
        raise bad_request("clientCertificates are for individual enrollments, not enrollment groups", 400004)
    references = x509.get("caReferences")
    primary = references.get("primary") if isinstance(references, dict) else None
    if isinstance(primary, str) and primary:
        return primary, []
    raise bad_request(
        "attestation.x509 needs caReferences.primary or signingCertificates.primary.certificate", 400004
    )


def _client_certificates(body: Mapping[str, Any], existing: IndividualEnrollment | None) -> list[Certificate]:
    """An individual enrollment's X.509 attestation: `clientCertificates` (the device's leaf) or none (ours:
    the enrollment is keyed by registration ID alone); signing certificates and CA references are "NOT VALID
    when attached to an individual enrollment" (azure-iot-sdk-c provisioning_service_client
    attestation_mechanism.h)."""
    attestation = body.get("attestation") or {}
    if not isinstance(attestation, dict) or attestation.get("type") != "x509":
        raise bad_request("only x509 attestation is supported", 400004)
    x509 = attestation.get("x509") or {}
    if not isinstance(x509, dict) or x509.get("signingCertificates") or x509.get("caReferences"):
        raise bad_request(
            "an individual enrollment takes x509.clientCertificates (the device's certificate)", 400004
        )
    entries = x509.get("clientCertificates")
    return client_certificates_from_json(entries, existing) if entries else []


def _initial_twin(twin: dict[str, Any] | None) -> dict[str, Any] | None:
    """DPS's initialTwin `{tags, properties: {desired}}`, reduced to the parts the hub applies."""
    if twin is None:
        return None
    result: dict[str, Any] = {}
    if twin.get("tags") is not None:
        result["tags"] = _object(twin["tags"], "initialTwin.tags")
    properties = twin.get("properties")
    if isinstance(properties, dict) and properties.get("desired") is not None:
        result["properties"] = {"desired": _object(properties["desired"], "initialTwin.properties.desired")}
    return result
