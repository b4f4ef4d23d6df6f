"""IdentityKeeper: the device identity's life cycle (create, load, repair, renew, reset), behind ports.

What may happen to an identity and what the keeper does (docs/device.md, "Identity"):
- nothing stored yet (first launch): create one (key → leaf → keyring → chain + state.json);
- state.json lost or corrupt, chain.pem readable: the registration id is the leaf's CN; keep going with it;
- chain.pem lost, corrupt or not matching the key: issue a new leaf for the same key and registration id;
- the key is missing or unreadable in a working keyring: a new identity, as a visible event (status field
  previous_registration_id, last_error, a WARNING in the log) so support can retire the old device;
- state.json and chain.pem both unreadable: a new identity, visible the same way ("previous ID unknown");
- the keyring is locked, absent or not answering: KeyringUnavailable, never a new identity.
A valid key is deleted only by an explicit reset.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from client_app.device import identity as ids
from client_app.device.config import DeviceConfig
from client_app.device.events import EventSink, StatusChanged, StepChanged
from client_app.device.ports import Clock, KeyStore
from client_app.device.secrets import KeyMissing, KeyringUnavailable
from client_app.device.state import DeviceState, StateCorrupt, StateFiles, parse_time
from client_app.device.status import ConnectionState, FirstRunStep, StepOutcome
from client_app.pki import CertificateAuthority, PrivateKey, generate_key, sha1_thumbprint

log = logging.getLogger(__name__)

UNKNOWN_ID = "unknown"  # previous_registration_id when neither state.json nor chain.pem could tell it
RENEWAL_RETRY = timedelta(hours=1)  # after a failed renewal, keep the working leaf this long


def fork_notice(state: DeviceState) -> str | None:
    """The sentence support needs after a forced new identity (None if this identity replaced nothing)."""
    if state.previous_registration_id is None:
        return None
    return (
        f"New identity {state.registration_id}; previous ID {state.previous_registration_id}. "
        "Ask support to retire the previous device."
    )


class IdentityKeeper:
    def __init__(
        self, config: DeviceConfig, keys: KeyStore, files: StateFiles, clock: Clock, events: EventSink
    ) -> None:
        self._config, self._keys, self._files, self._clock, self._events = config, keys, files, clock, events
        self.identity: ids.Identity | None = None
        self.state: DeviceState | None = None
        self._issuer: CertificateAuthority | None = None
        self._renew_not_before = float("-inf")  # monotonic time; set after a failed renewal

    # ---- load or create --------------------------------------------------------------------------
    def ensure(self) -> ids.Identity:
        if self.identity is not None:
            return self.identity
        state = self._stored_state()
        if state is None:  # first launch, or files so damaged that even the old id is gone: say that, too
            return self._create(previous=UNKNOWN_ID if self._files.anything_stored() else None)
        try:
            key = self._keys.load(state.registration_id)  # KeyringUnavailable: an error, never a new identity
        except KeyMissing as exc:
            log.warning("the key of %s is lost (%s): creating a new identity", state.registration_id, exc)
            return self._create(previous=state.registration_id)
        try:
            identity = ids.match_chain(self._files.read_chain(), state.registration_id, key)
        except (StateCorrupt, ids.IdentityError) as exc:
            identity, state = self._reissue(state, key, str(exc))
        self._adopt(identity, state)
        return identity

    def _stored_state(self) -> DeviceState | None:
        """state.json, or what the chain says when state.json is gone or corrupt (None: nothing to go on)."""
        try:
            state = self._files.load()
        except StateCorrupt as exc:
            log.warning("%s: recovering the identity from the certificate file", exc)
            state = None
        if state is not None:
            return state
        try:
            leaf = self._files.read_chain()[0]
        except StateCorrupt:
            return None
        issued = leaf.not_valid_before_utc.isoformat()
        log.warning(
            "state file missing or unusable: continuing as %s (from the certificate)", ids.subject_cn(leaf)
        )
        return DeviceState(
            registration_id=ids.subject_cn(leaf), created_at=issued, certificate_issued_at=issued
        )

    def _create(self, previous: str | None) -> ids.Identity:
        self._status(
            state=ConnectionState.CREATING_IDENTITY,
            message="Creating this computer's identity…",
            retry_at=None,
        )
        self._keys.check_backend()  # no keyring at all: say so now, not after registering
        step = FirstRunStep.CERTIFICATE  # a broken issuer bundle fails before the key is made
        try:
            issuer = self._issuer_ca()
            step = FirstRunStep.KEY
            self._step(step, StepOutcome.RUNNING)
            key = generate_key()
            self._step(step, StepOutcome.DONE)
            step = FirstRunStep.CERTIFICATE
            self._step(step, StepOutcome.RUNNING)
            identity = ids.issue_leaf(issuer, ids.new_registration_id(key), key, self._config.leaf_days)
        except ids.IdentityError as exc:
            self._step(step, StepOutcome.FAILED, str(exc))
            raise
        self._step(step, StepOutcome.DONE, identity.registration_id)
        # The key goes into the keyring before anything refers to it and before DPS hears of this device:
        # a locked keyring must stop first launch here, not after registering an identity we cannot keep.
        self._step(FirstRunStep.KEYRING, StepOutcome.RUNNING, self._keys.backend_name())
        try:
            self._keys.store(identity.registration_id, identity.key)
        except KeyringUnavailable as exc:
            self._step(FirstRunStep.KEYRING, StepOutcome.FAILED, str(exc))
            raise
        self._step(FirstRunStep.KEYRING, StepOutcome.DONE, self._keys.backend_name())
        self._files.write_chain(identity.chain_pem())
        now = self._clock.now().isoformat()
        state = DeviceState(
            registration_id=identity.registration_id,
            created_at=now,
            certificate_issued_at=now,
            previous_registration_id=previous,
        )
        log.info(
            "identity %s created (leaf %s, valid until %s)",
            identity.registration_id,
            identity.thumbprint,
            identity.not_after.isoformat(),
        )
        self._announce(state)
        self._save(state)
        self._adopt(identity, state)
        return identity

    def _reissue(self, state: DeviceState, key: PrivateKey, reason: str) -> tuple[ids.Identity, DeviceState]:
        """Same key, new leaf: the device stays the device DPS and the hub know. Only a key its registration
        id was not derived from (an old-style id, a key put there by someone else) moves to the key's own id,
        which is announced like any new identity."""
        log.warning("issuing a new certificate for %s with its key: %s", state.registration_id, reason)
        old = ids.Identity(state.registration_id, key, ())
        identity = ids.renew_identity(self._issuer_ca(), old, self._config.leaf_days)
        if identity.registration_id != state.registration_id:
            self._keys.store(identity.registration_id, key)
        return identity, self._install(identity, state)

    def _install(self, identity: ids.Identity, state: DeviceState) -> DeviceState:
        """Write a new leaf for the key and the state that goes with it; the assignment is dropped, so the
        device registers again with the new leaf. If the registration id moved (the key is already stored
        under the new one), the old keyring entry goes and support is told which device to retire."""
        self._files.write_chain(identity.chain_pem())
        previous = state.registration_id
        moved = identity.registration_id != previous
        state = state.with_(
            registration_id=identity.registration_id,
            previous_registration_id=previous if moved else state.previous_registration_id,
            certificate_issued_at=self._clock.now().isoformat(),
            assignment=None,
        )
        self._save(state)
        if moved:
            self._keys.delete(previous)  # the key lives on under the new id
            self._announce(state)
        return state

    # ---- renewal ---------------------------------------------------------------------------------
    def renewal_due(self) -> bool:
        if self.identity is None or self.state is None or self._clock.monotonic() < self._renew_not_before:
            return False
        issued = datetime.fromisoformat(self.state.certificate_issued_at)
        return ids.renewal_due(self.identity, issued, self._config.renew_fraction, self._clock.now())

    def renew_if_due(self) -> ids.Identity:
        identity, state = self.identity, self.state
        assert identity is not None and state is not None
        reason = None
        if self.renewal_due():
            reason = f"{self._config.renew_fraction:.0%} of the certificate's life has passed"
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
            renewed = ids.renew_identity(self._issuer_ca(), identity, self._config.leaf_days)  # same key
            self._keys.store(renewed.registration_id, renewed.key)
        except (ids.IdentityError, KeyringUnavailable) as exc:
            # A locked keyring or a bad bundle must not take a working device offline: the old key and
            # leaf are untouched until store succeeds.
            if identity.not_after > self._clock.now():
                log.warning("renewal failed, keeping the current certificate for now: %s", exc)
                self._renew_not_before = self._clock.monotonic() + RENEWAL_RETRY.total_seconds()
                return identity
            raise
        state = self._install(renewed, state)  # an old-style ID moves to its key's self-certifying ID
        self._adopt(renewed, state)
        return renewed

    # ---- reset and state -------------------------------------------------------------------------
    def reset(self, reason: str) -> None:
        """Explicit request: the one case where a valid key is deleted."""
        log.info("resetting the identity: %s", reason)
        if self.state is not None:
            self._keys.delete(self.state.registration_id)
        self._files.discard()
        self.identity = self.state = None

    def update(self, **changes: Any) -> DeviceState:
        """Save changed state fields (assignment, last_connected, ...)."""
        assert self.state is not None
        self._save(self.state.with_(**changes))
        return self.state

    def _announce(self, state: DeviceState) -> None:
        notice = fork_notice(state)
        if notice:
            log.warning("%s", notice)
            self._status(last_error=notice)

    def _save(self, state: DeviceState) -> None:
        self.state = state
        self._files.save(state)

    def _issuer_ca(self) -> CertificateAuthority:
        if self._issuer is None:
            self._issuer = ids.load_issuer(self._config.issuer_bundle_path)
        return self._issuer

    def _adopt(self, identity: ids.Identity, state: DeviceState) -> None:
        self.identity, self.state = identity, state
        assignment = state.assignment
        self._status(
            registration_id=identity.registration_id,
            previous_registration_id=state.previous_registration_id,
            certificate_subject=ids.subject_cn(identity.leaf),
            certificate_issuer=ids.issuer_cn(identity.leaf),
            certificate_not_after=identity.not_after,
            certificate_thumbprint=sha1_thumbprint(identity.leaf),
            keyring_backend=self._keys.backend_name(),
            device_id=assignment.device_id if assignment else None,
            assigned_hub=assignment.assigned_hub if assignment else None,
            last_connected=parse_time(state.last_connected),
            last_disconnected=parse_time(state.last_disconnected),
        )

    def _status(self, **changes: Any) -> None:
        self._events.emit(StatusChanged(changes))

    def _step(self, step: FirstRunStep, outcome: StepOutcome, detail: str = "") -> None:
        self._events.emit(StepChanged(step, outcome, detail))
