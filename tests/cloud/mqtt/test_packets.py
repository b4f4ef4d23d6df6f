"""The MQTT 3.1.1 codec: round trips, the SDK's real bytes, strict refusals, incremental framing."""

from __future__ import annotations

import pytest

from client_app.cloud.mqtt import packets as p

ROUND_TRIP = [
    p.Connect(
        "dev-1",
        username="scope/registrations/dev-1/api-version=2019-03-31",
        keepalive=60,
        clean_session=False,
    ),
    p.Connect("c", username="u", password=b"\x00secret", keepalive=0, will=p.Will("w/t", b"bye", 1, True)),
    p.Connect("é-ü-中"),
    p.Connack(0, True),
    p.Connack(5, False),
    p.Publish("devices/d/messages/events/%24.mid=1", b'{"temp": 21.5}', 1, 65535, retain=True, dup=True),
    p.Publish("$iothub/twin/res/200/?$rid=1", b"", 0),
    p.Publish("big", b"x" * 200_000, 1, 1),
    p.Puback(1),
    p.Subscribe(2, (("$dps/registrations/res/#", 1), ("a/+/b", 2), ("+", 0))),
    p.Suback(2, (1, 0x80, 0, 2)),
    p.Unsubscribe(3, ("a/#", "b")),
    p.Unsuback(3),
    p.Pingreq(),
    p.Pingresp(),
    p.Disconnect(),
]


@pytest.mark.parametrize("packet", ROUND_TRIP, ids=lambda packet: type(packet).__name__)
def test_round_trip(packet: p.Packet) -> None:
    data = p.encode(packet)
    assert p.PacketReader().feed(data) == [packet]


def test_sdk_connect_bytes() -> None:
    # device-protocol.md §2.5: what azure-iot-device sends to DPS (flags 0x80, keepalive 60).
    username = b"0ne00ABCDEF/registrations/my-device-01/api-version=2019-03-31&ClientVersion=x"
    body = b"\x00\x04MQTT\x04\x80\x00\x3c\x00\x0cmy-device-01" + len(username).to_bytes(2, "big") + username
    data = bytes([0x10, len(body)]) + body
    (connect,) = p.PacketReader().feed(data)
    assert connect == p.Connect("my-device-01", username.decode(), None, 60, False, None)
    assert p.encode(connect) == data


def test_fixed_header_bytes() -> None:
    assert p.encode(p.Connack(0, False)) == b"\x20\x02\x00\x00"
    assert p.encode(p.Puback(0x0102)) == b"\x40\x02\x01\x02"
    assert p.encode(p.Pingresp()) == b"\xd0\x00"
    assert p.encode(p.Suback(1, (1,))) == b"\x90\x03\x00\x01\x01"
    assert p.encode(p.Publish("a", b"", 0))[:2] == b"\x30\x03"
    assert p.encode(p.Publish("a", b"x" * 200))[:3] == b"\x30\xcb\x01"  # two length bytes


def _connect_body(
    flags: int = 0x02, name: bytes = b"MQTT", level: int = 4, tail: bytes = b"\x00\x01c"
) -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes([level, flags]) + b"\x00\x3c" + tail
    return bytes([0x10, len(body)]) + body


