"""Pure MQTT 3.1.1 codec: packet dataclasses, an incremental strict decoder and an encoder.

Only what a QoS 0/1 broker needs. QoS 2 (PUBLISH with QoS 2, PUBREC/PUBREL/PUBCOMP) is refused as
MalformedPacket, matching IoT Hub, which closes the connection on a QoS 2 PUBLISH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_PACKET_SIZE: Final = (
    300 * 1024
)  # IoT Hub D2C limit is 256 KB; leave room for topic and properties
PROTOCOL_NAME: Final = "MQTT"
PROTOCOL_LEVEL: Final = 4  # MQTT 3.1.1
SUBACK_FAILURE: Final = 0x80
_MAX_REMAINING_LENGTH: Final = 268_435_455  # largest value 4 length bytes can carry
_MAX_UINT16: Final = 0xFFFF

# Packet type numbers (fixed header, high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

PACKET_NAMES: Final = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}


class MalformedPacket(ValueError):
    """The bytes are not a valid MQTT 3.1.1 packet this server supports; the message says why."""


class UnsupportedProtocolLevel(MalformedPacket):
    """A CONNECT named "MQTT" at a level other than 4 (MQTT 5): answered with CONNACK 1, then closed."""


#
# Packets


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    message: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    username: str | None = None
    password: bytes | None = None
    keepalive: int = 60
    clean_session: bool = True
    will: Will | None = None


@dataclass(frozen=True, slots=True)
class Connack:
    return_code: int = 0
    session_present: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    packet_id: int | None = None  # required (non-zero) for QoS 1, absent for QoS 0
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]  # (topic filter, requested QoS)


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]  # granted QoS 0/1/2 or 0x80 (failure)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
)


#
# Validation shared by decoder and encoder


def _check_packet_id(packet_id: int | None, what: str) -> int:
    if not isinstance(packet_id, int) or not 1 <= packet_id <= _MAX_UINT16:
        raise MalformedPacket(f"{what}: packet identifier must be 1..65535, got {packet_id!r}")
    return packet_id


def _check_text(text: str, what: str) -> str:
    # MQTT-1.5.3-2: U+0000 is forbidden; Python's UTF-8 codec already rejects encoded surrogates.
    if "\x00" in text:
        raise MalformedPacket(f"{what}: string contains U+0000")
    return text


def check_topic_name(topic: str) -> str:
    """A PUBLISH topic: non-empty, no wildcards (MQTT-3.3.2-1/2)."""
    if not topic:
        raise MalformedPacket("PUBLISH: empty topic name")
    if "+" in topic or "#" in topic:
        raise MalformedPacket(f"PUBLISH: wildcard in topic name {topic[:80]!r}")
    return _check_text(topic, "PUBLISH topic")


def check_topic_filter(topic_filter: str, what: str = "SUBSCRIBE") -> str:
    """A topic filter: non-empty; '#' only as the whole last level; '+' only as a whole level (MQTT-4.7.1)."""
    if not topic_filter:
        raise MalformedPacket(f"{what}: empty topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise MalformedPacket(f"{what}: misplaced '#' in topic filter {topic_filter[:80]!r}")
        if "+" in level and level != "+":
            raise MalformedPacket(f"{what}: misplaced '+' in topic filter {topic_filter[:80]!r}")
    return _check_text(topic_filter, f"{what} topic filter")


def _check_qos(qos: int, what: str, *, allow_qos2: bool = False) -> int:
    limit = 2 if allow_qos2 else 1
    if not isinstance(qos, int) or not 0 <= qos <= limit:
        if qos == 2:
            raise MalformedPacket(f"{what}: QoS 2 is not supported")
        raise MalformedPacket(f"{what}: invalid QoS {qos!r}")
    return qos


#
# Decoding


class _Cursor:
    """Reads fields from one packet body; any overrun is a MalformedPacket, never an IndexError."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, count: int) -> bytes:
        if count > self.remaining():
            raise MalformedPacket(f"{self._what}: packet shorter than its fields")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        high, low = self.take(2)
        return high << 8 | low

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self, field_name: str) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"{self._what}: {field_name} is not valid UTF-8") from exc
        return _check_text(value, f"{self._what} {field_name}")

    def end(self) -> None:
        if self.remaining():
            raise MalformedPacket(f"{self._what}: {self.remaining()} unexpected trailing byte(s)")


def _expect_flags(flags: int, expected: int, what: str) -> None:
    if flags != expected:
        raise MalformedPacket(f"{what}: reserved fixed-header flags must be {expected:#x}, got {flags:#x}")


