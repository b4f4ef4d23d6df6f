"""The HTTP CONNECT front: tunnel set-up and refusal of anything else."""

from __future__ import annotations

import socket
import ssl

import pytest

from client_app.cloud.mqtt import packets as p
from tests.cloud.mqtt.conftest import PROXY_NAME, MqttPki, RawClient, RecordingHandler, ServerThread


def _exchange(port: int, request: bytes) -> bytes:
    """Send a request, return everything the front answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer


def test_tunnel_then_tls_then_mqtt(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> None:
    device = pki.device("dev-tunnel")
    with socket.create_connection(("127.0.0.1", server.proxy_port), timeout=5) as sock:
        sock.sendall(f"CONNECT {PROXY_NAME}:8883 HTTP/1.1\r\nHost: {PROXY_NAME}\r\n\r\n".encode())
        assert sock.recv(4096) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        tls = pki.client_context(device).wrap_socket(sock, server_hostname=PROXY_NAME)
        with tls:
            client = RawClient(tls)
            assert client.connect("dev-tunnel") == p.Connack(0, False)
    assert handler.authorized[0].proxy_target == PROXY_NAME
    assert handler.authorized[0].peer_chain[0] == device.leaf


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"CONNECT dps.test.local HTTP/1.1\r\n\r\n", b"400"),  # no port
        (b"CONNECT dps.test.local:99999 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT bad/host:8883 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT dps.test.local:8883 SPDY/3\r\n\r\n", b"400"),
        (b"CONNECT dps.test.local:8883 HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
        (b"CONNECT dps.test.local:8883 HTTP/1.1\r\n\r\n\x16\x03\x01", b"400"),  # data before our 200
        (b"CONNECT \xff:8883 HTTP/1.1\r\n\r\n", b"400"),
        (b"CONNECT x:8883 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"400"),  # header too large
    ],
)
def test_bad_requests_are_refused(
    server: ServerThread, handler: RecordingHandler, request_bytes: bytes, status: bytes
) -> None:
    answer = _exchange(server.proxy_port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert handler.authorized == []


def test_silent_or_half_request_times_out(make_server, handler: RecordingHandler) -> None:
    server = make_server(proxy_header_timeout=0.3)
    assert _exchange(server.proxy_port, b"") == b""
    assert _exchange(server.proxy_port, b"CONNECT dps.test.local:8883 HTTP/1.1\r\n") == b""


def test_tls_failure_inside_tunnel(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> None:
    rogue = pki.device("rogue", ca=pki.foreign)
    with socket.create_connection(("127.0.0.1", server.proxy_port), timeout=5) as sock:
        sock.sendall(f"CONNECT {PROXY_NAME}:8883 HTTP/1.1\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with pytest.raises(ssl.SSLError):
            pki.client_context(rogue).wrap_socket(sock, server_hostname=PROXY_NAME)
    assert handler.authorized == []
