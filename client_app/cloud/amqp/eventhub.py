"""The Event Hubs-compatible endpoint's data: partitions of stored telemetry, filters, events, `$management`.

Shapes follow Azure's Event Hubs AMQP contract as the SDKs use it (azure-eventhub
`_utils.event_position_selector`, `_pyamqp` management reads; @azure/event-hubs `managementClient.ts`): a
receiver's source carries an `apache.org:selector-filter:string` such as `amqp.annotation.x-opt-offset >
'-1'`; events carry the annotations `x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time` and IoT
Hub's `iothub-*` system properties. Reads run in the endpoint's own process over a read-only SQLite
connection (WAL lets it read while the cloud's writer commits), so a busy consumer never waits for the cloud
and never slows it.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cproton_ffi import ffi
from cproton_ffi.lib import (
    PN_OVERFLOW,
    pn_data,
    pn_data_clear,
    pn_data_decode,
    pn_data_encode,
    pn_data_enter,
    pn_data_free,
    pn_data_narrow,
    pn_data_next,
    pn_data_put_binary,
    pn_data_put_described,
    pn_data_put_long,
    pn_data_put_string,
    pn_data_put_timestamp,
    pn_data_put_ulong,
    pn_data_rewind,
)
from proton import Data, ProtonException, symbol, timestamp

from client_app.cloud.store import DEFAULT_CONSUMER_GROUP

SELECTOR_FILTER = symbol("apache.org:selector-filter:string")
_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time)\s*(>=|>)\s*'([^']*)'\s*$"
)
_PARTITION_PATH = re.compile(
    r"^(?P<entity>[^/]+)/ConsumerGroups/(?P<group>[^/]+)/Partitions/(?P<partition>\d+)$", re.IGNORECASE
)
MESSAGE_SOURCE = "Telemetry"
AUTH_METHOD = '{"scope":"device","type":"x509Certificate","issuer":"iothub","acceptingIpFilterRule":null}'


class FilterError(ValueError):
    """A selector filter the endpoint does not understand (amqp:not-implemented, as Event Hubs answers)."""


@dataclass(frozen=True)
class PartitionAddress:
    entity: str
    consumer_group: str
    partition: int


def parse_partition_address(path: str) -> PartitionAddress | None:
    match = _PARTITION_PATH.match(path.strip("/"))
    if match is None:
        return None
    return PartitionAddress(match["entity"], match["group"], int(match["partition"]))


@dataclass(frozen=True)
class Position:
    """Where a receiver starts: which annotation, inclusive or not, and the value as the filter wrote it."""

    field: str  # "offset" | "sequence-number" | "enqueued-time"
    inclusive: bool
    value: str


START_OF_STREAM = Position("offset", False, "-1")


def parse_selector(selector: str | None) -> Position:
    if selector is None:
        return START_OF_STREAM
    match = _SELECTOR.match(selector)
    if match is None:
        raise FilterError(f"The selector filter {selector!r} is not supported.")
    field, operator, value = match.groups()
    if not (value == "@latest" and field == "offset") and not value.lstrip("-").isdigit():
        raise FilterError(f"The selector filter value {value!r} is not a number.")
    return Position(field, operator == ">=", value)


def iso_from_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def ms_from_iso(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# A stored event as the endpoint reads it, in TelemetryWriter's INSERT order: (device_id, received, body,
# system_properties, properties, partition, sequence_number), the JSON columns as stored; its offset (`seq`)
# comes beside it.
StoredEvent = tuple[str, str, bytes, str, str, int, int]
SEQUENCE_NUMBER = 6


class TelemetryReader:
    """Stored telemetry seen as Event Hubs partitions. Row `seq` is the offset; `sequence_number` counts per
    partition. Lives on the endpoint's thread (opens its connection there, on first use)."""

    def __init__(self, db_path: Path, partitions: int) -> None:
        self._path = db_path
        self.partitions = partitions
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(f"{self._path.as_uri()}?mode=ro", uri=True, isolation_level=None)
            self._db.row_factory = sqlite3.Row
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def consumer_groups(self) -> set[str]:
        """Lower-cased names: `$Default` and the ones the operator added (Event Hubs names are case-blind)."""
        rows = self.db.execute("SELECT name FROM consumer_groups").fetchall()
        return {DEFAULT_CONSUMER_GROUP.lower(), *(row["name"].lower() for row in rows)}

    def newest_offset(self) -> int | None:
        """The offset of the newest stored event (the primary key's end: no scan), None with none stored."""
        return self.db.execute("SELECT MAX(seq) FROM telemetry").fetchone()[0]

    def next_sequence(self, partition: int) -> int:
        row = self.db.execute(
            "SELECT MAX(sequence_number) FROM telemetry WHERE partition=?", (partition,)
        ).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def start_sequence(self, partition: int, position: Position) -> int:
        """The first sequence number a receiver at `position` gets (past the end = only new events)."""
        if position.field == "sequence-number":
            return int(position.value) + (0 if position.inclusive else 1)
        if position.field == "offset" and position.value == "@latest":
            return self.next_sequence(partition)
        if position.field == "offset":
            column, bound = "seq", int(position.value)
        else:
            column, bound = "received", iso_from_ms(int(position.value))
        operator = ">=" if position.inclusive else ">"
        row = self.db.execute(
            f"SELECT MIN(sequence_number) FROM telemetry WHERE partition=? AND {column} {operator} ?",
            (partition, bound),
        ).fetchone()
        return self.next_sequence(partition) if row[0] is None else row[0]

    def read(self, partition: int, first: int, limit: int) -> tuple[list[StoredEvent], list[int]]:
        """Up to `limit` events from sequence number `first` on, and their offsets."""
        cursor = self.db.cursor()
        cursor.row_factory = None
        rows = cursor.execute(
            "SELECT device_id, received, body, system_properties, properties, partition, sequence_number, seq"
            " FROM telemetry WHERE partition=? AND sequence_number>=? ORDER BY sequence_number LIMIT ?",
            (partition, first, limit),
        ).fetchall()
        return [row[:7] for row in rows], [row[7] for row in rows]

    def partition_properties(self, entity: str, partition: int) -> dict[Any, Any]:
        """Answer of a `com.microsoft:partition` READ (field names as Event Hubs sends them)."""
        first = self.db.execute(
            "SELECT MIN(sequence_number) FROM telemetry WHERE partition=?", (partition,)
        ).fetchone()[0]
        last = self.db.execute(
            "SELECT * FROM telemetry WHERE partition=? ORDER BY sequence_number DESC LIMIT 1", (partition,)
        ).fetchone()
        return {
            "name": entity,
            "type": "com.microsoft:partition",
            "partition": str(partition),
            "begin_sequence_number": first if first is not None else -1,
            "last_enqueued_sequence_number": last["sequence_number"] if last else -1,
            "last_enqueued_offset": str(last["seq"]) if last else "-1",
            "last_enqueued_time_utc": timestamp(ms_from_iso(last["received"]) if last else 0),
            "is_partition_empty": last is None,
        }

    def hub_properties(self, entity: str, created: str) -> dict[Any, Any]:
        """Answer of a `com.microsoft:eventhub` READ."""
        return {
            "name": entity,
            "type": "com.microsoft:eventhub",
            "created_at": timestamp(ms_from_iso(created)),
            "partition_count": self.partitions,
            "partition_ids": [str(p) for p in range(self.partitions)],
        }


