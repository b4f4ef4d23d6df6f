"""MQTT over WebSockets (IoT Hub's port 443 flavour): a direct listener; the proxy front's CONNECT to 443."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from client_app.cloud.mqtt import packets as p
from client_app.cloud.mqtt.websocket import PATH
from tests.cloud.mqtt.conftest import (
    PROXY_NAME,
    MqttPki,
    PahoClient,
    RecordingHandler,
    ServerThread,
    wait_until,
)


def _echo(client: PahoClient) -> None:
    client.publish("echo/ws", b"over websockets")
    wait_until(lambda: client.messages, what="echo reply")
    assert (client.messages[0].topic, client.messages[0].payload) == ("reply/ws", b"over websockets")


def test_direct_websocket_listener(
    make_server: Callable[..., ServerThread], pki: MqttPki, paho_clients: list[PahoClient]
) -> None:
    server = make_server()
    _, port = server.call(server.server.listen_tls("127.0.0.1", 0, websocket=True))
    client = PahoClient("ws-direct", pki.device("ws-direct"), pki, websocket_path=PATH)
    paho_clients.append(client)
    client.connect(port)
    assert client.connack == 0 and client.subscribe("t/#") == (1,)
    _echo(client)
    big = bytes(range(256)) * 1024  # 256 KiB: spans many WebSocket frames and TLS records
    client.publish("slow/big", big)
    assert server.handler.published_messages[-1][2] == big


def test_proxy_front_serves_websockets_on_port_443(
    server: ServerThread, pki: MqttPki, paho_clients: list[PahoClient]
) -> None:
    client = PahoClient("ws-proxy", pki.device("ws-proxy"), pki, websocket_path=PATH)
    paho_clients.append(client)
    client.connect(
        443, host=PROXY_NAME, proxy_port=server.proxy_port
    )  # what the SDK does with websockets=True
    conn = server.connection("ws-proxy")
    assert conn.proxy_target == PROXY_NAME
    _echo(client)


def test_websocket_upgrade_elsewhere_is_refused(
    make_server: Callable[..., ServerThread], pki: MqttPki, handler: RecordingHandler
) -> None:
    server = make_server()
    _, port = server.call(server.server.listen_tls("127.0.0.1", 0, websocket=True))
    context = pki.client_context(pki.device("ws-wrong"))
    for request in (
        b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        p.encode(p.Connect("ws-wrong")),  # plain MQTT where a WebSocket is expected
    ):
        assert _answer(port, context, request) in (b"HTTP/1.1 404 ", b"HTTP/1.1 400 ")
    assert handler.authorized == []


def _answer(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    """The first 13 bytes the server sends back before it closes the connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
    return answer[:13]
