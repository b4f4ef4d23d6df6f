"""The Event Hubs-compatible endpoint's data: partitions of stored telemetry, filters, events, `$management`.

Shapes follow Azure's Event Hubs AMQP contract as the SDKs use it (azure-eventhub
`_utils.event_position_selector`, `_pyamqp` management reads; @azure/event-hubs `managementClient.ts`): a
receiver's source carries an `apache.org:selector-filter:string` such as `amqp.annotation.x-opt-offset >
'-1'`; events carry the annotations `x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time` and IoT
Hub's `iothub-*` system properties. Reads run on the reactor thread over their own read-only SQLite connection
(WAL lets it read while the loop's writer commits), so a busy consumer never waits for the event loop and
never blocks it.
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

from proton import Data, symbol, timestamp

from client_app.cloud.hub.hub import DEFAULT_CONSUMER_GROUP

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


class RecentEvents:
    """The newest committed events of each partition as the telemetry writer hands them over, so a receiver
    that keeps up is served from memory rather than by a SQLite read per batch. Lives on the reactor thread.
    Each partition keeps an unbroken run of sequence numbers up to the newest hand-over (the writer's own
    row tuples, nothing copied): the newest `keep` events or `keep_bytes` of bodies, whichever is less, let go
    in steps of as much again. A receiver before the run reads SQLite; a gap (after `clear`) starts a new
    run."""

    def __init__(self, partitions: int, keep: int = 4096, keep_bytes: int = 4 << 20) -> None:
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._runs: list[list[StoredEvent]] = [[] for _ in range(partitions)]
        self._offsets: list[list[int]] = [[] for _ in range(partitions)]
        self._sizes = [0] * partitions

    def add(self, rows: list[StoredEvent], first_offset: int) -> None:
        """The rows of one commit; the n-th has offset `first_offset + n`."""
        sizes = self._sizes
        for offset, row in enumerate(rows, first_offset):
            partition = row[5]
            run = self._runs[partition]
            if run and run[-1][SEQUENCE_NUMBER] + 1 != row[SEQUENCE_NUMBER]:
                run.clear()
                self._offsets[partition].clear()
                sizes[partition] = 0
            run.append(row)
            self._offsets[partition].append(offset)
            sizes[partition] += len(row[2])
        for partition, run in enumerate(self._runs):
            if len(run) > 2 * self._keep or sizes[partition] > 2 * self._keep_bytes:
                self._trim(partition)

    def _trim(self, partition: int) -> None:
        run, kept, size = self._runs[partition], 0, 0
        for row in reversed(run):
            if kept == self._keep or size + len(row[2]) > self._keep_bytes:
                break
            kept, size = kept + 1, size + len(row[2])
        del run[: len(run) - kept]
        del self._offsets[partition][: len(self._offsets[partition]) - kept]
        self._sizes[partition] = size

    def clear(self) -> None:
        for run, offsets in zip(self._runs, self._offsets, strict=True):
            run.clear()
            offsets.clear()
        self._sizes = [0] * len(self._sizes)

    def read(self, partition: int, first: int, limit: int) -> tuple[list[StoredEvent], list[int]] | None:
        """Up to `limit` events from sequence number `first` on, and their offsets (none when `first` is the
        next to come); None if memory does not reach back to `first`."""
        run = self._runs[partition]
        start = first - run[0][SEQUENCE_NUMBER] if run else -1
        if not 0 <= start <= len(run):
            return None
        return run[start : start + limit], self._offsets[partition][start : start + limit]


class TelemetryReader:
    """Stored telemetry seen as Event Hubs partitions. Row `seq` is the offset; `sequence_number` counts per
    partition. Lives on the reactor thread (opens its connection there, on first use)."""

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
        """Up to `limit` events from sequence number `first` on, and their offsets (as RecentEvents.read)."""
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
# one data section), each encoded by proton's `Data` (issue 10: a well-kept AMQP engine, no home-made codec).
# Kept cheap within proton's public API: the sections that repeat from message to message (a device's
# properties and application properties) are encoded once per distinct stored text; the per-event sections go
# through one reused `Data` (encode_event runs on the AMQP thread only). Sections are whole AMQP values, so
# the message is their concatenation, as proton's `Message.encode` writes it.

_DEVICE_ID, _AUTH_METHOD, _ENQUEUED, _SOURCE, _SEQUENCE, _OFFSET, _ENQUEUED_TIME = map(symbol, (
    "iothub-connection-device-id", "iothub-connection-auth-method", "iothub-enqueuedtime",
    "iothub-message-source", "x-opt-sequence-number", "x-opt-offset", "x-opt-enqueued-time",
))  # fmt: skip


def _begin_section(data: Data, descriptor: int) -> None:
    data.put_described()
    data.enter()
    data.put_ulong(descriptor)


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


_EVENT_DATA = Data()


def encode_event(event: StoredEvent, offset: int) -> bytes:
    """One stored device-to-cloud message as the Event Hubs-compatible endpoint delivers it, encoded."""
    device_id, received, body, system, properties, _, sequence_number = event
    enqueued = ms_from_iso(received)
    data = _EVENT_DATA
    data.clear()
    _begin_section(data, 0x72)  # message-annotations
    data.put_map()
    data.enter()
    data.put_symbol(_DEVICE_ID)
    data.put_string(device_id)
    data.put_symbol(_AUTH_METHOD)
    data.put_string(AUTH_METHOD)
    data.put_symbol(_ENQUEUED)
    data.put_timestamp(enqueued)
    data.put_symbol(_SOURCE)
    data.put_string(MESSAGE_SOURCE)
    data.put_symbol(_SEQUENCE)
    data.put_long(sequence_number)
    data.put_symbol(_OFFSET)
    data.put_string(str(offset))
    data.put_symbol(_ENQUEUED_TIME)
    data.put_timestamp(enqueued)
    data.exit()
    data.exit()
    annotations = data.encode()
    data.clear()
    _begin_section(data, 0x75)  # data
    data.put_binary(bytes(body))
    data.exit()
    return b"".join(
        (annotations, _properties_section(system), _application_properties_section(properties), data.encode())
    )
