"""MqttServer over real TLS on 127.0.0.1 with paho-mqtt 1.6.1 and raw sockets."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

import pytest

from client_app.cloud.mqtt import packets as p
from client_app.cloud.mqtt.server import ConnectDecision, ConnectionClosed
from tests.cloud.mqtt.conftest import (
    PROXY_NAME,
    MqttPki,
    PahoClient,
    RawClient,
    RecordingHandler,
    ServerThread,
    open_tls,
    raw_client,
    wait_until,
)


def test_paho_round_trip_direct(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, paho_clients: list[PahoClient]
) -> None:
    device = pki.device("dev-1")
    client = PahoClient("dev-1", device, pki)
    paho_clients.append(client)
    client.connect(server.tls_port)
    assert client.connack == 0
    conn = server.connection("dev-1")
    assert conn.username.startswith("scope/registrations/dev-1/")
    assert conn.keepalive == 60
    assert conn.local_host == "127.0.0.1"
    assert conn.proxy_target is None
    assert [c.subject for c in conn.peer_chain] == [device.leaf.subject, pki.issuing.certificate.subject]

    assert client.subscribe("devices/dev-1/#", 1) == (1,)
    assert client.subscribe("forbidden/x", 1) == (0x80,)
    client.publish("devices/dev-1/messages/events/", b"hello")
    assert handler.published_messages == [("dev-1", "devices/dev-1/messages/events/", b"hello", 1)]

    server.call(conn.publish("devices/dev-1/messages/devicebound/x", b"down", qos=1))
    wait_until(lambda: client.messages, what="server message")
    assert client.messages[0].payload == b"down"
    client.stop()
    wait_until(lambda: handler.disconnects, what="disconnected")
    assert handler.reasons("dev-1") == ["client sent DISCONNECT"]
    assert server.server.connections == {}


def test_paho_through_http_connect_proxy(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, paho_clients: list[PahoClient]
) -> None:
    client = PahoClient("dev-proxy", pki.device("dev-proxy"), pki)
    paho_clients.append(client)
    client.connect(8883, host=PROXY_NAME, proxy_port=server.proxy_port)  # the name never resolves
    conn = server.connection("dev-proxy")
    assert conn.proxy_target == PROXY_NAME
    client.publish("echo/ping", b"1")  # handler awaits conn.publish inline: must not deadlock
    wait_until(lambda: client.messages, what="echo reply")
    assert (client.messages[0].topic, client.messages[0].payload) == ("reply/ping", b"1")


def test_foreign_root_refused_at_tls(
    make_server: Callable[..., ServerThread],
    pki: MqttPki,
    handler: RecordingHandler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(refusal_log_interval=0)  # every refusal logged (by default once per 10 s)
    caplog.set_level(logging.INFO, logger="client_app.cloud.mqtt")
    rogue = pki.device("rogue", ca=pki.foreign)
    with pytest.raises(ssl.SSLError):
        open_tls(server.tls_port, pki.client_context(rogue)).close()
    # TLS 1.3: the client finishes its side first and learns of the refusal on its first read.
    sock = open_tls(server.tls_port, pki.client_context(rogue, tls12=False))
    with sock, pytest.raises((ssl.SSLError, EOFError)):
        client = RawClient(sock)
        client.send(p.Connect("rogue"))
        client.receive()
    assert handler.authorized == []
    wait_until(lambda: sum("TLS handshake failed" in r.getMessage() for r in caplog.records) == 2)
    assert "certificate verify failed" in caplog.text  # one clear line says why


@pytest.mark.parametrize("send_chain", [True, False])
def test_presented_chain_is_what_the_client_sent(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, send_chain: bool
) -> None:
    device = pki.device("dev-chain", send_chain=send_chain)
    with raw_client(server, pki, device) as client:
        assert client.connect("dev-chain") == p.Connack(0, False)
    expected = [device.leaf] + ([pki.issuing.certificate] if send_chain else [])
    assert handler.authorized[0].peer_chain == expected


@pytest.mark.parametrize(
    ("decision", "sent"), [((5, False), 5), (ConnectDecision(2), 2), (1, 3), ((4, True), 4), ((0, True), 0)]
)
def test_authorize_decides_connack(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, decision: object, sent: int
) -> None:
    handler.return_codes["dev-rc"] = decision
    with raw_client(server, pki, pki.device("dev-rc")) as client:
        connack = client.connect("dev-rc")
        assert connack.return_code == sent  # rc 1 from a handler is never sent
        assert connack.session_present == (sent == 0)
        if sent:
            client.wait_closed()
    if sent:
        assert handler.disconnects == []  # only authorized connections get disconnected()
    else:
        wait_until(lambda: handler.disconnects)


def test_empty_client_id_refused(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> None:
    with raw_client(server, pki, pki.device("dev-empty")) as client:
        assert client.connect("").return_code == 2
        client.wait_closed()
    assert handler.authorized == []


def test_same_client_id_drops_older(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> None:
    device = pki.device("dev-twice")
    with raw_client(server, pki, device) as first, raw_client(server, pki, device) as second:
        assert first.connect("dev-twice").return_code == 0
        older = server.connection("dev-twice")
        assert second.connect("dev-twice").return_code == 0
        first.wait_closed()
        assert handler.reasons("dev-twice") == ["replaced by a new connection with the same client id"]
        assert handler.disconnects[0][0] is older
        assert server.server.connections["dev-twice"] is not older
        second.send(p.Pingreq())
        assert second.receive() == p.Pingresp()


def test_refused_second_connect_keeps_the_first(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    device = pki.device("dev-keep")
    with raw_client(server, pki, device) as first, raw_client(server, pki, device) as second:
        assert first.connect("dev-keep").return_code == 0
        handler.return_codes["dev-keep"] = (5, False)
        assert second.connect("dev-keep").return_code == 5
        first.send(p.Pingreq())
        assert first.receive() == p.Pingresp()


def test_keepalive_expiry_and_ping(make_server, pki: MqttPki, handler: RecordingHandler) -> None:
    server = make_server()
    device = pki.device("dev-ka")
    with raw_client(server, pki, device) as silent, raw_client(server, pki, device) as forever:
        assert silent.connect("dev-ka-1", keepalive=1).return_code == 0
        assert forever.connect("dev-ka-0", keepalive=0).return_code == 0  # 0 = no limit
        silent.wait_closed(timeout=10)  # closed after 1.5 s of silence
        wait_until(lambda: handler.disconnects)
        assert handler.reasons("dev-ka-1") == ["keepalive expired (no packet for 1.5 s)"]
        forever.send(p.Pingreq())
        assert forever.receive() == p.Pingresp()
        assert handler.reasons("dev-ka-0") == []


def test_publish_settled_at_once_keeps_the_order(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    with raw_client(server, pki, pki.device("dev-now")) as client:
        assert client.connect("dev-now").return_code == 0
        client.send(p.Publish("now/1", b"a", 1, 1))  # settled on the reading task, PUBACKed
        assert client.receive() == p.Puback(1)
        # In one read: behind a publish queued for published(), the next one waits its turn there too.
        client.send(p.encode(p.Publish("slow/2", b"b", 1, 2)) + p.encode(p.Publish("now/3", b"c", 1, 3)))
        assert [client.receive(), client.receive()] == [p.Puback(2), p.Puback(3)]
        assert [topic for _, topic, _, _ in handler.published_messages] == ["now/1", "slow/2", "now/3"]
        assert handler.settled_at_once == ["now/1"]
        handler.refuse_topics.add("now/4")
        client.send(p.Publish("now/4", b"d", 1, 4))  # refused at once: no PUBACK, closed
        client.wait_closed()
    wait_until(lambda: handler.reasons("dev-now"), what="disconnect")
    assert handler.reasons("dev-now") == ["publish refused: topic now/4 not allowed"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes([0x80, 0x02, 0x00, 0x01]), "malformed packet: SUBSCRIBE: reserved"),  # wrong flags
        (bytes([0x30, 0x03, 0x00, 0x01, ord("#")]), "malformed packet: PUBLISH: wildcard"),
        (bytes([0x34, 0x05, 0x00, 0x01, ord("a"), 0x00, 0x01]), "malformed packet: PUBLISH: QoS 2"),
        (bytes([0xF0, 0x00]), "malformed packet: reserved packet type 15"),
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]), "malformed packet: PUBLISH: remaining length exceeds"),
        (bytes([0x20, 0x02, 0x00, 0x00]), "unexpected CONNACK from client"),
        (p.encode(p.Connect("again")), "unexpected CONNECT from client"),
    ],
)
def test_bad_packet_closes_only_that_connection(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, data: bytes, reason: str
) -> None:
    device = pki.device("dev-bad")
    with raw_client(server, pki, device) as bad, raw_client(server, pki, device) as good:
        assert bad.connect("dev-bad").return_code == 0
        assert good.connect("dev-good").return_code == 0
        bad.send(data)
        bad.wait_closed()
        wait_until(lambda: handler.reasons("dev-bad"))
        assert handler.reasons("dev-bad")[0].startswith(reason)
        good.send(p.Publish("t/ok", b"x", 1, 7))
        assert good.receive() == p.Puback(7)


def test_truncated_packet_then_hangup(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> None:
    with raw_client(server, pki, pki.device("dev-trunc")) as client:
        assert client.connect("dev-trunc").return_code == 0
        client.send(p.encode(p.Publish("t/x", b"payload", 1, 3))[:-2])
    wait_until(lambda: handler.reasons("dev-trunc"))
    assert handler.reasons("dev-trunc") == ["connection lost"]
    assert handler.published_messages == []


def test_first_packet_must_be_connect(make_server, pki: MqttPki, handler: RecordingHandler) -> None:
    server = make_server(connect_timeout=0.5)
    device = pki.device("dev-first")
    with raw_client(server, pki, device) as not_connect, raw_client(server, pki, device) as mute:
        not_connect.send(p.Pingreq())
        not_connect.wait_closed()
        mute.wait_closed()  # nothing sent: closed after connect_timeout
    assert handler.authorized == []


def test_refuse_publish_and_handler_errors_close_the_connection(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    handler.refuse_topics.add("t/refused")
    handler.fail_topics.add("t/bug")
    device = pki.device("dev-refuse")
    with raw_client(server, pki, device) as refused, raw_client(server, pki, device) as buggy:
        assert refused.connect("dev-refused").return_code == 0
        assert buggy.connect("dev-buggy").return_code == 0
        refused.send(p.Publish("t/refused", b"x", 1, 1))
        refused.wait_closed()  # no PUBACK: the stream ends without any packet
        buggy.send(p.Publish("t/bug", b"x", 1, 1))
        buggy.wait_closed()
    wait_until(lambda: len(handler.disconnects) == 2)
    assert handler.reasons("dev-refused") == ["publish refused: topic t/refused not allowed"]
    assert handler.reasons("dev-buggy") == ["handler error: RuntimeError('handler bug')"]


def test_subscribe_unsubscribe_qos0_and_qos2_subscribe(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    with raw_client(server, pki, pki.device("dev-sub")) as client:
        assert client.connect("dev-sub").return_code == 0
        client.send(p.Subscribe(5, (("a/#", 2), ("b/+/c", 0), ("forbidden/z", 1))))
        assert client.receive() == p.Suback(5, (1, 0, 0x80))
        client.send(p.Unsubscribe(6, ("a/#", "b/+/c")))
        assert client.receive() == p.Unsuback(6)
        client.send(p.Publish("t/q0", b"zero", 0))
        client.send(p.Publish("t/q1", b"one", 1, 9))
        assert client.receive() == p.Puback(9)  # in order: the QoS 0 message was handled first
    assert handler.unsubscriptions == [("dev-sub", "a/#"), ("dev-sub", "b/+/c")]
    assert [m[1:] for m in handler.published_messages] == [("t/q0", b"zero", 0), ("t/q1", b"one", 1)]


def test_server_publish_qos1_waits_for_puback(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    with raw_client(server, pki, pki.device("dev-ack")) as client:
        assert client.connect("dev-ack").return_code == 0
        conn = server.connection("dev-ack")
        pending = server.submit(conn.publish("down/1", b"x", qos=1))
        message = client.receive()
        assert isinstance(message, p.Publish) and message.qos == 1 and message.packet_id
        time.sleep(0.05)
        assert not pending.done()  # still waiting for our PUBACK
        client.send(p.Puback(message.packet_id))
        pending.result(5)
        server.call(conn.publish("down/0", b"y", qos=0))
        assert client.receive() == p.Publish("down/0", b"y", 0)
        waiting = server.submit(conn.publish("down/2", b"z", qos=1))
        assert isinstance(client.receive(), p.Publish)
    with pytest.raises(ConnectionClosed):
        waiting.result(5)  # the client left without acknowledging
    with pytest.raises(ConnectionClosed):
        server.call(conn.publish("down/3", b"late"))
    with pytest.raises(ValueError):
        server.call(conn.publish("down/4", b"qos2", qos=2))


def test_concurrent_publishes_are_capped_and_intact(
    make_server, pki: MqttPki, paho_clients: list[PahoClient]
) -> None:
    server = make_server(max_inflight=4)
    client = PahoClient("dev-many", pki.device("dev-many"), pki)
    paho_clients.append(client)
    client.connect(server.tls_port)
    conn = server.connection("dev-many")
    payloads = [bytes([i]) * (1000 + i * 997) for i in range(60)]

    async def burst() -> None:
        await asyncio.gather(*(conn.publish(f"down/{i}", data) for i, data in enumerate(payloads)))

    server.call(burst(), timeout=20)
    received = {m.topic: m.payload for m in client.messages}
    assert received == {f"down/{i}": data for i, data in enumerate(payloads)}


def test_close_from_the_service_side(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> None:
    with raw_client(server, pki, pki.device("dev-kick")) as client:
        assert client.connect("dev-kick").return_code == 0
        conn = server.connection("dev-kick")
        server.loop.call_soon_threadsafe(conn.close, "device disabled")
        client.wait_closed()
    wait_until(lambda: handler.disconnects)
    assert handler.reasons("dev-kick") == ["device disabled"]


def test_server_close_disconnects_everyone(make_server, pki: MqttPki, handler: RecordingHandler) -> None:
    server = make_server()
    with raw_client(server, pki, pki.device("dev-end")) as client:
        assert client.connect("dev-end").return_code == 0
        closing = server.submit(server.server.close())
        client.wait_closed()
    closing.result(10)
    assert handler.reasons("dev-end") == ["server shutting down"]


def test_large_messages_both_ways(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler, paho_clients: list[PahoClient]
) -> None:
    client = PahoClient("dev-big", pki.device("dev-big"), pki)
    paho_clients.append(client)
    client.connect(server.tls_port)
    up = bytes(range(256)) * 1024  # 256 KiB: the SDK's D2C limit
    client.publish("devices/dev-big/messages/events/", up)
    assert handler.published_messages[-1][2] == up
    conn = server.connection("dev-big")
    server.call(conn.publish("down/big", up[::-1]))
    wait_until(lambda: client.messages)
    assert client.messages[0].payload == up[::-1]


def test_packets_before_disconnect_are_handled(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    with raw_client(server, pki, pki.device("dev-last")) as client:
        assert client.connect("dev-last").return_code == 0
        burst = [p.Publish(f"t/{i}", b"x", i % 2, i if i % 2 else None) for i in range(6)]
        client.send(b"".join(p.encode(packet) for packet in [*burst, p.Disconnect()]))
        client.wait_closed()
    wait_until(lambda: handler.disconnects)
    assert [m[1] for m in handler.published_messages] == [f"t/{i}" for i in range(6)]
    assert handler.reasons("dev-last") == ["client sent DISCONNECT"]


def test_publish_spawned_in_authorize_waits_for_connack(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    handler.greet = True
    device = pki.device("dev-greet")
    with raw_client(server, pki, device) as client:
        assert client.connect("dev-greet").return_code == 0  # CONNACK strictly first
        assert client.receive() == p.Publish("greeting", b"hi", 0)
    handler.return_codes["dev-refused"] = (5, False)
    with raw_client(server, pki, device) as client:
        assert client.connect("dev-refused").return_code == 5
        client.wait_closed()
    refused = handler.greetings[1]
    wait_until(refused.done)
    assert isinstance(refused.exception(), ConnectionClosed)
    assert not handler.authorized[1].accepted


def test_burst_beyond_the_queue_is_back_pressured_not_dropped(
    make_server, pki: MqttPki, handler: RecordingHandler
) -> None:
    server = make_server(max_pending_packets=5)
    with raw_client(server, pki, pki.device("dev-burst")) as client:
        assert client.connect("dev-burst").return_code == 0
        burst = [p.Publish(f"slow/{i}", b"x" * 100, 0) for i in range(300)]
        client.send(b"".join(p.encode(packet) for packet in [*burst, p.Publish("t/last", b"", 1, 1)]))
        assert client.receive(timeout=20) == p.Puback(1)
    assert [m[1] for m in handler.published_messages] == [f"slow/{i}" for i in range(300)] + ["t/last"]


def test_handler_awaiting_pubacks_behind_a_backlog_does_not_deadlock(
    make_server, pki: MqttPki, handler: RecordingHandler
) -> None:
    server = make_server(max_pending_packets=2)
    with raw_client(server, pki, pki.device("dev-echo")) as client:
        assert client.connect("dev-echo").return_code == 0
        client.send(b"".join(p.encode(p.Publish(f"echo/{i}", b"e", 0)) for i in range(40)))
        for i in range(40):  # each reply is only acknowledged after it arrived
            reply = client.receive(timeout=10)
            assert isinstance(reply, p.Publish) and reply.topic == f"reply/{i}" and reply.packet_id
            client.send(p.Puback(reply.packet_id))
