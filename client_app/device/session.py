"""One IoT Hub connection (one SDK client object), driven by the supervisor's worker thread.

The SDK's own reconnect loop is off (connection_retry=False): the supervisor decides when and how to
reconnect, and builds a fresh client each time, which also re-subscribes and picks up a renewed certificate
or a moved endpoint.
SDK calls without their own timeout run on a private thread and are abandoned after an application timeout.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from client_app.device import sdk
from client_app.device.config import DeviceConfig
from client_app.device.identity import Identity
from client_app.device.state import Assignment
from client_app.device.store import OutboxMessage

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT = 30.0  # seconds for one publish/twin call before the connection is considered stuck


class SessionError(Exception):
    """The connection failed or broke; the supervisor reconnects with back-off."""


class SessionRefused(SessionError):
    """The hub refused the device's credentials: re-provision (maybe blocked)."""


@dataclass(frozen=True)
class SessionHandlers:
    """Called on SDK threads: must return quickly."""

    message: Callable[[Any], None]
    method: Callable[[Any], None]
    desired: Callable[[dict[str, Any]], None]
    connection_changed: Callable[[bool], None]


class HubSession:
    def __init__(
        self,
        config: DeviceConfig,
        identity: Identity,
        chain_file: Path,
        assignment: Assignment,
        handlers: SessionHandlers,
    ) -> None:
        self._config, self._identity, self._chain_file = config, identity, chain_file
        self._assignment, self._handlers = assignment, handlers
        self._client: Any = None
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdk-call")

    @property
    def connected(self) -> bool:
        return bool(self._client is not None and self._client.connected)

    def open(self) -> None:
        from azure.iot.device import IoTHubDeviceClient, exceptions

        try:
            self._client = sdk.create_client(
                IoTHubDeviceClient.create_from_x509_certificate,
                self._identity,
                self._chain_file,
                hostname=self._assignment.assigned_hub,
                device_id=self._assignment.device_id,
                connection_retry=False,
                auto_connect=False,
                **sdk.common_kwargs(self._config),
            )
        except (OSError, ValueError) as exc:
            raise SessionError(f"cannot set up the hub client: {sdk.describe(exc)}") from exc
        try:
            self._call(self._client.connect, timeout=90)  # the SDK's own CONNACK watchdog is 60 s
        except exceptions.CredentialError as exc:
            raise SessionRefused("the hub refused this device's credentials") from exc

    def subscribe(self, timeout: float = CALL_TIMEOUT) -> None:
        """Set the handlers after connect: each one subscribes on this fresh connection and waits for the
        SUBACK without a timeout of its own, so each goes through _call."""
        client, handlers = self._client, self._handlers
        for name, handler in (
            ("on_connection_state_change", lambda: handlers.connection_changed(bool(client.connected))),
            ("on_message_received", handlers.message),
            ("on_method_request_received", handlers.method),
            ("on_twin_desired_properties_patch_received", handlers.desired),
            ("on_background_exception", lambda exc: log.debug("SDK background: %s", sdk.describe(exc))),
        ):
            self._call(functools.partial(setattr, client, name, handler), timeout)

    def send(self, message: OutboxMessage, timeout: float = CALL_TIMEOUT) -> None:
        from azure.iot.device import Message

        sdk_message = Message(
            message.text, message_id=message.message_id, content_encoding="utf-8", content_type="text/plain"
        )
        sdk_message.custom_properties.update(message.properties)
        self._call(lambda: self._client.send_message(sdk_message), timeout)

    def get_twin(self, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        return self._call(self._client.get_twin, timeout)

    def patch_reported(self, patch: dict[str, Any], timeout: float = CALL_TIMEOUT) -> None:
        self._call(lambda: self._client.patch_twin_reported_properties(patch), timeout)

    def respond(self, request_id: str, status: int, payload: Any, timeout: float = CALL_TIMEOUT) -> None:
        from azure.iot.device import MethodResponse

        response = MethodResponse(request_id, status, payload)
        self._call(lambda: self._client.send_method_response(response), timeout)

    def close(self) -> None:
        """Shut the client down without ever hanging the caller."""
        client, self._client = self._client, None
        if client is not None:
            # Own thread, not the call executor: a stuck publish there must not delay the shutdown
            # that unblocks it.
            closer = threading.Thread(target=self._shutdown, args=(client,), name="sdk-shutdown", daemon=True)
            closer.start()
            closer.join(timeout=10)
        self._calls.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _shutdown(client: Any) -> None:
        try:
            client.shutdown()
        except Exception as exc:
            log.debug("hub client shutdown: %s", sdk.describe(exc))
        sdk.close_paho_sockets(client)

    def _call(self, fn: Callable[[], T], timeout: float) -> T:
        from azure.iot.device import exceptions

        if self._client is None:
            raise SessionError("not connected")
        future = self._calls.submit(fn)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout as exc:
            raise SessionError(f"the hub did not answer within {timeout:.0f} s") from exc
        except exceptions.CredentialError:
            raise
        except Exception as exc:  # the SDK also leaks raw pipeline errors (e.g. from _enable_feature)
            raise SessionError(sdk.describe(exc)) from exc