REFUSALS = [
    (_connect_body(name=b"MQIsdp", level=3), "unsupported protocol"),
    (_connect_body(level=5), "unsupported protocol"),
    (_connect_body(flags=0x03), "reserved connect flag"),
    (_connect_body(flags=0x12), "will QoS/retain set without the will flag"),
    (_connect_body(flags=0x40 | 0x02), "password flag set without username"),
    (_connect_body(flags=0x1E, tail=b"\x00\x01c\x00\x01t\x00\x00"), "will QoS 3"),
    (_connect_body(tail=b"\x00\x02\xc3\x28"), "not valid UTF-8"),
    (_connect_body(tail=b"\x00\x01\x00"), "U+0000"),
    (_connect_body(tail=b"\x00\x05ab"), "shorter than its fields"),
    (_connect_body(tail=b"\x00\x01cX"), "trailing"),
    (b"\x11\x00", "CONNECT: reserved fixed-header flags"),
    (b"\x20\x02\x02\x00", "CONNACK: reserved acknowledge flag"),
    (b"\x20\x02\x01\x05", "session present with a non-zero"),
    (b"\x20\x02\x00\x06", "invalid return code"),
    (b"\x34\x05\x00\x01a\x00\x01", "QoS 2 is not supported"),
    (b"\x36\x05\x00\x01a\x00\x01", "invalid QoS 3"),
    (b"\x38\x03\x00\x01a", "DUP flag set on a QoS 0"),
    (b"\x32\x05\x00\x01a\x00\x00", "packet identifier must be 1..65535"),
    (b"\x30\x02\x00\x00", "empty topic name"),
    (b"\x30\x03\x00\x01+", "wildcard in topic name"),
    (b"\x40\x02\x00\x00", "PUBACK: packet identifier"),
    (b"\x42\x02\x00\x01", "PUBACK: reserved fixed-header flags"),
    (b"\x40\x03\x00\x01\x00", "PUBACK: 1 unexpected trailing"),
    (b"\x50\x02\x00\x01", "PUBREC: QoS 2 flow is not supported"),
    (b"\x62\x02\x00\x01", "PUBREL: QoS 2 flow is not supported"),
    (b"\x70\x02\x00\x01", "PUBCOMP: QoS 2 flow is not supported"),
    (b"\x80\x02\x00\x01", "SUBSCRIBE: reserved fixed-header flags"),
    (b"\x82\x02\x00\x01", "SUBSCRIBE: no topic filters"),
    (b"\x82\x06\x00\x01\x00\x01a\x03", "invalid requested QoS"),
    (b"\x82\x06\x00\x01\x00\x01a\x05", "invalid requested QoS"),
    (b"\x82\x07\x00\x01\x00\x02a#\x01", "misplaced '#'"),
    (b"\x82\x08\x00\x01\x00\x03#/a\x01", "misplaced '#'"),
    (b"\x82\x07\x00\x01\x00\x02a+\x01", "misplaced '+'"),
    (b"\x82\x04\x00\x01\x00\x00", "empty topic filter"),
    (b"\x82\x05\x00\x01\x00\x01a", "shorter than its fields"),
    (b"\x90\x02\x00\x01", "SUBACK: no return codes"),
    (b"\x90\x03\x00\x01\x03", "SUBACK: invalid return code"),
    (b"\xa2\x02\x00\x01", "UNSUBSCRIBE: no topic filters"),
    (b"\xa0\x05\x00\x01\x00\x01a", "UNSUBSCRIBE: reserved fixed-header flags"),
    (b"\xb0\x02\x00\x00", "UNSUBACK: packet identifier"),
    (b"\xc0\x01\x00", "PINGREQ: 1 unexpected trailing"),
    (b"\xc1\x00", "PINGREQ: reserved fixed-header flags"),
    (b"\xe2\x00", "DISCONNECT: reserved fixed-header flags"),
    (b"\x00\x00", "reserved packet type 0"),
    (b"\xf0\x00", "reserved packet type 15"),
    (b"\x30\x80\x80\x80\x80\x01", "longer than 4 bytes"),
]


@pytest.mark.parametrize(("data", "reason"), REFUSALS, ids=[r for _, r in REFUSALS])
def test_strict_refusals(data: bytes, reason: str) -> None:
    reader = p.PacketReader(max_packet_size=p._MAX_REMAINING_LENGTH)
    with pytest.raises(p.MalformedPacket, match=reason.replace("+", r"\+").replace(".", r"\.")):
        reader.feed(data)
    with pytest.raises(p.MalformedPacket, match="stream already failed"):
        reader.feed(b"\xc0\x00")  # framing is lost for good


def test_incremental_byte_by_byte_and_batched() -> None:
    stream = b"".join(p.encode(packet) for packet in ROUND_TRIP)
    reader = p.PacketReader()
    decoded = [packet for i in range(len(stream)) for packet in reader.feed(stream[i : i + 1])]
    assert decoded == ROUND_TRIP
    assert reader.buffered == 0
    assert p.PacketReader().feed(stream) == ROUND_TRIP


def test_oversized_length_refused_before_buffering() -> None:
    reader = p.PacketReader(max_packet_size=1024)
    assert reader.feed(b"\x30\x80") == []  # length not known yet
    with pytest.raises(p.MalformedPacket, match="exceeds the 1024-byte limit"):
        reader.feed(b"\x40")  # 8192 > 1024: refused with 3 bytes read
    assert reader.buffered == 0
    exact = p.encode(p.Publish("t", b"x" * (1024 - 3), 0))
    assert len(p.PacketReader(max_packet_size=1024).feed(exact)) == 1


@pytest.mark.parametrize(
    "packet",
    [
        p.Publish("t", b"", 2, 1),
        p.Publish("t", b"", 1, None),
        p.Publish("t", b"", 0, 5),
        p.Publish("a/#", b""),
        p.Puback(0),
        p.Puback(70000),
        p.Subscribe(1, ()),
        p.Subscribe(1, (("a#", 1),)),
        p.Suback(1, (3,)),
        p.Connack(1, True),
        p.Connect("c", password=b"x"),
        p.Connect("c", keepalive=70000),
        p.Connect("x" * 70000),
        p.Unsubscribe(1, ()),
    ],
    ids=repr,
)
def test_encode_refuses_invalid_fields(packet: p.Packet) -> None:
    with pytest.raises(p.MalformedPacket):
        p.encode(packet)


def test_encode_rejects_non_packets() -> None:
    with pytest.raises(TypeError):
        p.encode("PINGREQ")  # type: ignore[arg-type]
