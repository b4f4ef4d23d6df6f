"""Server lifecycle: restart keeps state, direct listener, assignment delay, telemetry throughput."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from pathlib import Path

from client_app.cloud.info import ConnectionInfo
from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.cloud.store import Store, TelemetryWriter
from client_app.pki import CertificateAuthority
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, hub_client, provisioning_client, register, wait_for
from tests.fixtures.cloud import api_client, enroll_root, free_loopback, issue_device_files


@PAHO_SOCKET_LEAKS
def test_restart_keeps_everything(tmp_path):
    data = tmp_path / "cloud"
    data.mkdir(mode=0o755)  # made by the user: the database must still be the owner's alone
    root = CertificateAuthority.root("restart Root")
    issuing = root.intermediate("restart Issuing")
    files = issue_device_files(issuing, "keep-01", tmp_path)
    with start_in_thread(CloudSettings(data_dir=data)) as cloud, api_client(cloud) as api:
        first = cloud.info
        assert ConnectionInfo.load(data) == first
        enroll_root(api, root)
        register(first, files)
        client = hub_client(first, files)
        try:
            client.send_message("before restart")
            client.patch_twin_reported_properties({"kept": 1})
        finally:
            client.shutdown()
        api.update_twin("keep-01", {"properties": {"desired": {"mode": "eco"}}})
        api.send_c2d("keep-01", "queued while down")
    assert not (data / "connection.json").exists()  # removed on a clean stop
    assert stat.S_IMODE((data / "cloud.db").stat().st_mode) == 0o600  # it holds the key passphrase

    with start_in_thread(CloudSettings(data_dir=data)) as cloud, api_client(cloud) as api:
        info = cloud.info
        assert (info.id_scope, info.api_token, info.server_ca_pem) == (
            first.id_scope,
            first.api_token,
            first.server_ca_pem,
        )
        assert api.certificates.get("test-root").properties.is_verified is True
        assert api.registrations("test-group")[0]["deviceId"] == "keep-01"
        twin = api.twin("keep-01")["properties"]
        assert twin["reported"]["kept"] == 1 and twin["desired"]["mode"] == "eco"
        assert api.telemetry()[0]["body"] == "before restart"
        received: list[bytes] = []
        client = hub_client(info, files)  # the registration survived: straight to the hub
        try:
            client.on_message_received = lambda m: received.append(m.data)
            wait_for(lambda: received == [b"queued while down"], what="C2D queued across the restart")
        finally:
            client.shutdown()
        assert register(info, issue_device_files(issuing, "new-01", tmp_path)).status == "assigned"


@PAHO_SOCKET_LEAKS
def test_direct_listener_without_proxy(tmp_path):
    host = free_loopback()
    settings = CloudSettings(data_dir=tmp_path / "cloud", proxy_port=None, mqtt_listen=(host, 8883))
    with start_in_thread(settings) as cloud, api_client(cloud) as api:
        info = cloud.info
        assert (info.provisioning_host, info.hub_hostname, info.mqtt_port, info.proxy_port) == (
            host,
            host,
            8883,
            None,
        )
        root = CertificateAuthority.root("direct Root")
        enroll_root(api, root)
        files = issue_device_files(root, "direct-01", tmp_path)
        from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient

        ca = Path(info.server_ca_pem).read_text()
        x509 = X509(str(files.cert_file), str(files.key_file), files.pass_phrase)
        result = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=host, registration_id="direct-01", id_scope=info.id_scope, x509=x509,
            server_verification_cert=ca,
        ).register()  # fmt: skip
        assert result.registration_state.assigned_hub == host
        client = IoTHubDeviceClient.create_from_x509_certificate(
            x509=x509, hostname=host, device_id="direct-01", server_verification_cert=ca
        )
        try:
            client.send_message("direct")
        finally:
            client.shutdown()
        assert api.telemetry()[0]["body"] == "direct"


def test_assignment_delay_answers_assigning_then_assigned(tmp_path):
    settings = CloudSettings(data_dir=tmp_path / "cloud", assignment_delay=0.5)
    with start_in_thread(settings) as cloud, api_client(cloud) as api:
        root = CertificateAuthority.root("delay Root")
        enroll_root(api, root)
        started = time.monotonic()
        result = provisioning_client(cloud.info, issue_device_files(root, "slow-01", tmp_path)).register()
        assert result.status == "assigned"
        assert time.monotonic() - started >= 1.5  # the SDK polls after its fixed 2 s


def test_telemetry_store_keeps_up(tmp_path):
    """The group-commit writer must store well over 5,000 messages/s (many devices publishing at once)."""
    store = Store(tmp_path / "bench.db")
    count = 20_000

    async def run() -> float:
        writer = TelemetryWriter(store)
        writer.start()
        started = time.perf_counter()
        body = json.dumps({"temperature": 21.5, "humidity": 40}).encode()
        await asyncio.gather(
            *(writer.add(f"dev-{i % 200}", body, {"messageId": str(i)}, {}) for i in range(count))
        )
        elapsed = time.perf_counter() - started
        await writer.stop()
        return elapsed

    elapsed = asyncio.run(run())
    assert store.one("SELECT COUNT(*) FROM telemetry")[0] == count
    store.close()
    assert count / elapsed > 5_000, f"{count / elapsed:.0f} msg/s"
