"""Azure's published Python service SDKs against the local cloud's AMQP endpoint, pointed at it only by a
connection string and the runtime's usual CA trust: azure-iot-hub (uamqp, OpenSSL: SSL_CERT_FILE) for C2D and
azure-eventhub (`connection_verify=`) for the Event Hubs-compatible endpoint."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import uuid
from datetime import UTC, datetime

import pytest
from azure.core.credentials import AzureSasCredential
from azure.eventhub import EventHubConsumerClient
from azure.eventhub.exceptions import AuthenticationError, ConnectError, EventHubError
from azure.iot.device import Message
from azure.iot.hub import IoTHubRegistryManager

from client_app.cloud.sas import generate_token
from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.cloud.store import partition_of
from tests.cloud.amqp_helpers import EventCollector, connected_device, hub_connection_string
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, wait_for

pytestmark = PAHO_SOCKET_LEAKS


@pytest.fixture
def openssl_trusts_cloud(local_cloud, monkeypatch):
    """uamqp's OpenSSL takes the usual SSL_CERT_FILE (azure-iot-hub passes no CA setting of its own)."""
    monkeypatch.setenv("SSL_CERT_FILE", local_cloud.info.server_ca_pem)


def _registry(cloud, policy="service", key=None):
    return IoTHubRegistryManager.from_connection_string(hub_connection_string(cloud, policy, key))


def test_send_c2d_message_reaches_the_device_with_its_properties(local_cloud, enrolled_ca, tmp_path,
                                                                 openssl_trusts_cloud):  # fmt: skip
    with connected_device(local_cloud, enrolled_ca.issuing, "c2d-amqp-01", tmp_path) as device:
        registry = _registry(
            local_cloud, "iothubowner"
        )  # connection.json's own, where REST and AMQP share it
        try:
            registry.send_c2d_message(
                "c2d-amqp-01",
                "reboot now",
                {"contentType": "text/plain", "contentEncoding": "utf-8", "messageId": "mid-42",
                 "correlationId": "cid-7", "iothub-ack": "full", "k/1": "v 1", "flag": "x&y"},
            )  # fmt: skip
        finally:
            registry.amqp_svc_client.disconnect_sync()
        wait_for(lambda: device.received, what="C2D message over AMQP")
    message = device.received[0]
    assert message.data == b"reboot now"
    assert (message.message_id, message.correlation_id) == ("mid-42", "cid-7")
    assert (message.content_type, message.content_encoding) == ("text/plain", "utf-8")
    assert message.ack == "full"
    assert message.custom_properties == {"k/1": "v 1", "flag": "x&y"}


@pytest.mark.parametrize(
    ("policy", "key"),
    [("service", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), ("registryRead", None)],
    ids=["bad-signature", "policy-without-ServiceConnect"],
)
def test_c2d_refused_without_a_valid_service_token(local_cloud, enrolled_ca, tmp_path, openssl_trusts_cloud,
                                                   policy, key):  # fmt: skip
    with connected_device(local_cloud, enrolled_ca.issuing, "c2d-amqp-02", tmp_path) as device:
        registry = _registry(local_cloud, policy, key)
        try:
            with pytest.raises(Exception):  # noqa: B017 - uamqp raises TokenAuthFailure or a bare Exception
                registry.send_c2d_message("c2d-amqp-02", "not for you")
        finally:
            registry.amqp_svc_client.disconnect_sync()
        time.sleep(0.5)
        assert device.received == []


def test_c2d_refusals_unknown_device_oversize_and_queue_full(local_cloud, cloud_api, enrolled_ca, tmp_path,
                                                             openssl_trusts_cloud):  # fmt: skip
    with connected_device(local_cloud, enrolled_ca.issuing, "c2d-amqp-03", tmp_path) as device:
        device.disconnect()  # messages stay queued
    registry = _registry(local_cloud)
    try:
        with pytest.raises(Exception, match="C2D message send failure"):
            registry.send_c2d_message("no-such-device", "hello")
        with pytest.raises(Exception, match="C2D message send failure"):
            registry.send_c2d_message("c2d-amqp-03", "x" * (64 * 1024 + 1))
        for n in range(50):
            registry.send_c2d_message("c2d-amqp-03", f"m{n}")
        with pytest.raises(Exception, match="C2D message send failure"):
            registry.send_c2d_message("c2d-amqp-03", "one too many")
    finally:
        registry.amqp_svc_client.disconnect_sync()
    assert cloud_api.device("c2d-amqp-03")["cloudToDeviceMessageCount"] == 50
    with connected_device(local_cloud, enrolled_ca.issuing, "c2d-amqp-03", tmp_path, device.files) as again:
        wait_for(lambda: len(again.received) == 50, what="the 50 queued messages")
    assert [m.data.decode() for m in again.received] == [f"m{n}" for n in range(50)]