def _decode_connect(flags: int, body: _Cursor) -> Connect:
    _expect_flags(flags, 0, "CONNECT")
    name = body.text("protocol name")
    level = body.u8()
    if name == PROTOCOL_NAME and level != PROTOCOL_LEVEL:
        raise UnsupportedProtocolLevel(f"CONNECT: unsupported protocol level {level} (need 4, MQTT 3.1.1)")
    if name != PROTOCOL_NAME or level != PROTOCOL_LEVEL:
        raise MalformedPacket(f"CONNECT: unsupported protocol {name!r} level {level} (need 'MQTT' level 4)")
    connect_flags = body.u8()
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT: reserved connect flag bit 0 is set")
    has_username, has_password = bool(connect_flags & 0x80), bool(connect_flags & 0x40)
    will_retain, will_qos, has_will = (
        bool(connect_flags & 0x20),
        (connect_flags >> 3) & 0x03,
        connect_flags & 0x04,
    )
    if not has_will and (will_qos or will_retain):
        raise MalformedPacket("CONNECT: will QoS/retain set without the will flag")
    if will_qos == 3:
        raise MalformedPacket("CONNECT: will QoS 3 is invalid")
    if has_password and not has_username:
        raise MalformedPacket("CONNECT: password flag set without username flag")
    keepalive = body.u16()
    client_id = body.text("client identifier")
    will = None
    if has_will:
        will_topic = check_topic_name(body.text("will topic"))
        will = Will(will_topic, body.binary(), will_qos, will_retain)
    username = body.text("username") if has_username else None
    password = body.binary() if has_password else None
    body.end()
    return Connect(client_id, username, password, keepalive, bool(connect_flags & 0x02), will)


def _decode_connack(flags: int, body: _Cursor) -> Connack:
    _expect_flags(flags, 0, "CONNACK")
    ack_flags, return_code = body.u8(), body.u8()
    body.end()
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK: reserved acknowledge flag bits are set")
    if return_code > 5:
        raise MalformedPacket(f"CONNACK: invalid return code {return_code}")
    if return_code and ack_flags:
        raise MalformedPacket("CONNACK: session present with a non-zero return code")
    return Connack(return_code, bool(ack_flags))


def _decode_publish(flags: int, body: _Cursor) -> Publish:
    qos = (flags >> 1) & 0x03
    _check_qos(qos, "PUBLISH")
    dup, retain = bool(flags & 0x08), bool(flags & 0x01)
    if qos == 0 and dup:
        raise MalformedPacket("PUBLISH: DUP flag set on a QoS 0 message")
    topic = check_topic_name(body.text("topic name"))
    packet_id = _check_packet_id(body.u16(), "PUBLISH") if qos else None
    return Publish(topic, body.rest(), qos, packet_id, retain, dup)


def _decode_packet_id_only(flags: int, body: _Cursor, what: str) -> int:
    _expect_flags(flags, 0, what)
    packet_id = _check_packet_id(body.u16(), what)
    body.end()
    return packet_id


def _decode_subscribe(flags: int, body: _Cursor) -> Subscribe:
    _expect_flags(flags, 0x02, "SUBSCRIBE")
    packet_id = _check_packet_id(body.u16(), "SUBSCRIBE")
    topics: list[tuple[str, int]] = []
    while body.remaining():
        topic_filter = check_topic_filter(body.text("topic filter"))
        requested = body.u8()
        if requested & 0xFC or requested == 3:
            raise MalformedPacket(f"SUBSCRIBE: invalid requested QoS byte {requested:#x}")
        topics.append((topic_filter, requested))  # QoS 2 may be requested; the broker grants at most 1
    if not topics:
        raise MalformedPacket("SUBSCRIBE: no topic filters")
    return Subscribe(packet_id, tuple(topics))


def _decode_suback(flags: int, body: _Cursor) -> Suback:
    _expect_flags(flags, 0, "SUBACK")
    packet_id = _check_packet_id(body.u16(), "SUBACK")
    codes = tuple(body.rest())
    if not codes:
        raise MalformedPacket("SUBACK: no return codes")
    for code in codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise MalformedPacket(f"SUBACK: invalid return code {code:#x}")
    return Suback(packet_id, codes)


def _decode_unsubscribe(flags: int, body: _Cursor) -> Unsubscribe:
    _expect_flags(flags, 0x02, "UNSUBSCRIBE")
    packet_id = _check_packet_id(body.u16(), "UNSUBSCRIBE")
    topics: list[str] = []
    while body.remaining():
        topics.append(check_topic_filter(body.text("topic filter"), "UNSUBSCRIBE"))
    if not topics:
        raise MalformedPacket("UNSUBSCRIBE: no topic filters")
    return Unsubscribe(packet_id, tuple(topics))


