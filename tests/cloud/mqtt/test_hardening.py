"""Transport hardening (issue 14): idle limits, other protocol levels, the pending-handshake cap, refusals."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import psutil
import pytest

from client_app.cloud.mqtt import packets as p
from client_app.cloud.mqtt.ratelog import RateLimitedLog
from client_app.cloud.mqtt.server import MAX_IDLE_TIMEOUT
from tests.cloud.mqtt.conftest import (
    MqttPki,
    PahoClient,
    RawClient,
    RecordingHandler,
    ServerThread,
    open_tls,
    raw_client,
    wait_until,
)


def test_idle_timeout_follows_iot_hub(make_server: Callable[..., ServerThread]) -> None:
    server = make_server().server
    assert server.idle_timeout(60) == 90
    assert server.idle_timeout(1740) == MAX_IDLE_TIMEOUT == 1767  # capped
    assert server.idle_timeout(0) == MAX_IDLE_TIMEOUT  # 0 does not mean "never"


def test_keepalive_zero_connection_times_out(
    make_server: Callable[..., ServerThread], pki: MqttPki, handler: RecordingHandler
) -> None:
    server = make_server(max_idle_timeout=0.5)
    with raw_client(server, pki, pki.device("idle-0")) as client:
        assert client.connect("idle-0", keepalive=0) == p.Connack(0, False)
        client.wait_closed(timeout=5)
    wait_until(lambda: handler.reasons("idle-0"), what="disconnect")
    assert "keepalive expired" in handler.reasons("idle-0")[0]


def test_packets_keep_the_connection_past_many_idle_limits(
    make_server: Callable[..., ServerThread], pki: MqttPki, handler: RecordingHandler
) -> None:
    """The keep-alive deadline moves with every packet (one lazy timer per connection, not one per read)."""
    server = make_server(max_idle_timeout=0.5)
    with raw_client(server, pki, pki.device("idle-ping")) as client:
        assert client.connect("idle-ping", keepalive=0) == p.Connack(0, False)
        for _ in range(8):  # 1.6 s: three idle limits and more
            time.sleep(0.2)
            client.send(p.Pingreq())
            assert client.receive() == p.Pingresp()
        assert handler.reasons("idle-ping") == []
        silent_from = time.monotonic()
        client.wait_closed(timeout=5)
        assert 0.4 < time.monotonic() - silent_from < 2.5
    wait_until(lambda: handler.reasons("idle-ping"), what="disconnect")
    assert handler.reasons("idle-ping") == ["keepalive expired (no packet for 0.5 s)"]


def _connect_bytes(name: bytes, level: int) -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes([level, 0x02]) + (60).to_bytes(2, "big")
    body += (1).to_bytes(2, "big") + b"c" + (b"\x00" if level == 5 else b"")  # MQTT 5: empty property list
    return bytes([0x10, len(body)]) + body


@pytest.mark.parametrize(("name", "level", "answer"), [(b"MQTT", 5, p.Connack(1)), (b"MQIsdp", 3, None)])
def test_other_protocol_levels_answered_as_iot_hub(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, name: bytes, level: int, answer: object
) -> None:
    client = RawClient(open_tls(server.tls_port, pki.client_context(pki.device("old"))))
    try:
        client.send(_connect_bytes(name, level))
        if answer is None:
            with pytest.raises(EOFError):
                client.receive()
        else:
            assert client.receive() == answer
            client.wait_closed()
    finally:
        client.close()
    assert handler.authorized == []


def test_subscribe_stops_once_the_handler_closes(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    async def closing(conn, topic_filter, qos):
        handler.subscriptions.append((conn.client_id, topic_filter, qos))
        conn.close("unsupported")
        return 0x80

    handler.subscribed = closing  # type: ignore[method-assign]
    with raw_client(server, pki, pki.device("sub")) as client:
        client.connect("sub")
        client.send(p.Subscribe(1, tuple((f"bad/{i}", 1) for i in range(500))))
        client.wait_closed()
    assert len(handler.subscriptions) == 1


def test_retain_flag_reaches_the_handler(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    with raw_client(server, pki, pki.device("ret")) as client:
        client.connect("ret")
        client.send(p.Publish("t/retained", b"x", 1, 1, retain=True))
        client.send(p.Publish("t/plain", b"x", 1, 2))
        assert [client.receive(), client.receive()] == [p.Puback(1), p.Puback(2)]
    assert handler.retained == ["t/retained"]


def test_rate_limited_log_counts_what_it_leaves_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.ratelog"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        assert limited.log(logging.INFO, "k", "event %s", 1)
        assert not any(limited.log(logging.INFO, "k", "event %s", i) for i in range(1000))
        assert limited.log(logging.INFO, "other", "another kind")
        now[0] = 10.0
        assert limited.log(logging.INFO, "k", "event %s", 2)
    assert [r.getMessage() for r in caplog.records] == [
        "event 1",
        "another kind",
        "event 2 (1000 more like it in the last 10 s)",
    ]


@pytest.mark.slow
def test_half_open_connections_are_capped_and_devices_still_get_in(
    make_server: Callable[..., ServerThread],
    pki: MqttPki,
    paho_clients: list[PahoClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14.4: connections that never send a ClientHello (or a CONNECT) hold at most `cap` slots."""
    cap = 50
    server = make_server(max_pending_handshakes=cap, tls_handshake_timeout=60, proxy_header_timeout=60)
    caplog.set_level(logging.INFO, logger="client_app.cloud.mqtt")
    process = psutil.Process()
    rss_before = process.memory_info().rss
    silent: list[socket.socket] = []
    try:
        for i in range(600):  # direct listener and proxy front alike
            port = server.tls_port if i % 2 else server.proxy_port
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        wait_until(lambda: server.server.pending_handshakes <= cap, what="pending handshakes at the cap")
        time.sleep(0.5)
        assert server.server.pending_handshakes <= cap
        started = time.monotonic()
        device = PahoClient("legit", pki.device("legit"), pki)
        paho_clients.append(device)
        device.connect(server.tls_port)
        assert device.connack == 0 and time.monotonic() - started < 3
        # Dropped ones are really closed on our side: at most `cap` sockets still open in the server.
        server_fds = sum(1 for c in process.net_connections("tcp") if c.laddr.port in
                         (server.tls_port, server.proxy_port) and c.status == "ESTABLISHED")  # fmt: skip
        assert server_fds <= cap + 5
        # Silent clients never reach start_tls, so they hold no TLS buffers (90 MB before, 4 MB now).
        assert process.memory_info().rss - rss_before < 24 * 1024 * 1024
    finally:
        for sock in silent:
            sock.close()
    cap_lines = [r for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(cap_lines) == 1, "550 evictions, one line per interval"


@pytest.mark.slow
def test_memory_is_returned_after_handshake_floods(make_server: Callable[..., ServerThread]) -> None:
    """Issue 14.4: 3,300 half-open connections took the server from 73 to 569 MB and it never gave it back.

    Clients that start a TLS handshake (so buffers are allocated) and stall, 1,000 per flood: the cap bounds
    what they hold, and once they are gone the memory goes back to the OS.
    """
    server = make_server(max_pending_handshakes=64, tls_handshake_timeout=60)
    process = psutil.Process()
    start = process.memory_info().rss
    for _ in range(3):
        stalled = []
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
            sock.sendall(b"\x16\x03\x01\x00\x10")  # the first bytes of a ClientHello, then nothing
            stalled.append(sock)
        wait_until(lambda: server.server.pending_handshakes == 64, what="the cap")
        for sock in stalled:
            sock.close()
        wait_until(lambda: server.server.pending_handshakes == 0, what="every handshake gone")
        time.sleep(2)  # the release runs a second after the last one
    assert process.memory_info().rss - start < 16 * 1024 * 1024  # +100 MiB without the release
