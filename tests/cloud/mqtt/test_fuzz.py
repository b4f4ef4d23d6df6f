"""Hypothesis: whatever bytes arrive, PacketReader raises nothing but MalformedPacket and stays bounded."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_app.cloud.mqtt import packets as p

MAX_SIZE = 4096
FUZZ = settings(
    max_examples=int(os.environ.get("MQTT_FUZZ_EXAMPLES", "400")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
topics = texts.filter(lambda t: t and "+" not in t and "#" not in t)
filters = st.sampled_from(["#", "+", "a/+/b", "a/#", "$dps/registrations/res/#", "x"])
packet_ids = st.integers(1, 0xFFFF)

valid_packets = st.one_of(
    st.builds(
        p.Connect,
        texts,
        st.none() | texts,
        st.none(),
        st.integers(0, 0xFFFF),
        st.booleans(),
        st.none() | st.builds(p.Will, topics, st.binary(max_size=20), st.integers(0, 2), st.booleans()),
    ),
    st.builds(p.Connack, st.integers(1, 5), st.just(False)),
    st.builds(p.Connack, st.just(0), st.booleans()),
    st.builds(p.Publish, topics, st.binary(max_size=300), st.just(0)),
    st.builds(
        p.Publish, topics, st.binary(max_size=300), st.just(1), packet_ids, st.booleans(), st.booleans()
    ),
    st.builds(p.Puback, packet_ids),
    st.builds(
        p.Subscribe, packet_ids, st.lists(st.tuples(filters, st.integers(0, 2)), min_size=1).map(tuple)
    ),
    st.builds(p.Suback, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1).map(tuple)),
    st.builds(p.Unsubscribe, packet_ids, st.lists(filters, min_size=1).map(tuple)),
    st.builds(p.Unsuback, packet_ids),
    st.just(p.Pingreq()),
    st.just(p.Pingresp()),
    st.just(p.Disconnect()),
)


def _feed_all(chunks: list[bytes]) -> list[p.Packet]:
    """Feed chunks; only MalformedPacket may escape, and the buffer never exceeds one packet."""
    reader = p.PacketReader(max_packet_size=MAX_SIZE)
    out: list[p.Packet] = []
    try:
        for chunk in chunks:
            out.extend(reader.feed(chunk))
            assert reader.buffered <= MAX_SIZE + 5  # fixed header + one body at most
    except p.MalformedPacket as exc:
        assert str(exc)  # a reason is always given
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    _feed_all(_split(data, cuts))


@FUZZ
@given(st.lists(valid_packets, min_size=1, max_size=5), st.lists(st.integers(0, 5000), max_size=6))
def test_valid_stream_round_trips_in_any_split(packets: list[p.Packet], cuts: list[int]) -> None:
    stream = b"".join(p.encode(packet) for packet in packets)
    assert _feed_all(_split(stream, cuts)) == packets


@FUZZ
@given(
    valid_packets,
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 400),
)
def test_mutated_and_truncated_packets(packet: p.Packet, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(p.encode(packet))
    for position, value in flips:
        data[position % len(data)] = value
    _feed_all([bytes(data)])
    _feed_all([bytes(data[: cut % (len(data) + 1)])])


@FUZZ
@given(st.integers(0, 0xFF), st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=6))
def test_hostile_lengths_never_buffer(first: int, length_bytes: list[int]) -> None:
    # All continuation bits set: the reader must refuse (too long / too large) or wait with tiny buffers.
    reader = p.PacketReader(max_packet_size=MAX_SIZE)
    try:
        reader.feed(bytes([first, *length_bytes]))
    except p.MalformedPacket:
        return
    assert reader.buffered <= 5
