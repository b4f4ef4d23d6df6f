"""DeviceRuntime: the device core's public face (contract §3).

No Qt here; listeners are called from core threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from client_app.device import secrets as keystore
from client_app.device.config import DeviceConfig
from client_app.device.connector import SdkConnector
from client_app.device.events import DeviceEvent, MessageReceived, OutboxChanged, StatusChanged, StepChanged
from client_app.device.instance_lock import InstanceLock, running_pid
from client_app.device.methods import MethodRegistry
from client_app.device.paths import private_dir
from client_app.device.ports import SystemClock
from client_app.device.state import Persister, StateFiles
from client_app.device.status import (
    ConnectionState,
    DeviceStatus,
    FirstRunStep,
    StatusBoard,
    StepOutcome,
)
from client_app.device.store import Database, Inbox, InboxMessage, Outbox, OutboxMessage
from client_app.device.supervisor import Supervisor
from client_app.device.twin import Twin, base_reported

__all__ = [
    "ConnectionState",
    "DeviceRuntime",
    "DeviceStatus",
    "FirstRunStep",
    "InboxMessage",
    "OutboxMessage",
    "RuntimeListener",
    "StepOutcome",
]

log = logging.getLogger(__name__)


class RuntimeListener(Protocol):
    """Called from core threads; the GUI turns these into Qt signals."""

    def status_changed(self, status: DeviceStatus) -> None: ...
    def step_changed(self, step: FirstRunStep, outcome: StepOutcome, detail: str) -> None: ...
    def message_received(self, message: InboxMessage) -> None: ...
    def outbox_changed(self) -> None: ...


class _Relay:
    """Forwards events to the listener; a listener's bug must never take the core down."""

    def __init__(self, listener: RuntimeListener | None) -> None:
        self._listener = listener

    def _call(self, name: str, *args: Any) -> None:
        if self._listener is not None:
            try:
                getattr(self._listener, name)(*args)
            except Exception:
                log.warning("listener %s failed", name, exc_info=True)

    def status(self, status: DeviceStatus) -> None:
        self._call("status_changed", status)

    def step(self, step: FirstRunStep, outcome: StepOutcome, detail: str) -> None:
        self._call("step_changed", step, outcome, detail)

    def message(self, message: InboxMessage) -> None:
        self._call("message_received", message)

    def outbox_changed(self) -> None:
        self._call("outbox_changed")