def _send_telemetry(device, texts, **properties):
    for text in texts:
        message = Message(text, message_id=f"mid-{text}", content_type="application/json",
                          content_encoding="utf-8")  # fmt: skip
        message.custom_properties = dict(properties)
        device.send_message(message)
        time.sleep(0.005)  # each in a millisecond of its own: enqueued times (and their filters) count in ms


def _bodies(events):
    return [event.body_as_str() for event in events]


def test_event_hub_consumer_reads_telemetry_from_start_sequence_number_and_latest(local_cloud, enrolled_ca,
                                                                                 tmp_path):  # fmt: skip
    device_id = "eh-01"
    partition = str(partition_of(device_id, 4))
    with connected_device(local_cloud, enrolled_ca.issuing, device_id, tmp_path) as device:
        _send_telemetry(device, ["a", "b", "c"], alert="true", unit="°C")
        with EventCollector(local_cloud, partition, "-1") as start:
            wait_for(lambda: len(start.events) >= 3, what="events from the start")
        first = start.events[0]
        assert _bodies(start.events) == ["a", "b", "c"]
        assert first.properties == {b"alert": b"true", b"unit": "°C".encode()}
        system = first.system_properties
        assert system[b"iothub-connection-device-id"] == device_id.encode()
        assert system[b"iothub-message-source"] == b"Telemetry"
        assert system[b"message-id"] == b"mid-a"
        assert system[b"content-type"] == b"application/json"
        assert system[b"content-encoding"] == b"utf-8"
        assert isinstance(system[b"iothub-enqueuedtime"], datetime) or system[b"iothub-enqueuedtime"]
        assert [e.sequence_number for e in start.events] == [0, 1, 2]
        assert first.enqueued_time is not None and first.enqueued_time.tzinfo is UTC
        assert first.offset == system[b"x-opt-offset"].decode()

        with EventCollector(local_cloud, partition, 1) as after_second:  # sequence number, exclusive
            wait_for(lambda: after_second.events, what="events after sequence number 1")
            time.sleep(0.5)
        assert _bodies(after_second.events) == ["c"]
        with EventCollector(local_cloud, partition, 1, inclusive=True) as from_second:
            wait_for(lambda: len(from_second.events) >= 2, what="events from sequence number 1")
        assert _bodies(from_second.events) == ["b", "c"]

        with EventCollector(local_cloud, partition, "@latest") as latest:
            time.sleep(1.5)  # the receiver is attached before the next message is sent
            _send_telemetry(device, ["d"])
            wait_for(lambda: latest.events, what="a new event from @latest")
            time.sleep(0.5)
        assert _bodies(latest.events) == ["d"]

        enqueued = start.events[2].enqueued_time
        with EventCollector(local_cloud, partition, enqueued, inclusive=True) as by_time:
            wait_for(lambda: len(by_time.events) >= 2, what="events by enqueued time")
        assert _bodies(by_time.events)[:2] == ["c", "d"]


def test_event_hub_properties_and_consumer_group_checks(local_cloud):
    client = EventHubConsumerClient.from_connection_string(
        local_cloud.info.eventhub_compatible_connection_string, "$Default",
        connection_verify=local_cloud.info.server_ca_pem,
    )  # fmt: skip
    with client:
        assert client.get_partition_ids() == ["0", "1", "2", "3"]
        props = client.get_partition_properties("2")
        assert props["is_empty"] and props["last_enqueued_sequence_number"] == -1
    with EventCollector(local_cloud, "0", "-1", consumer_group="nobody", retry_total=0) as unknown:
        wait_for(lambda: unknown.errors, what="an error for an unknown consumer group")
    assert "could not be found" in str(unknown.errors[0])


