"""Direct methods: a call goes out on `$iothub/methods/POST/{name}/?$rid=`, the answer comes back on
`$iothub/methods/res/{status}/?$rid=` (iot-hub-devguide-direct-methods); one deadline covers both."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from client_app.cloud.errors import CloudError
from client_app.cloud.hub.router import DeviceRefused
from client_app.cloud.hub.topics import request_id

if TYPE_CHECKING:
    from client_app.cloud.mqtt.server import MqttConnection

log = logging.getLogger("client_app.cloud.hub.methods")

MAX_METHOD_PAYLOAD = 128 * 1024

Calls = dict[str, asyncio.Future[tuple[int, Any]]]  # a connection's outstanding calls by request id


class MethodCalls:
    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def invoke(
        self, conn: MqttConnection, calls: Calls, device_id: str, method: str, payload: Any, timeout: float
    ) -> tuple[int, Any]:
        body = json.dumps(payload).encode()
        if len(body) > MAX_METHOD_PAYLOAD:
            raise CloudError(413, 413001, "method payload exceeds 128 KB")
        rid = format(next(self._ids), "x")
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        calls[rid] = future
        topic = f"$iothub/methods/POST/{quote(method, safe='')}/?$rid={rid}"  # the SDK unquotes the name
        try:
            async with asyncio.timeout(timeout):  # one deadline for delivery and answer, as IoT Hub's
                await conn.publish(topic, body)
                return await future
        except TimeoutError:
            raise CloudError(
                504, 504101, f"device '{device_id}' did not answer '{method}' within {timeout:g} s"
            ) from None
        except ConnectionError as exc:
            raise CloudError(
                404, 404103, f"device '{device_id}' disconnected during the call ({exc})"
            ) from exc
        finally:
            calls.pop(rid, None)

    @staticmethod
    def answered(calls: Calls | None, device_id: str, topic: str, payload: bytes) -> None:
        """A device's response: completes the waiting call (unknown request ids are logged and ignored)."""
        rid = request_id(topic)
        future = calls.get(rid or "") if calls is not None else None
        if future is None or future.done():
            log.warning("device %s: method response for unknown request %r ignored", device_id, rid)
            return
        try:
            status = int(topic.split("/")[3])
        except (IndexError, ValueError):
            raise DeviceRefused(f"method response topic without a numeric status: {topic!r}") from None
        try:
            result = json.loads(payload) if payload.strip() else None
        except ValueError:
            result = payload.decode("utf-8", "replace")
        future.set_result((status, result))
