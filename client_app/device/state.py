"""Persistent device state (JSON in the data dir): identity facts and the cached DPS assignment.

No secrets here: the key lives in the keyring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from client_app.device.paths import DataLayout, private_dir
from client_app.pki import PkiError, atomic_write, load_certificates

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
    previous_registration_id: str | None = None  # the identity this one replaced after its key was lost

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
            previous_registration_id=raw.get("previous_registration_id"),
        )
    except (AttributeError, KeyError, TypeError) as exc:
        raise StateCorrupt(f"state file {path.name} is incomplete ({exc.__class__.__name__}: {exc})") from exc
    if not state.registration_id:
        raise StateCorrupt(f"state file {path.name} has no registration id")
    return state


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
                private_dir(path.parent)
                atomic_write(path, data, mode, durable=durable)
            except Exception:
                log.warning("cannot write %s", path, exc_info=True)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class StateFiles:
    """The state repository: state.json and identity/chain.pem in the data directory (no secret in either).

    Writes go through the Persister (fsync off the worker thread); the chain is also replaced at once, because
    the SDK reads it from the file when a client is created.
    """

    def __init__(self, layout: DataLayout, persister: Persister) -> None:
        self._layout, self._persister = layout, persister

    @property
    def chain_file(self) -> Path:
        return self._layout.chain_file

    def load(self) -> DeviceState | None:
        return load_state(self._layout.state_file)

    def save(self, state: DeviceState) -> None:
        self._persister.write(self._layout.state_file, state_bytes(state))

    def read_chain(self) -> tuple[x509.Certificate, ...]:
        """The stored chain, leaf first; StateCorrupt when it is missing, unreadable or empty."""
        name = self.chain_file.name
        try:
            chain = tuple(load_certificates(self.chain_file))
        except (PkiError, OSError, ValueError) as exc:
            raise StateCorrupt(f"the certificate file {name} is missing or unreadable") from exc
        if not chain:
            raise StateCorrupt(f"the certificate file {name} holds no certificate")
        return chain

    def write_chain(self, pem: bytes) -> None:
        private_dir(self.chain_file.parent)
        atomic_write(self.chain_file, pem, 0o600, durable=False)
        self._persister.write(self.chain_file, pem)

    def anything_stored(self) -> bool:
        """True if state.json or chain.pem exists (readable or not): an identity was made here before."""
        return self._layout.state_file.exists() or self.chain_file.exists()

    def discard(self) -> None:
        for path in (self._layout.state_file, self.chain_file):
            self._persister.discard(path)
            path.unlink(missing_ok=True)


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def state_bytes(state: DeviceState) -> bytes:
    return json.dumps(dataclasses.asdict(state), indent=2).encode()
