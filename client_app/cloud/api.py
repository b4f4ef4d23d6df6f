"""Operator HTTP API (FastAPI), shaped after Azure's DPS and IoT Hub service APIs. Bearer-token protected."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client_app.cloud.certificates import CertificateStore
from client_app.cloud.enrollment import Enrollments, GroupOptions
from client_app.cloud.errors import CloudError, bad_request
from client_app.cloud.hub import Hub

log = logging.getLogger("client_app.cloud.api")

# Uvicorn reads any request body whole into memory; the largest legitimate one (a 128 KB method payload, or a
# 64 KB C2D body written as JSON escapes) stays far below this.
MAX_REQUEST_BODY = 1024 * 1024

Status = Literal["enabled", "disabled"]
IfMatch = Annotated[str | None, Header(alias="If-Match")]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


class CertificateIn(BaseModel):
    certificate: str = Field(description="PEM text of the CA certificate")
    isVerified: bool = Field(
        False, description="true = trust without proof of possession (Azure's auto-verify)"
    )


class VerifyIn(BaseModel):
    certificate: str = Field(
        description="PEM of the proof-of-possession certificate: CN = code, signed by the CA"
    )


class CaReferences(BaseModel):
    primary: str


class X509Attestation(BaseModel):
    caReferences: CaReferences


class Attestation(BaseModel):
    type: Literal["x509"] = "x509"
    x509: X509Attestation


class EnrollmentGroupIn(BaseModel):
    attestation: Attestation
    provisioningStatus: Status = "enabled"
    initialTwin: dict[str, Any] | None = None
    allocationPolicy: str | None = Field(None, description='Azure\'s; "custom" calls the webhook')
    customAllocationDefinition: dict[str, Any] | None = Field(
        None, description="Azure's {webhookUrl, apiVersion}; loopback IP URLs only here"
    )
    identityPolicy: dict[str, bool] | None = Field(
        None, description="local cloud: {requireSelfCertifyingId, allowKeyChange} (docs/pki.md)"
    )


class EnrollmentIn(BaseModel):
    provisioningStatus: Status = "enabled"


class DeviceIn(BaseModel):
    status: Status


def _unicode(value: str) -> str:
    """JSON's "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder (or SQLite) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text with a lone surrogate (not valid Unicode)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class C2DIn(BaseModel):
    body: Text = Field("", description="message body as text (UTF-8)")
    bodyBase64: str | None = Field(None, description="binary body; overrides `body`")
    contentType: Text | None = None
    contentEncoding: Text | None = None
    properties: dict[Text, Text] = Field(default_factory=dict)
    messageId: Text | None = None
    correlationId: Text | None = None
    ttlSeconds: float | None = Field(None, description="default 3600")


class DesiredIn(BaseModel):
    desired: dict[str, Any] = Field(default_factory=dict)


class TwinPatchIn(BaseModel):
    properties: DesiredIn


class MethodIn(BaseModel):
    methodName: str = Field(min_length=1, max_length=256)
    payload: Any = None
    responseTimeoutInSeconds: float = Field(30.0, gt=0, le=300)


def create_app(certificates: CertificateStore, enrollments: Enrollments, hub: Hub, token: str) -> FastAPI:
    app = FastAPI(
        title="client-app-cloud operator API",
        version="1",
        description="Local DPS + IoT Hub. Every route needs `Authorization: Bearer <api_token>`.",
    )

    def authorize(credentials: Credentials) -> None:
        # Bytes: compare_digest raises on a non-ASCII str, and a header may carry any latin-1 text.
        presented = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if credentials is None or not secrets.compare_digest(presented, token.encode()):
            raise CloudError(401, 401001, "missing or wrong API token (Authorization: Bearer <api_token>)")

    router = APIRouter(dependencies=[Depends(authorize)])
    _install_error_handlers(app)
    _certificate_routes(router, certificates)
    _enrollment_routes(router, enrollments)
    _device_routes(router, hub)
    app.include_router(router)
    app.add_middleware(BodyLimit)
    return app


