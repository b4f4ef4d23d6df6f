"""Device Provisioning Service over MQTT: register, status polling, assignment (device-protocol §3)."""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from client_app.cloud.dps.allocation import Allocation, allocation_request, call_webhook
from client_app.cloud.dps.enrollment import Enrollments, Match, unauthorized
from client_app.cloud.errors import CloudError, bad_request
from client_app.cloud.hub.hub import Hub
from client_app.cloud.hub.router import DeviceRefused
from client_app.cloud.hub.topics import query_of, request_id
from client_app.cloud.store import utc_now

if TYPE_CHECKING:
    from client_app.cloud.mqtt.server import MqttConnection

log = logging.getLogger("client_app.cloud.dps.registration")

REGISTER_PREFIX = "$dps/registrations/PUT/iotdps-register/"
POLL_PREFIX = "$dps/registrations/GET/iotdps-get-operationstatus/"
RESPONSE_FILTER = "$dps/registrations/res/#"
OPERATION_TTL = 600.0
# Intermediates a presented chain may carry (the chain validator's depth, cryptography's max_chain_depth
# default). Azure documents no number; a longer chain would otherwise fail as "CA certificate not found".
MAX_CHAIN_INTERMEDIATES = 8


@dataclass
class _Operation:
    match: Match
    assigned_hub: str
    ready_at: float
    created: float
    result: dict[str, Any] | None = None
    allocation: Allocation | None = None  # the custom allocation webhook's answer


