"""Outages, blocked devices, renewal, keyring and state-file trouble, against the real local cloud."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing

import pytest

from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.device.runtime import ConnectionState, DeviceRuntime
from client_app.pki import load_certificates, sha1_thumbprint, write_issuer_bundle
from tests.device.e2e import config_for, running, wait_for, wait_state
from tests.fixtures.cloud import api_client

C = ConnectionState


def _group(cloud_api, enabled: bool) -> None:
    cloud_api.set_group_status("test-group", enabled)


def test_messages_sent_while_cloud_is_down_arrive_later(keyring_env, local_cloud, enrolled_ca, app_dirs):
    data, _ = app_dirs
    runtime = DeviceRuntime(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data))
    runtime.start()
    restarted = None
    try:
        wait_state(runtime, C.CONNECTED)
        device = runtime.status().device_id
        runtime.send("before")
        wait_for(lambda: runtime.outbox.queued_count() == 0, what="first delivery")
        local_cloud.stop()
        wait_for(lambda: runtime.status().state is C.RECONNECTING, what="reconnecting")
        sent = [runtime.send(f"offline {i}").message_id for i in range(5)]
        assert runtime.status().outbox == 5
        assert runtime.status().last_error
        # The status line is a plain sentence; the SDK's error chain is only in last_error (and the log).
        assert "Error" not in runtime.status().message and "<-" not in runtime.status().message
        # Same data dir, new free ports: the runtime re-reads connection.json on every attempt.
        restarted = start_in_thread(CloudSettings(data_dir=local_cloud.data_dir))
        wait_state(runtime, C.CONNECTED, timeout=30)
        wait_for(lambda: runtime.outbox.queued_count() == 0, what="outbox drained")
        with api_client(restarted) as api:
            telemetry = api.telemetry(device)
        ids = [t["systemProperties"].get("messageId") for t in telemetry]
        received = [i for i in ids if i in sent]
        assert received == sent, telemetry  # all of them, in order (duplicates would show up here)
    finally:
        runtime.close()
        if restarted:
            restarted.stop()


def test_disabled_enrollment_group_blocks_without_retry_loop(
    keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs
):
    data, _ = app_dirs
    _group(cloud_api, enabled=False)
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_state(runtime, C.BLOCKED)
        status = runtime.status()
        assert status.retry_at is None and "Retry" in status.message and "\n" not in status.message
        registration_id = status.registration_id
        before = cloud_api.registrations("test-group")
        _group(cloud_api, enabled=True)
        import time

        time.sleep(1.5)  # no retry loop: still blocked until someone asks
        assert runtime.status().state is C.BLOCKED
        assert cloud_api.registrations("test-group") == before
        runtime.retry()
        wait_state(runtime, C.CONNECTED)
        assert runtime.status().registration_id == registration_id


def test_hub_refusal_reprovisions_then_blocks(keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs):
    data, _ = app_dirs
    config = config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)
    with running(config) as runtime:
        wait_state(runtime, C.CONNECTED)
        device = runtime.status().device_id
        registration = cloud_api.registration(device)
        cloud_api.set_device_status(device, False)
        wait_state(runtime, C.BLOCKED)
        # it went back to DPS once (cached assignment refused), then gave up: no loop
        assert cloud_api.registration(device)["etag"] != registration["etag"]
        cloud_api.set_device_status(device, True)
        runtime.retry()
        wait_state(runtime, C.CONNECTED)


def test_renewal_replaces_leaf_and_reconnects(keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs):
    data, _ = app_dirs
    # 1-day leaf, renewed after 0.005 % of its life (≈ 4 s): the real renewal path, fast.
    config = config_for(
        local_cloud.data_dir, enrolled_ca.bundle_path, data, "--leaf-days", "1", "--renew-fraction", "0.00005"
    )
    with running(config) as runtime:
        wait_state(runtime, C.CONNECTED)
        first = runtime.status()
        registration = cloud_api.registration(first.registration_id)
        wait_for(
            lambda: runtime.status().certificate_thumbprint != first.certificate_thumbprint, 30, "renewal"
        )
        wait_state(runtime, C.CONNECTED)
        renewed = runtime.status()
        assert renewed.registration_id == first.registration_id
        leaf = load_certificates(data / "identity" / "chain.pem")[0]
        assert sha1_thumbprint(leaf) == renewed.certificate_thumbprint
        # re-provisioned with the new leaf (same registration id, new DPS record version)
        assert cloud_api.registration(renewed.registration_id)["etag"] != registration["etag"]


def test_renewal_with_locked_keyring_keeps_the_working_leaf(
    keyring_env, local_cloud, enrolled_ca, app_dirs, caplog
):
    data, _ = app_dirs
    config = config_for(
        local_cloud.data_dir, enrolled_ca.bundle_path, data, "--leaf-days", "1", "--renew-fraction", "0.00005"
    )
    runtime = DeviceRuntime(config)
    runtime.start()
    try:
        wait_state(runtime, C.CONNECTED)
        first = runtime.status()
        keyring_env.lock()
        with caplog.at_level(logging.WARNING, logger="client_app.device"):
            wait_for(lambda: any("renewal failed" in r.getMessage() for r in caplog.records), 30, "renewal")
        wait_state(runtime, C.CONNECTED)
        assert runtime.status().certificate_thumbprint == first.certificate_thumbprint
    finally:
        keyring_env.unlock()
        runtime.close()


def test_c2d_that_cannot_be_stored_is_reported(
    keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs, caplog
):
    data, _ = app_dirs
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_state(runtime, C.CONNECTED)
        with closing(sqlite3.connect(data / "messages.sqlite3")) as db:
            db.execute("DROP TABLE inbox")  # every insert now fails, as on a broken disk
        with caplog.at_level(logging.ERROR, logger="client_app.device"):
            cloud_api.send_c2d(runtime.status().device_id, "lost", message_id="c2d-lost")
            wait_for(lambda: "could not be saved" in (runtime.status().last_error or ""), what="reported")
        assert any("c2d-lost" in r.getMessage() for r in caplog.records)  # support can tell which one
        assert runtime.status().state is C.CONNECTED  # the SDK handler thread survived


def test_replaced_issuer_in_updated_app_reissues_leaf(
    keyring_env, local_cloud, enrolled_ca, app_dirs, tmp_path
):
    data, _ = app_dirs
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_state(runtime, C.CONNECTED)
        first = runtime.status()
    new_bundle = tmp_path / "updated-app-bundle.pem"
    write_issuer_bundle(enrolled_ca.root.intermediate("second Issuing CA", path_length=0), new_bundle)
    with running(config_for(local_cloud.data_dir, new_bundle, data)) as runtime:
        wait_state(runtime, C.CONNECTED)
        status = runtime.status()
        assert status.registration_id == first.registration_id
        assert status.certificate_thumbprint != first.certificate_thumbprint
        assert status.certificate_issuer == "second Issuing CA"


def test_locked_keyring_is_a_clear_error(keyring_env, local_cloud, enrolled_ca, app_dirs):
    data, _ = app_dirs
    config = config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)
    keyring_env.lock()
    runtime = DeviceRuntime(config)
    try:
        runtime.start()
        wait_state(runtime, C.ERROR)
        assert "keyring is locked" in runtime.status().message and "Retry" in runtime.status().message
        assert not (data / "state.json").exists()  # nothing half-made, no plaintext fallback
    finally:
        keyring_env.unlock()
    try:
        runtime.retry()
        wait_state(runtime, C.CONNECTED)
        registration_id = runtime.status().registration_id
        assert runtime.status().last_error is None  # issue 14.13: "keyring locked" is over once connected
    finally:
        runtime.close()
    # Existing identity + locked keyring: an error, never a new identity.
    keyring_env.lock()
    runtime = DeviceRuntime(config)
    try:
        runtime.start()
        wait_state(runtime, C.ERROR)
        assert "locked" in runtime.status().message
    finally:
        keyring_env.unlock()
    try:
        runtime.retry()
        wait_state(runtime, C.CONNECTED)
        assert runtime.status().registration_id == registration_id
    finally:
        runtime.close()


def test_damaged_identity_never_forks_silently(keyring_env, local_cloud, enrolled_ca, app_dirs, caplog):
    """Issue 14 item 2, against the real keyring and cloud: damaged files keep the device; a lost key makes a
    new one only as a visible event, and a valid key is never deleted."""
    from client_app.device import secrets as keystore

    data, _ = app_dirs
    config = config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)
    with running(config) as runtime:
        wait_state(runtime, C.CONNECTED)
        old = runtime.status().registration_id
    key = keystore.load_key(old)
    (data / "identity" / "chain.pem").write_bytes(b"garbage")
    with running(config) as runtime:
        wait_state(runtime, C.CONNECTED)
        assert runtime.status().registration_id == old  # chain re-issued for the same key and id
    assert keystore.load_key(old).private_numbers() == key.private_numbers()  # never deleted
    (data / "state.json").write_text('{"registration_id": ')
    with running(config) as runtime:
        wait_state(runtime, C.CONNECTED)
        assert runtime.status().registration_id == old  # the id comes from the certificate
    # A keyring entry that vanished (user cleaned the keyring): a new identity, and everyone is told.
    keystore.delete_key(old)
    caplog.set_level(logging.WARNING, logger="client_app.device")
    with running(config) as runtime:
        wait_state(runtime, C.CONNECTED)
        status = runtime.status()
    assert status.registration_id != old and status.previous_registration_id == old
    notice = f"New identity {status.registration_id}; previous ID {old}"
    assert notice in (status.last_error or "") and any(notice in r.getMessage() for r in caplog.records)


def test_reset_identity_on_request(keyring_env, local_cloud, enrolled_ca, app_dirs):
    data, _ = app_dirs
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_state(runtime, C.CONNECTED)
        old = runtime.status().registration_id
        runtime.reset_identity()
        wait_for(lambda: runtime.status().registration_id != old, 30, "new identity")
        wait_state(runtime, C.CONNECTED)
        from client_app.device import secrets as keystore

        with pytest.raises(keystore.KeyMissing):
            keystore.load_key(old)  # the old key is gone from the keyring