def test_event_hub_consumer_resumes_after_restart_without_loss_or_duplicates(local_cloud, enrolled_ca,
                                                                             tmp_path):  # fmt: skip
    device_id = "eh-02"
    partition = str(partition_of(device_id, 4))
    with connected_device(local_cloud, enrolled_ca.issuing, device_id, tmp_path) as device:
        _send_telemetry(device, ["1", "2", "3"])
        files = device.files
    with EventCollector(local_cloud, partition, "-1") as before:
        wait_for(lambda: len(before.events) >= 3, what="events before the restart")
    checkpoint = before.events[-1].sequence_number
    connection_string = local_cloud.info.eventhub_compatible_connection_string
    local_cloud.stop()

    restarted = start_in_thread(CloudSettings(data_dir=local_cloud.data_dir))
    try:
        assert restarted.info.eventhub_compatible_connection_string == connection_string  # same address, key
        with connected_device(restarted, enrolled_ca.issuing, device_id, tmp_path, files) as device:
            _send_telemetry(device, ["4", "5"])
        with EventCollector(restarted, partition, checkpoint) as after:
            wait_for(lambda: len(after.events) >= 2, what="events after the checkpoint")
            time.sleep(0.5)
        assert _bodies(after.events) == ["4", "5"]
        assert [e.sequence_number for e in after.events] == [checkpoint + 1, checkpoint + 2]
    finally:
        restarted.stop()


def test_event_hub_refuses_expired_and_foreign_tokens(local_cloud):
    info = local_cloud.info
    policy = local_cloud.cloud.hub_policies["service"]
    audience = f"sb://{info.eventhub_host}/hub"
    expired = generate_token(audience, policy.primary_key, policy.name, ttl=-60)
    wrong_key = generate_token(audience, "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", policy.name)
    for token, reason in ((expired, "expired"), (wrong_key, "signature")):
        client = EventHubConsumerClient(
            info.eventhub_host, "hub", "$Default", AzureSasCredential(token),
            connection_verify=info.server_ca_pem, retry_total=0,
        )  # fmt: skip
        with client, pytest.raises((AuthenticationError, ConnectError, EventHubError), match=reason):
            client.get_eventhub_properties()


def test_telemetry_partition_is_stable_per_device():
    assert partition_of("eh-01", 4) == partition_of("eh-01", 4)
    assert {partition_of(f"dev-{uuid.uuid4()}", 4) for _ in range(64)} == {0, 1, 2, 3}


def test_development_emulator_connection_string_reaches_plain_amqp(local_cloud):
    """`UseDevelopmentEmulator=true` (the Event Hubs emulator's convention): plain AMQP on 5672, no CA."""
    emulator = ";UseDevelopmentEmulator=true"
    connection_string = local_cloud.info.eventhub_compatible_connection_string + emulator
    with EventHubConsumerClient.from_connection_string(connection_string, "$Default") as client:
        assert client.get_eventhub_properties()["partition_ids"] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("endpoint", ["amqp_host", "eventhub_host"])
@pytest.mark.parametrize("tls", [False, True], ids=["amqp", "amqps"])
def test_garbage_costs_only_its_own_connection(local_cloud, tls, endpoint):
    info = local_cloud.info
    host = getattr(info, endpoint)
    raw = socket.create_connection((host, 5671 if tls else 5672), timeout=10)
    if tls:
        raw = ssl.create_default_context(cafile=info.server_ca_pem).wrap_socket(raw, server_hostname=host)
    with raw:
        raw.sendall(b"AMQP\x03\x01\x00\x00" + b"\xff" * 64)  # a SASL header, then no frame at all
        raw.sendall(b"\x00\x00\x00\x10garbage-garbage!")
        with contextlib.suppress(OSError):
            raw.recv(4096)
    with socket.create_connection((host, 5672), timeout=10) as raw:
        raw.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        )  # not AMQP: proton answers with its header and closes
        with contextlib.suppress(OSError):
            raw.recv(4096)
    client = EventHubConsumerClient.from_connection_string(
        info.eventhub_compatible_connection_string, "$Default", connection_verify=info.server_ca_pem
    )
    with client:
        assert client.get_partition_ids() == ["0", "1", "2", "3"]