def _decode_empty(flags: int, body: _Cursor, packet: Pingreq | Pingresp | Disconnect) -> Packet:
    what = type(packet).__name__.upper()
    _expect_flags(flags, 0, what)
    body.end()
    return packet


def decode_packet(first_byte: int, body: bytes) -> Packet:
    """Decode one packet from its first fixed-header byte and its body (the remaining-length bytes)."""
    packet_type, flags = first_byte >> 4, first_byte & 0x0F
    name = PACKET_NAMES.get(packet_type)
    cursor = _Cursor(body, name or "packet")
    match packet_type:  # literal numbers: a bare constant name in a case would be a capture pattern
        case 1:
            return _decode_connect(flags, cursor)
        case 2:
            return _decode_connack(flags, cursor)
        case 3:
            return _decode_publish(flags, cursor)
        case 4:
            return Puback(_decode_packet_id_only(flags, cursor, "PUBACK"))
        case 8:
            return _decode_subscribe(flags, cursor)
        case 9:
            return _decode_suback(flags, cursor)
        case 10:
            return _decode_unsubscribe(flags, cursor)
        case 11:
            return Unsuback(_decode_packet_id_only(flags, cursor, "UNSUBACK"))
        case 12:
            return _decode_empty(flags, cursor, Pingreq())
        case 13:
            return _decode_empty(flags, cursor, Pingresp())
        case 14:
            return _decode_empty(flags, cursor, Disconnect())
        case 5 | 6 | 7:
            raise MalformedPacket(f"{name}: QoS 2 flow is not supported")
        case _:
            raise MalformedPacket(f"reserved packet type {packet_type}")


@dataclass(slots=True)
class PacketReader:
    """Incremental decoder for a byte stream.

    `feed` returns every complete packet and keeps at most one partial packet buffered. A remaining length
    above `max_packet_size` is refused as soon as the length field is read, so a hostile length never makes
    us buffer more than that (the limit applies to the remaining length, i.e. excludes the 2-5 byte fixed
    header). A MalformedPacket discards the whole chunk, including packets before the bad one, and leaves
    the stream unusable (framing is lost): every later `feed` raises again. Callers close the connection.
    """

    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    _buffer: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _error: MalformedPacket | None = field(default=None, init=False, repr=False)

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:
        if self._error is not None:
            raise MalformedPacket(f"stream already failed: {self._error}")
        self._buffer += data
        packets: list[Packet] = []
        offset = 0
        try:
            while True:
                header = self._read_fixed_header(offset)
                if header is None:
                    break
                first_byte, body_start, length = header
                if len(self._buffer) - body_start < length:
                    break
                body = bytes(self._buffer[body_start : body_start + length])
                offset = body_start + length
                packets.append(decode_packet(first_byte, body))
        except MalformedPacket as exc:
            self._error = exc
            self._buffer = bytearray()
            raise
        del self._buffer[:offset]  # one compaction per feed keeps many small packets O(n)
        return packets

    def _read_fixed_header(self, offset: int) -> tuple[int, int, int] | None:
        """(first byte, body offset, remaining length), or None when more bytes are needed."""
        buffer = self._buffer
        if len(buffer) - offset < 2:
            return None
        length, multiplier = 0, 1
        for index in range(4):
            position = offset + 1 + index
            if position >= len(buffer):
                return None
            byte = buffer[position]
            length += (byte & 0x7F) * multiplier
            if length > self.max_packet_size:
                name = PACKET_NAMES.get(buffer[offset] >> 4, "packet")
                raise MalformedPacket(
                    f"{name}: remaining length exceeds the {self.max_packet_size}-byte limit"
                )
            if not byte & 0x80:
                return buffer[offset], position + 1, length
            multiplier *= 128
        raise MalformedPacket("remaining length field longer than 4 bytes")


#
# Encoding


def _encode_length(length: int) -> bytes:
    if not 0 <= length <= _MAX_REMAINING_LENGTH:
        raise MalformedPacket(f"remaining length {length} out of range")
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _binary(data: bytes, what: str) -> bytes:
    if len(data) > _MAX_UINT16:
        raise MalformedPacket(f"{what}: longer than 65535 bytes")
    return _u16(len(data)) + data


def _text(text: str, what: str) -> bytes:
    return _binary(_check_text(text, what).encode("utf-8"), what)


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _encode_length(len(body)) + body


