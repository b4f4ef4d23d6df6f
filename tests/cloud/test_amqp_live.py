"""The Event Hubs-compatible endpoint's live path without a network: the event encoding (proton's `pn_data_t`,
cached sections decoded back in) against proton's `Message`, the reader over what the telemetry writer
commits, and a proton receiver served by the real endpoint (stored events, then live ones by polling SQLite)
in one thread."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from proton import Collector, Connection, Data, Event, Message, Transport, symbol, timestamp

from client_app.cloud.amqp import eventhub
from client_app.cloud.amqp.auth import Grant
from client_app.cloud.amqp.bridge import AmqpConnection
from client_app.cloud.amqp.endpoint import AmqpEndpoint, Role
from client_app.cloud.amqp.eventhub import (
    AUTH_METHOD,
    MESSAGE_SOURCE,
    EventEncoder,
    TelemetryReader,
    _application_properties_section,
    _properties_section,
    ms_from_iso,
)
from client_app.cloud.amqp.frames import FramePadder, pad_frame
from client_app.cloud.store import Store, TelemetryWriter, partition_of, utc_now

RECEIVED = "2026-11-30T19:00:00.123456Z"


def _expected(event: tuple, offset: int) -> Message:
    """The event as proton's own Message builds it: the oracle for the encoder's cached and per-event bits."""
    device_id, received, body, system_json, properties_json, _, sequence_number = event
    system, enqueued = json.loads(system_json), timestamp(ms_from_iso(received))
    message = Message(inferred=True, body=bytes(body))
    message.annotations = {  # in the encoder's order: the values that change from event to event first
        symbol("iothub-connection-device-id"): device_id,
        symbol("iothub-enqueuedtime"): enqueued,
        symbol("x-opt-sequence-number"): sequence_number,
        symbol("x-opt-offset"): str(offset),
        symbol("x-opt-enqueued-time"): enqueued,
        symbol("iothub-connection-auth-method"): AUTH_METHOD,
        symbol("iothub-message-source"): MESSAGE_SOURCE,
    }
    message.id = system.get("messageId")
    if system.get("userId"):
        message.user_id = system["userId"].encode()
    message.correlation_id = system.get("correlationId")
    message.content_type = system.get("contentType")
    message.content_encoding = system.get("contentEncoding")
    message.properties = json.loads(properties_json) or None
    return message


@pytest.mark.parametrize(
    ("system", "properties", "body", "device_id", "sequence_number", "offset"),
    [
        ({}, {}, b"", "dev-1", 0, 1),
        ({"contentType": "application/json", "contentEncoding": "utf-8"}, {}, b'{"t": 21.5}', "d", 7, 123456),
        (
            {"messageId": "m-1", "correlationId": "c" * 300, "userId": "u"},
            {"a": "b", "none": None, "ü" * 200: "é" * 10},
            b"x" * 70_000,
            "d" * 128,
            2**40,
            2**33,
        ),
    ],
)
def test_events_decode_with_proton_as_its_own_message_would(system, properties, body, device_id,
                                                           sequence_number, offset):  # fmt: skip
    event = (device_id, RECEIVED, body, json.dumps(system), json.dumps(properties), 0, sequence_number)
    decoded = Message()
    decoded.decode(EventEncoder().encode(event, offset))
    expected = _expected(event, offset)
    # Re-encoded by proton, the two are the same message: every section, key order, value and AMQP type.
    assert decoded.encode() == expected.encode()
    assert decoded.annotations[symbol("x-opt-offset")] == str(offset)
    assert type(decoded.annotations[symbol("iothub-enqueuedtime")]) is timestamp
    assert decoded.body == body and decoded.properties == (properties or None)
    assert decoded.annotations[symbol("iothub-connection-device-id")] == device_id
    assert decoded.annotations[symbol("x-opt-sequence-number")] == sequence_number
    assert decoded.id == system.get("messageId") and decoded.correlation_id == system.get("correlationId")


def _built_afresh(event: tuple, offset: int) -> bytes:
    """The event with its annotations and data section each built by a new proton `Data` with every value in
    place (the cached properties sections as they are): the byte-for-byte oracle for the encoder's reused
    `pn_data_t`s, their values put over the last event's."""
    sections = []
    for descriptor, value in ((0x72, _expected(event, offset).annotations), (0x75, bytes(event[2]))):
        data = Data()
        data.put_described()
        data.enter()
        data.put_ulong(descriptor)
        data.put_object(value)
        data.exit()
        sections.append(data.encode())
    cached = _properties_section(event[3]) + _application_properties_section(event[4])
    return sections[0] + cached + sections[1]