# ---- the event encoding: the hot path of live delivery ---------------------------------------------------
# An event is AMQP 1.0 message sections (part 3.2: message-annotations, properties, application-properties,
# one data section), every byte of them encoded by proton's `pn_data_t` (issue 10: a well-kept AMQP engine, no
# home-made codec); the message is those sections one after another, as proton's `Message.encode` writes them.
# What repeats is encoded once: the properties and application-properties sections per distinct stored text
# (kept as proton encoded them), and two `pn_data_t` per encoder that stay built from event to event: the
# annotations (decoded from a template proton encoded, with placeholders for the five per-event values) and
# the data section. Per event the new values are put over the old ones ("If the current node has a next
# sibling the put_* method will overwrite the value on this node", proton's `Data` docs), each reached with
# `pn_data_rewind` (back to the point `pn_data_narrow` marked when they were built) and `pn_data_next`, and
# each of the two is encoded: 14 C calls per event (27 when both were built afresh per event and the cached
# sections decoded back in). Proton keeps the bytes of every string and binary put until the `pn_data_t` is
# cleared, so both are built afresh after every `_REBUILD_BYTES` put.
#
# This runs through proton's own binding (`cproton_ffi`, the cffi module python-qpid-proton's `cproton` wraps,
# pinned in uv.lock) rather than `proton.Data`, which makes the same calls with a Python layer around each.
# The number of C calls counts twice: cffi lets go of the GIL around each one, and when the server's MQTT
# thread is waiting for it, each is a hand-over of the GIL (a futex wake-up) on both threads. (Proton's
# `pn_data_point`/`pn_data_restore` would jump to a placeholder in one call, but `cproton_ffi` does not bind
# them, and an ABI-mode cffi binding of them costs 2.5 times a `pn_data_next`.)
_REBUILD_BYTES = 1 << 20


