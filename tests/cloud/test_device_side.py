"""Issue 14, the cloud's device side: what IoT Hub does with unsupported filters, RETAIN, Will, chains."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, ProvisioningDeviceClient

from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.pki import CertificateAuthority
from tests.cloud.sdk import (
    PAHO_SOCKET_LEAKS,
    RawDevice,
    dps_refusal,
    hub_client,
    provisioning_client,
    register,
    wait_for,
)
from tests.fixtures.cloud import api_client, enroll_root, free_loopback, issue_device_files

pytestmark = PAHO_SOCKET_LEAKS


def test_unsupported_subscription_closes_the_connection_and_logs_once(
    local_cloud, enrolled_ca, tmp_path, caplog: pytest.LogCaptureFixture
):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "flood-01", tmp_path)
    register(info, files)
    caplog.set_level(logging.INFO, logger="client_app.cloud")
    filters = [(f"custom/{i}/" + "x" * 4000, 1) for i in range(60)]  # ~240 KB of unsupported filters
    for _ in range(5):
        with RawDevice(info, files) as raw:
            raw.client.subscribe(filters)
            assert raw.disconnected.wait(10)
    refusals = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refusals) == 1, [r.getMessage()[:120] for r in refusals]
    assert len(refusals[0].getMessage()) < 300  # the filter is clipped, not copied into the log
    with RawDevice(info, files) as raw:  # what the SDK subscribes to still works
        result, _mid = raw.client.subscribe("$iothub/methods/POST/#", 1)
        assert result == 0
        raw.publish("$iothub/twin/GET/?$rid=1", b" ")
        wait_for(lambda: raw.messages, what="twin answer")
        assert not raw.disconnected.is_set()


def test_retain_becomes_a_property_and_a_lost_connection_sends_its_will(
    local_cloud, cloud_api, enrolled_ca, tmp_path
):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "will-01", tmp_path)
    register(info, files)
    events = "devices/will-01/messages/events/"
    with RawDevice(info, files, will=(events + "kind=bye", b"clean")) as raw:  # DISCONNECT: no Will
        mid = raw.client.publish(events, b"kept?", qos=1, retain=True).mid
        wait_for(lambda: mid in raw.acked, what="PUBACK")
    with RawDevice(info, files, will=(events + "kind=lost", b"gone")) as raw:  # lost: the Will is sent
        wait_for(lambda: "will-01" in local_cloud.cloud.hub._online, what="hub connection")
        assert local_cloud.cloud.drop_connection("will-01")
        assert raw.disconnected.wait(10)
    messages = wait_for(lambda: (m := cloud_api.telemetry()) and len(m) == 2 and m,
                        what="retained message and Will")  # fmt: skip
    retained, will = messages
    assert (retained["body"], retained["properties"]) == ("kept?", {"mqtt-retain": "true"})
    assert (will["body"], will["properties"]) == ("gone", {"kind": "lost", "iothub-MessageType": "Will"})


@pytest.mark.slow
def test_a_chain_past_the_depth_limit_is_reported_as_too_long(local_cloud, cloud_api, tmp_path, caplog):
    root = CertificateAuthority.root("long Root")
    ca = root
    for depth in range(12):
        ca = ca.intermediate(f"long intermediate {depth}", path_length=None)
    enroll_root(cloud_api, root, "long-root", group_id="long-group")
    caplog.set_level(logging.INFO, logger="client_app.cloud.dps.registration")
    assert "401" in dps_refusal(local_cloud.info, issue_device_files(ca, "long-01", tmp_path))
    # The SDK does not show the body; the answer's message is the one logged (was "CA certificate not found").
    assert "401002 certificate chain too long: 12 intermediates, at most 8" in caplog.text


def test_accept_failures_at_fd_exhaustion_log_once_per_interval(local_cloud, caplog):
    """asyncio reports each failed accept() (EMFILE) with a traceback: 84,700 of them in 10 s in the issue."""
    loop = local_cloud.cloud._loop
    context = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(24, "Too many open files"),
    }
    caplog.set_level(logging.INFO)
    for _ in range(1000):
        loop.call_soon_threadsafe(loop.call_exception_handler, context)
    done = threading.Event()
    loop.call_soon_threadsafe(done.set)
    assert done.wait(10)
    lines = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


def test_python_sdk_over_websockets(local_cloud, cloud_api, enrolled_ca, tmp_path, caplog):
    """`websockets=True`: the SDK dials 443, path /$iothub/websocket (here via the proxy: CONNECT host:443)"""
    caplog.set_level(logging.INFO, logger="client_app.cloud.mqtt")
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "ws-01", tmp_path)
    result = provisioning_client(info, files, websockets=True).register()
    assert result.status == "assigned"
    client = hub_client(info, files, result.registration_state.assigned_hub, websockets=True)
    try:
        client.send_message("over websockets")
        client.patch_twin_reported_properties({"transport": "websockets"})
        assert client.get_twin()["reported"]["transport"] == "websockets"
    finally:
        client.shutdown()
    assert cloud_api.telemetry()[0]["body"] == "over websockets"
    assert caplog.text.count("connected over WebSockets") == 2  # DPS, then the hub


def test_direct_listeners_for_other_clients(tmp_path):
    """`serve`'s direct listener (8883) and a direct WebSocket one (443) on one loopback address: DPS answers
    that address as assignedHub, and both transports reach the hub there."""
    try:
        host = free_loopback(8883, 443)
    except PermissionError:
        pytest.skip("binding port 443 needs root or net.ipv4.ip_unprivileged_port_start <= 443")
    settings = CloudSettings(data_dir=tmp_path / "cloud", proxy_port=None, mqtt_listen=(host, 8883),
                             websocket_listen=(host, 443))  # fmt: skip
    with pytest.raises(ValueError, match="must use port 443"):
        CloudSettings(data_dir=tmp_path / "x", websocket_listen=(host, 8443))
    with start_in_thread(settings) as cloud, api_client(cloud) as api:
        root = CertificateAuthority.root("ws Root")
        enroll_root(api, root)
        files = issue_device_files(root, "wsdirect-01", tmp_path)
        ca = Path(cloud.info.server_ca_pem).read_text()
        x509 = X509(str(files.cert_file), str(files.key_file), files.pass_phrase)
        result = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=host, registration_id="wsdirect-01", id_scope=cloud.info.id_scope, x509=x509,
            server_verification_cert=ca, websockets=True,
        ).register()  # fmt: skip
        assert result.registration_state.assigned_hub == host
        for websockets in (True, False):
            client = IoTHubDeviceClient.create_from_x509_certificate(
                x509=x509,
                hostname=host,
                device_id="wsdirect-01",
                server_verification_cert=ca,
                websockets=websockets,
            )
            try:
                client.send_message(f"websockets={websockets}")
            finally:
                client.shutdown()
        bodies = [m["body"] for m in api.telemetry()]
        assert bodies == ["websockets=True", "websockets=False"]
