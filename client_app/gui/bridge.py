"""RuntimeBridge: the only object the device core calls, from its own threads.

The core runs in a process of its own (client_app/core_service.py); RemoteRuntime's reader thread
makes the same listener calls here that a DeviceRuntime makes in one process.

Its listener methods never touch widgets: they stash the event and post a private signal that
Qt delivers on the GUI thread (queued connection). There the bridge drains what piled up and
emits the public signals once, at most every FLUSH_INTERVAL_MS for messages and status and at most
MAX_MESSAGES_PER_TURN messages at a time, so a burst of 1,000 incoming messages costs a few dozen
model inserts and repaints, not 1,000, and none of them is large.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

from client_app.device.status import DeviceStatus, FirstRunStep, StepOutcome

if TYPE_CHECKING:
    from client_app.device.messages import InboxMessage

log = logging.getLogger(__name__)

# Messages and status reach the widgets at most this often (20 per second: still live to a reader, while
# a burst's repaints stay few enough that the GUI thread is never busy for a whole frame).
FLUSH_INTERVAL_MS = 50
# And at most this many messages in one event-loop turn (a backlog, the inbox kept from earlier runs): the
# rest follow in the next turns, so no insert and repaint holds the loop for more than a few milliseconds.
MAX_MESSAGES_PER_TURN = 100


class RuntimeBridge(QObject):
    """Implements RuntimeListener. Public signals are emitted on the GUI thread only."""

    statusChanged = Signal(object)  # the newest DeviceStatus
    stepChanged = Signal(object, object, str)  # FirstRunStep, StepOutcome (the enums themselves), detail
    messagesArrived = Signal(list)  # list[InboxMessage], oldest first
    outboxChanged = Signal()
    commandFailed = Signal(str, str)  # what was tried, why it failed (plain words)
    coreLost = Signal(str)  # the core's process died or broke the protocol (plain words)

    # Posted from core threads; queued to the bridge's own thread.
    _statusPosted = Signal()
    _stepPosted = Signal(object, object, str)
    _messagesPosted = Signal()
    _outboxPosted = Signal()
    _failurePosted = Signal(str, str)
    _lostPosted = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending_messages: list[InboxMessage] = []
        self._latest_status: DeviceStatus | None = None
        self._status_posted = False
        self._outbox_posted = False
        queued = Qt.ConnectionType.QueuedConnection
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.timeout.connect(self._flush)
        self._last_flush = float("-inf")
        self._statusPosted.connect(self._schedule_flush, queued)
        self._stepPosted.connect(self.stepChanged, queued)
        self._messagesPosted.connect(self._schedule_flush, queued)
        self._outboxPosted.connect(self._deliver_outbox, queued)
        self._failurePosted.connect(self.commandFailed, queued)
        self._lostPosted.connect(self.coreLost, queued)
        # One worker for core calls that may block (disk, keyring, thread joins).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gui-command")

    # --- RuntimeListener: called from core threads ------------------------------------------------

    def status_changed(self, status: DeviceStatus) -> None:
        with self._lock:
            self._latest_status = status
            if self._status_posted:
                return  # a delivery is already on its way and will read the newest status
            self._status_posted = True
        self._statusPosted.emit()

    def step_changed(self, step: FirstRunStep, outcome: StepOutcome, detail: str) -> None:
        # Few and each one matters for the first-run list: never coalesced.
        self._stepPosted.emit(FirstRunStep(step), StepOutcome(outcome), detail or "")

    def message_received(self, message: InboxMessage) -> None:
        with self._lock:
            first = not self._pending_messages
            self._pending_messages.append(message)
        if first:
            self._messagesPosted.emit()

    def outbox_changed(self) -> None:
        with self._lock:
            if self._outbox_posted:
                return
            self._outbox_posted = True
        self._outboxPosted.emit()

    def core_lost(self, reason: str) -> None:
        """RemoteRuntime's on_lost, on its reader thread."""
        self._lostPosted.emit(reason)

    # --- GUI thread --------------------------------------------------------------------------------

    def latest_status(self) -> DeviceStatus | None:
        with self._lock:
            return self._latest_status

    @Slot()
    def _schedule_flush(self) -> None:
        if self._flush_timer.isActive():
            return  # the flush on its way delivers this too
        wait_ms = self._last_flush + FLUSH_INTERVAL_MS - time.monotonic() * 1000
        self._flush_timer.start(int(max(0.0, wait_ms)))

    @Slot()
    def _flush(self) -> None:
        self._last_flush = time.monotonic() * 1000
        self._deliver_messages()
        self._deliver_status()

    def _deliver_status(self) -> None:
        with self._lock:
            status = self._latest_status
            self._status_posted = False
        if status is not None:
            self.statusChanged.emit(status)

    def _deliver_messages(self) -> None:
        with self._lock:
            batch = self._pending_messages[:MAX_MESSAGES_PER_TURN]
            del self._pending_messages[:MAX_MESSAGES_PER_TURN]
            backlog = bool(self._pending_messages)
        if batch:
            self.messagesArrived.emit(batch)
        if backlog:  # no new post comes for these (the list is not empty): the next turn takes them
            self._flush_timer.start(0)

    @Slot()
    def _deliver_outbox(self) -> None:
        with self._lock:
            self._outbox_posted = False
        self.outboxChanged.emit()

    def run_command(self, what: str, call: Callable[..., Any], *args: Any) -> Future | None:
        """Run a core call that may block off the GUI thread; a failure becomes commandFailed."""

        def guarded() -> Any:
            try:
                return call(*args)
            except Exception as exc:
                log.exception("%s failed", what)
                self._failurePosted.emit(what, str(exc) or type(exc).__name__)
                return None

        try:
            return self._worker.submit(guarded)
        except RuntimeError:  # shut down: the app is quitting, nothing left to do
            log.info("%s skipped: the app is shutting down", what)
            return None

    def shutdown(self) -> None:
        """Wait for running commands; call before the runtime is stopped."""
        self._worker.shutdown(wait=True)
