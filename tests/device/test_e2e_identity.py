"""Self-certifying identities end to end (issue 13): real local cloud with the identity policy on, real SDK,
real keyring."""

from __future__ import annotations

import pytest

from client_app import allocation_webhook as webhook
from client_app.device import identity as ids
from client_app.device import secrets as keystore
from client_app.device.runtime import ConnectionState
from client_app.pki import certifies_own_key, load_certificates
from tests.cloud.test_allocation_webhook import custom_allocation, serve
from tests.device.e2e import config_for, running, wait_for, wait_state
from tests.fixtures.cloud import configure_group

C = ConnectionState
POLICY_ON = {"identityPolicy": {"requireSelfCertifyingId": True, "allowKeyChange": False}}


def test_new_install_provisions_under_the_policy(keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs):
    configure_group(cloud_api, enrolled_ca, **POLICY_ON)
    data, _ = app_dirs
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_state(runtime, C.CONNECTED)
        status = runtime.status()
        assert status.registration_id.startswith("k1-") and status.device_id == status.registration_id
        assert certifies_own_key(load_certificates(data / "identity" / "chain.pem")[0])


def test_old_style_install_keeps_working_until_it_renews(
    keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs
):
    data, _ = app_dirs
    legacy_id = "ca-0123456789abcdef0123"
    with pytest.MonkeyPatch.context() as patch:  # an install from before self-certifying IDs
        patch.setattr(ids, "self_certifying_id", lambda key: legacy_id)
        config = config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data, "--leaf-days", "1")
        with running(config) as runtime:
            wait_state(runtime, C.CONNECTED)
            assert runtime.status().registration_id == legacy_id
    configure_group(cloud_api, enrolled_ca, **POLICY_ON)
    # Renewed after 0.005 % of a 1-day life (≈ 4 s): it reconnects as before, then renews into a new ID.
    config = config_for(
        local_cloud.data_dir, enrolled_ca.bundle_path, data, "--leaf-days", "1", "--renew-fraction", "0.00005"
    )
    with running(config) as runtime:
        wait_for(
            lambda: (runtime.status().registration_id or "").startswith("k1-"), 60, "renewal into a new ID"
        )
        wait_state(runtime, C.CONNECTED, 60)
        status = runtime.status()
        leaf = load_certificates(data / "identity" / "chain.pem")[0]
        assert certifies_own_key(leaf) and ids.subject_cn(leaf) == status.registration_id
        assert status.device_id == status.registration_id
    with pytest.raises(keystore.KeyMissing):
        keystore.load_key(legacy_id)  # the old keyring entry is gone, the key lives on under the new ID
    assert keystore.load_key(status.registration_id) is not None


def test_new_install_provisions_through_the_shipped_webhook(
    keyring_env, local_cloud, cloud_api, enrolled_ca, app_dirs
):
    """Azure's configuration: no local identity policy, the group's custom allocation webhook decides; the
    device core's registration payload carries what the webhook needs."""
    data, _ = app_dirs
    with serve(webhook.app) as base:
        configure_group(cloud_api, enrolled_ca, **custom_allocation(base + webhook.ROUTE))
        with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
            wait_state(runtime, C.CONNECTED)
            assert runtime.status().device_id.startswith("k1-")
