"""Observable status: the DeviceStatus snapshot and status.json for `--status`.

The running instance holds an OS file lock on instance.lock for its whole life (device/instance_lock.py)
and rewrites status.json atomically on every change. `--status` trusts status.json only while that lock is
held: a crashed instance releases the lock with its process, so a stale pid can never pass for a live one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ConnectionState(StrEnum):
    NOT_PROVISIONED = "not_provisioned"
    CREATING_IDENTITY = "creating_identity"
    PROVISIONING = "provisioning"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    BLOCKED = "blocked"
    ERROR = "error"
    STOPPED = "stopped"


class FirstRunStep(StrEnum):
    KEY = "create_key"
    CERTIFICATE = "issue_certificate"
    KEYRING = "store_in_keyring"
    REGISTER = "register"
    CONNECT = "connect"


class StepOutcome(StrEnum):
    """How a first-run step (or any long-running task shown to the user) stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class DeviceStatus:
    state: ConnectionState = ConnectionState.NOT_PROVISIONED
    message: str = ""  # plain words for end users
    retry_at: datetime | None = None
    registration_id: str | None = None
    device_id: str | None = None
    assigned_hub: str | None = None
    id_scope: str | None = None
    provisioning_host: str | None = None
    certificate_subject: str | None = None
    certificate_issuer: str | None = None
    certificate_not_after: datetime | None = None
    certificate_thumbprint: str | None = None
    keyring_backend: str | None = None
    last_connected: datetime | None = None
    last_disconnected: datetime | None = None
    last_error: str | None = None
    previous_registration_id: str | None = None  # a lost key forced a new identity: retire this one
    outbox: int = 0  # messages waiting to be sent
    inbox: int = 0  # messages received
    log_dir: str | None = None
    inbox_unread: int = 0
    pid: int | None = None  # of the running instance; None when nothing runs
    updated_at: datetime | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Only public facts: there is no secret in this object to begin with."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value.isoformat()
                if isinstance(value, datetime)
                else (str(value) if isinstance(value, StrEnum | Path) else value)
            )
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> DeviceStatus:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if name == "state":
                value = ConnectionState(value)
            elif isinstance(value, str) and name in _TIME_FIELDS:
                value = datetime.fromisoformat(value)
            values[name] = value
        return cls(**values)


_TIME_FIELDS = {"retry_at", "certificate_not_after", "last_connected", "last_disconnected", "updated_at"}


class StatusBoard:
    """The current status snapshot: plain data, replaced on every change, published to the listener and
    to status.json. Nothing is computed here: callers pass the new values (the runtime owns the counts)."""

    def __init__(
        self,
        initial: DeviceStatus,
        publish: Callable[[DeviceStatus], None],
        write: Callable[[Path, bytes], None],
    ) -> None:
        self._lock = threading.Lock()
        # Held across update + publish so listeners get snapshots in the order they were made (the worker,
        # SDK handler threads and the GUI's send() all update). Reentrant: a listener may update, too.
        self._publish_lock = threading.RLock()
        self._status = initial
        self._publish, self._write = publish, write
        self._file: Path | None = None

    def publish_to(self, status_file: Path | None) -> None:
        """Only the holder of the instance lock may write status.json."""
        with self._lock:
            self._file = status_file

    def get(self) -> DeviceStatus:
        with self._lock:
            return self._status

    def update(self, **changes: Any) -> DeviceStatus:
        from client_app.device.state import utcnow

        with self._publish_lock:
            with self._lock:
                self._status = dataclasses.replace(self._status, updated_at=utcnow(), **changes)
                status = self._status
                if self._file is not None:
                    self._write(self._file, json.dumps(status.to_json_dict(), indent=2).encode())
            self._publish(status)
        return status


def read_status_file(path: Path) -> DeviceStatus | None:
    try:
        return DeviceStatus.from_json_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
