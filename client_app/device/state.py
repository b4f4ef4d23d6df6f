"""Persistent device state (JSON in the data dir): identity facts and the cached DPS assignment.

No secrets here: the key lives in the keyring.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client_app.pki import atomic_write

log = logging.getLogger(__name__)


class StateCorrupt(Exception):
    """The state file exists but cannot be used; the message says why."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Assignment:
    """What DPS answered; reused on later launches so DPS is not asked again."""

    assigned_hub: str
    device_id: str
    id_scope: str
    provisioning_host: str
    provisioned_at: str


@dataclass(frozen=True)
class DeviceState:
    registration_id: str
    created_at: str
    certificate_issued_at: str
    assignment: Assignment | None = None
    last_connected: str | None = None
    last_disconnected: str | None = None

    def with_(self, **changes: Any) -> DeviceState:
        return dataclasses.replace(self, **changes)


def load_state(path: Path) -> DeviceState | None:
    """None when there is no state yet; StateCorrupt when there is one we cannot trust."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StateCorrupt(f"state file {path.name} is unreadable ({exc.__class__.__name__})") from exc
    try:
        assignment = raw.get("assignment")
        state = DeviceState(
            registration_id=str(raw["registration_id"]),
            created_at=str(raw["created_at"]),
            certificate_issued_at=str(raw["certificate_issued_at"]),
            assignment=Assignment(**assignment) if assignment else None,
            last_connected=raw.get("last_connected"),
            last_disconnected=raw.get("last_disconnected"),
        )
    except (AttributeError, KeyError, TypeError) as exc:
        raise StateCorrupt(f"state file {path.name} is incomplete ({exc.__class__.__name__}: {exc})") from exc
    if not state.registration_id:
        raise StateCorrupt(f"state file {path.name} has no registration id")
    return state


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomic replace without fsync: readers never see half a file; durability is the Persister's job."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(temp, mode)
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class Persister:
    """Atomic file writes on a background thread (fsync'd unless asked not to), newest content per file wins.

    An fsync costs milliseconds; keeping them off the connect path is most of what makes a first launch as
    fast as a bare SDK script. Losing the last write in a power cut is harmless: a missing or stale state
    only means registering again, and a corrupt one re-creates the identity.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[Path, tuple[bytes, int, bool]] = {}
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="device-persister", daemon=True)
        self._thread.start()

    def write(self, path: Path, data: bytes, mode: int = 0o600, *, durable: bool = True) -> None:
        """durable=False: atomic but no fsync (status.json, a live view rewritten on every change)."""
        with self._cond:
            self._pending[path] = (data, mode, durable)
            self._cond.notify_all()

    def discard(self, path: Path) -> None:
        with self._cond:
            self._pending.pop(path, None)
            while self._busy:  # a write of this very file may be under way
                self._cond.wait()

    def flush(self, timeout: float = 10) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 10) -> None:
        """Write what is pending, then end the thread (one per runtime: a restarted core must not add one)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return
                path, (data, mode, durable) = self._pending.popitem()
                self._busy = True
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                (atomic_write if durable else replace_file)(path, data, mode)
            except Exception:
                log.warning("cannot write %s", path, exc_info=True)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def state_bytes(state: DeviceState) -> bytes:
    return json.dumps(dataclasses.asdict(state), indent=2).encode()