def test_one_encoder_writes_every_event_as_if_built_afresh_across_its_rebuilds(monkeypatch):
    """Events of different devices, properties and sizes through one encoder, which builds its `pn_data_t`s
    afresh after every `_REBUILD_BYTES` put (made small here, so that happens many times)."""
    monkeypatch.setattr(eventhub, "_REBUILD_BYTES", 10_000)
    encode = EventEncoder().encode
    rebuilds = 0
    for n in range(60):
        system = {"messageId": f"m-{n}"} if n % 3 else {"contentType": "application/json"}
        properties = {"k": str(n)} if n % 4 else {}
        body = bytes([n]) * (n * 401 % 9000)
        event = (f"dev-{n % 7}", RECEIVED, body, json.dumps(system), json.dumps(properties), n % 4, n**9)
        put_before = encode.__self__._put_bytes
        encoded = encode(event, 2**n)
        rebuilds += encode.__self__._put_bytes < put_before + len(body)
        assert encoded == _built_afresh(event, 2**n)
        decoded = Message()
        decoded.decode(encoded)
        assert decoded.encode() == _expected(event, 2**n).encode()
    assert rebuilds > 10


def test_events_encoded_one_after_another_keep_their_own_values():
    """The encoder reuses its `pn_data_t`s and buffer: no event's bytes change or carry over to the next."""
    first = ("dev-a", RECEIVED, b"one", json.dumps({"messageId": "m-a"}), json.dumps({"k": "v"}), 0, 7)
    second = ("dev-b", RECEIVED, b"two" * 1000, "{}", "{}", 0, 8)
    encode = EventEncoder().encode
    encoded_first = encode(first, 70)
    snapshot = bytes(encoded_first)
    encoded_second = encode(second, 80)
    assert encoded_first == snapshot
    a, b = Message(), Message()
    a.decode(encoded_first)
    b.decode(encoded_second)
    offset = symbol("x-opt-offset")
    assert (a.body, a.id, a.properties, a.annotations[offset]) == (b"one", "m-a", {"k": "v"}, "70")
    assert (b.body, b.id, b.properties, b.annotations[offset]) == (b"two" * 1000, None, None, "80")
    assert b.annotations[symbol("iothub-connection-device-id")] == "dev-b"


def test_the_reader_serves_each_partition_in_order_and_sees_the_newest_offset(tmp_path):
    store = Store(tmp_path / "cloud.db")
    reader = TelemetryReader(tmp_path / "cloud.db", 4)

    async def publish() -> None:
        writer = TelemetryWriter(store, keep=25)  # pruning leaves the new rows' numbering alone
        writer.start()
        for burst in range(4):
            sends = [writer.add(f"dev-{n}", f"{burst}/{n}".encode(), {}, {}) for n in range(13)]
            await asyncio.gather(*sends)
        await writer.stop()

    try:
        assert reader.newest_offset() is None
        asyncio.run(publish())
        assert reader.newest_offset() == 52
        for partition in range(4):
            events, offsets = reader.read(partition, 0, 100)
            assert events and all(partition_of(e[0], 4) == partition for e in events)
            numbers = [e[6] for e in events]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # unbroken, in order
            assert offsets == sorted(offsets) and offsets[-1] <= 52 and offsets[0] > 52 - 25
    finally:
        reader.close()
        store.close()


class _Stub:
    """A stand-in link (hashable, attributes as needed)."""


