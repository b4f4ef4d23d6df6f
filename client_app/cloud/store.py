"""SQLite state of the local cloud: one connection, one writer (the loop thread), WAL, schema version."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 5
DEFAULT_PARTITIONS = 4  # Event Hubs-compatible endpoint partitions; IoT Hub's default is 4
DEFAULT_CONSUMER_GROUP = "$Default"  # the one every Event Hubs-compatible endpoint has

_SCHEMA_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE secrets(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE certificates(
    name TEXT PRIMARY KEY, pem TEXT NOT NULL, subject TEXT NOT NULL, sha1 TEXT NOT NULL, sha256 TEXT NOT NULL,
    not_after TEXT NOT NULL, is_verified INTEGER NOT NULL, verification_code TEXT, etag TEXT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE enrollment_groups(
    group_id TEXT PRIMARY KEY COLLATE NOCASE, ca_name TEXT NOT NULL, enabled INTEGER NOT NULL,
    initial_twin TEXT NOT NULL, etag TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE enrollments(
    registration_id TEXT PRIMARY KEY COLLATE NOCASE, enabled INTEGER NOT NULL, etag TEXT NOT NULL,
    created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE registrations(
    registration_id TEXT PRIMARY KEY COLLATE NOCASE, device_id TEXT NOT NULL, group_id TEXT,
    assigned_hub TEXT NOT NULL, status TEXT NOT NULL, substatus TEXT NOT NULL, thumbprint TEXT NOT NULL,
    operation_id TEXT NOT NULL, etag TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE INDEX registrations_group ON registrations(group_id);
CREATE TABLE devices(
    device_id TEXT PRIMARY KEY, thumbprint TEXT NOT NULL, enabled INTEGER NOT NULL,
    generation_id TEXT NOT NULL,
    etag TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, last_activity TEXT,
    connection_state_updated TEXT);
CREATE TABLE twins(
    device_id TEXT PRIMARY KEY, desired TEXT NOT NULL, desired_version INTEGER NOT NULL,
    reported TEXT NOT NULL, reported_version INTEGER NOT NULL, tags TEXT NOT NULL);
CREATE TABLE sessions(device_id TEXT PRIMARY KEY, subscriptions TEXT NOT NULL);
CREATE TABLE c2d(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT, properties TEXT NOT NULL, enqueued TEXT NOT NULL, expiry REAL NOT NULL);
CREATE INDEX c2d_device ON c2d(device_id, seq);
CREATE TABLE telemetry(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, received TEXT NOT NULL,
    body BLOB NOT NULL,
    system_properties TEXT NOT NULL, properties TEXT NOT NULL);
CREATE INDEX telemetry_device ON telemetry(device_id, seq);
"""


def partition_of(device_id: str, partitions: int) -> int:
    """The Event Hubs partition of a device's telemetry: a stable hash of the device id, as IoT Hub keeps
    one device's messages in one partition (CRC-32 is our choice; Azure's hash is not published)."""
    return zlib.crc32(device_id.encode()) % partitions


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Telemetry rows get their Event Hubs partition and per-partition sequence number (numbered in stored
    order); the offset of a row is its global `seq`, which grows within each partition too."""
    row = db.execute("SELECT value FROM meta WHERE key='partition_count'").fetchone()
    partitions = int(row[0]) if row else DEFAULT_PARTITIONS
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('partition_count', ?)", (str(partitions),))
    db.create_function("partition_of", 1, lambda device_id: partition_of(device_id, partitions))
    for statement in (  # one by one: executescript would commit the migration's transaction
        "ALTER TABLE telemetry ADD COLUMN partition INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE telemetry ADD COLUMN sequence_number INTEGER NOT NULL DEFAULT 0",
        "UPDATE telemetry SET partition = partition_of(device_id)",
        "WITH numbered AS ("
        " SELECT seq, ROW_NUMBER() OVER (PARTITION BY partition ORDER BY seq) - 1 AS n FROM telemetry)"
        " UPDATE telemetry SET sequence_number = numbered.n FROM numbered WHERE numbered.seq = telemetry.seq",
        "CREATE UNIQUE INDEX telemetry_partition ON telemetry(partition, sequence_number)",
        "CREATE TABLE consumer_groups(name TEXT PRIMARY KEY COLLATE NOCASE, created TEXT NOT NULL)",
        "CREATE TABLE c2d_feedback(id INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL)",
    ):
        db.execute(statement)


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Issue 13: each group's options (identity policy, allocation) and the key each registration ID first
    registered with. IF NOT EXISTS: builds of this day created them on open, without a version step."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS enrollment_group_options("
        "group_id TEXT PRIMARY KEY COLLATE NOCASE, options TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS registration_keys("
        "registration_id TEXT PRIMARY KEY COLLATE NOCASE, key_id TEXT NOT NULL)"
    )


def _v3_to_v4(db: sqlite3.Connection) -> None:
    """Issue 9: groups attested by `signingCertificates` and individual enrollments with `clientCertificates`
    keep their certificates (a JSON list of PEM, primary first); such a group's `ca_name` is ''.
    IF NOT EXISTS: steps re-run on a database whose version was set back must keep what is there."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS enrollment_group_signing("
        "group_id TEXT PRIMARY KEY COLLATE NOCASE, certificates TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS enrollment_client_certificates("
        "registration_id TEXT PRIMARY KEY COLLATE NOCASE, certificates TEXT NOT NULL)"
    )