class BodyLimit:
    """Refuse a request body over MAX_REQUEST_BODY (413) before more of it is read; pass the rest on whole.

    `render` shapes the refusal (the service API answers with Azure's error body)."""

    def __init__(self, app: ASGIApp, render: Callable[[str, CloudError], Response] | None = None) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_REQUEST_BODY:
                await self._refuse_large(scope, receive, send)
                return
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _refuse_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = CloudError(413, 413001, f"request body exceeds {MAX_REQUEST_BODY // 1024} KB")
        log.warning("API %s %s -> 413 %s", scope["method"], scope["path"], error.message)
        response = self.render(scope["path"], error) if self.render else JSONResponse(error.to_json(), 413)
        await response(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudError)
    async def cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        log.warning("API %s %s -> %d %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # its loc is a character offset, meaningless as a field name
            reason = first.get("ctx", {}).get("error", "decode error")
            message = f"invalid request: the body is not JSON ({reason})"
        else:
            where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
            message = f"invalid request: {where + ': ' if where else ''}{first.get('msg')}"
        log.warning("API %s %s -> 400 %s", request.method, request.url.path, message)
        return JSONResponse({"errorCode": 400000, "message": message}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"errorCode": exc.status_code * 1000, "message": str(exc.detail)}, exc.status_code
        )


def _certificate_routes(router: APIRouter, certificates: CertificateStore) -> None:
    @router.get("/certificates", tags=["certificates"])
    async def list_certificates() -> dict[str, Any]:
        return {"value": [c.to_json() for c in certificates.list()]}

    @router.get("/certificates/{name}", tags=["certificates"])
    async def get_certificate(name: str) -> dict[str, Any]:
        return certificates.get(name).to_json()

    @router.put("/certificates/{name}", tags=["certificates"])
    async def put_certificate(name: str, body: CertificateIn, if_match: IfMatch = None) -> dict[str, Any]:
        return certificates.upload(
            name, body.certificate, is_verified=body.isVerified, if_match=if_match
        ).to_json()

    @router.post("/certificates/{name}/generateVerificationCode", tags=["certificates"])
    async def generate_code(name: str, if_match: IfMatch = None) -> dict[str, Any]:
        return certificates.generate_verification_code(name, if_match).to_json(include_code=True)

    @router.post("/certificates/{name}/verify", tags=["certificates"])
    async def verify(name: str, body: VerifyIn, if_match: IfMatch = None) -> dict[str, Any]:
        return certificates.verify(name, body.certificate, if_match).to_json()

    @router.delete("/certificates/{name}", status_code=204, tags=["certificates"])
    async def delete_certificate(name: str, if_match: IfMatch = None) -> Response:
        certificates.delete(name, if_match)
        return Response(status_code=204)


def _enrollment_routes(router: APIRouter, enrollments: Enrollments) -> None:
    @router.get("/enrollmentGroups", tags=["enrollment groups"])
    async def list_groups() -> dict[str, Any]:
        return {"value": [g.to_json() for g in enrollments.groups()]}

    @router.get("/enrollmentGroups/{group_id}", tags=["enrollment groups"])
    async def get_group(group_id: str) -> dict[str, Any]:
        return enrollments.group(group_id).to_json()

    @router.put("/enrollmentGroups/{group_id}", tags=["enrollment groups"])
    async def put_group(
        group_id: str, body: EnrollmentGroupIn, if_match: IfMatch = None, if_none_match: IfNoneMatch = None
    ) -> dict[str, Any]:
        group = enrollments.put_group(
            group_id,
            body.attestation.x509.caReferences.primary,
            enabled=body.provisioningStatus == "enabled",
            initial_twin=body.initialTwin,
            if_match=if_match,
            options=GroupOptions.from_json(body.model_dump()),
            create_only=if_none_match == "*",  # HTTP's "create, never replace" (the CLI's create)
        )
        return group.to_json()

    @router.delete("/enrollmentGroups/{group_id}", status_code=204, tags=["enrollment groups"])
    async def delete_group(group_id: str) -> Response:
        enrollments.delete_group(group_id)
        return Response(status_code=204)

    @router.get("/enrollmentGroups/{group_id}/registrations", tags=["enrollment groups"])
    async def group_registrations(group_id: str) -> dict[str, Any]:
        enrollments.group(group_id)
        return {"value": [r.to_json() for r in enrollments.registrations(group_id)]}

    @router.post("/registrations/{group_id}/query", tags=["enrollment groups"])
    async def query_registrations(group_id: str) -> list[dict[str, Any]]:
        enrollments.group(group_id)
        return [r.to_json() for r in enrollments.registrations(group_id)]

    @router.get("/registrations", tags=["registrations"])
    async def list_registrations() -> dict[str, Any]:
        return {"value": [r.to_json() for r in enrollments.registrations()]}

    @router.get("/registrations/{registration_id}", tags=["registrations"])
    async def get_registration(registration_id: str) -> dict[str, Any]:
        registration = enrollments.registration(registration_id)
        if registration is None:
            raise CloudError(404, 404202, f"registration '{registration_id}' not found")
        return registration.to_json()

    @router.delete("/registrations/{registration_id}", status_code=204, tags=["registrations"])
    async def delete_registration(registration_id: str) -> Response:
        enrollments.delete_registration(registration_id)
        return Response(status_code=204)

    @router.get("/enrollments", tags=["individual enrollments"])
    async def list_enrollments() -> dict[str, Any]:
        return {"value": [e.to_json() for e in enrollments.enrollments()]}

    @router.get("/enrollments/{registration_id}", tags=["individual enrollments"])
    async def get_enrollment(registration_id: str) -> dict[str, Any]:
        return enrollments.enrollment(registration_id).to_json()

    @router.put("/enrollments/{registration_id}", tags=["individual enrollments"])
    async def put_enrollment(registration_id: str, body: EnrollmentIn) -> dict[str, Any]:
        return enrollments.put_enrollment(
            registration_id, enabled=body.provisioningStatus == "enabled"
        ).to_json()

    @router.delete("/enrollments/{registration_id}", status_code=204, tags=["individual enrollments"])
    async def delete_enrollment(registration_id: str) -> Response:
        enrollments.delete_enrollment(registration_id)
        return Response(status_code=204)


