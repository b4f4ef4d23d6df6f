"""Issue 12 item 6: the message database carries a user_version and migrates, losing nothing."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import pytest

from client_app.device.store import SCHEMA_VERSION, Database, Inbox, Outbox, StoreUnavailable

# messages.sqlite3 as every release before schema versions wrote it (client_app/device/store.py at b38af5d).
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    properties TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_queued ON outbox(state, id);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    properties TEXT NOT NULL,
    received_at TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0
);
"""


def _unversioned_database(path) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(UNVERSIONED_SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
        for i in range(50):
            state, delivered = ("delivered", "2026-01-01T00:00:01+00:00") if i % 2 else ("queued", None)
            db.execute(
                "INSERT INTO outbox (message_id, text, properties, created_at, state, delivered_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (f"out-{i}", f"text {i} ✓", json.dumps({"n": str(i)}), "2026-01-01T00:00:00+00:00", state,
                 delivered),
            )  # fmt: skip
            db.execute(
                "INSERT INTO inbox (message_id, text, properties, received_at, read) VALUES (?, ?, ?, ?, ?)",
                (f"in-{i}", f"c2d {i}", json.dumps({"$.cid": f"c{i}", "flag": None}),
                 "2026-01-01T00:00:00+00:00", i % 3 == 0),
            )  # fmt: skip
        db.commit()
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0


def test_unversioned_database_migrates_without_losing_a_row(tmp_path):
    path = tmp_path / "messages.sqlite3"
    _unversioned_database(path)
    db = Database(path)
    outbox, inbox = Outbox(db), Inbox(db)
    assert db.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    sent = outbox.list(limit=1000)
    assert len(sent) == 50 and outbox.queued_count() == 25
    assert {m.message_id for m in sent} == {f"out-{i}" for i in range(50)}
    assert sent[-1].text == "text 0 ✓" and sent[-1].properties == {"n": "0"} and sent[-1].state == "queued"
    received = inbox.list(limit=1000)
    assert len(received) == 50 and inbox.unread_count() == 33
    assert received[-1].properties == {"$.cid": "c0", "flag": None} and received[-1].read
    assert [name for (name,) in db.query("SELECT name FROM sqlite_master WHERE type='index'")].count(
        "inbox_unread"
    ) == 1
    # the migrated store keeps working, and opening it again changes nothing
    queued = outbox.next_queued()
    assert queued is not None and queued.message_id == "out-0"
    outbox.add("after the migration")
    db.close()
    again = Database(path)
    assert len(Outbox(again).list(limit=1000)) == 51 and again.query("PRAGMA user_version") == [
        (SCHEMA_VERSION,)
    ]
    again.close()


def test_database_from_a_newer_app_is_refused_untouched(tmp_path):
    path = tmp_path / "messages.sqlite3"
    _unversioned_database(path)
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    with pytest.raises(StoreUnavailable, match="newer client-app") as info:
        Database(path)
    assert "\n" not in str(info.value)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 50
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
