"""The operator's client for Azure's IoT Hub and DPS service REST APIs: the local cloud or a real hub alike.

It speaks only what Azure serves (paths, api-versions, SAS tokens signed from the connection strings, the
continuation headers), so the same calls run against the local cloud (connection.json: its connection strings
and its server CA) and against Azure (connection strings from the portal; the system's trust store).
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from azure.core.credentials import AccessToken

from client_app.cloud.info import ConnectionInfo
from client_app.cloud.sas import generate_token, parse_connection_string

HUB_API_VERSION = "2021-04-12"
DPS_API_VERSION = "2021-10-01"


class LocalCloudCredential:
    """The development credential for ARM calls to the local cloud: its api_token as a bearer token.

    A TokenCredential (azure-core's protocol) for `IotDpsClient(LocalCloudCredential(info.api_token),
    subscription_id, base_url=f"https://{info.service_host}")`; against Azure use azure-identity's
    DefaultAzureCredential instead. The local cloud accepts any subscription, resource group and DPS name.
    """

    def __init__(self, api_token: str) -> None:
        self._token = api_token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 3600)


LOCAL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"  # the local cloud takes any ARM names


class ArmCertificates:
    """DPS CA certificates through ARM (azure-mgmt-iothubprovisioningservices): Azure, or the local cloud."""

    def __init__(self, credential: Any, subscription: str, resource_group: str, dps_name: str, *,
                 base_url: str | None = None, ca_file: str | None = None) -> None:  # fmt: skip
        from azure.mgmt.iothubprovisioningservices import (
            IotDpsClient,
        )  # heavy: only when certificates are used

        options: dict[str, Any] = {"base_url": base_url} if base_url else {}
        if ca_file:
            options["connection_verify"] = ca_file
        self._client = IotDpsClient(credential, subscription, **options)
        self._where = (resource_group, dps_name)

    def list(self) -> list[Any]:
        return list(self._client.dps_certificate.list(*self._where).value or [])

    def get(self, name: str) -> Any:
        return self._client.dps_certificate.get(name, *self._where)

    def upload(self, name: str, pem: bytes, *, verified: bool = False, etag: str | None = None) -> Any:
        """Create `name` (an existing name is refused), or replace it under `etag`."""
        from azure.core import MatchConditions
        from azure.mgmt.iothubprovisioningservices.models import CertificateProperties, CertificateResponse

        body = CertificateResponse(properties=CertificateProperties(certificate=pem, is_verified=verified))
        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        return self._client.dps_certificate.create_or_update(*self._where, name, body, **condition)

    def verification_code(self, name: str) -> Any:
        """A new proof-of-possession code (properties.verification_code), under the certificate's etag."""
        from azure.core import MatchConditions

        etag = self.get(name).etag
        return self._client.dps_certificate.generate_verification_code(
            name, *self._where, etag=etag, match_condition=MatchConditions.IfNotModified
        )

    def verify(self, name: str, proof_pem: str) -> Any:
        from azure.core import MatchConditions
        from azure.mgmt.iothubprovisioningservices.models import VerificationCodeRequest

        etag = self.get(name).etag
        return self._client.dps_certificate.verify_certificate(
            name, *self._where, VerificationCodeRequest(certificate=proof_pem), etag=etag,
            match_condition=MatchConditions.IfNotModified,
        )  # fmt: skip

    def delete(self, name: str) -> None:
        from azure.core import MatchConditions

        etag = self.get(name).etag
        self._client.dps_certificate.delete(
            *self._where, name, etag=etag, match_condition=MatchConditions.IfNotModified
        )

    def enroll(self, root: Any, name: str) -> None:
        """Upload a CA certificate and prove possession of its key: Unverified → code → proof → Verified.

        `root` is a client_app.pki CertificateAuthority (it signs the proof-of-possession certificate)."""
        from client_app.pki import certificate_to_pem

        self.upload(name, certificate_to_pem(root.certificate))
        code = self.verification_code(name).properties.verification_code
        proof, _ = root.issue_verification(code)
        self.verify(name, certificate_to_pem(proof).decode())

    def close(self) -> None:
        self._client.close()


class ServiceError(Exception):
    """A refusal from the service: HTTP status, Azure's numeric code (0 if none) and its message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}{f', {code}' if code else ''})")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Endpoint:
    host: str
    key_name: str
    key: str
    api_version: str

    @classmethod
    def parse(cls, text: str, api_version: str) -> _Endpoint:
        try:
            fields = parse_connection_string(text)
            return cls(
                fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"], api_version
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(
                "a service connection string is HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."
            ) from exc


def _segment(value: str) -> str:
    return quote(value, safe="")


class ServiceClient:
    """Synchronous; one HTTP connection pool per client. Use as a context manager or call close()."""

    def __init__(
        self,
        hub_connection_string: str | None,
        dps_connection_string: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = 30.0,
        certificates: ArmCertificates | None = None,
        amqp_connection_string: str | None = None,
    ) -> None:
        self.certificates = certificates
        # C2D goes over AMQP to the hub's host (Azure); the local cloud's AMQP address may differ from REST's.
        self._amqp_connection_string = amqp_connection_string or hub_connection_string
        self._c2d: Any = None  # amqp.operator.C2dSender, opened on the first send_c2d
        self._hub = _Endpoint.parse(hub_connection_string, HUB_API_VERSION) if hub_connection_string else None
        self._dps = _Endpoint.parse(dps_connection_string, DPS_API_VERSION) if dps_connection_string else None
        # The local cloud's CA, or SSL_CERT_FILE (the usual override), or the system's trust store (Azure).
        ca_file = self._ca_file = ca_file or os.environ.get("SSL_CERT_FILE")
        verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._http = httpx.Client(verify=verify, timeout=timeout, trust_env=False)

    @classmethod
    def for_local_cloud(cls, info: ConnectionInfo, **kwargs: Any) -> ServiceClient:
        if not info.iothub_connection_string:
            raise ValueError("this local cloud's connection.json has no service API (an older version?)")
        credential = LocalCloudCredential(info.api_token)
        base_url = f"https://{info.service_host}"
        certificates = ArmCertificates(credential, LOCAL_SUBSCRIPTION, "local", "local", base_url=base_url,
                                       ca_file=info.server_ca_pem)  # fmt: skip
        return cls(info.iothub_connection_string, info.dps_connection_string, ca_file=info.server_ca_pem,
                   certificates=certificates, amqp_connection_string=local_amqp_connection_string(info),
                   **kwargs)  # fmt: skip

    def close(self) -> None:
        self._http.close()
        if self._c2d is not None:
            self._c2d.close()
        if self.certificates is not None:
            self.certificates.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport -------------------------------------------------------------------------------
    def _call(
        self,
        endpoint: _Endpoint | None,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if endpoint is None:
            raise ValueError("no connection string for this service (IoT Hub or DPS) was given")
        token = generate_token(endpoint.host, endpoint.key, endpoint.key_name)
        try:
            response = self._http.request(
                method,
                f"https://{endpoint.host}{path}",
                params={"api-version": endpoint.api_version},
                json=body,
                headers={"Authorization": token, **(headers or {})},
            )
        except httpx.HTTPError as exc:
            raise ServiceError(0, 0, f"cannot reach {endpoint.host}: {exc}") from exc
        if response.is_error:
            raise _error(response)
        return response

    def _json(self, endpoint: _Endpoint | None, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        response = self._call(endpoint, method, path, body, **kw)
        return response.json() if response.content else None

    def _pages(self, endpoint: _Endpoint | None, path: str, body: Any, page_size: int) -> Iterator[Any]:
        token: str | None = None
        while True:
            headers = {"x-ms-max-item-count": str(page_size)}
            if token:
                headers["x-ms-continuation"] = token
            response = self._call(endpoint, "POST", path, body, headers)
            yield from response.json()
            token = response.headers.get("x-ms-continuation")
            if not token:
                return

    # ---- IoT Hub ---------------------------------------------------------------------------------
    def devices(self) -> list[dict[str, Any]]:
        return self._json(self._hub, "GET", "/devices")

    def device(self, device_id: str) -> dict[str, Any]:
        return self._json(self._hub, "GET", f"/devices/{_segment(device_id)}")

    def set_device_status(self, device_id: str, enabled: bool) -> dict[str, Any]:
        device = self.device(device_id)
        body = {**device, "status": "enabled" if enabled else "disabled"}
        return self._json(
            self._hub, "PUT", f"/devices/{_segment(device_id)}", body, headers={"If-Match": device["etag"]}
        )

    def delete_device(self, device_id: str) -> None:
        self._call(self._hub, "DELETE", f"/devices/{_segment(device_id)}", headers={"If-Match": "*"})

    def statistics(self) -> dict[str, int]:
        return self._json(self._hub, "GET", "/statistics/devices")

    def twin(self, device_id: str) -> dict[str, Any]:
        return self._json(self._hub, "GET", f"/twins/{_segment(device_id)}")

    def update_twin(self, device_id: str, patch: dict[str, Any], etag: str = "*") -> dict[str, Any]:
        return self._json(
            self._hub, "PATCH", f"/twins/{_segment(device_id)}", patch, headers={"If-Match": etag}
        )

    def query(self, sql: str, page_size: int = 100) -> list[dict[str, Any]]:
        """Every result of an IoT Hub query, following continuation tokens."""
        return list(self._pages(self._hub, "/devices/query", {"query": sql}, page_size))

    def invoke(self, device_id: str, method: str, payload: Any = None, timeout: float = 30) -> dict[str, Any]:
        body = {"methodName": method, "payload": payload, "responseTimeoutInSeconds": timeout}
        return self._json(self._hub, "POST", f"/twins/{_segment(device_id)}/methods", body)

    def send_c2d(self, device_id: str, body: bytes | str, *, properties: dict[str, str] | None = None,
                 message_id: str | None = None, correlation_id: str | None = None,
                 content_type: str | None = None, ttl_seconds: float | None = None, ack: str | None = None
                 ) -> str:  # fmt: skip
        """A cloud-to-device message over AMQP, as azure-iot-hub's send_c2d_message sends it (one connection,
        kept open); returns its message id. A refusal raises amqp.operator.OperatorError with the AMQP
        condition the SDKs translate (amqp:not-found, amqp:resource-limit-exceeded, ...)."""
        from client_app.cloud.amqp.operator import C2dMessage, C2dSender  # proton: only when sending

        if self._amqp_connection_string is None:
            raise ValueError("no IoT Hub connection string was given (C2D goes to the hub over AMQP)")
        if self._c2d is not None and (
            self._c2d.broken or time.monotonic() - self._c2d.opened > C2dSender.TOKEN_TTL / 2
        ):
            self._c2d.close()
            self._c2d = None
        if self._c2d is None:
            self._c2d = C2dSender(self._amqp_connection_string, ca_file=self._ca_file)
        data = body.encode() if isinstance(body, str) else body
        message = C2dMessage(device_id, data, properties or {}, message_id, correlation_id, content_type,
                             ttl_seconds, ack)  # fmt: skip
        return self._c2d.send(message)

    def purge(self, device_id: str) -> int:
        return self._json(self._hub, "DELETE", f"/devices/{_segment(device_id)}/commands")[
            "totalMessagesPurged"
        ]

    # ---- DPS -------------------------------------------------------------------------------------
    def groups(self) -> list[dict[str, Any]]:
        return list(self._pages(self._dps, "/enrollmentGroups/query", {"query": "*"}, 100))

    def group(self, group_id: str) -> dict[str, Any]:
        return self._json(self._dps, "GET", f"/enrollmentGroups/{_segment(group_id)}")

    def replace_group(self, group: dict[str, Any]) -> dict[str, Any]:
        """PUT a group as read (and changed): its `etag` makes it a replace, refused if it changed since."""
        return self._json(
            self._dps, "PUT", f"/enrollmentGroups/{_segment(group['enrollmentGroupId'])}", group
        )

    def set_group_status(self, group_id: str, enabled: bool) -> dict[str, Any]:
        group = self.group(group_id)
        return self.replace_group({**group, "provisioningStatus": "enabled" if enabled else "disabled"})

    def create_group(
        self,
        group_id: str,
        ca_name: str | None = None,
        *,
        enabled: bool = True,
        initial_twin: dict[str, Any] | None = None,
        signing_certificate: bytes | None = None,
    ) -> dict[str, Any]:
        """A new X.509 group on a verified CA certificate (`ca_name`, caReferences) or on a CA certificate's
        PEM held by the group itself (`signing_certificate`, signingCertificates); an existing ID is refused
        (no etag: create)."""
        if (ca_name is None) == (signing_certificate is None):
            raise ValueError("a group is on either a CA certificate name or a signing certificate")
        x509 = (
            {"signingCertificates": {"primary": {"certificate": signing_certificate.decode()}}}
            if signing_certificate is not None
            else {"caReferences": {"primary": ca_name}}
        )
        body: dict[str, Any] = {
            "enrollmentGroupId": group_id,
            "attestation": {"type": "x509", "x509": x509},
            "provisioningStatus": "enabled" if enabled else "disabled",
        }
        if initial_twin is not None:
            body["initialTwin"] = initial_twin
        return self._json(self._dps, "PUT", f"/enrollmentGroups/{_segment(group_id)}", body)

    def delete_group(self, group_id: str) -> None:
        self._call(self._dps, "DELETE", f"/enrollmentGroups/{_segment(group_id)}")

    def enrollments(self) -> list[dict[str, Any]]:
        return list(self._pages(self._dps, "/enrollments/query", {"query": "*"}, 100))

    def put_enrollment(
        self, registration_id: str, *, enabled: bool, client_certificate: bytes | None = None
    ) -> dict[str, Any]:
        """An individual X.509 enrollment; disabled, it blocks one device of a group. With
        `client_certificate` (the device's leaf, PEM; x509.clientCertificates) only that leaf registers as
        the ID."""
        attestation: dict[str, Any] = {"type": "x509"}
        if client_certificate is not None:
            primary = {"certificate": client_certificate.decode()}
            attestation["x509"] = {"clientCertificates": {"primary": primary}}
        body = {"registrationId": registration_id, "attestation": attestation,
                "provisioningStatus": "enabled" if enabled else "disabled"}  # fmt: skip
        return self._json(self._dps, "PUT", f"/enrollments/{_segment(registration_id)}", body)

    def delete_enrollment(self, registration_id: str) -> None:
        self._call(self._dps, "DELETE", f"/enrollments/{_segment(registration_id)}")

    def registrations(self, group_id: str) -> list[dict[str, Any]]:
        return list(self._pages(self._dps, f"/registrations/{_segment(group_id)}/query", {"query": "*"}, 100))

    def registration(self, registration_id: str) -> dict[str, Any]:
        return self._json(self._dps, "GET", f"/registrations/{_segment(registration_id)}")

    def delete_registration(self, registration_id: str) -> None:
        """Forget a device's registration record (it may register again, e.g. with another key)."""
        self._call(self._dps, "DELETE", f"/registrations/{_segment(registration_id)}")


def local_amqp_connection_string(info: ConnectionInfo) -> str | None:
    """The local cloud's hub connection string for AMQP: the REST one where both share an address, else its
    `service` policy's key (from the Event Hubs-compatible string) at the AMQP address; None without AMQP."""
    eventhub = info.eventhub_compatible_connection_string
    if not eventhub or not info.amqp_host:
        return None
    if info.iothub_connection_string and info.service_host == info.amqp_host:
        return info.iothub_connection_string
    fields = parse_connection_string(eventhub)
    policy, key = fields["SharedAccessKeyName"], fields["SharedAccessKey"]
    return f"HostName={info.amqp_host};SharedAccessKeyName={policy};SharedAccessKey={key}"


def _error(response: httpx.Response) -> ServiceError:
    """Azure's two error shapes: IoT Hub's `Message` ("ErrorCode:Name;text"), DPS's errorCode/message."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        code = body.get("errorCode") if isinstance(body.get("errorCode"), int) else 0
        if isinstance(body.get("Message"), str):
            return ServiceError(
                response.status_code, code, body["Message"].partition(";")[2] or body["Message"]
            )
        if isinstance(body.get("message"), str):
            return ServiceError(response.status_code, code, body["message"])
    return ServiceError(response.status_code, 0, response.text[:200] or response.reason_phrase)