class _Wire:
    """What the server writes; the test carries it to the client's transport."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass


class _Setup:
    """The real endpoint and a proton receiver on partition 0, in memory: the endpoint's thread is this
    thread, and a scheduled poll runs when the test calls `poll`."""

    def __init__(self, tmp_path) -> None:
        self.store = Store(tmp_path / "cloud.db")
        self.reader = TelemetryReader(tmp_path / "cloud.db", 1)
        self.endpoint = AmqpEndpoint(role=Role.EVENT_HUBS, hub=None, checker=None, reader=self.reader,
                                     entity="hub", hub_name="hub", created=utc_now())  # fmt: skip
        self.sqlite_reads = 0
        read = self.reader.read

        def counted_read(*args: int) -> tuple:
            self.sqlite_reads += 1
            return read(*args)

        self.reader.read = counted_read
        self.scheduled: list = []
        thread = SimpleNamespace(endpoint=self.endpoint, connections=set())
        thread.call_later = lambda delay, fn: self.scheduled.append(fn)
        self.endpoint.thread = thread
        self.wire = _Wire()
        self.server = AmqpConnection(thread, None, self.wire)  # type: ignore[arg-type]
        self.server.process()  # connection init: a CBS grant would be recorded here
        self.server.connection.auth.grants.append(Grant("hub", "", time.time() + 3600))
        self.client, self.transport, self.collector = Connection(), Transport(), Collector()
        self.client.collect(self.collector)
        self.transport.bind(self.client)
        self.received: list[tuple[bool, Message]] = []

    def attach(self, credit: int) -> None:
        self.client.open()
        session = self.client.session()
        session.open()
        self.link = session.receiver("events")
        self.link.source.address = "hub/ConsumerGroups/$Default/Partitions/0"
        self.link.open()
        self.link.flow(credit)
        self.exchange()

    def poll(self) -> None:
        """Run the poll that is due (the endpoint schedules the next one itself)."""
        assert len(self.scheduled) == 1
        self.scheduled.pop()()
        self.exchange()

    def exchange(self) -> None:
        for _ in range(20):
            out = self.transport.peek(max(self.transport.pending(), 0)) or b""
            self.transport.pop(len(out))
            if out:
                self.server._push(out)
            self.server.process()
            data, self.wire.data = bytes(self.wire.data), bytearray()
            while data:
                taken = min(self.transport.capacity(), len(data))
                self.transport.push(data[:taken])
                data = data[taken:]
                self._client_events()
            if not out and not data:
                return

    def _client_events(self) -> None:
        while (event := self.collector.peek()) is not None:
            delivery = event.delivery if event.type == Event.DELIVERY else None
            if delivery is not None and delivery.readable and not delivery.partial:
                message = Message()
                message.decode(delivery.link.recv(delivery.pending))
                delivery.link.advance()
                self.received.append((delivery.settled, message))
            self.collector.pop()

    def close(self) -> None:
        self.reader.close()
        self.store.close()


async def _publish(writer: TelemetryWriter, first: int, count: int) -> None:
    await asyncio.gather(*(writer.add("dev", str(n).encode(), {}, {}) for n in range(first, first + count)))


def test_a_receiver_gets_stored_events_then_live_ones_by_polling_pre_settled(tmp_path):
    setup = _Setup(tmp_path)
    writer = TelemetryWriter(setup.store, partitions=1)

    async def scenario() -> None:
        writer.start()
        await _publish(writer, 0, 5)  # before anyone listens
        assert not setup.scheduled  # no receiver, no polling
        setup.attach(credit=8)  # from the start of the stream
        assert [m.body for _, m in setup.received] == [str(n).encode() for n in range(5)]
        setup.poll()
        reads = setup.sqlite_reads
        setup.poll()
        assert setup.sqlite_reads == reads  # nothing committed since the last poll: no read
        await _publish(writer, 5, 10)
        setup.exchange()
        assert len(setup.received) == 5  # live events wait for the next poll
        setup.poll()
        assert [m.body for _, m in setup.received] == [str(n).encode() for n in range(8)]  # up to the credit
        setup.link.flow(7)
        setup.exchange()
        await writer.stop()

    try:
        asyncio.run(scenario())
        bodies = [m.body for _, m in setup.received]
        assert bodies == [str(n).encode() for n in range(15)]
        assert all(settled for settled, _ in setup.received)
        numbers = [m.annotations[symbol("x-opt-sequence-number")] for _, m in setup.received]
        offsets = [int(m.annotations[symbol("x-opt-offset")]) for _, m in setup.received]
        assert numbers == list(range(15)) and offsets == list(range(1, 16))
    finally:
        setup.close()


def test_polling_stops_when_the_last_receiver_leaves(tmp_path):
    setup = _Setup(tmp_path)
    try:
        setup.attach(credit=10)
        assert len(setup.scheduled) == 1
        setup.link.close()
        setup.exchange()
        setup.scheduled.pop()()
        assert not setup.scheduled and not setup.endpoint._polling
    finally:
        setup.close()


def _split_frames(stream: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(stream):
        size = 8 if stream.startswith(b"AMQP", pos) else int.from_bytes(stream[pos : pos + 4], "big")
        frames.append(stream[pos : pos + size])
        pos += size
    return frames


def test_every_frame_proton_writes_goes_out_as_pad_frame_pads_it(tmp_path, monkeypatch):
    """FramePadder pads a transfer (one per event) itself, from its head; whatever it pads and however
    proton's output is cut into pieces, each frame is what `pad_frame` makes of it."""
    fed, written = [], []
    feed = FramePadder.feed

    def recorded(padder: FramePadder, data: bytes) -> bytes:
        fed.append(data)
        written.append(feed(padder, data))
        return written[-1]

    monkeypatch.setattr(FramePadder, "feed", recorded)
    setup = _Setup(tmp_path)
    try:
        setup.attach(credit=300)
        bodies = [bytes([n % 256]) * (n * 997 % 9000) for n in range(300)]
        writer = TelemetryWriter(setup.store, partitions=1)

        async def publish() -> None:
            writer.start()
            await asyncio.gather(*(writer.add("dev", body, {}, {}) for body in bodies))
            await writer.stop()

        asyncio.run(publish())
        setup.poll()
        assert [m.body for _, m in setup.received] == bodies
    finally:
        setup.close()
    frames = _split_frames(b"".join(fed))
    assert sum(frame[8:11] == b"\x00\x53\x14" for frame in frames) >= 300  # the transfers
    assert b"".join(written) == b"".join(f if f.startswith(b"AMQP") else pad_frame(f) for f in frames)
