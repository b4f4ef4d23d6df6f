"""AMQP endpoint pieces without a network: frame padding, SASL frames, selectors, C2D mapping, tokens, and
the telemetry schema migration (version 1 → 2)."""

from __future__ import annotations

import sqlite3
import time

import pytest
from proton import Data, Message

from client_app.cloud.amqp.auth import ConnectionAuth, TokenChecker
from client_app.cloud.amqp.c2d import C2dRefused, c2d_request, refusal_for
from client_app.cloud.amqp.eventhub import FilterError, Position, parse_partition_address, parse_selector
from client_app.cloud.amqp.frames import FramePadder, pad_frame
from client_app.cloud.amqp.sasl import _frame
from client_app.cloud.errors import CloudError
from client_app.cloud.sas import AccessPolicy, generate_token
from client_app.cloud.store import _SCHEMA_V1, SCHEMA_VERSION, Store, partition_of


def _fields(frame: bytes) -> list[object]:
    data = Data()
    data.decode(frame[frame[4] * 4 :])
    return [bytes(v) if isinstance(v, memoryview) else v for v in data.get_object().value]


def test_short_performatives_are_padded_with_nulls_and_payload_kept():
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(0x14)  # transfer with 2 of 11 fields
    data.put_list()
    data.enter()
    data.put_uint(0)
    data.put_binary(b"t")
    data.exit()
    data.exit()
    body = data.encode()
    frame = (8 + len(body) + 3).to_bytes(4, "big") + b"\x02\x00\x00\x01" + body + b"abc"
    padded = pad_frame(frame)
    assert int.from_bytes(padded[:4], "big") == len(padded)
    assert padded.endswith(b"abc") and padded[4:8] == frame[4:8]
    fields = _fields(padded)
    assert (fields[0], fields[1], len(fields)) == (0, b"t", 11)
    header = b"AMQP\x00\x01\x00\x00"
    padder = FramePadder()
    assert padder.feed(header + padded[:5]) == header  # a partial frame waits for the rest
    assert padder.feed(padded[5:]) == pad_frame(padded) == padded


def _performative(code: int, fields: list[object], list8: bool = False) -> bytes:
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(code)
    data.put_list()
    data.enter()
    for value in fields:
        data.put_object(value)
    data.exit()
    data.exit()
    body = data.encode()
    if list8:  # `Data` writes a list32; proton's transport writes a short performative as a list8
        size, count = int.from_bytes(body[4:8], "big"), int.from_bytes(body[8:12], "big")
        body = body[:3] + bytes((0xC0, size - 3, count)) + body[12:]
    return body


def test_a_stream_of_frames_is_padded_frame_by_frame_however_it_is_split():
    def frame(body: bytes, payload: bytes = b"") -> bytes:
        return (8 + len(body) + len(payload)).to_bytes(4, "big") + b"\x02\x00\x00\x01" + body + payload

    frames = [
        frame(_performative(0x14, [0, 1, b"1", 0, True], list8=True), b"event one"),  # a pre-settled transfer
        frame(_performative(0x14, [0, 2, b"2", 0, True]), b"event two"),
        frame(b"\x00\x53\x10\x45"),  # open with no fields at all (list0)
        b"\x00\x00\x00\x08\x02\x00\x00\x00",  # heartbeat: an empty frame
        frame(_performative(0x17, [None])),  # end: already complete
    ]
    stream = b"AMQP\x00\x01\x00\x00" + b"".join(frames)
    expected = b"AMQP\x00\x01\x00\x00" + b"".join(pad_frame(f) for f in frames)
    assert [len(_fields(pad_frame(f))) for f in frames[:3]] == [11, 11, 10]
    assert _fields(pad_frame(frames[0]))[:5] == [0, 1, b"1", 0, True]
    assert _fields(pad_frame(frames[1]))[:5] == [0, 2, b"2", 0, True]
    for step in (1, 3, 7, 50, len(stream)):
        padder = FramePadder()
        out = b"".join(padder.feed(stream[i : i + step]) for i in range(0, len(stream), step))
        assert out == expected


def test_sasl_outcome_frame_has_both_fields():
    frame = _frame(0x44, [0, None])
    assert _fields(frame) == [0, None]


@pytest.mark.parametrize(
    ("selector", "position"),
    [
        (None, Position("offset", False, "-1")),
        ("amqp.annotation.x-opt-offset > '@latest'", Position("offset", False, "@latest")),
        ("amqp.annotation.x-opt-sequence-number >= '5'", Position("sequence-number", True, "5")),
        (
            "amqp.annotation.x-opt-enqueued-time > '1700000000000'",
            Position("enqueued-time", False, "1700000000000"),
        ),
    ],
)
def test_selectors(selector, position):
    assert parse_selector(selector) == position


@pytest.mark.parametrize(
    "selector", ["amqp.annotation.x-opt-offset < '1'", "x > 1", "amqp.annotation.x-opt-sequence-number > 'x'"]
)
def test_unknown_selectors_are_refused(selector):
    with pytest.raises(FilterError):
        parse_selector(selector)


def test_partition_addresses():
    address = parse_partition_address("hub/ConsumerGroups/$Default/Partitions/3")
    assert (address.entity, address.consumer_group, address.partition) == ("hub", "$Default", 3)
    assert parse_partition_address("hub/ConsumerGroups/$Default") is None


