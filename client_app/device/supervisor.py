"""The worker thread: identity → provisioning → hub session, with our own back-off instead of the SDK's.

Every step that can fail maps to one observable state:
keyring/issuer problems → ERROR (wait for Retry), DPS refusal → BLOCKED (wait for Retry, no loop),
anything transient → RECONNECTING with a jittered, capped back-off.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from client_app.device import identity as ids
from client_app.device import secrets as keystore
from client_app.device import state as st
from client_app.device.backoff import Backoff
from client_app.device.config import ConfigError, DeviceConfig
from client_app.device.methods import MethodRegistry
from client_app.device.provisioning import ProvisioningBlocked, ProvisioningFailed, provision
from client_app.device.sdk import describe
from client_app.device.session import HubSession, SessionError, SessionHandlers, SessionRefused
from client_app.device.status import ConnectionState, FirstRunStep, StatusBoard
from client_app.device.store import InboxMessage, Outbox
from client_app.device.twin import Twin, base_reported
from client_app.pki import CertificateAuthority, sha1_thumbprint

log = logging.getLogger(__name__)

S = ConnectionState
POLL_INTERVAL = 1.0  # outbox poll while connected: other processes (`client-app --send`) may enqueue
REPROVISION_AFTER = timedelta(minutes=20)  # hub unreachable this long → ask DPS again (docs: 15-30 min)
KEYRING_RETRY = 60.0  # a locked keyring may get unlocked without anyone pressing Retry
RENEWAL_RETRY = 3600.0  # after a failed renewal (issuer expired?), keep the working leaf this long
_RESTARTS = frozenset({"retry", "reconnect", "reprovision", "reset"})
OFFLINE_MESSAGE = "Cannot reach the cloud right now. Messages are kept and sent once the connection is back."
UNEXPECTED_MESSAGE = "Something unexpected went wrong (details are in the log). Trying again automatically."


class Events(Protocol):
    def step(
        self, step: FirstRunStep, outcome: Literal["running", "done", "failed"], detail: str
    ) -> None: ...
    def message(self, message: InboxMessage) -> None: ...
    def outbox_changed(self) -> None: ...


class _Interrupted(Exception):
    """Leave the current session: stop, reconnect, renewal or identity reset was requested."""


class Supervisor:
    def __init__(
        self,
        config: DeviceConfig,
        board: StatusBoard,
        outbox: Outbox,
        receive: Callable[[str, str, dict[str, str | None]], None],
        twin: Twin,
        methods: MethodRegistry,
        events: Events,
        persister: st.Persister,
    ) -> None:
        self.config, self.board, self.outbox, self.receive = config, board, outbox, receive
        self.twin, self.methods, self.events = twin, methods, events
        self.layout = config.layout
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._commands: queue.Queue[Callable[[HubSession], None]] = queue.Queue()
        self._requests: set[str] = set()
        self._requests_lock = threading.Lock()
        self._identity: ids.Identity | None = None
        self._state: st.DeviceState | None = None
        self._issuer: CertificateAuthority | None = None
        self._later: list[Callable[[], None]] = []  # clean-ups deferred until connected
        self.persister = persister
        self._backoff = Backoff(base=1.0, cap=config.backoff_cap)
        self._offline_since: float | None = None
        self._renew_not_before = 0.0  # monotonic time; set after a failed renewal

    # ---- requests from other threads -------------------------------------------------------------
    def request(self, what: str) -> None:
        """One of _RESTARTS; handled by the worker at its next chance."""
        with self._requests_lock:
            self._requests.add(what)
        self.wake.set()

    def _take(self, what: str) -> bool:
        with self._requests_lock:
            if what in self._requests:
                self._requests.discard(what)
                return True
            return False

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._cycle()
            except _Interrupted:
                continue
            except keystore.KeyringUnavailable as exc:
                self._fail(S.ERROR, str(exc), wait=KEYRING_RETRY)
            except ids.IdentityError as exc:
                self._fail(S.ERROR, str(exc), wait=None)
            except ConfigError as exc:  # only a local cloud's connection.json can change while we run
                self._fail(
                    S.ERROR, str(exc), wait=self._backoff.next_delay() if self.config.local_cloud else None
                )
            except ProvisioningBlocked as exc:
                self._fail(S.BLOCKED, str(exc), wait=None)
            except (ProvisioningFailed, SessionError) as exc:
                # SDK error chains are for the log and support (last_error), not for the status line.
                self._fail(
                    S.RECONNECTING,
                    OFFLINE_MESSAGE,
                    wait=self._backoff.next_delay(),
                    detail=f"Offline: {exc}",
                )
            except Exception as exc:  # a bug must not kill the worker silently
                log.exception("unexpected error in the device worker")
                self._fail(
                    S.ERROR,
                    UNEXPECTED_MESSAGE,
                    wait=self._backoff.next_delay(),
                    detail=f"Unexpected error: {describe(exc)}",
                )
        self._run_later()
        self.persister.flush()
        self.board.update(state=S.STOPPED, message="Stopped.", retry_at=None)

    def _fail(
        self, state: ConnectionState, message: str, wait: float | None, detail: str | None = None
    ) -> None:
        """message: a sentence for the user; detail (default: message) goes to the log and last_error."""
        detail = detail or message
        log.warning("%s: %s", state.value, detail)
        self._run_later()
        retry_at = st.utcnow() + timedelta(seconds=wait) if wait is not None else None
        user_message = message
        if state is ConnectionState.BLOCKED or (state is ConnectionState.ERROR and wait is None):
            sentence = message if message.endswith((".", "!", "?")) else f"{message}."
            user_message = f"{sentence} Then press Retry."
        self.board.update(
            state=state, message=user_message, last_error=detail, retry_at=retry_at, recount=True
        )
        if state is ConnectionState.RECONNECTING and self._offline_since is None:
            self._offline_since = time.monotonic()
        # Only an explicit request ends the wait early; None (blocked, broken issuer) waits for one.
        deadline = None if wait is None else time.monotonic() + wait
        while not self.stopping.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self.wake.wait(remaining)
            self.wake.clear()
            with self._requests_lock:
                if self._requests & _RESTARTS:
                    break
        self._take("retry")
        self._take("reconnect")

    def _cycle(self) -> None:
        self.wake.clear()
        config = self.config.refreshed()  # a restarted local cloud may have moved
        if self._take("reset"):
            self._reset_identity("reset requested")
        identity = self._ensure_identity()
        identity = self._renew_if_due(identity)
        assignment, fresh = self._ensure_assignment(config, identity)
        try:
            self._serve(config, identity, assignment)
        except SessionRefused:
            if fresh:
                raise ProvisioningBlocked(
                    "The IoT hub refused this device although it was just registered. "
                    "Ask your administrator to enable the device."
                ) from None
            log.info("hub refused the cached assignment: registering again")
            self._drop_assignment()
            raise _Interrupted() from None
        except SessionError:
            if (
                self._offline_since
                and time.monotonic() - self._offline_since > REPROVISION_AFTER.total_seconds()
            ):
                log.info("hub unreachable for long: will ask DPS again")
                self._drop_assignment()
            raise

    # ---- identity --------------------------------------------------------------------------------
    def _ensure_identity(self) -> ids.Identity:
        if self._identity is not None:
            return self._identity
        try:
            state = st.load_state(self.layout.state_file)
        except st.StateCorrupt as exc:
            log.warning("re-creating the identity: %s", exc)
            state = None
        if state is not None:
            try:
                key = keystore.load_key(state.registration_id)
                identity = ids.load_chain(self.layout.chain_file, state.registration_id, key)
            except (keystore.KeyMissing, ids.IdentityError) as exc:
                log.warning("re-creating the identity: %s", exc)
                keystore.delete_key(state.registration_id)
            else:
                self._set_identity(identity, state)
                return identity
        return self._create_identity()

    def _issuer_ca(self) -> CertificateAuthority:
        if self._issuer is None:
            self._issuer = ids.load_issuer(self.config.issuer_bundle_path)
        return self._issuer

    def _create_identity(self) -> ids.Identity:
        self.board.update(
            state=S.CREATING_IDENTITY, message="Creating this computer's identity…", retry_at=None
        )
        keystore.check_backend()  # no keyring at all: say so now, not after registering
        step_names = {"key": FirstRunStep.KEY, "certificate": FirstRunStep.CERTIFICATE}
        current: list[FirstRunStep] = [FirstRunStep.CERTIFICATE]

        def on_step(name: str) -> None:
            if name != "key":
                self.events.step(current[-1], "done", "")
            current.append(step_names[name])
            self.events.step(step_names[name], "running", "")

        try:
            identity = ids.create_identity(self._issuer_ca(), self.config.leaf_days, None, on_step)
        except ids.IdentityError as exc:
            self.events.step(current[-1], "failed", str(exc))
            raise
        self.events.step(current[-1], "done", identity.registration_id)
        # The key goes into the keyring before anything refers to it and before DPS hears of this device:
        # a locked keyring must stop first launch here, not after registering an identity we cannot keep.
        self.events.step(FirstRunStep.KEYRING, "running", keystore.backend_name())
        try:
            keystore.store_key(identity.registration_id, identity.key)
        except keystore.KeyringUnavailable as exc:
            self.events.step(FirstRunStep.KEYRING, "failed", str(exc))
            raise
        self.events.step(FirstRunStep.KEYRING, "done", keystore.backend_name())
        self._write_chain(identity)
        now = st.utcnow().isoformat()
        state = st.DeviceState(
            registration_id=identity.registration_id, created_at=now, certificate_issued_at=now
        )
        log.info(
            "identity %s created (leaf %s, valid until %s)",
            identity.registration_id,
            identity.thumbprint,
            identity.not_after.isoformat(),
        )
        self._set_identity(identity, state)
        self._save_state(state)
        return identity

    def _save_state(self, state: st.DeviceState) -> None:
        self._state = state
        self.persister.write(self.layout.state_file, st.state_bytes(state))

    def _write_chain(self, identity: ids.Identity) -> None:
        data = identity.chain_pem()
        st.replace_file(self.layout.chain_file, data)  # now: the SDK reads it at client creation
        self.persister.write(self.layout.chain_file, data, mode=0o644)  # durably too, off this thread

    def _set_identity(self, identity: ids.Identity, state: st.DeviceState) -> None:
        self._identity, self._state = identity, state
        assignment = state.assignment
        self.board.update(
            registration_id=identity.registration_id,
            certificate_subject=ids.subject_cn(identity.leaf),
            certificate_issuer=ids.issuer_cn(identity.leaf),
            certificate_not_after=identity.not_after,
            certificate_thumbprint=sha1_thumbprint(identity.leaf),
            keyring_backend=keystore.backend_name(),
            device_id=assignment.device_id if assignment else None,
            assigned_hub=assignment.assigned_hub if assignment else None,
            last_connected=st.parse_time(state.last_connected),
            last_disconnected=st.parse_time(state.last_disconnected),
        )

    def _reset_identity(self, reason: str) -> None:
        log.info("resetting the identity: %s", reason)
        if self._state is not None:
            keystore.delete_key(self._state.registration_id)
        for path in (self.layout.state_file, self.layout.chain_file):
            self.persister.discard(path)
            path.unlink(missing_ok=True)
        self._identity = self._state = None

    def _renew_if_due(self, identity: ids.Identity) -> ids.Identity:
        assert self._state is not None
        reason = None
        if self._renewal_due(identity):
            reason = f"{self.config.renew_fraction:.0%} of the certificate's life has passed"
        if reason is None:
            try:
                if ids.issuer_replaced(identity, self._issuer_ca()):
                    reason = "the app carries a new certificate issuer"
            except ids.IdentityError as exc:  # keep a working leaf even if the bundle went bad
                log.warning("cannot check the issuer: %s", exc)
        if reason is None:
            return identity
        log.info("renewing the device certificate: %s", reason)
        try:
            renewed = ids.create_identity(self._issuer_ca(), self.config.leaf_days, identity.registration_id)
            keystore.store_key(renewed.registration_id, renewed.key)
        except (ids.IdentityError, keystore.KeyringUnavailable) as exc:
            # A locked keyring or a bad bundle must not take a working device offline: the old key and
            # leaf are untouched until store_key succeeds.
            if identity.not_after > st.utcnow():
                log.warning("renewal failed, keeping the current certificate for now: %s", exc)
                self._renew_not_before = time.monotonic() + RENEWAL_RETRY
                return identity
            raise
        self._write_chain(renewed)
        state = self._state.with_(certificate_issued_at=st.utcnow().isoformat(), assignment=None)
        self._save_state(state)  # assignment dropped: re-provision with the new leaf
        self._set_identity(renewed, state)
        return renewed

    def _renewal_due(self, identity: ids.Identity) -> bool:
        if self._state is None or time.monotonic() < self._renew_not_before:
            return False
        issued = datetime.fromisoformat(self._state.certificate_issued_at)
        return ids.renewal_due(identity, issued, self.config.renew_fraction, st.utcnow())

    # ---- provisioning ----------------------------------------------------------------------------
    def _ensure_assignment(self, config: DeviceConfig, identity: ids.Identity) -> tuple[st.Assignment, bool]:
        assert self._state is not None
        cached = self._state.assignment
        if self._take("reprovision"):
            cached = None
        if config.local_cloud and not config.id_scope:  # local cloud stopped: its connection.json is gone
            if cached:
                return cached, False
            raise ProvisioningFailed(f"the local cloud in {config.local_cloud} is not running")
        if (
            cached
            and cached.id_scope == config.id_scope
            and cached.provisioning_host == config.provisioning_host
        ):
            return cached, False
        if not config.id_scope:
            raise ConfigError(
                "No ID scope is configured. Set id_scope in config.toml, CLIENT_APP_ID_SCOPE or --id-scope."
            )
        self.board.update(
            state=S.PROVISIONING,
            message="Registering with the cloud…",
            retry_at=None,
            id_scope=config.id_scope,
            provisioning_host=config.provisioning_host,
        )
        self.events.step(FirstRunStep.REGISTER, "running", config.provisioning_host)
        try:
            assignment = provision(config, identity, self.layout.chain_file, self._later)
        except (ProvisioningBlocked, ProvisioningFailed) as exc:
            self.events.step(FirstRunStep.REGISTER, "failed", str(exc))
            raise
        self.events.step(FirstRunStep.REGISTER, "done", assignment.assigned_hub)
        self._save_state(self._state.with_(assignment=assignment))
        self.board.update(device_id=assignment.device_id, assigned_hub=assignment.assigned_hub)
        return assignment, True

    def _drop_assignment(self) -> None:
        if self._state is not None and self._state.assignment is not None:
            self._save_state(self._state.with_(assignment=None))

    # ---- session ---------------------------------------------------------------------------------
    def _serve(self, config: DeviceConfig, identity: ids.Identity, assignment: st.Assignment) -> None:
        if self.stopping.is_set():  # stop() came during a long DPS call: do not open a hub session now
            raise _Interrupted()
        was_offline = self.board.get().state is S.RECONNECTING
        self.board.update(
            state=S.RECONNECTING if was_offline else S.CONNECTING,
            id_scope=config.id_scope,
            provisioning_host=config.provisioning_host,
            message=f"Connecting to {assignment.assigned_hub}…",
        )
        self.events.step(FirstRunStep.CONNECT, "running", assignment.assigned_hub)
        self._drop_commands()  # answers and acks for an earlier connection: the hub no longer waits for them
        session = HubSession(config, identity, self.layout.chain_file, assignment, self._handlers())
        try:
            try:
                session.open()
            except SessionError as exc:
                self.events.step(FirstRunStep.CONNECT, "failed", str(exc))
                raise
            self._on_connected(assignment)
            self._run_later()
            self.outbox.prune()
            session.subscribe()
            self._sync_twin(session, identity)
            self._pump(session, identity)
        finally:
            session.close()
            if self.board.get().state is S.CONNECTED:
                self._mark_disconnected()

    def _drop_commands(self) -> None:
        while not self._commands.empty():
            self._commands.get_nowait()

    def _run_later(self) -> None:
        jobs, self._later = self._later, []
        if jobs:
            threading.Thread(
                target=lambda: [job() for job in jobs], name="device-cleanup", daemon=True
            ).start()

    def _on_connected(self, assignment: st.Assignment) -> None:
        assert self._state is not None
        now = st.utcnow()
        self._save_state(self._state.with_(last_connected=now.isoformat()))
        self._backoff.reset()
        self._offline_since = None
        self.events.step(FirstRunStep.CONNECT, "done", assignment.assigned_hub)
        self.board.update(
            state=S.CONNECTED,
            message=f"Connected to {assignment.assigned_hub}.",
            retry_at=None,
            last_connected=now,
        )
        log.info("connected to %s as %s", assignment.assigned_hub, assignment.device_id)

    def _mark_disconnected(self) -> None:
        now = st.utcnow()
        if self._state is not None:
            self._save_state(self._state.with_(last_disconnected=now.isoformat()))
        self.board.update(last_disconnected=now)

    def _sync_twin(self, session: HubSession, identity: ids.Identity) -> None:
        reported = {
            **base_reported(),
            "registration_id": identity.registration_id,
            "certificate_not_after": identity.not_after.isoformat(),
            "certificate_thumbprint": identity.thumbprint,
            "issuer_thumbprint": identity.issuer_thumbprint,  # `client-app-cloud revoke-signer` queries it
            "connected_at": st.utcnow().isoformat(),
        }
        try:
            session.patch_reported(reported)
            twin = session.get_twin()
            ack = self.twin.apply(twin.get("desired") or {}, full=True) if isinstance(twin, dict) else None
            if ack:
                session.patch_reported(ack)
        except SessionError as exc:
            if not session.connected:
                raise
            log.warning("twin synchronisation failed: %s", exc)

    def _pump(self, session: HubSession, identity: ids.Identity) -> None:
        """Connected: run queued commands, drain the outbox in order, until a new session is needed."""
        while True:
            if self.stopping.is_set():
                raise _Interrupted()
            if not session.connected:
                raise SessionError("connection to the hub lost")
            with self._requests_lock:
                leave = bool(self._requests & {"reprovision", "reset"})
            if self._take("reconnect") or leave or self._renewal_due(identity):
                raise _Interrupted()
            self.wake.clear()
            while not self._commands.empty():
                self._commands.get_nowait()(session)
            message = self.outbox.next_queued()
            if message is not None:
                session.send(message)
                self.outbox.mark_delivered(message.id)
                log.debug("delivered outbox message %s", message.message_id)
                self.board.update(recount=True)
                self.events.outbox_changed()
                continue
            self.wake.wait(POLL_INTERVAL)

    def _handlers(self) -> SessionHandlers:
        return SessionHandlers(
            message=self._on_c2d,
            method=self._on_method,
            desired=self._on_desired,
            connection_changed=self._on_connection_changed,
        )

    # SDK threads below: short and never blocking on the network.
    def _on_c2d(self, message: Any) -> None:
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes | bytearray) else str(data or "")
        props: dict[str, str | None] = dict(message.custom_properties or {})
        for key, attr in (
            ("$.cid", "correlation_id"),
            ("$.ct", "content_type"),
            ("$.ce", "content_encoding"),
            ("$.uid", "user_id"),
            ("$.exp", "expiry_time_utc"),
        ):
            value = getattr(message, attr, None)
            if value:
                props[key] = str(value)
        self.receive(str(message.message_id or f"no-id-{uuid.uuid4()}"), text, props)

    def _on_method(self, request: Any) -> None:
        status, payload = self.methods.invoke(request.name, request.payload)
        log.info("direct method %s answered %s", request.name, status)
        self._commands.put(lambda session: session.respond(request.request_id, status, payload))
        self.wake.set()

    def _on_desired(self, patch: dict[str, Any]) -> None:
        ack = self.twin.apply(patch)
        if ack:
            self._commands.put(lambda session: session.patch_reported(ack))
            self.wake.set()

    def _on_connection_changed(self, connected: bool) -> None:
        # Only a wake-up: _pump asks its own session, so a late event from an old client changes nothing.
        if not connected:
            self.wake.set()
