"""DPS CA certificates the way Azure manages them: Azure Resource Manager (ARM) paths and bodies, so that
`azure-mgmt-iothubprovisioningservices` (IotDpsClient.dps_certificate) runs the upload → verification code →
proof of possession → verified flow against the local cloud.

Paths (azure-rest-api-specs `deviceprovisioningservices/resource-manager/.../iotdps.json`; the SDK's
`operations/_operations.py`):
    /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Devices/provisioningServices/{dps}/certificates
    .../certificates/{name}                          GET, PUT (createOrUpdate), DELETE (If-Match)
    .../certificates/{name}/generateVerificationCode  POST (If-Match)
    .../certificates/{name}/verify                    POST (If-Match), body {"certificate": PEM}
Any subscription, resource group and service name address this cloud's one DPS. Authentication is the
development credential: `Authorization: Bearer <api_token>` from connection.json (see
service_client.LocalCloudCredential); ARM's AAD tokens cannot be checked here. Errors carry DPS's ARM
ErrorDetails (`code`, `httpStatusCode`, `message`) and ARM's `error` object for azure-mgmt-core.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI, Request, Response

from client_app.cloud.dps.certificates import CaCertificate, CertificateStore
from client_app.cloud.errors import CloudError, bad_request
from client_app.cloud.service.rest_api import json_body

PREFIX = (
    "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Devices/"
    "provisioningServices/{service}/certificates"
)
RESOURCE_TYPE = "Microsoft.Devices/provisioningServices/Certificates"


def _rfc7231(iso: str) -> str:
    return format_datetime(datetime.fromisoformat(iso.replace("Z", "+00:00")), usegmt=True)


def _resource(request: Request, ca: CaCertificate, *, code: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "subject": ca.subject,
        "expiry": _rfc7231(ca.not_after),
        "thumbprint": ca.sha1.upper(),
        "isVerified": ca.is_verified,
        "certificate": base64.b64encode(ca.pem.encode()).decode(),
        "created": _rfc7231(ca.created),
        "updated": _rfc7231(ca.updated),
    }
    if code:
        properties["verificationCode"] = ca.verification_code
    path = request.url.path.split("/certificates/")[0]
    return {"id": f"{path}/certificates/{ca.name}", "name": ca.name, "type": RESOURCE_TYPE, "etag": ca.etag,
            "properties": properties}  # fmt: skip


def certificate_pem(value: Any) -> str:
    """ARM's `certificate`: base64 of a .cer (DER) or .pem file, or the PEM text itself."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request("properties.certificate is required (base64 of a .cer or .pem file)", 400004)
    if value.lstrip().startswith("-----BEGIN"):
        return value
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("certificate is neither PEM nor base64", 400004) from None
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw.decode("ascii", "replace")
    try:
        return x509.load_der_x509_certificate(raw).public_bytes(Encoding.PEM).decode()
    except ValueError:
        raise bad_request("certificate is neither a PEM nor a DER certificate", 400004) from None


def _if_match(request: Request) -> str | None:
    """azure-core sends the etag quoted, as HTTP writes entity tags; ours are stored bare."""
    value = request.headers.get("if-match")
    return value.strip().removeprefix("W/").strip('"') if value is not None else None


def add_arm_routes(app: FastAPI, certificates: CertificateStore, token: str) -> None:
    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        presented = header.removeprefix("Bearer ").encode("utf-8")
        if not header.startswith("Bearer ") or not secrets.compare_digest(presented, token.encode()):
            raise CloudError(401, 401001, "Unauthorized: the development credential is the api_token")

    @app.get(PREFIX)
    async def list_certificates(request: Request, subscription: str, group: str, service: str) -> Any:
        authorize(request)
        return {"value": [_resource(request, c) for c in certificates.list()]}

    @app.get(PREFIX + "/{name}")
    async def get_certificate(
        request: Request, subscription: str, group: str, service: str, name: str
    ) -> Any:
        authorize(request)
        return _resource(request, certificates.get(name))

    @app.put(PREFIX + "/{name}")
    async def put_certificate(
        request: Request, subscription: str, group: str, service: str, name: str
    ) -> Any:
        authorize(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object", 400004)
        properties = body.get("properties") if isinstance(body.get("properties"), dict) else body
        if_match = _if_match(request)
        if if_match is None and certificates.find(name) is not None:  # create never replaces
            raise CloudError(409, 409002, f"certificate {name!r} already exists; replace it with If-Match")
        pem = certificate_pem(properties.get("certificate"))
        ca = certificates.upload(
            name, pem, is_verified=properties.get("isVerified") is True, if_match=if_match
        )
        return _resource(request, ca)

    @app.delete(PREFIX + "/{name}")
    async def delete_certificate(
        request: Request, subscription: str, group: str, service: str, name: str
    ) -> Any:
        authorize(request)
        certificates.delete(name, _if_match(request) or "")
        return Response(status_code=200)

    @app.post(PREFIX + "/{name}/generateVerificationCode")
    async def generate_code(request: Request, subscription: str, group: str, service: str, name: str) -> Any:
        authorize(request)
        ca = certificates.generate_verification_code(name, _if_match(request) or "")
        return _resource(request, ca, code=True)

    @app.post(PREFIX + "/{name}/verify")
    async def verify(request: Request, subscription: str, group: str, service: str, name: str) -> Any:
        authorize(request)
        body = await json_body(request)
        proof = certificate_pem(body.get("certificate") if isinstance(body, dict) else None)
        return _resource(request, certificates.verify(name, proof, _if_match(request) or ""))