def test_c2d_request_maps_properties_ack_and_expiry():
    message = Message(body=b"hi", address="/devices/dev%2F1/messages/devicebound", id="m1",
                      correlation_id="c1",
                      content_type="text/plain", properties={"iothub-ack": "positive", "n": 5})  # fmt: skip
    message.expiry_time = 1000.0 + 30
    request = c2d_request(message, now=1000.0)
    assert request.device_id == "dev/1" and request.body == b"hi"
    assert request.options["ack"] == "positive" and request.options["properties"] == {"n": "5"}
    assert request.options["ttl_seconds"] == pytest.approx(30)
    assert (request.options["message_id"], request.options["correlation_id"]) == ("m1", "c1")
    assert (request.options["content_type"], request.options["content_encoding"]) == ("text/plain", None)
    plain = c2d_request(Message(body=b"x", address="/devices/a/messages/devicebound"))  # none sent: none kept
    assert (plain.options["content_type"], plain.options["content_encoding"]) == (None, None)
    with pytest.raises(C2dRefused, match="devicebound"):
        c2d_request(Message(body=b"x", address="/devices/a/messages/events"))


def test_hub_errors_map_to_the_conditions_the_sdks_translate():
    assert refusal_for(CloudError(404, 404001, "x")).condition == "amqp:not-found"
    assert refusal_for(CloudError(403, 403004, "x")).condition == "amqp:resource-limit-exceeded"
    assert refusal_for(CloudError(413, 413001, "x")).condition == "amqp:link:message-size-exceeded"
    assert refusal_for(CloudError(400, 400004, "x")).condition == "com.microsoft:argument-error"


def test_put_token_checks_signature_expiry_audience_and_right():
    policies = {p.name: p for p in (AccessPolicy.generate("service", {"ServiceConnect"}),
                                    AccessPolicy.generate("registryRead", {"RegistryRead"}))}  # fmt: skip
    checker = TokenChecker(lambda: policies, {"127.9.9.9"})
    service, read = policies["service"], policies["registryRead"]
    auth = ConnectionAuth()
    kind = "servicebus.windows.net:sastoken"
    good = generate_token("127.9.9.9", service.primary_key, "service")
    assert checker.put_token(auth, kind, "https://127.9.9.9", good) == (200, "OK")
    assert auth.covers("messages/devicebound") and auth.covers("hub/ConsumerGroups/x/Partitions/0")
    assert not auth.covers("messages/devicebound", now=time.time() + 7200)  # the token's expiry
    expired = generate_token("127.9.9.9", service.primary_key, "service", ttl=-5)
    assert checker.put_token(ConnectionAuth(), kind, "127.9.9.9", expired)[0] == 401
    lacking = generate_token("127.9.9.9", read.primary_key, "registryRead")
    assert "ServiceConnect" in checker.put_token(ConnectionAuth(), kind, "127.9.9.9", lacking)[1]
    other_host = generate_token("127.1.1.1", service.primary_key, "service")
    assert checker.put_token(ConnectionAuth(), kind, "127.1.1.1", other_host)[0] == 404
    assert checker.put_token(ConnectionAuth(), "jwt", "127.9.9.9", good)[0] == 400
    narrow = ConnectionAuth()
    entity = generate_token("sb://127.9.9.9/hub", service.primary_key, "service")
    assert checker.put_token(narrow, kind, "sb://127.9.9.9/hub", entity) == (200, "OK")
    assert narrow.covers("HUB/ConsumerGroups/$Default/Partitions/1") and not narrow.covers(
        "messages/devicebound"
    )


def test_v1_database_migrates_without_losing_telemetry(tmp_path):
    path = tmp_path / "cloud.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN;{_SCHEMA_V1}PRAGMA user_version=1;COMMIT;")
    rows = [
        (f"dev-{n % 7}", f"2026-11-30T10:00:{n:02d}.000000Z", f"body {n}".encode(), "{}", f'{{"n":"{n}"}}')
        for n in range(40)
    ]
    db.executemany(
        "INSERT INTO telemetry(device_id, received, body, system_properties, properties)"
        " VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    db.execute("INSERT INTO meta VALUES ('id_scope', '0neKEEP')")
    db.close()

    store = Store(path)
    try:
        assert store.one("PRAGMA user_version")[0] == SCHEMA_VERSION
        assert store.meta("id_scope") == "0neKEEP" and store.meta("partition_count") == "4"
        migrated = store.all("SELECT * FROM telemetry ORDER BY seq")
        assert [(r["device_id"], r["received"], bytes(r["body"]), r["properties"]) for r in migrated] == [
            (d, t, b, p) for d, t, b, _, p in rows
        ]
        for partition in range(4):
            in_partition = [r for r in migrated if r["partition"] == partition]
            assert [r["sequence_number"] for r in in_partition] == list(range(len(in_partition)))
            assert all(partition_of(r["device_id"], 4) == partition for r in in_partition)
    finally:
        store.close()
    Store(path).close()  # opening a current database again changes nothing


def test_v2_database_with_identity_tables_already_made_keeps_their_rows(tmp_path):
    """Builds before the v3 step created issue 13's tables on open at version 2: the step must keep them."""
    path = tmp_path / "cloud.db"
    Store(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO registration_keys VALUES ('k1-abc', 'KEYID')")
    db.execute("PRAGMA user_version=2")
    db.close()
    store = Store(path)
    try:
        assert store.one("PRAGMA user_version")[0] == SCHEMA_VERSION
        assert [tuple(r) for r in store.all("SELECT * FROM registration_keys")] == [("k1-abc", "KEYID")]
    finally:
        store.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "cloud.db"
    sqlite3.connect(path).execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(Exception, match="newer"):
        Store(path)
