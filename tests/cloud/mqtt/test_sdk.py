"""The unmodified azure-iot-device 2.14 SDK against the transport (through the HTTP CONNECT front)."""

from __future__ import annotations

import gc

import pytest
from azure.iot.device import X509, IoTHubDeviceClient, Message, ProxyOptions

from client_app.pki import certificate_to_pem
from tests.cloud.mqtt.conftest import HUB_NAME, MqttPki, RecordingHandler, ServerThread, wait_until


# paho 1.6.1 leaks its loop_start() socketpair each time the SDK reconnects (the old pair is never closed).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
def test_sdk_hub_client_sends_receives_and_reconnects(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    device = pki.device("dev-sdk")
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(str(device.cert), str(device.key)),
        hostname=HUB_NAME,
        device_id="dev-sdk",
        server_verification_cert=certificate_to_pem(pki.root.certificate).decode(),
        proxy_options=ProxyOptions("HTTP", "127.0.0.1", server.proxy_port),
        keep_alive=5,
    )
    received: list[bytes] = []
    client.on_message_received = lambda message: received.append(message.data)
    try:
        client.connect()
        client.send_message(Message("hello"))
        conn = server.connection("dev-sdk")
        assert conn.proxy_target == HUB_NAME
        assert conn.username.startswith(f"{HUB_NAME}/dev-sdk/?api-version=2019-10-01")
        assert conn.keepalive == 5
        wait_until(lambda: handler.subscriptions, what="C2D subscription")
        server.call(conn.publish("devices/dev-sdk/messages/devicebound/%24.mid=1", b"c2d"))
        wait_until(lambda: received, what="C2D delivery")
        assert received == [b"c2d"]

        server.loop.call_soon_threadsafe(conn.close, "kicked by test")  # the SDK reconnects by itself
        wait_until(lambda: server.server.connections.get("dev-sdk") not in (None, conn), what="reconnect")
        client.send_message(Message("again"))
    finally:
        client.shutdown()
        del client
        gc.collect()  # report paho's leaked socketpair here, under this test's filter, not at session end
    wait_until(lambda: len(handler.disconnects) == 2, what="both disconnects")
    assert [m[1:3] for m in handler.published_messages] == [
        ("devices/dev-sdk/messages/events/", b"hello"),
        ("devices/dev-sdk/messages/events/", b"again"),
    ]
    assert [reason for _, reason in handler.disconnects] == ["kicked by test", "client sent DISCONNECT"]