def _begin_section(data: Data, descriptor: int) -> None:
    data.put_described()
    data.enter()
    data.put_ulong(descriptor)


def _annotations_template() -> tuple[Any, int]:
    """The message-annotations, IoT Hub's system properties and Event Hubs' `x-opt-*` ones: first those that
    change from event to event (placeholders), then the fixed ones, so no call steps past those. As the
    (pointer, size) `pn_data_decode` takes; the pointer keeps the bytes alive."""
    data = Data()
    _begin_section(data, 0x72)
    data.put_map()
    data.enter()
    for key, put, value in (
        ("iothub-connection-device-id", Data.put_string, ""),
        ("iothub-enqueuedtime", Data.put_timestamp, timestamp(0)),
        ("x-opt-sequence-number", Data.put_long, 0),
        ("x-opt-offset", Data.put_string, ""),
        ("x-opt-enqueued-time", Data.put_timestamp, timestamp(0)),
        ("iothub-connection-auth-method", Data.put_string, AUTH_METHOD),
        ("iothub-message-source", Data.put_string, MESSAGE_SOURCE),
    ):
        data.put_symbol(symbol(key))
        put(data, value)
    data.exit()
    data.exit()
    raw = data.encode()
    return ffi.from_buffer(raw), len(raw)


_ANNOTATIONS = _annotations_template()


@functools.lru_cache(maxsize=4096)
def _properties_section(system_properties: str) -> bytes:
    """message-id, user-id, to, subject, reply-to, correlation-id, content-type, content-encoding; trailing
    nulls left out, and no section at all when every one is null (as proton's `Message` does)."""
    system = json.loads(system_properties)
    data = Data()
    properties = [
        (data.put_string, system.get("messageId")),
        (data.put_binary, system["userId"].encode() if system.get("userId") else None),
        (data.put_string, None),
        (data.put_string, None),
        (data.put_string, None),
        (data.put_string, system.get("correlationId")),
        (data.put_symbol, system.get("contentType")),
        (data.put_symbol, system.get("contentEncoding")),
    ]
    while properties and not properties[-1][1]:
        properties.pop()
    if not properties:
        return b""
    _begin_section(data, 0x73)
    data.put_list()
    data.enter()
    for put, value in properties:
        put(value) if value else data.put_null()
    data.exit()
    data.exit()
    return data.encode()