def _encode_connect(packet: Connect) -> bytes:
    if packet.password is not None and packet.username is None:
        raise MalformedPacket("CONNECT: password without username")
    if not 0 <= packet.keepalive <= _MAX_UINT16:
        raise MalformedPacket("CONNECT: keepalive out of range")
    flags = (0x80 if packet.username is not None else 0) | (0x40 if packet.password is not None else 0)
    flags |= 0x02 if packet.clean_session else 0
    payload = _text(packet.client_id, "client identifier")
    if packet.will is not None:
        will = packet.will
        flags |= (
            0x04 | (_check_qos(will.qos, "CONNECT will", allow_qos2=True) << 3) | (0x20 if will.retain else 0)
        )
        payload += _text(check_topic_name(will.topic), "will topic") + _binary(will.message, "will message")
    if packet.username is not None:
        payload += _text(packet.username, "username")
    if packet.password is not None:
        payload += _binary(packet.password, "password")
    header = _text(PROTOCOL_NAME, "protocol name") + bytes([PROTOCOL_LEVEL, flags]) + _u16(packet.keepalive)
    return _frame(CONNECT << 4, header + payload)


def _encode_connack(packet: Connack) -> bytes:
    if not 0 <= packet.return_code <= 5:
        raise MalformedPacket(f"CONNACK: invalid return code {packet.return_code}")
    if packet.return_code and packet.session_present:
        raise MalformedPacket("CONNACK: session present with a non-zero return code")
    return _frame(CONNACK << 4, bytes([int(packet.session_present), packet.return_code]))


def _encode_publish(packet: Publish) -> bytes:
    qos = _check_qos(packet.qos, "PUBLISH")
    if qos == 0 and (packet.packet_id is not None or packet.dup):
        raise MalformedPacket("PUBLISH: QoS 0 must have neither packet identifier nor DUP")
    body = _text(check_topic_name(packet.topic), "topic name")
    if qos:
        body += _u16(_check_packet_id(packet.packet_id, "PUBLISH"))
    flags = (0x08 if packet.dup else 0) | qos << 1 | (0x01 if packet.retain else 0)
    return _frame(PUBLISH << 4 | flags, body + bytes(packet.payload))


def _encode_subscribe(packet: Subscribe) -> bytes:
    if not packet.topics:
        raise MalformedPacket("SUBSCRIBE: no topic filters")
    body = _u16(_check_packet_id(packet.packet_id, "SUBSCRIBE"))
    for topic_filter, qos in packet.topics:
        body += _text(check_topic_filter(topic_filter), "topic filter")
        body += bytes([_check_qos(qos, "SUBSCRIBE", allow_qos2=True)])
    return _frame(SUBSCRIBE << 4 | 0x02, body)


def _encode_suback(packet: Suback) -> bytes:
    if not packet.return_codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in packet.return_codes):
        raise MalformedPacket(f"SUBACK: invalid return codes {packet.return_codes!r}")
    return _frame(
        SUBACK << 4, _u16(_check_packet_id(packet.packet_id, "SUBACK")) + bytes(packet.return_codes)
    )


def _encode_unsubscribe(packet: Unsubscribe) -> bytes:
    if not packet.topics:
        raise MalformedPacket("UNSUBSCRIBE: no topic filters")
    body = _u16(_check_packet_id(packet.packet_id, "UNSUBSCRIBE"))
    for topic_filter in packet.topics:
        body += _text(check_topic_filter(topic_filter, "UNSUBSCRIBE"), "topic filter")
    return _frame(UNSUBSCRIBE << 4 | 0x02, body)


def encode(packet: Packet) -> bytes:
    """Serialize a packet; invalid field values raise MalformedPacket rather than producing bad bytes."""
    match packet:
        case Connect():
            return _encode_connect(packet)
        case Connack():
            return _encode_connack(packet)
        case Publish():
            return _encode_publish(packet)
        case Puback(packet_id):
            return _frame(PUBACK << 4, _u16(_check_packet_id(packet_id, "PUBACK")))
        case Subscribe():
            return _encode_subscribe(packet)
        case Suback():
            return _encode_suback(packet)
        case Unsubscribe():
            return _encode_unsubscribe(packet)
        case Unsuback(packet_id):
            return _frame(UNSUBACK << 4, _u16(_check_packet_id(packet_id, "UNSUBACK")))
        case Pingreq():
            return bytes([PINGREQ << 4, 0])
        case Pingresp():
            return bytes([PINGRESP << 4, 0])
        case Disconnect():
            return bytes([DISCONNECT << 4, 0])
    raise TypeError(f"not an MQTT packet: {packet!r}")
