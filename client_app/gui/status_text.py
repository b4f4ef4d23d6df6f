"""Plain-words presentation of the device status, shared by the window, the tray and diagnostics.

No Qt here, so the wording is testable on its own and identical everywhere it appears.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from client_app.device.status import ConnectionState, DeviceStatus, FirstRunStep, StepOutcome


class Tone(StrEnum):
    """Colour family of a state: the tray icon and the status banner use it."""

    OK = "ok"  # connected
    BUSY = "busy"  # first run, provisioning, connecting
    WAITING = "waiting"  # offline, will retry by itself
    PROBLEM = "problem"  # needs the user (or support): blocked, error
    OFF = "off"  # stopped


TONE_COLOURS: dict[Tone, str] = {
    Tone.OK: "#2e9d4f",
    Tone.BUSY: "#2f6fd6",
    Tone.WAITING: "#d08a12",
    Tone.PROBLEM: "#c9362c",
    Tone.OFF: "#7d7d7d",
}

_TONES: dict[ConnectionState, Tone] = {
    ConnectionState.NOT_PROVISIONED: Tone.BUSY,
    ConnectionState.CREATING_IDENTITY: Tone.BUSY,
    ConnectionState.PROVISIONING: Tone.BUSY,
    ConnectionState.CONNECTING: Tone.BUSY,
    ConnectionState.CONNECTED: Tone.OK,
    ConnectionState.RECONNECTING: Tone.WAITING,
    ConnectionState.BLOCKED: Tone.PROBLEM,
    ConnectionState.ERROR: Tone.PROBLEM,
    ConnectionState.STOPPED: Tone.OFF,
}

STEP_LABELS: dict[FirstRunStep, str] = {
    FirstRunStep.KEY: "Creating this computer's identity",
    FirstRunStep.CERTIFICATE: "Issuing its certificate",
    FirstRunStep.KEYRING: "Storing it in the system keyring",
    FirstRunStep.REGISTER: "Registering with the provisioning service",
    FirstRunStep.CONNECT: "Connecting to the cloud",
}


# What a keyring backend is called where a user would recognise it (keyring's class names are jargon).
_KEYRING_NAMES = (
    ("SecretService", "the system keyring (GNOME Keyring or KWallet)"),
    ("kwallet", "KWallet"),
    ("Windows", "Windows Credential Manager"),
    ("macOS", "the macOS Keychain"),
)
# Exception chains and class names belong in the log, not in a sentence for a person.
_TECHNICAL = re.compile(r" <- |Traceback|\b[A-Z]\w*(?:Error|Exception)\b|\[Errno")


def keyring_name(backend: str | None) -> str:
    for marker, name in _KEYRING_NAMES:
        if backend and marker.lower() in backend.lower():
            return name
    return "the system keyring"


def is_technical(text: str) -> bool:
    return bool(_TECHNICAL.search(text))


def step_detail(step: FirstRunStep, outcome: StepOutcome, detail: str) -> str:
    """The line under a first-run step, in plain words (the core's detail may be a class name or an ID)."""
    if outcome == StepOutcome.FAILED:
        return "" if is_technical(detail) else detail
    if step is FirstRunStep.KEYRING:
        return f"In {keyring_name(detail)}" if detail else ""
    if step is FirstRunStep.REGISTER and detail:
        return f"Contacting {detail}" if outcome == StepOutcome.RUNNING else f"Assigned to {detail}"
    if step is FirstRunStep.CONNECT and detail:
        return f"Connecting to {detail}" if outcome == StepOutcome.RUNNING else f"Connected to {detail}"
    return ""  # key and certificate: the registration ID means nothing here (support panel shows it)


def tone_for(state: ConnectionState | str) -> Tone:
    try:
        return _TONES[ConnectionState(state)]
    except ValueError:
        return Tone.PROBLEM


def seconds_until(moment: datetime | None, now: datetime | None = None) -> int | None:
    """Whole seconds left until `moment` (rounded up, never negative); None when there is no moment."""
    if moment is None:
        return None
    now = now or datetime.now(UTC)
    if moment.tzinfo is None:  # the core writes UTC; be lenient with naive values
        moment = moment.replace(tzinfo=UTC)
    return max(0, math.ceil((moment - now).total_seconds()))


BLOCKED_DETAIL = (
    "The cloud refused this computer. Give your administrator the device ID below and ask them to "
    "enable it, then press Retry."
)
BLOCKED_SEND_HINT = "Blocked: messages are kept here and sent once the administrator enables this computer."
OFFLINE_SEND_HINT = "Offline: messages are kept and sent when the connection is back."
ONLINE_SEND_HINT = "Messages are delivered right away."


@dataclass(frozen=True)
class StatusText:
    headline: str  # short: banner title and tray tooltip
    detail: str  # a sentence in plain words, may be empty
    tone: Tone


def describe(status: DeviceStatus, now: datetime | None = None) -> StatusText:
    """What to tell an end user about `status`. `now` is only for the reconnect countdown."""
    state = ConnectionState(status.state)
    detail = status.message or ""
    hub = status.assigned_hub or "the cloud"
    if state is ConnectionState.CONNECTED:
        headline = f"Connected to {hub}"
    elif state is ConnectionState.RECONNECTING:
        left = seconds_until(status.retry_at, now)
        if left is None:
            headline = "Offline, reconnecting"
        elif left == 0:
            headline = "Offline, reconnecting now"
        else:
            headline = f"Offline, reconnecting in {left} s"
    elif state is ConnectionState.NOT_PROVISIONED:
        headline = "Not set up yet"
    elif state is ConnectionState.CREATING_IDENTITY:
        headline = "Creating this computer's identity"
    elif state is ConnectionState.PROVISIONING:
        headline = "Registering with the provisioning service"
    elif state is ConnectionState.CONNECTING:
        headline = f"Connecting to {hub}"
    elif state is ConnectionState.BLOCKED:
        headline = "Blocked by the cloud"
        # One wording, ours: the core's reasons differ by where the refusal came from (DPS or the hub)
        # and carry protocol details; the log and the support panel keep those.
        detail = BLOCKED_DETAIL
    elif state is ConnectionState.ERROR:
        headline = "Not connected: something needs attention"
    else:
        headline = "Stopped"
    if detail.rstrip(". ") == headline.rstrip(". "):
        detail = ""  # the core's message often repeats the headline: say it once
    if state is ConnectionState.CONNECTED and not detail and status.last_connected is not None:
        detail = f"Connected since {_clock(status.last_connected)}. Messages arrive here as they are sent."
    return StatusText(headline=headline, detail=detail, tone=tone_for(state))


def _clock(moment: datetime) -> str:
    local = moment.astimezone() if moment.tzinfo else moment
    if local.date() == datetime.now(local.tzinfo).date():
        return local.strftime("%H:%M")
    return local.strftime("%Y-%m-%d %H:%M")


def send_hint(status: DeviceStatus | None) -> str:
    state = ConnectionState(status.state) if status is not None else None
    if state is ConnectionState.CONNECTED:
        return ONLINE_SEND_HINT
    if state is ConnectionState.BLOCKED:
        return BLOCKED_SEND_HINT
    return OFFLINE_SEND_HINT


def tooltip(status: DeviceStatus, now: datetime | None = None) -> str:
    text = describe(status, now)
    lines = ["client-app", text.headline]
    if status.inbox:
        lines.append(f"{status.inbox} message(s) received")
    if status.outbox:
        lines.append(f"{status.outbox} message(s) waiting to be sent")
    return "\n".join(lines)