class DeviceRuntime:
    """Owns storage (inbox, outbox, files) and the status snapshot; the worker reports through emit()."""

    def __init__(self, config: DeviceConfig, listener: RuntimeListener | None = None) -> None:
        self.config = config
        self._relay = _Relay(listener)
        for directory in (config.data_dir, config.log_dir):
            private_dir(directory)  # messages, logs and status are nobody else's business on this machine
        if config.config_dir.is_dir():
            private_dir(config.config_dir)
        self._db = Database(config.layout.database)
        self.inbox = Inbox(self._db)
        self.outbox = Outbox(self._db)
        self.inbox.on_change = self._recount
        self.twin = Twin()
        self.methods = MethodRegistry()
        self.methods.register("ping", lambda payload: (200, {"pong": True, "echo": payload}))
        self.methods.register("get_diagnostics", lambda payload: (200, self.diagnostics()))
        self._lock = InstanceLock(config.layout.lock_file)
        self._persister = Persister()
        self._counting = threading.Lock()  # counts are published in the order they were taken
        self._board = StatusBoard(
            DeviceStatus(
                state=ConnectionState.NOT_PROVISIONED,
                message="Not started yet.",
                log_dir=str(config.log_dir),
                id_scope=config.id_scope or None,
                provisioning_host=config.provisioning_host,
            ),
            self._relay.status,
            lambda path, data: self._persister.write(path, data, durable=False),
        )
        self._supervisor = Supervisor(
            config,
            connector=SdkConnector(config.layout.chain_file),
            keys=keystore.KeyringStore(),
            files=StateFiles(config.layout, self._persister),
            clock=SystemClock(),
            events=self,
            outbox=self.outbox,
            twin=self.twin,
            methods=self.methods,
        )
        self._thread: threading.Thread | None = None

    def emit(self, event: DeviceEvent) -> None:
        """The core's one event sink (worker and SDK threads)."""
        if isinstance(event, StatusChanged):
            self._board.update(**event.changes)
            if "state" in event.changes:  # `client-app --send` in another process may have queued more
                self._recount()
        elif isinstance(event, StepChanged):
            self._relay.step(event.step, event.outcome, event.detail)
        elif isinstance(event, MessageReceived):
            self._receive(event)
        elif isinstance(event, OutboxChanged):
            self._recount()
            self._relay.outbox_changed()

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        if not self._lock.acquire():
            pid = running_pid(self.config.layout.lock_file)
            self._board.update(
                state=ConnectionState.ERROR,
                message=f"Another client-app instance (pid {pid}) already uses {self.config.data_dir}."
                " Close it first.",
                last_error="another instance is running",
            )
            return
        self._board.publish_to(self.config.layout.status_file)
        self._board.update(pid=os.getpid())
        self._recount()
        self._thread = threading.Thread(target=self._supervisor.run, name="device-core", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._supervisor.stopping.set()
        self._supervisor.wake.set()
        thread.join(timeout)
        if thread.is_alive():  # stuck in a blocking SDK call (e.g. DPS register); it is a daemon thread
            log.warning("device worker did not stop within %.0f s", timeout)
            self._board.update(state=ConnectionState.STOPPED, message="Stopped.")
        self._board.update(pid=None)
        self._board.publish_to(None)
        self._persister.flush()
        self._lock.release()

    def close(self) -> None:
        self.stop()
        self._persister.close()
        self._db.close()

    # ---- queries and commands --------------------------------------------------------------------
    def status(self) -> DeviceStatus:
        return self._board.get()

    def send(self, text: str, properties: Mapping[str, str] | None = None) -> OutboxMessage:
        """Persist first; the worker sends in order once connected."""
        message = self.outbox.add(text, properties)
        self._recount()
        self._relay.outbox_changed()
        self._supervisor.wake.set()
        return message

    def reconnect_now(self) -> None:
        self._supervisor.request("reconnect")

    def retry(self) -> None:
        self._supervisor.request("retry")

    def reset_identity(self) -> None:
        self._supervisor.request("reset")

    def reprovision(self) -> None:
        self._supervisor.request("reprovision")

    def diagnostics(self) -> dict[str, Any]:
        """For support: public facts only."""
        return {
            **base_reported(),
            "status": self.status().to_json_dict(),
            "keyring": keystore.backend_name(),
            "desired": self.twin.desired,
            "methods": self.methods.names(),
            "time": datetime.now().astimezone().isoformat(),
        }

    def _recount(self) -> None:
        """Count here, then hand the numbers to the board: the snapshot never calls back into storage."""
        with self._counting:
            try:
                counts = {
                    "outbox": self.outbox.queued_count(),
                    "inbox": self.inbox.count(),
                    "inbox_unread": self.inbox.unread_count(),
                }
            except sqlite3.Error:  # a busy/broken database must not stop status reporting
                log.debug("counting messages failed", exc_info=True)
                return
            self._board.update(**counts)

    def _receive(self, event: MessageReceived) -> None:
        """On an SDK handler thread, after paho has already PUBACKed the message: the hub will not send it
        again, so a failed write here loses it (C2D is at-most-once in this window). Say so loudly instead
        of letting the SDK swallow the exception."""
        try:
            stored = self.inbox.add(event.message_id, event.text, event.properties)
        except sqlite3.Error as exc:
            log.error("C2D message %s arrived but could not be stored, it is lost: %s", event.message_id, exc)
            kind = exc.__class__.__name__
            self._board.update(
                last_error=f"A message from the cloud arrived but could not be saved ({kind})."
            )
            return
        if stored is None:
            log.info("duplicate C2D message %s ignored", event.message_id)
            return
        log.info("C2D message %s stored", event.message_id)
        self._recount()
        self._relay.message(stored)