def _device_routes(router: APIRouter, hub: Hub) -> None:
    @router.get("/devices", tags=["devices"])
    async def list_devices() -> dict[str, Any]:
        return {"value": hub.devices()}

    @router.get("/devices/{device_id}", tags=["devices"])
    async def get_device(device_id: str) -> dict[str, Any]:
        return hub.device(device_id)

    @router.put("/devices/{device_id}", tags=["devices"])
    async def put_device(device_id: str, body: DeviceIn) -> dict[str, Any]:
        return hub.set_enabled(device_id, body.status == "enabled")

    @router.delete("/devices/{device_id}", status_code=204, tags=["devices"])
    async def delete_device(device_id: str) -> Response:
        hub.delete(device_id)
        return Response(status_code=204)

    @router.post("/devices/{device_id}/messages/deviceBound", status_code=201, tags=["cloud-to-device"])
    async def send(device_id: str, body: C2DIn) -> dict[str, Any]:
        return hub.send_c2d(
            device_id,
            _body_bytes(body),
            content_type=body.contentType,
            content_encoding=body.contentEncoding,
            properties=body.properties,
            message_id=body.messageId,
            correlation_id=body.correlationId,
            ttl_seconds=body.ttlSeconds,
        )

    @router.get("/devices/{device_id}/messages/deviceBound", tags=["cloud-to-device"])
    async def pending(device_id: str) -> dict[str, Any]:
        return {"value": hub.pending_c2d(device_id)}

    @router.get("/twins/{device_id}", tags=["twins"])
    async def get_twin(device_id: str) -> dict[str, Any]:
        return hub.twin(device_id)

    @router.patch("/twins/{device_id}", tags=["twins"])
    async def patch_twin(device_id: str, body: TwinPatchIn) -> dict[str, Any]:
        return hub.patch_desired(device_id, body.properties.desired)

    @router.post("/twins/{device_id}/methods", tags=["direct methods"])
    async def invoke(device_id: str, body: MethodIn) -> dict[str, Any]:
        status, payload = await hub.invoke(
            device_id, body.methodName, body.payload, body.responseTimeoutInSeconds
        )
        return {"status": status, "payload": payload}

    @router.get("/consumerGroups", tags=["telemetry"])
    async def consumer_groups() -> dict[str, Any]:
        return {"value": hub.consumer_groups()}

    @router.put("/consumerGroups/{name}", tags=["telemetry"])
    async def add_consumer_group(name: str) -> dict[str, Any]:
        return hub.add_consumer_group(name)

    @router.delete("/consumerGroups/{name}", status_code=204, tags=["telemetry"])
    async def delete_consumer_group(name: str) -> None:
        hub.delete_consumer_group(name)

    @router.get("/telemetry", tags=["telemetry"])
    async def telemetry(
        deviceId: str | None = None,
        after: Annotated[
            int, Query(ge=0, le=2**63 - 1, description="return messages with sequenceNumber > after")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        tail: Annotated[
            int | None, Query(ge=1, le=1000, description="only the newest N (ignores after)")
        ] = None,
    ) -> dict[str, Any]:
        messages = hub.telemetry(deviceId, after, limit, tail=tail)
        return {"value": messages, "last": messages[-1]["sequenceNumber"] if messages else after}


def _body_bytes(body: C2DIn) -> bytes:
    if body.bodyBase64 is None:
        return body.body.encode()
    try:
        return base64.b64decode(body.bodyBase64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"bodyBase64 is not base64 ({exc})") from exc
