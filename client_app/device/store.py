"""Outbox and inbox in SQLite: persisted before sending / on arrival, so nothing is lost across crashes.

WAL mode and short transactions let another process (`client-app --send`, `--status`) use the same file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from client_app.device.messages import InboxMessage, OutboxMessage
from client_app.device.paths import private_file
from client_app.device.state import parse_time, utcnow

log = logging.getLogger(__name__)

# The schema as steps: _MIGRATIONS[i] takes a database from user_version i to i + 1. A step that has shipped
# is never edited; a change is a new step appended here (tests/device/test_store_migration.py).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 → 1: the schema of the releases before user_version (IF NOT EXISTS: such a database has it)
        """CREATE TABLE IF NOT EXISTS outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            text TEXT NOT NULL,
            properties TEXT NOT NULL,
            created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'queued',
            delivered_at TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS outbox_queued ON outbox(state, id)",
        """CREATE TABLE IF NOT EXISTS inbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT NOT NULL UNIQUE,
            text TEXT NOT NULL,
            properties TEXT NOT NULL,
            received_at TEXT NOT NULL,
            read INTEGER NOT NULL DEFAULT 0
        )""",
    ),
    (  # 1 → 2: the unread count is asked on every status change
        "CREATE INDEX IF NOT EXISTS inbox_unread ON inbox(read)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreUnavailable(Exception):
    """The message database exists but cannot be used right now; the message says what to check."""


class Database:
    """One connection shared by the runtime's threads, serialised by a lock (calls are short)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            self._open(path)
        except StoreUnavailable:
            self._conn.close()
            raise
        except (sqlite3.OperationalError, OSError) as exc:  # locked or no access: the messages are fine
            raise StoreUnavailable(
                f"The message database {path} cannot be opened ({exc}). "
                "Check that the data directory is writable and not in use by another program."
            ) from exc
        except sqlite3.DatabaseError as exc:  # e.g. an OS crash during the very first launch
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("message database unusable (%s): moved to %s, starting a new one", exc, aside.name)
            self._conn.close()
            path.rename(aside)
            self._open(path)

    def _open(self, path: Path) -> None:
        private_file(path)  # SQLite gives its -wal and -shm files the database file's mode: 0600
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=10, isolation_level=None)
        # An empty schema needs no fsync (lost in a crash, it is simply created again); messages do.
        self._conn.execute("PRAGMA synchronous=OFF")
        self._migrate(path)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # "persisted" must survive a power cut, too

    def _migrate(self, path: Path) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction (another process may be opening it, too)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"The message database {path} was written by a newer client-app (schema {version}, "
                    f"this one knows {SCHEMA_VERSION}). Install the newer version again."
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                log.info("message database schema %d → %d", version, SCHEMA_VERSION)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, text: str, properties: Mapping[str, str] | None = None) -> OutboxMessage:
        props = {str(k): str(v) for k, v in (properties or {}).items()}
        message_id, created = str(uuid.uuid4()), utcnow().isoformat()
        with self._db.transaction() as conn:
            row_id = conn.execute(
                "INSERT INTO outbox (message_id, text, properties, created_at) VALUES (?, ?, ?, ?)",
                (message_id, text, json.dumps(props), created),
            ).lastrowid
        return OutboxMessage(int(row_id or 0), message_id, text, props, parse_time(created))

    def next_queued(self) -> OutboxMessage | None:
        rows = self._db.query(f"SELECT {self._COLUMNS} FROM outbox WHERE state='queued' ORDER BY id LIMIT 1")
        return self._row(rows[0]) if rows else None

    def mark_delivered(self, row_id: int) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE outbox SET state='delivered', delivered_at=? WHERE id=?",
                (utcnow().isoformat(), row_id),
            )

    def list(self, limit: int = 100) -> list[OutboxMessage]:
        """Newest first."""
        rows = self._db.query(f"SELECT {self._COLUMNS} FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [self._row(row) for row in rows]

    def prune(self, keep: int = 1000) -> None:
        """Forget all but the newest `keep` delivered messages: the outbox must not grow forever."""
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM outbox WHERE state='delivered' AND id NOT IN "
                "(SELECT id FROM outbox WHERE state='delivered' ORDER BY id DESC LIMIT ?)",
                (keep,),
            )

    def queued_count(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM outbox WHERE state='queued'")[0][0])

    _COLUMNS = "id, message_id, text, properties, created_at, state, delivered_at"

    @staticmethod
    def _row(row: tuple) -> OutboxMessage:
        return OutboxMessage(
            row[0], row[1], row[2], json.loads(row[3]), parse_time(row[4]), row[5], parse_time(row[6])
        )


class Inbox:
    def __init__(self, db: Database) -> None:
        self._db = db
        self.on_change: Callable[[], None] = lambda: None  # read state changed (the runtime recounts)

    def add(self, message_id: str, text: str, properties: Mapping[str, str | None]) -> InboxMessage | None:
        """Store a C2D message; None when that message id was already stored (at-least-once delivery)."""
        received = utcnow().isoformat()
        with self._db.transaction() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO inbox (message_id, text, properties, received_at) VALUES (?, ?, ?, ?)",
                (message_id, text, json.dumps(dict(properties)), received),
            )
            if cursor.rowcount == 0:
                return None
            row_id = cursor.lastrowid
        return InboxMessage(int(row_id or 0), message_id, text, dict(properties), parse_time(received))

    def list(self, limit: int = 100) -> list[InboxMessage]:
        """Newest first."""
        rows = self._db.query(
            "SELECT id, message_id, text, properties, received_at, read FROM inbox ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [InboxMessage(r[0], r[1], r[2], json.loads(r[3]), parse_time(r[4]), bool(r[5])) for r in rows]

    def mark_read(self, row_id: int) -> None:
        with self._db.transaction() as conn:
            conn.execute("UPDATE inbox SET read=1 WHERE id=?", (row_id,))
        self.on_change()

    def set_read(self, row_ids: Sequence[int], read: bool = True) -> None:
        """Mark several messages read or unread in one transaction (mark-all-read, a context menu)."""
        with self._db.transaction() as conn:
            rows = [(int(read), row_id) for row_id in row_ids]
            conn.executemany("UPDATE inbox SET read=? WHERE id=?", rows)
        self.on_change()

    def mark_all_read(self, up_to: int) -> None:
        """Every message up to row id `up_to` (the newest the user saw) read, however many: "Mark all read".
        A message that arrived after it stays unread."""
        with self._db.transaction() as conn:
            conn.execute("UPDATE inbox SET read=1 WHERE read=0 AND id<=?", (up_to,))
        self.on_change()

    def unread_count(self, before: int | None = None) -> int:
        """Unread messages; with `before`, only those older than that row id (the ones a window that loaded
        the newest rows down to it does not hold)."""
        if before is None:
            return int(self._db.query("SELECT COUNT(*) FROM inbox WHERE read=0")[0][0])
        return int(self._db.query("SELECT COUNT(*) FROM inbox WHERE read=0 AND id<?", (before,))[0][0])

    def count(self) -> int:
        return int(self._db.query("SELECT COUNT(*) FROM inbox")[0][0])
