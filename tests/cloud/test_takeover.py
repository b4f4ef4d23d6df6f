"""Issue 13: one install must not take over another install's identity (threat model: docs/pki.md).

The attacker holds what every copy of the app holds, the issuer bundle: it mints a fresh key and a leaf whose
CN is the victim's registration ID, registers through DPS and connects to the hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from client_app.cloud.info import ConnectionInfo
from client_app.identity_audit import REPORTED_CERTIFICATE, audit_twin
from client_app.pki import (
    certificate_to_pem,
    generate_key,
    load_certificates,
    load_issuer_bundle,
    self_certifying_id,
    sha256_thumbprint,
)
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, RawDevice, register, wait_for
from tests.cloud.test_cli import run
from tests.fixtures.cloud import DeviceFiles, configure_group, issue_device_files, write_device_files

pytestmark = PAHO_SOCKET_LEAKS

CHECK_ON = {"requireSelfCertifyingId": True, "allowKeyChange": False}
CHECK_OFF = {"requireSelfCertifyingId": False, "allowKeyChange": True}  # the seed's behaviour


def install(ca: Any, directory: Path) -> DeviceFiles:
    """A new install as the app makes it: its own key, registration ID derived from that key."""
    key = generate_key()
    return issue_device_files(ca, self_certifying_id(key.public_key()), directory, key=key)


def mint_takeover(bundle: Path, victim_id: str, directory: Path) -> DeviceFiles:
    """What anyone with the app can do: open the embedded issuer bundle and issue the victim's ID."""
    return issue_device_files(load_issuer_bundle(bundle), victim_id, directory)


def c2d_topic(device_id: str) -> str:
    return f"devices/{device_id}/messages/devicebound/#"


def send_c2d(api: Any, device_id: str, body: str) -> None:
    api.send_c2d(device_id, body)


def received(device: RawDevice) -> list[bytes]:
    return [body for topic, body in device.messages if "/messages/devicebound/" in topic]


@contextmanager
def hub_connection(info: ConnectionInfo, files: DeviceFiles) -> Iterator[RawDevice]:
    """Connected and subscribed to its C2D messages when the CONNACK was 0."""
    with RawDevice(info, files) as device:
        if device.connack == 0:
            device.client.subscribe(c2d_topic(files.registration_id), 1)
        yield device


@contextmanager
def dps_connection(info: ConnectionInfo, files: DeviceFiles) -> Iterator[RawDevice]:
    """An open DPS connection of a device (as while it registers)."""
    username = f"{info.id_scope}/registrations/{files.registration_id}/api-version=2019-03-31"
    device = RawDevice(info, files, username)
    device.hostname = info.provisioning_host
    with device:
        assert device.connack == 0
        yield device


def dps_answer(
    info: ConnectionInfo, files: DeviceFiles, registration_id: str | None = None, payload: Any = None
) -> dict[str, Any]:
    """Register over a raw connection (an attacker needs no SDK; and the SDK would leave a refused client
    connected and reconnecting): DPS's answer body plus "httpStatus"."""
    rid = registration_id or files.registration_id
    files = DeviceFiles(rid, files.cert_file, files.key_file, files.pass_phrase)
    with dps_connection(info, files) as device:
        device.client.subscribe("$dps/registrations/res/#", 1)
        body = json.dumps({"registrationId": rid, "payload": payload})
        device.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body)
        wait_for(lambda: device.messages, what="DPS answer")
    topic, answer = device.messages[0]
    return {**json.loads(answer), "httpStatus": int(topic.split("/")[3])}


def refused(answer: dict[str, Any]) -> bool:
    """DPS's unauthorized shape: HTTP 401, errorCode 401002 (docs/pki.md)."""
    return answer["httpStatus"] == 401 and answer["errorCode"] == 401002


