"""Cloud-to-device over AMQP: a message sent to `/messages/devicebound` becomes a hub C2D send, and feedback
records go out as batches on `/messages/serviceBound/feedback`.

Shapes (Azure docs "Send cloud-to-device messages from an IoT hub"; azure-iot-hub `iothub_amqp_client.py`;
azure-iothub for Node `amqp_message.ts`, `amqp_service_errors.ts`): `properties.to` is
`/devices/{id}/messages/devicebound`; message id, correlation id, content type/encoding, absolute expiry time
and application properties travel as set, `iothub-ack` asks for feedback. A refusal is the delivery's REJECTED
outcome with the condition the SDKs translate: `amqp:not-found` (unknown device),
`amqp:resource-limit-exceeded` (50 queued: the Node SDK's DeviceMaximumQueueDepthExceededError),
`amqp:link:message-size-exceeded` (64 KB), `com.microsoft:argument-error` (anything else malformed).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from proton import Message

from client_app.cloud.errors import CloudError

C2D_PATH = "messages/devicebound"
FEEDBACK_PATH = "messages/servicebound/feedback"
FEEDBACK_CONTENT_TYPE = "application/vnd.microsoft.iothub.feedback.json"
_TO = re.compile(r"^/devices/([^/]+)/messages/devicebound$", re.IGNORECASE)


class C2dRefused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


def refusal_for(error: CloudError) -> C2dRefused:
    if error.status == 404:
        condition = "amqp:not-found"
    elif error.error_code == 403004:
        condition = "amqp:resource-limit-exceeded"
    elif error.status == 413:
        condition = "amqp:link:message-size-exceeded"
    else:
        condition = "com.microsoft:argument-error"
    return C2dRefused(condition, f"ErrorCode:{error.error_code};{error.message}")


@dataclass(frozen=True)
class C2dRequest:
    device_id: str
    body: bytes
    options: dict[str, Any]  # keyword arguments of Hub.send_c2d


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _symbol(value: Any) -> str | None:
    """proton reads an absent content type or encoding as symbol(None), whose text is "None": no value."""
    text = _text(value)
    return None if text == "None" else text


def _body(message: Message) -> bytes:
    body = message.body
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body, default=str).encode()


def c2d_request(message: Message, now: float | None = None) -> C2dRequest:
    """What Hub.send_c2d needs from an AMQP C2D message; raises C2dRefused for what Azure would refuse."""
    match = _TO.match(_text(message.address) or "")
    if match is None:
        raise C2dRefused(
            "com.microsoft:argument-error",
            f"ErrorCode:ArgumentInvalid;the 'to' property {message.address!r} is not"
            " /devices/{id}/messages/devicebound",
        )
    properties = dict(message.properties or {})
    ack = _text(properties.pop("iothub-ack", None))
    options: dict[str, Any] = {
        "message_id": _text(message.id) or str(uuid.uuid4()),
        "correlation_id": _text(message.correlation_id),
        "content_type": _symbol(message.content_type),
        "content_encoding": _symbol(message.content_encoding),
        "properties": {str(k): _text(v) or "" for k, v in properties.items()},
        "ack": ack,
    }
    moment = time.time() if now is None else now
    expiry = message.expiry_time or (moment + message.ttl if message.ttl else 0)  # absolute, or the header's
    if expiry:  # in seconds; Azure caps a C2D TTL at 48 h
        ttl = expiry - moment
        options["ttl_seconds"] = min(max(ttl, 0.001), 2 * 86400)
        options["expiry_utc"] = (
            datetime.fromtimestamp(expiry, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
    return C2dRequest(unquote(match[1]), _body(message), options)


def feedback_message(records: list[dict[str, Any]], hub_name: str) -> Message:
    """One feedback batch: a JSON array of records, as IoT Hub sends it."""
    return Message(
        body=json.dumps(records).encode(),
        inferred=True,
        id=str(uuid.uuid4()),
        user_id=hub_name.encode(),
        content_type=FEEDBACK_CONTENT_TYPE,
        content_encoding="utf-8",
    )