@functools.lru_cache(maxsize=4096)
def _application_properties_section(properties: str) -> bytes:
    """String keys, string (or null) values; no section when there are none."""
    custom = json.loads(properties)
    if not custom:
        return b""
    data = Data()
    _begin_section(data, 0x74)
    data.put_map()
    data.enter()
    for key, value in custom.items():
        data.put_string(key)
        data.put_string(value) if value is not None else data.put_null()
    data.exit()
    data.exit()
    return data.encode()


class EventEncoder:
    """Two `pn_data_t` that stay built from event to event, and one output buffer (one encoder per AMQP
    thread: they are used by nothing else)."""

    def __init__(self) -> None:
        self._annotations = ffi.gc(pn_data(16), pn_data_free)
        self._data_section = ffi.gc(pn_data(4), pn_data_free)
        self._size = 4096
        self._buffer = ffi.new("char[]", self._size)
        self._device_ids: dict[str, tuple[int, Any]] = {}
        self._put_bytes = 0
        self._build()

    def _build(self) -> None:
        """Both afresh, each left at the point its per-event puts start from (`pn_data_narrow`)."""
        annotations, data_section = self._annotations, self._data_section
        pn_data_clear(annotations)
        pn_data_decode(annotations, *_ANNOTATIONS)
        pn_data_enter(annotations)  # the described section: its descriptor, then the map
        pn_data_next(annotations)
        pn_data_next(annotations)
        pn_data_enter(annotations)
        pn_data_next(annotations)  # the first key: each placeholder is the value after its key
        pn_data_narrow(annotations)
        pn_data_clear(data_section)
        pn_data_put_described(data_section)
        pn_data_enter(data_section)
        pn_data_put_ulong(data_section, 0x75)
        pn_data_narrow(data_section)  # the descriptor: a put after it writes the body
        self._put_bytes = 0

    def _device_id(self, device_id: str) -> tuple[int, Any]:
        """The id as `pn_data_put_string` takes it, kept: a device sends many events."""
        if len(self._device_ids) >= 4096:
            self._device_ids.clear()
        text = device_id.encode()
        pair = self._device_ids[device_id] = (len(text), ffi.from_buffer(text))
        return pair

    def _encoded(self, data: Any) -> bytes:
        """`data` encoded, the buffer grown as needed (encode's own first try did not fit)."""
        while (size := pn_data_encode(data, self._buffer, self._size)) == PN_OVERFLOW:
            self._size *= 2
            self._buffer = ffi.new("char[]", self._size)
        if size < 0:
            raise ProtonException(f"encoding an event failed ({size})")
        return ffi.unpack(self._buffer, size)

    def encode(self, event: StoredEvent, offset: int) -> bytes:
        device_id, received, body, system, properties, _, sequence_number = event
        enqueued = ms_from_iso(received)
        offset_text = str(offset).encode()
        annotations, data_section = self._annotations, self._data_section
        pn_data_rewind(annotations)
        pn_data_put_string(annotations, self._device_ids.get(device_id) or self._device_id(device_id))
        pn_data_next(annotations)
        pn_data_put_timestamp(annotations, enqueued)
        pn_data_next(annotations)
        pn_data_put_long(annotations, sequence_number)
        pn_data_next(annotations)
        pn_data_put_string(annotations, (len(offset_text), ffi.from_buffer(offset_text)))
        pn_data_next(annotations)
        pn_data_put_timestamp(annotations, enqueued)
        pn_data_rewind(data_section)
        pn_data_put_binary(data_section, (len(body), ffi.from_buffer(body)))
        buffer, capacity = self._buffer, self._size
        size = pn_data_encode(annotations, buffer, capacity)
        head = ffi.unpack(buffer, size) if size >= 0 else self._encoded(annotations)
        size = pn_data_encode(data_section, buffer, capacity)
        tail = ffi.unpack(buffer, size) if size >= 0 else self._encoded(data_section)
        sections = (head, _properties_section(system), _application_properties_section(properties), tail)
        self._put_bytes += len(device_id) + len(offset_text) + len(body)
        if self._put_bytes > _REBUILD_BYTES:
            self._build()
        return b"".join(sections)