@pytest.mark.parametrize("check", [True, False], ids=["check-on", "check-off"])
def test_takeover_with_the_issuer_bundle(local_cloud, cloud_api, enrolled_ca, tmp_path, check):
    """With the check on every step of the takeover fails and the victim stays connected; with it off (the
    seed's behaviour) the same steps steal the identity: the test can fail."""
    info = local_cloud.info
    configure_group(cloud_api, enrolled_ca, identityPolicy=CHECK_ON if check else CHECK_OFF)
    victim = install(enrolled_ca.issuing, tmp_path / "victim")
    victim_id = victim.registration_id
    assert register(info, victim).registration_state.device_id == victim_id
    attacker = mint_takeover(enrolled_ca.bundle_path, victim_id, tmp_path / "attacker")
    with hub_connection(info, victim) as victim_hub, dps_connection(info, victim) as victim_dps:
        assert victim_hub.connack == 0
        if check:
            assert refused(dps_answer(info, attacker))
            assert refused(dps_answer(info, attacker, victim_id.upper()))  # IDs are case-insensitive
            with hub_connection(info, attacker) as attacker_hub:
                assert attacker_hub.connack == 5
            send_c2d(cloud_api, victim_id, "for the victim")
            wait_for(lambda: received(victim_hub) == [b"for the victim"], what="the victim's C2D")
            assert not victim_hub.disconnected.is_set()
            assert not victim_dps.disconnected.is_set()  # other certificates never replace its connection
            assert received(attacker_hub) == []
        else:
            assert register(info, attacker).registration_state.device_id == victim_id  # re-bound
            with hub_connection(info, attacker) as attacker_hub:
                assert attacker_hub.connack == 0
                assert victim_hub.disconnected.wait(10)  # replaced by the attacker's connection
                send_c2d(cloud_api, victim_id, "for the victim")
                wait_for(lambda: received(attacker_hub) == [b"for the victim"], what="the stolen C2D")
            assert not victim_dps.disconnected.is_set()
    if not check:
        with hub_connection(info, victim) as victim_again:
            assert victim_again.connack == 5  # the victim is locked out (the issue's report)


