"""Fakes for the supervisor's ports (client_app/device/ports.py): a clock, a keyring, a cloud connector."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from client_app.device.events import DeviceEvent, StatusChanged, StepChanged
from client_app.device.provisioning import ProvisioningFailed
from client_app.device.secrets import KeyMissing, KeyringUnavailable
from client_app.device.session import SessionError
from client_app.device.state import Assignment
from client_app.device.store import OutboxMessage


class FakeClock:
    """Time moves only when the code under test waits (or the test calls advance)."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = datetime.now(UTC).replace(microsecond=0)  # certificates are issued in real time
        self.on_wait: Callable[[], None] = lambda: None
        self.waits: list[float | None] = []

    def monotonic(self) -> float:
        return self.mono

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        self.waits.append(timeout)
        if not event.is_set():
            self.on_wait()
        if not event.is_set():
            assert timeout is not None, "would wait forever"
            self.advance(timeout)
        return event.is_set()


class FakeKeys:
    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}
        self.locked = False
        self.deleted: list[str] = []

    def backend_name(self) -> str:
        return "fake.Keyring"

    def check_backend(self) -> None:
        pass

    def _gate(self) -> None:
        if self.locked:
            raise KeyringUnavailable("The system keyring is locked. Unlock it and press Retry.")

    def store(self, registration_id: str, key: Any) -> None:
        self._gate()
        self.entries[registration_id] = key

    def load(self, registration_id: str) -> Any:
        self._gate()
        key = self.entries.get(registration_id)
        if key is None:
            raise KeyMissing("the device key is missing from the keyring")
        if key == "garbage":
            raise KeyMissing("the device key in the keyring is unreadable")
        return key

    def delete(self, registration_id: str) -> None:
        self.deleted.append(registration_id)
        self.entries.pop(registration_id, None)


class FakeSession:
    def __init__(self, connector: FakeConnector, handlers: Any) -> None:
        self.connector, self.handlers = connector, handlers
        self.connected = False

    def open(self) -> None:
        outcome = self.connector.open_outcomes.pop(0) if self.connector.open_outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        self.connected = True

    def subscribe(self) -> None:
        pass

    def send(self, message: OutboxMessage) -> None:
        self.connector.sent.append(message.text)

    def get_twin(self) -> dict[str, Any]:
        return {"desired": {}}

    def patch_reported(self, patch: dict[str, Any]) -> None:
        self.connector.reported.append(patch)

    def respond(self, request_id: str, status: int, payload: Any) -> None:
        pass

    def close(self) -> None:
        self.connected = False


@dataclass
class FakeConnector:
    """provision_outcomes / open_outcomes: queued results (an Exception is raised); empty = success."""

    provision_outcomes: list[Exception | None] = field(default_factory=list)
    open_outcomes: list[Exception | None] = field(default_factory=list)
    provisioned: list[str] = field(default_factory=list)  # registration ids, one per DPS call
    sessions: list[FakeSession] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    reported: list[dict[str, Any]] = field(default_factory=list)

    def provision(self, config: Any, identity: Any) -> Assignment:
        self.provisioned.append(identity.registration_id)
        outcome = self.provision_outcomes.pop(0) if self.provision_outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        rid = identity.registration_id
        return Assignment("hub.test", rid, config.id_scope, config.provisioning_host, "t")

    def session(self, config: Any, identity: Any, assignment: Any, handlers: Any) -> FakeSession:
        session = FakeSession(self, handlers)
        self.sessions.append(session)
        return session

    def release(self) -> None:
        pass


def offline(times: int) -> list[Exception | None]:
    return [SessionError("connection refused")] * times


def dps_down(times: int) -> list[Exception | None]:
    return [ProvisioningFailed("registration timed out")] * times


class Recorder:
    """The event sink: the merged status fields and every step."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.states: list[Any] = []
        self.steps: list[tuple[str, str]] = []
        self.events: list[DeviceEvent] = []

    def emit(self, event: DeviceEvent) -> None:
        self.events.append(event)
        if isinstance(event, StatusChanged):
            self.status.update(event.changes)
            if "state" in event.changes:
                self.states.append(event.changes["state"])
        elif isinstance(event, StepChanged):
            self.steps.append((str(event.step), str(event.outcome)))


class ListOutbox:
    def __init__(self, *texts: str) -> None:
        self.queued = [OutboxMessage(i, f"m{i}", text) for i, text in enumerate(texts)]
        self.delivered: list[OutboxMessage] = []
        self.pruned = 0

    def next_queued(self) -> OutboxMessage | None:
        return self.queued[0] if self.queued else None

    def mark_delivered(self, row_id: int) -> None:
        self.delivered += [m for m in self.queued if m.id == row_id]
        self.queued = [m for m in self.queued if m.id != row_id]

    def prune(self) -> None:
        self.pruned += 1
