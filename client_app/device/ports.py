"""The supervisor's ports: time, the keyring, the identity files and the network, each behind a Protocol.

Production wires SystemClock, secrets.KeyringStore, state.StateFiles and connector.SdkConnector; unit tests
(tests/device/test_supervisor.py) wire fakes and a fake clock, so every policy runs in milliseconds.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from client_app.device.config import DeviceConfig
from client_app.device.identity import Identity
from client_app.device.session import SessionHandlers
from client_app.device.state import Assignment
from client_app.device.store import OutboxMessage
from client_app.pki import PrivateKey


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> datetime:  # timezone-aware UTC
        ...
    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until `event` is set or `timeout` seconds passed (None: no limit); True if it was set."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)


class KeyStore(Protocol):
    """Raises secrets.KeyringUnavailable (locked, absent, not answering) and secrets.KeyMissing."""

    def backend_name(self) -> str: ...
    def check_backend(self) -> None: ...
    def store(self, registration_id: str, key: PrivateKey) -> None: ...
    def load(self, registration_id: str) -> PrivateKey: ...
    def delete(self, registration_id: str) -> None: ...


class Session(Protocol):
    """One hub connection (session.HubSession); raises session.SessionError / SessionRefused."""

    @property
    def connected(self) -> bool: ...
    def open(self) -> None: ...
    def subscribe(self) -> None: ...
    def send(self, message: OutboxMessage) -> None: ...
    def get_twin(self) -> dict[str, Any]: ...
    def patch_reported(self, patch: dict[str, Any]) -> None: ...
    def respond(self, request_id: str, status: int, payload: Any) -> None: ...
    def close(self) -> None: ...


class Connector(Protocol):
    """Provisions (DPS) and opens hub sessions; raises provisioning.ProvisioningBlocked/ProvisioningFailed."""

    def provision(self, config: DeviceConfig, identity: Identity) -> Assignment: ...
    def session(
        self, config: DeviceConfig, identity: Identity, assignment: Assignment, handlers: SessionHandlers
    ) -> Session: ...
    def release(self) -> None:
        """Run clean-ups deferred so far (old SDK clients), off the caller's thread."""
        ...
