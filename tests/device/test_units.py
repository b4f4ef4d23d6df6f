"""Small pieces: back-off, state file, message store, method registry, twin, instance lock."""

import threading
from datetime import UTC, datetime, timedelta

import pytest

from client_app.device.backoff import Backoff
from client_app.device.instance_lock import InstanceLock, running_pid
from client_app.device.methods import MethodRegistry
from client_app.device.state import Assignment, DeviceState, Persister, StateCorrupt, load_state, state_bytes
from client_app.device.status import ConnectionState, DeviceStatus
from client_app.device.store import Database, Inbox, Outbox, StoreUnavailable
from client_app.device.twin import Twin


def test_backoff_grows_with_jitter_and_is_capped():
    backoff = Backoff(base=1, cap=10)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4
    assert all(d <= 10 for d in delays) and delays[-1] >= 5
    backoff.reset()
    assert backoff.next_delay() <= 1
    assert len({round(Backoff(base=1, cap=100, attempts=5).next_delay(), 6) for _ in range(20)}) > 1


def test_state_round_trip_and_corruption(tmp_path):
    path = tmp_path / "state.json"
    assert load_state(path) is None
    state = DeviceState("ca-1", "t0", "t1", Assignment("hub", "ca-1", "scope", "dps", "t2"))
    persister = Persister()
    persister.write(path, state_bytes(state))
    persister.close()  # writes what is pending, then its thread ends
    assert not persister._thread.is_alive()
    assert load_state(path) == state
    path.write_text("{not json")
    with pytest.raises(StateCorrupt, match="unreadable"):
        load_state(path)
    path.write_text('{"registration_id": "x"}')
    with pytest.raises(StateCorrupt, match="incomplete"):
        load_state(path)


def test_outbox_in_order_until_delivered_and_survives_reopen(tmp_path):
    db = Database(tmp_path / "m.sqlite3")
    outbox = Outbox(db)
    first = outbox.add("one", {"k": "v"})
    outbox.add("two")
    assert outbox.queued_count() == 2
    assert outbox.next_queued() == first
    outbox.mark_delivered(first.id)
    db.close()
    outbox = Outbox(Database(tmp_path / "m.sqlite3"))
    queued = outbox.next_queued()
    assert queued is not None and queued.text == "two" and queued.message_id != first.message_id
    assert [m.state for m in outbox.list()] == ["queued", "delivered"]
    assert outbox.list()[1].properties == {"k": "v"}
    outbox.prune(keep=0)
    assert [m.text for m in outbox.list()] == ["two"]  # only delivered ones are forgotten


def test_inbox_is_idempotent_on_message_id(tmp_path):
    inbox = Inbox(Database(tmp_path / "m.sqlite3"))
    stored = inbox.add("mid-1", "hello", {"a": "1", "flag": None})
    assert stored is not None and inbox.add("mid-1", "hello", {}) is None
    assert inbox.count() == 1 and inbox.unread_count() == 1
    inbox.mark_read(stored.id)
    assert inbox.unread_count() == 0 and inbox.list()[0].read
    assert inbox.list()[0].properties == {"a": "1", "flag": None}


def test_mark_all_read_reaches_every_message_up_to_the_newest_seen(tmp_path):
    inbox = Inbox(Database(tmp_path / "m.sqlite3"))
    ids = [inbox.add(f"mid-{n}", f"m{n}", {}).id for n in range(1, 1501)]  # more than the window loads
    later = inbox.add("mid-later", "arrived after the click", {})
    inbox.mark_all_read(up_to=ids[-1])
    assert inbox.unread_count() == 1 and not inbox.list(1)[0].read and inbox.list(1)[0].id == later.id


def test_unread_count_before_a_row_counts_only_older_unread_messages(tmp_path):
    inbox = Inbox(Database(tmp_path / "m.sqlite3"))
    ids = [inbox.add(f"mid-{n}", f"m{n}", {}).id for n in range(10)]
    inbox.mark_read(ids[1])
    assert inbox.unread_count(before=ids[4]) == 3  # ids[0], ids[2], ids[3]
    assert inbox.unread_count(before=ids[0]) == 0 and inbox.unread_count() == 9


def test_store_is_safe_across_threads(tmp_path):
    outbox = Outbox(Database(tmp_path / "m.sqlite3"))
    threads = [threading.Thread(target=lambda: [outbox.add("x") for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outbox.queued_count() == 100


def test_method_registry():
    registry = MethodRegistry()
    registry.register("ping", lambda p: (200, {"pong": p}))
    registry.register("boom", lambda p: 1 / 0)
    assert registry.invoke("ping", 1) == (200, {"pong": 1})
    assert registry.invoke("nope", None)[0] == 404
    assert registry.invoke("boom", None)[0] == 500


def test_twin_merges_desired_and_acknowledges():
    twin = Twin()
    seen = []
    twin.on_desired(seen.append)
    assert twin.apply({"interval": 10, "mode": "a", "$version": 1}, full=True) == {
        "desired_applied_version": 1
    }
    assert twin.apply({"mode": None, "$version": 2}) == {"desired_applied_version": 2}
    assert seen == [{"interval": 10, "mode": "a"}, {"interval": 10}]


def test_instance_lock_and_stale_pid(tmp_path):
    lock_file = tmp_path / "instance.lock"
    assert running_pid(lock_file) is None
    lock_file.write_text("999999")  # stale pid left by a crash: nobody holds the lock
    assert running_pid(lock_file) is None
    lock = InstanceLock(lock_file)
    assert lock.acquire()
    import os

    assert running_pid(lock_file) == os.getpid()
    assert not InstanceLock(lock_file).acquire()
    lock.release()
    assert running_pid(lock_file) is None


def test_status_json_round_trip():
    now = datetime.now(UTC)
    status = DeviceStatus(
        state=ConnectionState.CONNECTED,
        retry_at=now + timedelta(seconds=5),
        registration_id="ca-1",
        certificate_not_after=now,
        outbox=3,
    )
    data = status.to_json_dict()
    assert data["state"] == "connected" and data["outbox"] == 3
    assert DeviceStatus.from_json_dict(data) == status


def test_corrupt_database_is_moved_aside(tmp_path):
    path = tmp_path / "m.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    outbox = Outbox(Database(path))
    outbox.add("works")
    assert outbox.queued_count() == 1
    assert len(list(tmp_path.glob("m.sqlite3.corrupt-*"))) == 1


def test_unopenable_database_is_a_clear_error_and_not_moved_aside(tmp_path):
    path = tmp_path / "m.sqlite3"
    path.mkdir()  # sqlite cannot open it: an access problem, not a corrupt file
    with pytest.raises(StoreUnavailable, match="cannot be opened") as info:
        Database(path)
    assert "\n" not in str(info.value)
    assert path.is_dir() and not list(tmp_path.glob("m.sqlite3.corrupt-*"))


def test_private_dir_tightens_the_apps_own_directories_only(tmp_path, monkeypatch):
    import os
    import stat

    from client_app.device.paths import private_dir, private_file

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(private_dir(tmp_path / "new" / "data")) == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    assert mode(private_dir(existing)) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: --log-dir /tmp must not lock everyone else out
    assert mode(private_dir(shared)) == 0o1777
    monkeypatch.setenv("HOME", str(existing.parent / "home"))
    home = private_dir(existing.parent / "home")
    os.chmod(home, 0o755)
    assert mode(private_dir(home)) == 0o755
    database = private_file(tmp_path / "new" / "data" / "messages.sqlite3")
    assert mode(database) == 0o600 and database.read_bytes() == b""