def _v4_to_v5(db: sqlite3.Connection) -> None:
    """Each registration keeps the X509RegistrationResult its device received (JSON), so the service API's
    registration state carries the leaf's whole certificateInfo, as Azure's does. Older rows have none."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS registration_x509("
        "registration_id TEXT PRIMARY KEY COLLATE NOCASE, result TEXT NOT NULL)"
    )


# Schema steps: _MIGRATIONS[v] takes a database at version v to v + 1 (inside one transaction).
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5,
}  # fmt: skip


def utc_now() -> str:
    """ISO 8601 UTC with a Z, the shape Azure's service APIs use."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class StoreError(RuntimeError):
    pass


class Store:
    """The database. All calls come from the event-loop thread; the lock only guards against misuse."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Owner only, whatever the data directory's mode: it holds the key passphrase (SQLite gives the -wal
        # and -shm files the database's mode).
        path.touch(mode=0o600)
        path.chmod(0o600)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        """A new database gets version 1's schema, then every database runs the steps up to SCHEMA_VERSION,
        so a migrated database and a new one are the same."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this program's ({SCHEMA_VERSION})"
            )
        with self._lock:  # executescript manages its own transaction
            if version == 0:
                self._db.executescript(f"BEGIN;{_SCHEMA_V1}PRAGMA user_version=1;COMMIT;")
                version = 1
            while version < SCHEMA_VERSION:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    _MIGRATIONS[version](self._db)
                    self._db.execute(f"PRAGMA user_version={version + 1}")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                version += 1

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db.in_transaction:  # nested: the outer transaction commits
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (what is read now may still be rolled back)."""
        return self._db.in_transaction

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.transaction() as db:
            db.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key=?", (key,))
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def secret(self, name: str) -> bytes | None:
        row = self.one("SELECT value FROM secrets WHERE name=?", (name,))
        return bytes(row["value"]) if row else None

    def set_secret(self, name: str, value: bytes) -> None:
        self.execute("INSERT OR REPLACE INTO secrets(name, value) VALUES (?, ?)", (name, value))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class TelemetryWriter:
    """Group commit: publishers that arrive while a batch is being written share the next transaction.

    `add` returns only once the row is committed, so the PUBACK that follows means "stored". With `keep`,
    the same transaction drops what is older than the newest `keep` messages: a cloud that runs for weeks
    (the demo's is reused) must not fill the disk. Each row gets its Event Hubs partition and the next
    sequence number of that partition; the next numbers are kept in `meta` too, so pruning a partition empty
    never hands out a number twice.
    """

    _INSERT = (
        "INSERT INTO telemetry(device_id, received, body, system_properties, properties, partition,"
        " sequence_number) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )

    _PRUNE = "DELETE FROM telemetry WHERE seq <= last_insert_rowid() - ?"  # seq: the primary key, no scan
    _NEXT_KEY = "telemetry_next_sequence"

    def __init__(
        self,
        store: Store,
        max_batch: int = 2000,
        keep: int | None = None,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._keep = keep
        self.partitions = partitions
        self._next = self._load_next()
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _load_next(self) -> list[int]:
        saved = json.loads(self._store.meta(self._NEXT_KEY) or "{}")
        rows = self._store.all(
            "SELECT partition, MAX(sequence_number) + 1 AS n FROM telemetry GROUP BY partition"
        )
        stored = {row["partition"]: row["n"] for row in rows}
        return [max(saved.get(str(p), 0), stored.get(p, 0)) for p in range(self.partitions)]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-writer")

    async def add(
        self, device_id: str, body: bytes, system: dict[str, str], custom: dict[str, str | None]
    ) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(((device_id, utc_now(), body, dumps(system), dumps(custom)), future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let publishers that are ready right now join this batch
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                self._commit(batch)

    def _commit(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[None]]]) -> None:
        numbered, next_before = [], list(self._next)
        for row, _ in batch:
            partition = partition_of(row[0], self.partitions)
            numbered.append((*row, partition, self._next[partition]))
            self._next[partition] += 1
        try:
            with self._store.transaction() as db:
                db.executemany(self._INSERT, numbered)
                if self._keep:
                    db.execute(self._PRUNE, (self._keep,))
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (self._NEXT_KEY, dumps({str(p): n for p, n in enumerate(self._next)})),
                )
        except Exception as exc:  # the publishers see the failure; nothing is PUBACKed
            self._next = next_before
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            batch, self._pending = self._pending, []
            self._commit(batch)