class Dps:
    def __init__(
        self,
        id_scope: str,
        enrollments: Enrollments,
        hub: Hub,
        assignment_delay: float,
        hub_host_for: Callable[[MqttConnection], str],
    ) -> None:
        self.id_scope = id_scope
        self._enrollments = enrollments
        self._hub = hub
        self._delay = assignment_delay
        self._hub_host_for = (
            hub_host_for  # the name (proxy) or listener IP (direct) the device should dial next
        )
        self._operations: dict[str, _Operation] = {}  # insertion order = creation order (expiry)
        self._latest: dict[str, str] = {}  # registration ID (lower case) → its newest operation ID

    def authorize(self, conn: MqttConnection, id_scope: str, registration_id: str) -> int:
        if id_scope != self.id_scope:
            log.warning("DPS CONNECT %s refused: unknown ID scope %r", registration_id, id_scope)
            return 5
        return 0  # certificate and enrollment are judged at register, where DPS can answer with an error code

    @staticmethod
    def subscribe(topic_filter: str, requested_qos: int) -> int:
        if topic_filter == RESPONSE_FILTER:
            return min(requested_qos, 1)
        raise DeviceRefused(f"unsupported topic filter {topic_filter[:100]!r}")

    async def published(self, conn: MqttConnection, registration_id: str, topic: str, payload: bytes) -> None:
        rid = request_id(topic)
        if topic.startswith(REGISTER_PREFIX) and rid:
            await self._answer(conn, rid, self._register(conn, registration_id, payload))
        elif topic.startswith(POLL_PREFIX) and rid:
            operation_id = query_of(topic).get("operationId") or ""
            await self._answer(conn, rid, self._poll(registration_id, operation_id))
        else:
            raise DeviceRefused(f"DPS: unknown topic {topic!r}")

    async def _answer(
        self, conn: MqttConnection, rid: str, work: Awaitable[tuple[int, dict[str, Any]]]
    ) -> None:
        try:
            status, body = await work
        except CloudError as exc:
            log.warning("DPS %s: %s %d %s", conn.client_id, exc.status, exc.error_code, exc.message)
            status, body = exc.status, {
                **exc.to_json(), "trackingId": str(uuid.uuid4()), "timestampUtc": utc_now()
            }  # fmt: skip
        topic = f"$dps/registrations/res/{status}/?$rid={quote(rid, safe='')}"
        if body.get("status") == "assigning":
            topic += f"&retry-after={max(1, math.ceil(self._delay))}"
        await conn.publish(topic, json.dumps(body).encode(), 0)  # awaited: back-pressure on a non-reader

    async def _register(
        self, conn: MqttConnection, registration_id: str, payload: bytes
    ) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(payload)
        except ValueError as exc:
            raise bad_request(f"register body is not JSON ({exc})", 400001) from exc
        if not isinstance(request, dict):
            raise bad_request("register body must be a JSON object", 400001)
        body_id = request.get("registrationId")
        if body_id is not None and str(body_id).lower() != registration_id.lower():
            raise CloudError(
                400, 400004, f"Invalid RegistrationId: body says {body_id!r}, connection {registration_id!r}"
            )
        _check_chain_length(conn.peer_chain)
        match = self._enrollments.attest(registration_id, conn.peer_chain)
        self._expire_operations()
        operation_id = f"4.{secrets.token_hex(8)}.{uuid.uuid4()}"
        if not match.enabled:
            log.warning(
                "DPS %s refused: enrollment %s is disabled", registration_id, match.group_id or "(individual)"
            )
            return 200, self._disabled(operation_id, match)
        self._enrollments.check_identity(match)  # 401002: takeover attempts (issue 13)
        now = time.monotonic()
        operation = _Operation(match, self._hub_host_for(conn), now + self._delay, now)
        group = self._enrollments.group(match.group_id) if match.group_id else None
        if group is not None and group.options.allocation_policy == "custom":
            previous = self._enrollments.registration(match.registration_id)
            request_body = allocation_request(
                group.to_json(), match.registration_id, match.leaf, request.get("payload"),
                [operation.assigned_hub], (previous.assigned_hub, previous.device_id) if previous else None,
            )  # fmt: skip
            assert group.options.custom_allocation is not None  # GroupOptions requires it for "custom"
            try:
                operation.allocation = await call_webhook(group.options.custom_allocation, request_body)
            except CloudError as exc:
                return 200, self._failed(operation_id, match, exc)
            operation.assigned_hub = operation.allocation.hub
        # Only the newest operation of a registration ID stays pollable: a device that registers in a loop
        # must not pile up operations (each holds its certificate) for OPERATION_TTL.
        key = match.registration_id.lower()
        self._operations.pop(self._latest.get(key, ""), None)
        self._latest[key] = operation_id
        self._operations[operation_id] = operation
        if (
            self._delay <= 0
        ):  # fast path: the SDK accepts "assigned" straight away and skips its fixed 2 s poll
            return 200, self._assign(operation_id, operation)
        return 202, {"operationId": operation_id, "status": "assigning"}

    async def _poll(self, registration_id: str, operation_id: str) -> tuple[int, dict[str, Any]]:
        operation = self._operations.get(operation_id)
        if operation is None or operation.match.registration_id.lower() != registration_id.lower():
            raise CloudError(404, 404203, f"operation '{operation_id}' not found for '{registration_id}'")
        if operation.result is not None:
            return 200, operation.result
        if time.monotonic() < operation.ready_at:
            return 202, {"operationId": operation_id, "status": "assigning"}
        return 200, self._assign(operation_id, operation)

    def _assign(self, operation_id: str, operation: _Operation) -> dict[str, Any]:
        match = operation.match
        group = self._enrollments.group(match.group_id) if match.group_id else None
        device_id = self._enrollments.device_id_for(match.registration_id)
        allocation = operation.allocation
        twin = allocation.initial_twin if allocation and allocation.initial_twin is not None else None
        self._hub.provision(device_id, match.thumbprint, twin or (group.initial_twin if group else {}))
        registration = self._enrollments.record_assignment(
            match, device_id, operation.assigned_hub, operation_id
        )
        state = registration.to_json()  # its x509 is what matching found (match.x509_result())
        if allocation is not None and allocation.payload is not None:
            state["payload"] = allocation.payload  # the webhook's data for the device
        log.info("DPS %s assigned to %s (%s, %s)", match.registration_id, operation.assigned_hub,
                 match.group_id or "individual enrollment", registration.substatus)  # fmt: skip
        operation.result = {"operationId": operation_id, "status": "assigned",
                            "registrationState": state}  # fmt: skip
        return operation.result

    @staticmethod
    def _disabled(operation_id: str, match: Match) -> dict[str, Any]:
        return {
            "operationId": operation_id,
            "status": "disabled",
            "registrationState": {
                "registrationId": match.registration_id,
                "status": "disabled",
                "errorCode": 401002,
                "errorMessage": "enrollment is disabled",
            },
        }

    @staticmethod
    def _failed(operation_id: str, match: Match, error: CloudError) -> dict[str, Any]:
        """A registration the custom allocation webhook refused: status "failed" (the SDK reports it)."""
        return {
            "operationId": operation_id,
            "status": "failed",
            "registrationState": {
                "registrationId": match.registration_id,
                "status": "failed",
                "errorCode": error.error_code,
                "errorMessage": error.message,
            },
        }

    def connect_refusal(self, device_id: str, chain: list[Any]) -> str | None:
        """The identity rules again at hub CONNECT (the handler asks before the hub's thumbprint check)."""
        return self._enrollments.connect_refusal(device_id, chain)

    def _expire_operations(self) -> None:
        cutoff = time.monotonic() - OPERATION_TTL
        while self._operations:
            operation_id, operation = next(iter(self._operations.items()))
            if operation.created >= cutoff:
                return  # the rest are newer
            del self._operations[operation_id]
            if self._latest.get(operation.match.registration_id.lower()) == operation_id:
                del self._latest[operation.match.registration_id.lower()]


def _check_chain_length(chain: list[Any]) -> None:
    """Refuse a chain with more intermediates than the validator follows, and say so (a root sent along is
    tolerated and not counted)."""
    count = sum(1 for cert in chain[1:] if cert.issuer != cert.subject)
    if count > MAX_CHAIN_INTERMEDIATES:
        limit = MAX_CHAIN_INTERMEDIATES
        raise unauthorized(f"certificate chain too long: {count} intermediates, at most {limit}")
