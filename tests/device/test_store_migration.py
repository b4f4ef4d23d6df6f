"""Issue 12 item 6: the message database carries a user_version and migrates, losing nothing."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from client_app.device.store import SCHEMA_VERSION, Database, Inbox, Outbox, StoreUnavailable

# messages.sqlite3 as the releases before schema versions wrote it: made by client_app/device/store.py of
# b38af5d (50 outbox rows, every second one delivered; 50 inbox rows, every third one read), never rewritten.
UNVERSIONED = Path(__file__).parent / "data" / "messages-unversioned.sqlite3"


def _unversioned_database(path: Path) -> None:
    shutil.copyfile(UNVERSIONED, path)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0


def _rows(path: Path) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            for table in ("outbox", "inbox")
        }


def test_unversioned_database_migrates_without_losing_a_row(tmp_path):
    path = tmp_path / "messages.sqlite3"
    _unversioned_database(path)
    before = _rows(path)
    assert len(before["outbox"]) == 50 and len(before["inbox"]) == 50
    db = Database(path)
    assert db.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert ("inbox_unread",) in db.query("SELECT name FROM sqlite_master WHERE type='index'")
    outbox, inbox = Outbox(db), Inbox(db)
    assert len(outbox.list(limit=1000)) == 50 and outbox.queued_count() == 25
    oldest = outbox.list(limit=1000)[-1]
    assert oldest.text == "text 0 ✓" and oldest.properties == {"n": "0"} and oldest.state == "queued"
    assert inbox.count() == 50 and inbox.unread_count() == 33
    assert inbox.list(limit=1000)[-1].properties == {"$.cid": "c0", "flag": None}
    db.close()
    assert _rows(path) == before  # every row, every column
    # the migrated store keeps working, and opening it again changes nothing
    again = Database(path)
    assert again.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    Outbox(again).add("after the migration")
    assert Outbox(again).next_queued() == Outbox(again).list(limit=1000)[-1]  # still in order, oldest first
    again.close()
    assert len(_rows(path)["outbox"]) == 51


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
