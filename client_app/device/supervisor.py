"""The worker thread: identity → provisioning → hub session, with our own back-off instead of the SDK's.

Every step that can fail maps to one observable state and one wait (tests/device/test_supervisor.py has a
test per row, with fakes and a fake clock):

| what failed                                   | state        | next attempt                               |
|-----------------------------------------------|--------------|--------------------------------------------|
| keyring locked, absent or not answering       | ERROR        | after KEYRING_RETRY (60 s) or Retry        |
| issuer bundle unusable (IdentityError)        | ERROR        | Retry only                                 |
| configuration (ConfigError)                   | ERROR        | back-off for a local cloud, else Retry     |
| DPS refuses (ProvisioningBlocked)             | BLOCKED      | Retry only, no loop                        |
| hub refuses a freshly registered device       | BLOCKED      | Retry only                                 |
| hub refuses a cached assignment               | (none)       | register again at once                     |
| DPS or hub unreachable, connection lost       | RECONNECTING | jittered back-off capped at backoff_cap    |
| hub unreachable for REPROVISION_AFTER (20 min)| RECONNECTING | back-off, then register again              |
| a bug (any other exception)                   | ERROR        | back-off                                   |
| renewal failed while the leaf is still valid  | (unchanged)  | keep the leaf, renew again after 1 h       |

Connected resets the back-off and the offline timer and clears last_error (except the notice of a forced new
identity). Reconnect, reprovision and reset requests end any wait and any session.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from client_app.device import identity as ids
from client_app.device.backoff import Backoff
from client_app.device.config import ConfigError, DeviceConfig
from client_app.device.events import DeviceEvent, EventSink, StatusChanged, StepChanged
from client_app.device.keeper import IdentityKeeper, fork_notice
from client_app.device.live import Leave, LiveSession, OutboxPort
from client_app.device.methods import MethodRegistry
from client_app.device.ports import Clock, Connector, KeyStore
from client_app.device.provisioning import ProvisioningBlocked, ProvisioningFailed
from client_app.device.sdk import describe
from client_app.device.secrets import KeyringUnavailable
from client_app.device.session import SessionError, SessionRefused
from client_app.device.state import Assignment, StateFiles
from client_app.device.status import ConnectionState, FirstRunStep, StepOutcome
from client_app.device.twin import Twin
from client_app.hosts import is_loopback_address

log = logging.getLogger(__name__)

S = ConnectionState
REPROVISION_AFTER = timedelta(minutes=20)  # hub unreachable this long → ask DPS again (docs: 15-30 min)
KEYRING_RETRY = 60.0  # a locked keyring may get unlocked without anyone pressing Retry
_RESTARTS = frozenset({"retry", "reconnect", "reprovision", "reset"})
OFFLINE_MESSAGE = "Cannot reach the cloud right now. Messages are kept and sent once the connection is back."
UNEXPECTED_MESSAGE = "Something unexpected went wrong (details are in the log). Trying again automatically."


@dataclass(frozen=True)
class Failure:
    """What one attempt ended with: the state to show and how long to wait (None: until a request)."""

    state: ConnectionState
    message: str  # a sentence for the user
    wait: float | None
    detail: str  # for the log and last_error


class Supervisor:
    def __init__(
        self,
        config: DeviceConfig,
        *,
        connector: Connector,
        keys: KeyStore,
        files: StateFiles,
        clock: Clock,
        events: EventSink,
        outbox: OutboxPort,
        twin: Twin,
        methods: MethodRegistry,
    ) -> None:
        self.config, self.connector, self.clock, self._sink = config, connector, clock, events
        self.outbox, self.twin, self.methods = outbox, twin, methods
        self.identity = IdentityKeeper(config, keys, files, clock, self)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._requests: set[str] = set()
        self._requests_lock = threading.Lock()
        self._backoff = Backoff(base=1.0, cap=config.backoff_cap)
        self._offline_since: float | None = None
        self.state = S.NOT_PROVISIONED  # the last state this worker reported

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

    def _pending(self, *what: str) -> bool:
        with self._requests_lock:
            return bool(self._requests.intersection(what))

    # ---- main loop -------------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            failure = self.attempt()
            if failure is not None:
                self.report(failure)
                self.wait(failure.wait)
        self.connector.release()
        self._status(state=S.STOPPED, message="Stopped.", retry_at=None)

    def attempt(self) -> Failure | None:
        """One pass: identity, assignment, session until it ends. None when it ended by request."""
        try:
            self._cycle()
        except Leave:
            return None
        except KeyringUnavailable as exc:
            return Failure(S.ERROR, str(exc), KEYRING_RETRY, str(exc))
        except ids.IdentityError as exc:
            return Failure(S.ERROR, str(exc), None, str(exc))
        except ConfigError as exc:  # only a local cloud's connection.json can change while we run
            wait = self._backoff.next_delay() if self.config.local_cloud else None
            return Failure(S.ERROR, str(exc), wait, str(exc))
        except ProvisioningBlocked as exc:
            return Failure(S.BLOCKED, str(exc), None, str(exc))
        except (ProvisioningFailed, SessionError) as exc:
            # SDK error chains are for the log and support (last_error), not for the status line.
            if self._offline_since is None:
                self._offline_since = self.clock.monotonic()
            return Failure(S.RECONNECTING, OFFLINE_MESSAGE, self._backoff.next_delay(), f"Offline: {exc}")
        except Exception as exc:  # a bug must not kill the worker silently
            log.exception("unexpected error in the device worker")
            detail = f"Unexpected error: {describe(exc)}"
            return Failure(S.ERROR, UNEXPECTED_MESSAGE, self._backoff.next_delay(), detail)

    def report(self, failure: Failure) -> None:
        log.warning("%s: %s", failure.state.value, failure.detail)
        self.connector.release()
        retry_at = None if failure.wait is None else self.clock.now() + timedelta(seconds=failure.wait)
        message = failure.message
        if failure.wait is None:
            sentence = message if message.endswith((".", "!", "?")) else f"{message}."
            message = f"{sentence} Then press Retry."
        self._status(state=failure.state, message=message, last_error=failure.detail, retry_at=retry_at)

    def wait(self, seconds: float | None) -> None:
        """Until `seconds` passed (None: no limit), a restart request came, or stop()."""
        deadline = None if seconds is None else self.clock.monotonic() + seconds
        while not self.stopping.is_set() and not self._pending(*_RESTARTS):
            remaining = None if deadline is None else deadline - self.clock.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self.clock.wait(self.wake, remaining)
            self.wake.clear()
        self._take("retry")
        self._take("reconnect")

    def _cycle(self) -> None:
        self.wake.clear()
        config = self.config.refreshed()  # a restarted local cloud may have moved
        if self._take("reset"):
            self.identity.reset("reset requested")
        identity = self.identity.ensure()
        identity = self.identity.renew_if_due()
        _check_local_cloud_running(config)
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
            self.identity.update(assignment=None)
            raise Leave() from None
        except SessionError:
            offline = self._offline_since
            if offline is not None and self.clock.monotonic() - offline > REPROVISION_AFTER.total_seconds():
                log.info("hub unreachable for long: will ask DPS again")
                self.identity.update(assignment=None)
            raise

    # ---- provisioning ----------------------------------------------------------------------------
    def _ensure_assignment(self, config: DeviceConfig, identity: ids.Identity) -> tuple[Assignment, bool]:
        state = self.identity.state
        assert state is not None
        cached = None if self._take("reprovision") else state.assignment
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
        _dial_loopback_only(config, config.provisioning_host)
        self._status(
            state=S.PROVISIONING,
            message="Registering with the cloud…",
            retry_at=None,
            id_scope=config.id_scope,
            provisioning_host=config.provisioning_host,
        )
        self._step(FirstRunStep.REGISTER, StepOutcome.RUNNING, config.provisioning_host)
        try:
            assignment = self.connector.provision(config, identity)
        except (ProvisioningBlocked, ProvisioningFailed) as exc:
            self._step(FirstRunStep.REGISTER, StepOutcome.FAILED, str(exc))
            raise
        self._step(FirstRunStep.REGISTER, StepOutcome.DONE, assignment.assigned_hub)
        self.identity.update(assignment=assignment)
        self._status(device_id=assignment.device_id, assigned_hub=assignment.assigned_hub)
        return assignment, True

    # ---- session ---------------------------------------------------------------------------------
    def _serve(self, config: DeviceConfig, identity: ids.Identity, assignment: Assignment) -> None:
        if self.stopping.is_set():  # stop() came during a long DPS call: do not open a hub session now
            raise Leave()
        self._status(
            state=S.RECONNECTING if self.state is S.RECONNECTING else S.CONNECTING,
            id_scope=config.id_scope,
            provisioning_host=config.provisioning_host,
            message=f"Connecting to {assignment.assigned_hub}…",
        )
        _dial_loopback_only(config, assignment.assigned_hub)
        self._step(FirstRunStep.CONNECT, StepOutcome.RUNNING, assignment.assigned_hub)
        live = LiveSession(self.outbox, self.twin, self.methods, self, self.clock, self.wake)
        session = self.connector.session(config, identity, assignment, live.handlers())
        try:
            try:
                session.open()
            except SessionError as exc:
                self._step(FirstRunStep.CONNECT, StepOutcome.FAILED, str(exc))
                raise
            connected_at = self._on_connected(assignment)
            self.connector.release()
            self.outbox.prune()  # delivered messages are kept for the window's history, not forever
            session.subscribe()
            live.sync_twin(session, identity, connected_at)
            live.pump(session, self._should_leave)
        finally:
            session.close()
            if self.state is S.CONNECTED:
                self._mark_disconnected()

    def _should_leave(self) -> bool:
        if self.stopping.is_set() or self._pending("reprovision", "reset"):
            return True
        return self._take("reconnect") or self.identity.renewal_due()

    def _on_connected(self, assignment: Assignment) -> str:
        now = self.clock.now()
        state = self.identity.update(last_connected=now.isoformat())
        self._backoff.reset()
        self._offline_since = None
        self._step(FirstRunStep.CONNECT, StepOutcome.DONE, assignment.assigned_hub)
        self._status(
            state=S.CONNECTED,
            message=f"Connected to {assignment.assigned_hub}.",
            retry_at=None,
            last_connected=now,
            last_error=fork_notice(state),
        )
        log.info("connected to %s as %s", assignment.assigned_hub, assignment.device_id)
        return now.isoformat()

    def _mark_disconnected(self) -> None:
        now = self.clock.now()
        if self.identity.state is not None:
            self.identity.update(last_disconnected=now.isoformat())
        self._status(last_disconnected=now)

    def emit(self, event: DeviceEvent) -> None:
        """The sink for the parts (keeper, live session): the worker remembers the state it last showed."""
        if isinstance(event, StatusChanged) and "state" in event.changes:
            self.state = event.changes["state"]
        self._sink.emit(event)

    def _status(self, **changes: Any) -> None:
        self.emit(StatusChanged(changes))

    def _step(self, step: FirstRunStep, outcome: StepOutcome, detail: str) -> None:
        self.emit(StepChanged(step, outcome, detail))


def _dial_loopback_only(config: DeviceConfig, host: str) -> None:
    """A device configured for a local cloud reaches nothing but loopback: either through the cloud's
    loopback proxy (which gets the name in its CONNECT line, never the resolver) or a loopback IP literal."""
    if config.local_cloud is None:
        return
    dialled = config.proxy.host if config.proxy else host
    if not is_loopback_address(dialled):
        raise ConfigError(
            f"the local cloud in {config.local_cloud} points at {dialled}, which is not a loopback address"
        )


def _check_local_cloud_running(config: DeviceConfig) -> None:
    """A stopped local cloud has removed its connection.json: without it there is no port, proxy or CA to
    use, so nothing is dialled at all (the cached host names would go to the system resolver)."""
    if config.local_cloud is not None and not (config.local_cloud / "connection.json").is_file():
        raise ProvisioningFailed(f"the local cloud in {config.local_cloud} is not running")
