"""Every row of the supervisor's state table (client_app/device/supervisor.py), plus the identity rules of
client_app/device/keeper.py, with fake ports and a fake clock: no network, no keyring, no sleeping."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from client_app.device import identity as ids
from client_app.device.config import DeviceConfig, ProxySetting
from client_app.device.events import MessageReceived, OutboxChanged
from client_app.device.keeper import RENEWAL_RETRY
from client_app.device.live import Leave, LiveSession
from client_app.device.methods import MethodRegistry
from client_app.device.provisioning import ProvisioningBlocked
from client_app.device.session import SessionError, SessionRefused
from client_app.device.state import Persister, StateFiles
from client_app.device.status import ConnectionState
from client_app.device.supervisor import KEYRING_RETRY, REPROVISION_AFTER, Supervisor
from client_app.device.twin import Twin
from client_app.pki import load_certificates
from tests.device.fakes import (
    FakeClock,
    FakeConnector,
    FakeKeys,
    FakeSession,
    ListOutbox,
    Recorder,
    dps_down,
    offline,
)

S = ConnectionState


@dataclass
class Harness:
    config: DeviceConfig
    clock: FakeClock
    keys: FakeKeys
    cloud: FakeConnector
    events: Recorder
    outbox: ListOutbox
    persister: Persister

    def supervisor(self, **config_changes: object) -> Supervisor:
        self.persister.flush()  # a new supervisor reads what the last one wrote
        config = dataclasses.replace(self.config, **config_changes)
        self.files = StateFiles(config.layout, self.persister)
        return Supervisor(
            config,
            connector=self.cloud,
            keys=self.keys,
            files=self.files,
            clock=self.clock,
            events=self.events,
            outbox=self.outbox,
            twin=Twin(),
            methods=MethodRegistry(),
        )

    def connect(self, sup: Supervisor) -> None:
        """One attempt that connects; the pump leaves (as on Reconnect) once it has nothing left to do."""
        self.clock.on_wait = lambda: sup.request("reconnect")
        try:
            assert sup.attempt() is None
        finally:
            self.clock.on_wait = lambda: None
        assert ConnectionState.CONNECTED in self.events.states

    def restart(self) -> Supervisor:
        """A new process on the same files and keyring."""
        self.events.states.clear()
        return self.supervisor()


@pytest.fixture
def h(device_config: DeviceConfig) -> Iterator[Harness]:
    persister = Persister()
    fakes = FakeClock(), FakeKeys(), FakeConnector(), Recorder(), ListOutbox()
    yield Harness(device_config, *fakes, persister)
    persister.close()


# ---- the happy path --------------------------------------------------------------------------------
def test_first_launch_creates_registers_connects_and_drains_the_outbox(h: Harness):
    h.outbox = ListOutbox("one", "two")
    sup = h.supervisor()
    h.connect(sup)
    rid = sup.identity.state.registration_id
    assert h.keys.entries.keys() == {rid}
    assert h.cloud.provisioned == [rid] and h.cloud.sent == ["one", "two"]
    assert [m.text for m in h.outbox.delivered] == ["one", "two"] and h.outbox.pruned == 1
    assert h.events.states[:4] == [S.CREATING_IDENTITY, S.PROVISIONING, S.CONNECTING, S.CONNECTED]
    assert [s for s, outcome in h.events.steps if outcome == "done"] == [
        "create_key",
        "issue_certificate",
        "store_in_keyring",
        "register",
        "connect",
    ]
    assert h.cloud.reported[0]["registration_id"] == rid
    # a second launch reuses identity and assignment: no DPS call, no new key
    sup = h.restart()
    h.connect(sup)
    assert sup.identity.state.registration_id == rid and h.cloud.provisioned == [rid]
    assert S.CREATING_IDENTITY not in h.events.states and S.PROVISIONING not in h.events.states


# ---- ERROR rows ------------------------------------------------------------------------------------
def test_locked_keyring_at_first_launch_waits_keyring_retry_and_makes_nothing(h: Harness):
    h.keys.locked = True
    sup = h.supervisor()
    failure = sup.attempt()
    assert failure is not None and failure.state is S.ERROR and failure.wait == KEYRING_RETRY
    sup.report(failure)
    assert h.events.status["retry_at"] == h.clock.now() + timedelta(seconds=KEYRING_RETRY)
    assert "locked" in h.events.status["last_error"] and not h.config.layout.state_file.exists()
    assert h.cloud.provisioned == []  # DPS never heard of an identity we could not keep
    start = h.clock.monotonic()
    sup.wait(failure.wait)  # nobody presses Retry: the keyring is tried again after a minute
    assert h.clock.monotonic() - start == KEYRING_RETRY
    h.keys.locked = False
    h.connect(sup)
    assert h.events.status["last_error"] is None  # issue 14.13: no stale "keyring locked" once connected


def test_locked_keyring_with_an_existing_identity_never_makes_a_new_one(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    rid = sup.identity.state.registration_id
    h.keys.locked = True
    sup = h.restart()
    failure = sup.attempt()
    assert failure is not None and failure.state is S.ERROR and failure.wait == KEYRING_RETRY
    h.keys.locked = False
    h.connect(sup)
    assert sup.identity.state.registration_id == rid and list(h.keys.entries) == [rid]


def test_broken_issuer_bundle_waits_for_retry(h: Harness, tmp_path: Path):
    sup = h.supervisor(issuer_bundle=tmp_path / "missing.pem")
    failure = sup.attempt()
    assert failure is not None and failure.state is S.ERROR and failure.wait is None
    sup.report(failure)
    assert h.events.status["message"].endswith("Then press Retry.") and h.events.status["retry_at"] is None


def test_wait_without_limit_ends_only_on_a_request(h: Harness):
    sup = h.supervisor()
    h.clock.on_wait = lambda: sup.request("retry")
    sup.wait(None)
    assert h.clock.waits == [None] and not sup._pending("retry")  # taken: the next attempt starts


def test_missing_id_scope_is_a_config_error(h: Harness):
    sup = h.supervisor(id_scope="")
    failure = sup.attempt()
    assert failure is not None and failure.state is S.ERROR and failure.wait is None
    assert "ID scope" in failure.message


def test_a_bug_is_an_error_with_back_off(h: Harness, monkeypatch: pytest.MonkeyPatch):
    sup = h.supervisor()
    monkeypatch.setattr(h.cloud, "provision", lambda *a: 1 / 0)
    failure = sup.attempt()
    assert failure is not None and failure.state is S.ERROR and 0 < failure.wait <= h.config.backoff_cap
    assert "ZeroDivisionError" in failure.detail and "ZeroDivisionError" not in failure.message


# ---- BLOCKED rows ----------------------------------------------------------------------------------
def test_dps_refusal_blocks_without_a_retry_loop(h: Harness):
    h.cloud.provision_outcomes = [ProvisioningBlocked("disabled")]
    sup = h.supervisor()
    failure = sup.attempt()
    assert failure is not None and failure.state is S.BLOCKED and failure.wait is None
    assert h.events.steps[-1] == ("register", "failed")


def test_hub_refusing_a_fresh_registration_blocks(h: Harness):
    h.cloud.open_outcomes = [SessionRefused("refused")]
    failure = h.supervisor().attempt()
    assert failure is not None and failure.state is S.BLOCKED and "enable the device" in failure.message


def test_hub_refusing_a_cached_assignment_registers_again_at_once(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    h.cloud.open_outcomes = [SessionRefused("refused")]
    assert sup.attempt() is None  # no failure shown, no wait
    assert sup.identity.state.assignment is None
    h.connect(sup)
    assert len(h.cloud.provisioned) == 2


# ---- RECONNECTING rows -----------------------------------------------------------------------------
def test_back_off_grows_is_capped_and_resets_when_connected(h: Harness):
    sup = h.supervisor(backoff_cap=30.0)
    h.connect(sup)
    h.cloud.open_outcomes = offline(12)
    waits = []
    for _ in range(12):
        failure = sup.attempt()
        assert failure is not None and failure.state is S.RECONNECTING
        assert "Offline" in failure.detail and "<-" not in failure.message
        waits.append(failure.wait)
    assert waits[0] <= 1 and waits[3] >= 4 and max(waits) <= 30 and min(waits[6:]) >= 15
    h.connect(sup)
    h.cloud.open_outcomes = offline(1)
    assert sup.attempt().wait <= 1


def test_dps_unreachable_is_transient(h: Harness):
    h.cloud.provision_outcomes = dps_down(1)
    failure = h.supervisor().attempt()
    assert failure is not None and failure.state is S.RECONNECTING and failure.wait is not None


def test_hub_unreachable_for_twenty_minutes_asks_dps_again(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    h.cloud.open_outcomes = offline(100)
    sup.attempt()  # offline since now
    h.clock.advance(REPROVISION_AFTER.total_seconds() - 60)
    sup.attempt()
    assert sup.identity.state.assignment is not None and len(h.cloud.provisioned) == 1
    h.clock.advance(120)
    sup.attempt()
    assert sup.identity.state.assignment is None
    h.cloud.open_outcomes = []
    h.connect(sup)
    assert len(h.cloud.provisioned) == 2


def test_stopped_local_cloud_is_not_dialled_even_with_a_cached_assignment(h: Harness, tmp_path: Path):
    cloud_dir = tmp_path / "cloud"
    cloud_dir.mkdir()  # no connection.json: the local cloud is not running
    h.connect(h.supervisor())  # an assignment is cached (hub.test, a name)
    sup = h.supervisor(local_cloud=cloud_dir)
    failure = sup.attempt()
    assert failure is not None and failure.state is S.RECONNECTING and "not running" in failure.detail
    assert len(h.cloud.sessions) == 1 and len(h.cloud.provisioned) == 1  # issue 14.1: nothing dialled


@pytest.mark.parametrize(
    ("proxy", "host", "dials"),
    [(None, "hub.test", False), (None, "127.0.0.5", True), ("http://127.0.0.1:1", "hub.test", True),
     ("http://10.0.0.1:1", "hub.test", False)],
)  # fmt: skip
def test_a_local_cloud_device_dials_only_loopback(h: Harness, tmp_path: Path, proxy, host, dials):
    (tmp_path / "connection.json").write_text("{}")
    h.connect(h.supervisor())
    sup = h.supervisor(local_cloud=tmp_path, proxy=proxy and ProxySetting.parse(proxy))
    sup.identity.ensure()
    sup.identity.update(assignment=dataclasses.replace(sup.identity.state.assignment, assigned_hub=host))
    h.cloud.open_outcomes = offline(1)
    failure = sup.attempt()
    assert failure is not None and len(h.cloud.sessions) == 1 + dials
    assert failure.state is (S.RECONNECTING if dials else S.ERROR)
    assert dials or "not a loopback address" in failure.detail


# ---- renewal ---------------------------------------------------------------------------------------
def test_renewal_keeps_the_registration_id_and_registers_again(h: Harness):
    sup = h.supervisor(leaf_days=10)
    h.connect(sup)
    first = sup.identity.identity
    h.clock.advance(9 * 86400)  # > 80 % of 10 days
    h.connect(sup)
    renewed = sup.identity.identity
    assert renewed.registration_id == first.registration_id and renewed.leaf != first.leaf
    assert renewed.key is first.key  # the key DPS pinned, and the self-certifying ID, survive (docs/pki.md)
    assert h.cloud.provisioned == [first.registration_id] * 2
    h.persister.flush()
    assert load_certificates(h.files.chain_file)[0] == renewed.leaf


def test_renewal_moves_an_old_style_id_to_its_keys_self_certifying_id(h: Harness):
    legacy_id = "ca-0123456789abcdef0123"
    with pytest.MonkeyPatch.context() as patch:  # an install from before self-certifying IDs
        patch.setattr(ids, "self_certifying_id", lambda key: legacy_id)
        sup = h.supervisor(leaf_days=10)
        h.connect(sup)
    first = sup.identity.identity
    assert first.registration_id == legacy_id
    h.clock.advance(9 * 86400)
    h.connect(sup)
    renewed = sup.identity.identity
    assert renewed.key is first.key and renewed.registration_id == ids.new_registration_id(first.key)
    assert h.cloud.provisioned == [legacy_id, renewed.registration_id]
    assert sup.identity.state.previous_registration_id == legacy_id  # support retires the old device
    assert h.keys.deleted == [legacy_id] and h.keys.entries == {renewed.registration_id: first.key}


def test_failed_renewal_keeps_the_working_leaf_for_an_hour(h: Harness, caplog: pytest.LogCaptureFixture):
    sup = h.supervisor(leaf_days=10)
    h.connect(sup)
    first = sup.identity.identity
    h.clock.advance(9 * 86400)
    h.keys.locked = True
    with caplog.at_level(logging.WARNING, logger="client_app.device"):
        h.keys.locked = True
        sup.identity.renew_if_due()
    assert sup.identity.identity == first and "renewal failed" in caplog.text
    h.keys.locked = False
    assert not sup.identity.renewal_due()
    h.clock.advance(RENEWAL_RETRY.total_seconds() - 1)
    assert not sup.identity.renewal_due()
    h.clock.advance(2)
    assert sup.identity.renewal_due()
    h.connect(sup)
    assert sup.identity.identity.leaf != first.leaf


# ---- identity damage (issue 14 item 2) -------------------------------------------------------------
def test_lost_chain_is_reissued_for_the_same_key_and_id(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    rid, key = sup.identity.state.registration_id, h.keys.entries[sup.identity.state.registration_id]
    h.persister.flush()
    h.files.chain_file.unlink()
    sup = h.restart()
    h.connect(sup)
    assert sup.identity.state.registration_id == rid and h.keys.entries == {rid: key} and h.keys.deleted == []
    assert sup.identity.identity.key is key and h.cloud.provisioned == [rid, rid]
    assert h.events.status["previous_registration_id"] is None


def test_key_replaced_in_keyring_moves_to_that_keys_id_visibly(h: Harness, issuing_ca):
    sup = h.supervisor()
    h.connect(sup)
    old = sup.identity.state.registration_id
    other = ids.create_identity(issuing_ca, 1).key
    h.keys.entries[old] = other  # the id was derived from another key: this key gets its own id
    h.persister.flush()
    h.files.chain_file.unlink()
    sup = h.restart()
    h.connect(sup)
    new = sup.identity.state.registration_id
    assert new == ids.new_registration_id(other) != old and sup.identity.identity.key is other
    assert h.keys.entries == {new: other} and h.events.status["previous_registration_id"] == old
    assert f"New identity {new}; previous ID {old}" in h.events.status["last_error"]


def test_lost_state_file_continues_with_the_id_from_the_chain(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    rid = sup.identity.state.registration_id
    h.persister.flush()
    h.config.layout.state_file.write_text('{"registration_id": ')
    sup = h.restart()
    h.connect(sup)
    assert sup.identity.state.registration_id == rid and len(h.keys.entries) == 1


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_lost_key_starts_a_new_identity_as_a_visible_event(
    h: Harness, damage: str, caplog: pytest.LogCaptureFixture
):
    sup = h.supervisor()
    h.connect(sup)
    old = sup.identity.state.registration_id
    if damage == "deleted":
        del h.keys.entries[old]
    else:
        h.keys.entries[old] = "garbage"
    sup = h.restart()
    with caplog.at_level(logging.WARNING, logger="client_app.device"):
        h.connect(sup)
    new = sup.identity.state.registration_id
    assert new != old and h.keys.deleted == []
    notice = f"New identity {new}; previous ID {old}"
    assert h.events.status["previous_registration_id"] == old
    assert notice in h.events.status["last_error"]  # still shown after connecting: support must see it
    assert notice in caplog.text
    sup = h.restart()  # and it survives a restart
    h.connect(sup)
    assert h.events.status["previous_registration_id"] == old


def test_unreadable_state_and_chain_start_a_new_identity_as_a_visible_event(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    h.persister.flush()
    h.config.layout.state_file.write_text("{")
    h.files.chain_file.write_bytes(b"garbage")
    sup = h.restart()
    h.connect(sup)
    assert h.events.status["previous_registration_id"] == "unknown"
    assert "previous ID unknown" in h.events.status["last_error"] and h.keys.deleted == []


def test_reset_request_deletes_the_key_and_starts_over(h: Harness):
    sup = h.supervisor()
    h.connect(sup)
    old = sup.identity.state.registration_id
    sup.request("reset")
    h.connect(sup)
    assert sup.identity.state.registration_id != old and h.keys.deleted == [old]


# ---- the loop and the live session -----------------------------------------------------------------
def test_run_reports_waits_and_stops(h: Harness):
    h.keys.locked = True
    sup = h.supervisor()
    h.clock.on_wait = sup.stopping.set  # stop() while waiting for the keyring retry
    sup.run()
    assert h.clock.waits == [KEYRING_RETRY]
    assert h.events.states == [S.CREATING_IDENTITY, S.ERROR, S.STOPPED]


def test_local_cloud_config_errors_back_off(h: Harness, tmp_path: Path):
    (tmp_path / "connection.json").write_text("{}")
    sup = h.supervisor(local_cloud=tmp_path, provisioning_host="dps.example.com")
    failure = sup.attempt()  # a name, no proxy: would need the system resolver
    assert failure is not None and failure.state is S.ERROR and failure.wait is not None
    assert "not a loopback address" in failure.detail and h.cloud.provisioned == []


def test_live_session_answers_methods_applies_desired_and_hands_c2d_to_the_sink(h: Harness):
    methods = MethodRegistry()
    methods.register("ping", lambda payload: (200, {"echo": payload}))
    twin = Twin()
    live = LiveSession(ListOutbox("queued"), twin, methods, h.events, h.clock, threading.Event())
    session = FakeSession(h.cloud, live.handlers())
    session.open()
    answers: list[tuple] = []
    session.respond = lambda *answer: answers.append(answer)
    handlers = live.handlers()
    c2d = SimpleNamespace(data=b"hello \xff", custom_properties={"k": "v"}, message_id="m-1",
                          correlation_id="c-1", content_type=None, content_encoding=None, user_id=None,
                          expiry_time_utc=None)  # fmt: skip
    handlers.message(c2d)
    handlers.method(SimpleNamespace(name="ping", payload=7, request_id="r-1"))
    handlers.desired({"interval": 5, "$version": 3})
    passes = iter([False, True])
    with pytest.raises(Leave):
        live.pump(session, lambda: next(passes))
    assert MessageReceived("m-1", "hello \ufffd", {"k": "v", "$.cid": "c-1"}) in h.events.events
    assert answers == [("r-1", 200, {"echo": 7})]
    assert {"desired_applied_version": 3} in h.cloud.reported and twin.desired == {"interval": 5}
    assert h.cloud.sent == ["queued"] and OutboxChanged() in h.events.events
    session.connected = False
    with pytest.raises(SessionError, match="lost"):
        live.pump(session, lambda: False)
