"""LiveSession: what happens while connected. Drains the outbox in order, answers methods and twin patches,
hands C2D messages to the event sink; returns when a new session is needed."""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from client_app.device.events import EventSink, MessageReceived, OutboxChanged
from client_app.device.identity import Identity
from client_app.device.methods import MethodRegistry
from client_app.device.ports import Clock, Session
from client_app.device.session import SessionError, SessionHandlers
from client_app.device.store import OutboxMessage
from client_app.device.twin import Twin, base_reported
from client_app.pki import certificate_to_pem

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # outbox poll while connected: other processes (`client-app --send`) may enqueue
_C2D_SYSTEM_PROPERTIES = (
    ("$.cid", "correlation_id"),
    ("$.ct", "content_type"),
    ("$.ce", "content_encoding"),
    ("$.uid", "user_id"),
    ("$.exp", "expiry_time_utc"),
)


class OutboxPort(Protocol):
    def next_queued(self) -> OutboxMessage | None: ...
    def mark_delivered(self, row_id: int) -> None: ...
    def prune(self) -> None: ...


class Leave(Exception):
    """Leave the session: stop, reconnect, renewal or identity reset was requested."""


class LiveSession:
    def __init__(
        self,
        outbox: OutboxPort,
        twin: Twin,
        methods: MethodRegistry,
        events: EventSink,
        clock: Clock,
        wake: threading.Event,
    ) -> None:
        self._outbox, self._twin, self._methods, self._events = outbox, twin, methods, events
        self._clock, self._wake = clock, wake
        # Answers and acks for this connection only: a new LiveSession starts with none.
        self._commands: queue.Queue[Callable[[Session], None]] = queue.Queue()

    def handlers(self) -> SessionHandlers:
        return SessionHandlers(
            message=self._on_c2d,
            method=self._on_method,
            desired=self._on_desired,
            connection_changed=self._on_connection_changed,
        )

    def sync_twin(self, session: Session, identity: Identity, connected_at: str) -> None:
        reported = {
            **base_reported(),
            "registration_id": identity.registration_id,
            "certificate_not_after": identity.not_after.isoformat(),
            "certificate_thumbprint": identity.thumbprint,
            "certificate": certificate_to_pem(identity.leaf).decode(),  # for the backend's identity audit
            "issuer_thumbprint": identity.issuer_thumbprint,  # `client-app-cloud revoke-signer` queries it
            "connected_at": connected_at,
        }
        try:
            session.patch_reported(reported)
            twin = session.get_twin()
            ack = self._twin.apply(twin.get("desired") or {}, full=True) if isinstance(twin, dict) else None
            if ack:
                session.patch_reported(ack)
        except SessionError as exc:
            if not session.connected:
                raise
            log.warning("twin synchronisation failed: %s", exc)

    def pump(self, session: Session, leave: Callable[[], bool]) -> None:
        """Run queued commands, drain the outbox in order; raise Leave when `leave()` says so, SessionError
        when the connection is gone."""
        while True:
            if leave():
                raise Leave()
            if not session.connected:
                raise SessionError("connection to the hub lost")
            self._wake.clear()
            while not self._commands.empty():
                self._commands.get_nowait()(session)
            message = self._outbox.next_queued()
            if message is not None:
                session.send(message)
                self._outbox.mark_delivered(message.id)
                log.debug("delivered outbox message %s", message.message_id)
                self._events.emit(OutboxChanged())
                continue
            self._clock.wait(self._wake, POLL_INTERVAL)

    # SDK threads below: short and never blocking on the network.
    def _on_c2d(self, message: Any) -> None:
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else str(data or "")
        props: dict[str, str | None] = dict(message.custom_properties or {})
        for key, attr in _C2D_SYSTEM_PROPERTIES:
            value = getattr(message, attr, None)
            if value:
                props[key] = str(value)
        message_id = str(message.message_id or f"no-id-{uuid.uuid4()}")
        self._events.emit(MessageReceived(message_id, text, props))

    def _on_method(self, request: Any) -> None:
        status, payload = self._methods.invoke(request.name, request.payload)
        log.info("direct method %s answered %s", request.name, status)
        self._commands.put(lambda session: session.respond(request.request_id, status, payload))
        self._wake.set()

    def _on_desired(self, patch: dict[str, Any]) -> None:
        ack = self._twin.apply(patch)
        if ack:
            self._commands.put(lambda session: session.patch_reported(ack))
            self._wake.set()

    def _on_connection_changed(self, connected: bool) -> None:
        # Only a wake-up: pump asks its own session, so a late event from an old client changes nothing.
        if not connected:
            self._wake.set()
