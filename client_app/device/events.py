"""The typed events the device core emits, on one sink (the runtime), one way: core → runtime → listener."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from client_app.device.status import FirstRunStep, StepOutcome


@dataclass(frozen=True)
class StatusChanged:
    """Some fields of the status snapshot changed (DeviceStatus field name → new value)."""

    changes: dict[str, Any]


@dataclass(frozen=True)
class StepChanged:
    step: FirstRunStep
    outcome: StepOutcome
    detail: str = ""


@dataclass(frozen=True)
class MessageReceived:
    """A cloud-to-device message as the SDK handed it over; the runtime stores it."""

    message_id: str
    text: str
    properties: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxChanged:
    """A queued message was delivered (the runtime recounts)."""


DeviceEvent = StatusChanged | StepChanged | MessageReceived | OutboxChanged


class EventSink(Protocol):
    def emit(self, event: DeviceEvent) -> None: ...