def test_old_style_install_keeps_working_and_is_pinned(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """A `ca-<hex>` install from before the policy keeps its identity (same key); nobody else can take it
    (key pinned at its first registration), and no new install can start with an old-style ID."""
    info = local_cloud.info
    configure_group(cloud_api, enrolled_ca)  # the seed's group: no identity policy
    key = generate_key()
    legacy = issue_device_files(enrolled_ca.issuing, "ca-0123456789abcdef0123", tmp_path / "legacy", key=key)
    register(info, legacy)
    configure_group(cloud_api, enrolled_ca, identityPolicy=CHECK_ON)
    renewed = issue_device_files(enrolled_ca.issuing, legacy.registration_id, tmp_path / "renewed", key=key)
    assert register(info, renewed).registration_state.sub_status == "reprovisionedToInitialAssignment"
    attacker = mint_takeover(enrolled_ca.bundle_path, legacy.registration_id, tmp_path / "attacker")
    assert refused(dps_answer(info, attacker))
    newcomer = issue_device_files(enrolled_ca.issuing, "ca-fedcba9876543210fedc", tmp_path / "new")
    assert refused(dps_answer(info, newcomer))
    assert register(info, install(enrolled_ca.issuing, tmp_path / "fresh")).status == "assigned"


def test_key_pinning_is_on_without_any_policy(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """Trust on first use is the default: re-keying a registered ID needs allowKeyChange (or the operator
    deleting the registration record)."""
    info = local_cloud.info
    first = issue_device_files(enrolled_ca.issuing, "pinned-01", tmp_path / "first")
    register(info, first)
    other = issue_device_files(enrolled_ca.issuing, "pinned-01", tmp_path / "other")
    assert refused(dps_answer(info, other))
    cloud_api.delete_registration("pinned-01")  # the operator's explicit reset
    assert register(info, other).status == "assigned"


def test_verification_certificate_is_no_device_credential(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """The proof-of-possession certificate (no clientAuth EKU) neither provisions nor connects."""
    info = local_cloud.info
    proof, key = enrolled_ca.root.issue_verification("0A1B2C3D4E5F60718293A4B5")
    files = write_device_files("0A1B2C3D4E5F60718293A4B5", [proof], key, tmp_path / "proof")
    assert refused(dps_answer(info, files))
    assert cloud_api.devices() == []
    # Even bound to a hub device by thumbprint (as a device created outside DPS would be), CONNACK 5.
    local_cloud.cloud.hub.provision(files.registration_id, sha256_thumbprint(proof), {})
    with RawDevice(info, files) as device:
        assert device.connack == 5


def test_hub_refuses_a_takeover_certificate_bound_to_the_device(
    local_cloud, cloud_api, enrolled_ca, tmp_path
):
    """The hub checks the identity rules itself: even if the device record pointed at the takeover leaf
    (Azure's hub trusts its thumbprint, docs/pki.md), the CONNECT is refused."""
    info = local_cloud.info
    configure_group(cloud_api, enrolled_ca, identityPolicy=CHECK_ON)
    victim = install(enrolled_ca.issuing, tmp_path / "victim")
    register(info, victim)
    attacker = mint_takeover(enrolled_ca.bundle_path, victim.registration_id, tmp_path / "attacker")
    leaf = load_certificates(attacker.cert_file.read_bytes())[0]
    local_cloud.cloud.hub.provision(victim.registration_id, sha256_thumbprint(leaf), {})
    with RawDevice(info, attacker) as device:
        assert device.connack == 5


def report_certificate(device: RawDevice, files: DeviceFiles) -> None:
    """What the device core reports after connecting (supervisor._sync_twin): its leaf."""
    leaf = load_certificates(files.cert_file.read_bytes())[0]
    patch = json.dumps({REPORTED_CERTIFICATE: certificate_to_pem(leaf).decode()})
    device.messages.clear()
    device.client.subscribe("$iothub/twin/res/#", 1)
    device.publish("$iothub/twin/PATCH/properties/reported/?$rid=1", patch)
    wait_for(
        lambda: any(t.startswith("$iothub/twin/res/204/") for t, _ in device.messages), what="twin patch"
    )


def audit(api: Any, device_id: str) -> list[str]:
    return audit_twin(api.twin(device_id), api.device(device_id))


def test_backend_audit_flags_a_takeover_the_hub_accepted(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """Where nothing refused the registration (Azure without the webhook, or this cloud with the check off),
    the hub accepts the takeover certificate; the backend's twin check still tells."""
    info = local_cloud.info
    configure_group(cloud_api, enrolled_ca, identityPolicy=CHECK_OFF)
    victim = install(enrolled_ca.issuing, tmp_path / "victim")
    register(info, victim)
    with hub_connection(info, victim) as victim_hub:
        report_certificate(victim_hub, victim)
    assert audit(cloud_api, victim.registration_id) == []
    attacker = mint_takeover(enrolled_ca.bundle_path, victim.registration_id, tmp_path / "attacker")
    register(info, attacker)
    with hub_connection(info, attacker) as attacker_hub:
        assert attacker_hub.connack == 0
        assert audit(cloud_api, victim.registration_id)  # still the victim's certificate reported
        report_certificate(attacker_hub, victim)  # replaying the victim's certificate
        assert "the reported certificate is not the one the hub authenticates this device with" in audit(
            cloud_api, victim.registration_id
        )
        report_certificate(attacker_hub, attacker)  # its own
        assert audit(cloud_api, victim.registration_id) == [
            "the device ID is not the self-certifying ID of the certificate's key"
        ]


def test_disabling_and_enabling_a_group_keeps_its_identity_policy(local_cloud, cloud_api, enrolled_ca):
    """The operator CLI re-PUTs the group to change its status: the policy must not silently switch off."""
    configure_group(cloud_api, enrolled_ca, identityPolicy=CHECK_ON)
    run(local_cloud.data_dir, "enrollment-groups", "disable", enrolled_ca.group_id)
    run(local_cloud.data_dir, "enrollment-groups", "enable", enrolled_ca.group_id)
    group = cloud_api.group(enrolled_ca.group_id)
    assert group["provisioningStatus"] == "enabled" and group["identityPolicy"] == CHECK_ON


def test_installs_registered_before_key_pinning_keep_working(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """A database from before this change has registration records but no pinned keys: the same
    certificate still passes (the record's thumbprint proves the key), at the hub and at DPS."""
    info = local_cloud.info
    legacy = issue_device_files(enrolled_ca.issuing, "ca-00112233445566778899", tmp_path / "legacy")
    register(info, legacy)
    local_cloud.cloud._store.execute("DELETE FROM registration_keys")  # as an older cloud.db
    configure_group(cloud_api, enrolled_ca, identityPolicy=CHECK_ON)
    with hub_connection(info, legacy) as device:
        assert device.connack == 0
    assert dps_answer(info, legacy)["status"] == "assigned"
    attacker = mint_takeover(enrolled_ca.bundle_path, legacy.registration_id, tmp_path / "attacker")
    assert refused(dps_answer(info, attacker))
