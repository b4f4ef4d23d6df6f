"""Widget-level behaviour: DeviceStatus values and messages are the widgets' input, fed directly."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication, QMessageBox, QPushButton, QSystemTrayIcon

from client_app.device.runtime import ConnectionState, FirstRunStep
from client_app.device.store import InboxMessage, OutboxMessage
from client_app.gui.bridge import MAX_MESSAGES_PER_TURN, RuntimeBridge
from client_app.gui.first_run import DONE, FAILED, PENDING, RUNNING
from client_app.gui.main_window import parse_properties
from client_app.gui.models import InboxModel, OutboxModel
from client_app.gui.status_text import BLOCKED_DETAIL, Tone, describe
from client_app.gui.tray import StatusTray
from tests.gui.conftest import make_status

S = ConnectionState


def inbox_message(n: int, text: str | None = None, **fields) -> InboxMessage:
    return InboxMessage(
        id=n,
        message_id=f"m-{n}",
        text=text if text is not None else f"message {n}",
        properties=fields.pop("properties", {}),
        received_at=datetime.now(UTC),
        **fields,
    )


@pytest.mark.parametrize(
    ("state", "headline", "tone", "retry", "reconnect"),
    [
        (S.NOT_PROVISIONED, "Not set up yet", Tone.BUSY, False, False),
        (S.CREATING_IDENTITY, "Creating this computer's identity", Tone.BUSY, False, False),
        (S.PROVISIONING, "Registering with the provisioning service", Tone.BUSY, False, False),
        (S.CONNECTING, "Connecting to hub.example", Tone.BUSY, False, False),
        (S.CONNECTED, "Connected to hub.example", Tone.OK, False, False),
        (S.RECONNECTING, "Offline, reconnecting", Tone.WAITING, False, True),
        (S.BLOCKED, "Blocked by the cloud", Tone.PROBLEM, True, False),
        (S.ERROR, "Not connected: something needs attention", Tone.PROBLEM, True, False),
        (S.STOPPED, "Stopped", Tone.OFF, False, False),
    ],
)
def test_window_shows_every_state(window, state, headline, tone, retry, reconnect):
    window.show()
    window.show_status(
        make_status(state, assigned_hub="hub.example", message="Plain words here.", registration_id="desk-1")
    )
    banner = window.banner
    assert banner.headline.text() == headline
    assert banner.detail.text() == ("Plain words here." if state is not S.BLOCKED else BLOCKED_DETAIL)
    assert banner.property("tone") == tone.value
    assert banner.retry_button.isVisible() is retry
    assert banner.reconnect_button.isVisible() is reconnect
    assert not window.first_run.isVisible()  # not the first run: the banner alone speaks


def test_reconnecting_counts_down(window, qtbot):
    window.show()
    retry_at = datetime.now(UTC) + timedelta(seconds=30)
    window.show_status(make_status(S.RECONNECTING, retry_at=retry_at))
    assert window.banner.headline.text() in ("Offline, reconnecting in 30 s", "Offline, reconnecting in 29 s")
    later = describe(make_status(S.RECONNECTING, retry_at=retry_at), now=retry_at - timedelta(seconds=4.2))
    assert later.headline == "Offline, reconnecting in 5 s"
    assert window.banner._countdown.isActive()
    with qtbot.waitSignal(window.reconnectRequested, timeout=1000):
        qtbot.mouseClick(window.banner.reconnect_button, Qt.MouseButton.LeftButton)
    window.show_status(make_status(S.CONNECTED))
    assert not window.banner._countdown.isActive()


def test_first_run_progress_and_failure_with_retry(window, qtbot):
    window.show()
    window.begin_setup()
    window.show_status(make_status(S.NOT_PROVISIONED))
    panel = window.first_run
    assert panel.isVisible()
    assert all(panel.outcome(step) == PENDING for step in FirstRunStep)
    window.step_changed("create_key", RUNNING, "")
    assert panel.outcome(FirstRunStep.KEY) == RUNNING
    window.step_changed("create_key", DONE, "")
    window.step_changed("issue_certificate", DONE, "CN=desk-1")
    window.step_changed("store_in_keyring", RUNNING, "")
    window.step_changed(
        "store_in_keyring", FAILED, "The system keyring is locked. Unlock it and press Retry."
    )
    assert panel.outcome(FirstRunStep.KEYRING) == FAILED
    assert panel.failure_box.isVisible()
    text = panel.failure_text.text()
    assert "Storing it in the system keyring did not work." in text
    assert "The system keyring is locked" in text
    assert "Traceback" not in text
    with qtbot.waitSignal(window.retryRequested, timeout=1000):
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    assert not panel.retry_button.isEnabled()  # one retry at a time
    # The retry starts the step again: the failure goes away, later steps are pending.
    window.step_changed("store_in_keyring", RUNNING, "")
    assert not panel.failure_box.isVisible()
    assert panel.outcome(FirstRunStep.REGISTER) == PENDING
    for step in ("store_in_keyring", "register", "connect"):
        window.step_changed(step, DONE, "")
    assert panel.all_done()
    window.show_status(make_status(S.CONNECTED))
    qtbot.waitUntil(lambda: not panel.isVisible(), timeout=5000)


def test_failure_before_any_identity_is_shown_as_setup_failure(window):
    window.show()
    window.begin_setup()
    window.show_status(
        make_status(S.ERROR, message="No secure system keyring is available. Then press Retry.")
    )
    assert window.first_run.isVisible() and window.first_run.failure_box.isVisible()
    assert window.first_run.failure_text.text().startswith("No secure system keyring")
    assert not window.banner.retry_button.isVisible()  # one Retry: the one next to the explanation


SDK_CHAIN = (
    "ClientError: Unexpected failure <- ProtocolProxyError: Unexpected error <- "
    "ProxyConnectionError: [Errno 111] Connection refused"
)


def test_later_launches_show_no_setup_steps_and_no_exception_chain(window):
    window.show()  # an identity exists: the app did not call begin_setup()
    window.show_status(make_status(S.NOT_PROVISIONED, message="Not started yet."))
    window.show_status(make_status(S.CONNECTING, assigned_hub="hub.example"))
    window.step_changed("connect", RUNNING, "hub.example")
    window.step_changed("connect", FAILED, SDK_CHAIN)
    window.show_status(make_status(S.ERROR, message="The cloud could not be reached. Then press Retry."))
    assert not window.first_run.isVisible()
    assert window.banner.retry_button.isVisible()
    retry_buttons = [b for b in window.findChildren(QPushButton) if b.text() == "Retry" and b.isVisible()]
    assert retry_buttons == [window.banner.retry_button]
    assert "Error" not in window.banner.detail.text()


def test_blocked_is_said_once_with_the_device_id_to_copy(window, qtbot):
    window.show()
    window.begin_setup()
    window.step_changed("register", FAILED, "The provisioning service refused this device (status 200).")
    window.show_status(
        make_status(S.BLOCKED, message="Refused (status 200). Then press Retry.", registration_id="desk-7")
    )
    banner = window.banner
    assert banner.detail.text() == BLOCKED_DETAIL
    assert not window.first_run.failure_box.isVisible()
    shown_retries = [b for b in window.findChildren(QPushButton) if b.text() == "Retry" and b.isVisible()]
    assert shown_retries == [banner.retry_button]
    assert not any(b.isVisible() for b in window.findChildren(QPushButton) if b.text() == "Settings…")
    assert banner.device_id.text() == "Device ID: desk-7"
    qtbot.mouseClick(banner.copy_id_button, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text() == "desk-7"
    assert window.send_hint.text().startswith("Blocked: messages are kept")
    window.show_status(make_status(S.CONNECTED, registration_id="desk-7"))
    assert not banner.id_row.isVisible()


def test_first_run_step_details_are_plain_words(window):
    window.show()
    window.begin_setup()
    window.step_changed("create_key", DONE, "ca-63b5d0e1f2a3")
    window.step_changed("store_in_keyring", DONE, "keyring.backends.SecretService.Keyring")
    window.step_changed("register", RUNNING, "global.azure-devices-provisioning.net")
    window.step_changed("register", DONE, "hub.example")
    window.step_changed("connect", FAILED, SDK_CHAIN)
    details = [label.text() for label in window.first_run._details.values()]
    keyring = "In the system keyring (GNOME Keyring or KWallet)"
    assert details[:4] == ["", "", keyring, "Assigned to hub.example"]
    failure = window.first_run.failure_text.text()
    assert "<-" not in failure and "Errno" not in failure
    assert "The cloud could not be reached" in failure
    assert not window.first_run.settings_button.isVisible()


def test_failure_without_detail_gets_advice(window):
    window.step_changed("register", FAILED, "")
    assert "provisioning service could not be reached" in window.first_run.failure_text.text()


def test_connect_step_alone_does_not_open_first_run(window):
    window.show()
    window.show_status(make_status(S.CONNECTED))
    window.step_changed("connect", RUNNING, "")
    window.step_changed("connect", DONE, "")
    # A later reconnect reports the connect step; only setup steps open the list.
    window.first_run.hide()
    window.step_changed("connect", RUNNING, "")
    assert not window.first_run.isVisible()


def test_inbox_inserts_a_burst_in_one_batch_and_marks_read(window, qtbot):
    window.show()
    model = window.inbox_model
    inserts = []
    model.rowsInserted.connect(lambda _parent, first, last: inserts.append((first, last)))
    window.add_messages([inbox_message(n) for n in range(1, 1001)])
    assert inserts == [(0, 999)]
    assert model.rowCount() == 1000
    assert model.index(0, InboxModel.TEXT).data() == "message 1000"  # newest first
    assert model.index(0, InboxModel.UNREAD).data() == "●"
    assert window.inbox_box.title() == "Messages from the cloud (1000 unread)"
    # Duplicates (initial load racing a live delivery) are dropped.
    assert window.add_messages([inbox_message(1000)]) == 0
    with qtbot.waitSignal(window.readChanged, timeout=1000) as read:
        rect = window.inbox_view.visualRect(window.inbox_box.proxy.index(0, InboxModel.TEXT))
        qtbot.mouseClick(window.inbox_view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert [m.id for m in read.args[0]] == [1000] and read.args[1] is True
    assert model.index(0, InboxModel.UNREAD).data() == ""
    assert window.windowTitle() == "client-app (999 unread)"


def test_inbox_shows_time_text_and_properties(window):
    window.add_messages([inbox_message(7, "two\nlines", properties={"b": "2", "a": "1", "flag": None})])
    model = window.inbox_model
    assert model.index(0, InboxModel.TEXT).data() == "two ⏎ lines"
    assert model.index(0, InboxModel.TEXT).data(Qt.ItemDataRole.ToolTipRole) == "two\nlines"
    assert model.index(0, InboxModel.PROPERTIES).data() == "a=1, b=2, flag"
    assert model.index(0, InboxModel.TIME).data().count(":") == 2


def test_send_box_and_outbox_states(window, qtbot):
    window.show()
    window.show_status(make_status(S.RECONNECTING))
    assert "Offline" in window.send_hint.text()
    qtbot.keyClicks(window.message_edit, "hello backend")
    qtbot.keyClicks(window.properties_edit, "kind=greeting, n=1")
    with qtbot.waitSignal(window.sendRequested, timeout=1000) as sent:
        qtbot.keyClick(window.message_edit, Qt.Key.Key_Return)
    assert sent.args == ["hello backend", {"kind": "greeting", "n": "1"}]
    assert window.message_edit.text() == "" and window.properties_edit.text() == ""
    now = datetime.now(UTC)
    window.set_outbox(
        [
            OutboxMessage(1, "a", "first", {}, now, "delivered", now),
            OutboxMessage(2, "b", "hello backend", {"kind": "greeting", "n": "1"}, now, "queued"),
        ]
    )
    model = window.outbox_model
    assert model.headerData(OutboxModel.PROPERTIES, Qt.Orientation.Horizontal) == "Properties"
    assert model.index(0, OutboxModel.TEXT).data() == "hello backend"
    assert model.index(0, OutboxModel.PROPERTIES).data() == "kind=greeting, n=1"
    assert model.index(0, OutboxModel.STATE).data() == "Queued (offline)"
    assert model.index(0, OutboxModel.TIME).data() == ""  # not sent yet: no "Sent" time
    assert model.index(0, OutboxModel.WRITTEN).data()
    assert model.index(1, OutboxModel.STATE).data() == "Delivered"
    assert model.index(1, OutboxModel.TIME).data()


def test_return_in_the_properties_field_sends_too_and_fields_have_names(window, qtbot):
    window.message_edit.setText("hi")
    window.properties_edit.setText("a=1")
    with qtbot.waitSignal(window.sendRequested, timeout=1000) as sent:
        qtbot.keyClick(window.properties_edit, Qt.Key.Key_Return)
    assert sent.args == ["hi", {"a": "1"}]
    # Only placeholders are visible: the accessible names are what a screen reader announces.
    assert window.message_edit.accessibleName() == "Message to send"
    assert window.properties_edit.accessibleName().startswith("Properties")


def test_send_refuses_empty_text_and_bad_properties(window, qtbot):
    with qtbot.assertNotEmitted(window.sendRequested):
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
        assert window.send_hint.text() == "Write a message first."
        window.message_edit.setText("x")
        window.properties_edit.setText("novalue")
        qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    assert "is not a property" in window.send_hint.text()
    assert window.message_edit.text() == "x"  # nothing lost
    assert parse_properties(" a = 1 ,, b=") == {"a": "1", "b": ""}


def test_closing_without_a_tray_quits(window, qtbot):
    window.show()
    window.keep_running_in_tray = False
    with qtbot.waitSignal(window.quitRequested, timeout=1000):
        window.close()


def test_closing_with_a_tray_hides_to_it(window, qtbot):
    window.show()
    window.keep_running_in_tray = True
    with qtbot.waitSignal(window.hiddenToTray, timeout=1000), qtbot.assertNotEmitted(window.quitRequested):
        window.close()
    assert not window.isVisible()
    window.bring_forward()
    assert window.isVisible()


def test_tray_icon_follows_state(qtbot):
    tray = StatusTray()
    try:
        images = {}
        for state in (S.CONNECTED, S.RECONNECTING, S.ERROR, S.PROVISIONING):
            tray.show_status(make_status(state, outbox=2, inbox=5, assigned_hub="hub.example"))
            images[state] = tray.icon.icon().pixmap(22, 22).toImage()
            assert (
                tray.status_action.text() == describe(make_status(state, assigned_hub="hub.example")).headline
            )
        assert len({img.pixelColor(11, 4).name() for img in images.values()}) == 4
        tip = tray.icon.toolTip()
        assert "5 message(s) received" in tip and "2 message(s) waiting to be sent" in tip
        with qtbot.waitSignal(tray.showWindowRequested, timeout=1000):
            tray.icon.activated.emit(QSystemTrayIcon.ActivationReason.Trigger)
    finally:
        tray.dispose()
        tray.deleteLater()


def test_bridge_coalesces_core_events_into_few_gui_signals(qtbot):
    import threading

    bridge = RuntimeBridge()
    batches, statuses = [], []
    bridge.messagesArrived.connect(batches.append)
    bridge.statusChanged.connect(statuses.append)

    def core_thread():
        for n in range(1, 501):
            bridge.message_received(inbox_message(n))
            bridge.status_changed(make_status(S.CONNECTED, inbox=n))

    worker = threading.Thread(target=core_thread)
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: sum(len(b) for b in batches) == 500, timeout=5000)
    qtbot.wait(20)
    assert len(batches) < 50 and len(statuses) < 50
    assert statuses[-1].inbox == 500  # the newest status always arrives
    assert [m.id for b in batches for m in b] == list(range(1, 501))
    bridge.shutdown()
    bridge.deleteLater()


def test_bridge_hands_a_backlog_over_a_bounded_batch_per_turn(qtbot):
    import threading

    bridge = RuntimeBridge()
    batches = []
    bridge.messagesArrived.connect(batches.append)
    # All 350 are waiting before the GUI thread gets to them (a backlog after a stall).
    worker = threading.Thread(
        target=lambda: [bridge.message_received(inbox_message(n)) for n in range(1, 351)]
    )
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: sum(len(b) for b in batches) == 350, timeout=5000)
    assert [len(b) for b in batches] == [MAX_MESSAGES_PER_TURN] * 3 + [50]
    assert [m.id for b in batches for m in b] == list(range(1, 351))
    bridge.shutdown()
    bridge.deleteLater()


def test_the_kept_inbox_is_shown_a_bounded_batch_per_turn(window, qtbot):
    from client_app.device.config import DeviceConfig
    from client_app.gui.app import AppController

    controller = AppController(DeviceConfig(), window, notify=False)
    inserts = []
    window.inbox_model.rowsInserted.connect(lambda _parent, first, last: inserts.append((first, last)))
    kept = [inbox_message(n) for n in range(250, 0, -1)]  # as the core lists it: newest first
    controller._core_started(None, kept, 0, [], make_status(S.CONNECTED))
    assert window.inbox_model.rowCount() == MAX_MESSAGES_PER_TURN  # the newest first, at once
    qtbot.waitUntil(lambda: window.inbox_model.rowCount() == 250, timeout=2000)
    assert inserts == [(0, 99), (100, 199), (200, 249)]  # each older batch below: nothing above moves
    assert window.inbox_model.index(0, InboxModel.TEXT).data() == "message 250"
    assert window.inbox_model.index(249, InboxModel.TEXT).data() == "message 1"
    controller.bridge.shutdown()
    controller.deleteLater()


def test_a_first_run_starts_the_core_once_its_steps_are_on_screen(window, qtbot, tmp_path):
    """Starting the core (imports, a process to spawn) must not compete with the repaint showing the list."""
    import sys

    from PySide6.QtCore import QEvent, QObject

    from client_app.device.config import DeviceConfig
    from client_app.gui.app import GUI_SWITCH_INTERVAL, AppController

    painted, started = [], []

    class PaintWatch(QObject):
        def eventFilter(self, watched, event):
            if event.type() == QEvent.Type.Paint:
                painted.append(watched)
            return False

    watch = PaintWatch()
    window.first_run.installEventFilter(watch)
    controller = AppController(DeviceConfig(data_dir=tmp_path), window, notify=False)
    controller.bridge.run_command = lambda _what, _call: started.append(bool(painted))
    window.show()
    switch_interval = sys.getswitchinterval()
    controller.start()
    assert started == [] and window.first_run.isVisible()
    qtbot.waitUntil(lambda: bool(started), timeout=2000)
    assert started == [True]
    assert sys.getswitchinterval() == GUI_SWITCH_INTERVAL  # the window's threads yield the lock sooner
    controller.shutdown()
    assert sys.getswitchinterval() == switch_interval
    window.first_run.removeEventFilter(watch)
    controller.deleteLater()


def _cell_wrappers() -> list:
    """The Python wrappers alive for QStandardItems that Qt made (not ones Python created)."""
    from PySide6.QtGui import QStandardItem
    from shiboken6 import Shiboken

    made_by_qt = (w for w in Shiboken.getAllValidWrappers() if not Shiboken.createdByPython(w))
    return [w for w in made_by_qt if isinstance(w, QStandardItem)]


def test_no_python_wrapper_outlives_an_inbox_cell(qtbot):
    """PySide keeps the wrapper of an item given to setItem() registered under its address after the model
    deletes the item (a cell replaced on Mark all read, a row trimmed), still claiming a live object, and
    hands it out for the next C++ object made there: a QHeaderView came back as a QStandardItem, and the
    suite died of a segfault in a later test's teardown. The inbox's cells never get a wrapper."""
    from shiboken6 import Shiboken

    before = {id(w) for w in _cell_wrappers()}
    model = InboxModel(max_rows=300)
    model.add_messages([inbox_message(n) for n in range(1, 401)])  # the oldest 100 trimmed
    model.mark_all_read()  # every row's cells restyled, a turn's worth at a time
    qtbot.waitUntil(lambda: model.index(299, InboxModel.UNREAD).data() == "", timeout=5000)
    model.set_read([0, 1], False)
    wrappers = [w for w in _cell_wrappers() if id(w) not in before]
    cells = {
        Shiboken.getCppPointer(model.item(row, column))[0]
        for row in range(model.rowCount())
        for column in range(model.columnCount())
    }
    assert [w for w in wrappers if Shiboken.getCppPointer(w)[0] not in cells] == []


def test_inbox_places_older_messages_below_without_a_reset(window):
    model = window.inbox_model
    window.add_messages([inbox_message(n) for n in (10, 11, 12)])
    changes = []
    model.modelReset.connect(lambda: changes.append("reset"))
    model.rowsInserted.connect(lambda _parent, first, last: changes.append((first, last)))
    # A live message (13) and the initial load (1..9, 5 twice) racing it, in any order.
    assert window.add_messages([inbox_message(n) for n in (5, 13, 2, 9, 1, 5, 3, 4, 6, 7, 8)]) == 10
    assert changes == [(3, 11), (0, 0)]  # one insert per place, the lower first; never a reset
    texts = [model.index(row, InboxModel.TEXT).data() for row in range(model.rowCount())]
    assert texts == [f"message {n}" for n in range(13, 0, -1)]
    assert model.unread_count() == 13 and model.row_of(9) == 4 and model.row_of(99) is None


def test_mark_all_read_counts_at_once_and_restyles_a_bounded_batch_per_turn(window, qtbot):
    from client_app.gui.models import ROWS_RESTYLED_PER_TURN

    model = window.inbox_model
    total = ROWS_RESTYLED_PER_TURN * 2 + 50
    window.add_messages([inbox_message(n) for n in range(1, total + 1)])
    window.inbox_box.mark_all_read()
    assert model.unread_count() == 0 and window.windowTitle() == "client-app"

    def markers() -> list[str]:
        return [model.index(row, InboxModel.UNREAD).data() for row in range(total)]

    assert markers() == [""] * ROWS_RESTYLED_PER_TURN + ["●"] * (total - ROWS_RESTYLED_PER_TURN)  # top first
    window.add_messages([inbox_message(total + 1)])  # rows move meanwhile: the rest is found by id
    qtbot.waitUntil(lambda: model.index(total, InboxModel.UNREAD).data() == "", timeout=2000)
    assert [model.index(row, InboxModel.UNREAD).data() for row in range(total + 1)] == ["●"] + [""] * total
    assert model.index(total, InboxModel.TEXT).data(Qt.ItemDataRole.FontRole) is None  # no longer bold


def test_inbox_drops_the_oldest_rows_beyond_its_limit():
    model = InboxModel(max_rows=5)
    model.add_messages([inbox_message(n) for n in range(1, 8)])
    model.set_read([0], True)
    assert [model.message_at(row).id for row in range(model.rowCount())] == [7, 6, 5, 4, 3]
    assert model.unread_count() == 4
    model.add_messages([inbox_message(2)])  # dropped before: older than everything kept, so it stays out
    assert model.rowCount() == 5 and model.unread_count() == 4


def test_inbox_shows_yesterdays_messages_with_their_date_after_midnight(window, monkeypatch):
    from client_app.gui import models

    received = datetime.now(UTC) - timedelta(days=1)

    class Yesterday(datetime):
        @classmethod
        def now(cls, tz=None):
            return received.astimezone(tz)

    monkeypatch.setattr(models, "datetime", Yesterday)
    window.add_messages([dataclasses.replace(inbox_message(1), received_at=received)])
    assert window.inbox_model.index(0, InboxModel.TIME).data().count(":") == 2  # a time: it is still that day
    monkeypatch.undo()
    # a message in the first second of the new day lands on top before the timer fires
    window.add_messages([dataclasses.replace(inbox_message(2), received_at=datetime.now(UTC))])
    window.inbox_model._day_timer.timeout.emit()  # midnight
    assert window.inbox_model.index(1, InboxModel.TIME).data() == received.astimezone().strftime(
        "%Y-%m-%d %H:%M"
    )
    assert window.inbox_model.index(0, InboxModel.TIME).data().count(":") == 2  # today's keeps its time


def test_bridge_reports_failed_commands_in_plain_words(qtbot):
    bridge = RuntimeBridge()

    def broken():
        raise OSError("disk full")

    with qtbot.waitSignal(bridge.commandFailed, timeout=3000) as failed:
        bridge.run_command("Sending the message", broken)
    assert failed.args == ["Sending the message", "disk full"]
    bridge.shutdown()
    bridge.deleteLater()


def test_error_reporter_shows_plain_words_never_a_traceback(qtbot, window, tmp_path, caplog):
    import sys

    from client_app.gui.errors import ErrorReporter

    reporter = ErrorReporter(lambda: window, tmp_path)
    before = sys.excepthook
    reporter.install()
    try:
        try:
            raise ValueError("boom in a slot")
        except ValueError:
            with qtbot.waitSignal(reporter.errorShown, timeout=2000) as shown:
                sys.excepthook(*sys.exc_info())
        assert "Something went wrong" in shown.args[0]
        assert "Traceback" not in reporter.box.text() and "boom" not in reporter.box.text()
        assert any("boom in a slot" in (r.exc_text or "") or r.exc_info for r in caplog.records)
        reporter.box.done(0)
    finally:
        reporter.uninstall()
    assert sys.excepthook is before
    QApplication.processEvents()


def test_reset_identity_needs_confirmation(qtbot):
    from client_app.gui.support_panel import SupportPanel

    panel = SupportPanel()
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.assertNotEmitted(panel.resetRequested):
        panel.reset_button.click()
        box = panel.reset_confirmation
        assert box is not None and box.isVisible()
        box.button(QMessageBox.StandardButton.Cancel).click()
    with qtbot.waitSignal(panel.resetRequested, timeout=1000):
        panel.reset_button.click()
        panel.reset_confirmation.button(QMessageBox.StandardButton.Reset).click()


# Void Qt calls, emits and disconnects, each of which PySide6 6.12.0 paid for with a reference to
# None, True or False (the interpreter aborted long before the end): guards the version pin in pyproject.
_SINGLETON_DRAIN = """
import client_app.gui
from PySide6.QtCore import QObject, Signal

class Probe(QObject):
    fired = Signal()

probe = Probe()
slot = probe.deleteLater
for _ in range(30_000):
    probe.setObjectName("drain")
    probe.fired.emit()
    probe.fired.connect(slot)
    probe.fired.disconnect(slot)
print("alive")
"""


def test_many_qt_calls_keep_the_interpreter_alive():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _SINGLETON_DRAIN], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "alive"), result.stderr[-500:]


def test_connected_banner_does_not_repeat_itself(window):
    status = make_status(
        S.CONNECTED,
        assigned_hub="hub.example",
        message="Connected to hub.example.",
        last_connected=datetime.now(UTC),
    )
    window.show_status(status)
    assert window.banner.headline.text() == "Connected to hub.example"
    assert window.banner.detail.text().startswith("Connected since ")


def test_keyboard_tab_leaves_tables_and_arrows_do_not_mark_read(window, qtbot):
    from client_app.gui.style import install_style

    install_style(QApplication.instance())
    window.show()
    window.activateWindow()
    window.add_messages([inbox_message(n) for n in range(1, 201)])
    view = window.inbox_view
    view.setFocus(Qt.FocusReason.TabFocusReason)
    view.setCurrentIndex(window.inbox_box.proxy.index(0, InboxModel.TEXT))
    read = []
    window.readChanged.connect(lambda messages, _read: read.extend(messages))
    for _ in range(5):
        qtbot.keyClick(view, Qt.Key.Key_Down)
    assert view.currentIndex().row() == 5
    assert read == [] and window.inbox_model.unread_count() == 200  # passing over is not reading
    qtbot.keyClick(view, Qt.Key.Key_Tab)
    assert not view.hasFocus()  # one Tab leaves a 200-row table
    # Enter opens the current message: that is reading it.
    view.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.keyClick(view, Qt.Key.Key_Return)
    assert [m.id for m in read] == [195]
    window.message_dialog.close()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    # Tab reaches Send, which then shows a focus ring.
    window.message_edit.setFocus(Qt.FocusReason.TabFocusReason)
    unfocused = window.send_button.grab().toImage()
    qtbot.keyClick(window.message_edit, Qt.Key.Key_Tab)
    assert window.send_button.hasFocus()
    assert window.send_button.grab().toImage() != unfocused


def top_text(view) -> str:
    return view.indexAt(QPoint(view.columnViewportPosition(InboxModel.TEXT) + 2, 2)).data()


def test_inbox_keeps_the_reader_in_place_during_a_burst(window, qtbot):
    window.show()
    window.add_messages([inbox_message(n) for n in range(1, 201)])
    view = window.inbox_view
    bar = view.verticalScrollBar()
    view.scrollTo(window.inbox_box.proxy.index(130, InboxModel.TEXT), view.ScrollHint.PositionAtTop)
    qtbot.wait(10)
    top_before = top_text(view)
    assert top_before == "message 70"
    for start in range(201, 301, 10):  # a burst arrives in batches
        window.add_messages([inbox_message(n) for n in range(start, start + 10)])
        qtbot.wait(5)
    assert top_text(view) == "message 70"
    button = window.inbox_box.new_button
    assert button.isVisible() and button.text() == "100 new ↑"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert bar.value() == 0 and not button.isVisible()
    assert top_text(view) == "message 300"
    # At the top the reader sees the newest as it comes, with no button.
    window.add_messages([inbox_message(301)])
    assert bar.value() == 0 and not button.isVisible()


def test_inbox_filter_mark_all_read_and_context_menu(window, qtbot):
    window.show()
    window.add_messages([inbox_message(1, "alpha", properties={"k": "v"}), inbox_message(2, "beta")])
    panel = window.inbox_box
    changes = []
    window.readChanged.connect(lambda messages, read: changes.append(([m.id for m in messages], read)))
    qtbot.keyClicks(panel.filter_edit, "ALP")
    assert panel.proxy.rowCount() == 1
    assert panel.proxy.index(0, InboxModel.TEXT).data() == "alpha"
    menu = panel.context_menu(panel.proxy.index(0, InboxModel.TEXT))
    actions = {a.text(): a for a in menu.actions() if a.text()}
    actions["Copy message"].trigger()
    assert QApplication.clipboard().text() == "alpha"
    actions["Copy properties"].trigger()
    assert QApplication.clipboard().text() == "k=v"
    actions["Mark as read"].trigger()
    assert changes == [([1], True)]
    menu = panel.context_menu(panel.proxy.index(0, InboxModel.TEXT))
    next(a for a in menu.actions() if a.text() == "Mark as unread").trigger()
    assert changes[-1] == ([1], False)
    panel.filter_edit.clear()
    assert panel.proxy.rowCount() == 2
    all_read = []
    window.allReadRequested.connect(all_read.append)
    qtbot.mouseClick(panel.mark_all_button, Qt.MouseButton.LeftButton)
    assert all_read == [2]  # one number for the core: every message up to the newest shown
    assert window.inbox_model.unread_count() == 0 and not panel.mark_all_button.isEnabled()
    assert window.windowTitle() == "client-app"


def test_mark_all_read_stays_on_while_the_core_has_unread_messages_not_loaded(window, qtbot):
    """The window loads the newest messages only: older unread ones are still "all"."""
    window.add_messages([inbox_message(n, read=True) for n in range(1001, 1003)])
    panel = window.inbox_box
    assert not panel.mark_all_button.isEnabled()
    panel.set_older_unread(1000, before=1001)  # the core counts those older than the history it listed
    assert panel.mark_all_button.isEnabled()
    with qtbot.waitSignal(window.allReadRequested) as asked:
        qtbot.mouseClick(panel.mark_all_button, Qt.MouseButton.LeftButton)
    assert asked.args == [1002] and not panel.mark_all_button.isEnabled()


def test_the_title_and_tray_count_unread_messages_older_than_those_loaded(window, qtbot):
    """The core counts the unread messages older than the history it listed; those the window already holds
    are not counted twice; unread rows dropped past the row limit still count; Mark all read ends them all."""
    window.add_messages([inbox_message(n, read=n % 2 == 0) for n in range(101, 111)])  # 5 unread
    unread = []
    window.inbox_box.unreadChanged.connect(unread.append)
    window.inbox_box.set_older_unread(40, before=106)  # 101, 103 and 105 are held here already
    assert window.windowTitle() == "client-app (42 unread)" and unread[-1] == 42
    window.inbox_model.mark_read(window.inbox_model.row_of(109))
    window.inbox_box.refresh()
    assert window.windowTitle() == "client-app (41 unread)"
    qtbot.mouseClick(window.inbox_box.mark_all_button, Qt.MouseButton.LeftButton)
    assert window.windowTitle() == "client-app" and unread[-1] == 0


def test_unread_rows_the_inbox_drops_still_count_as_unread():
    model = InboxModel(max_rows=5)
    model.add_messages([inbox_message(n) for n in range(1, 9)])  # 3 unread dropped
    assert model.rowCount() == 5 and model.unread_count() == 5 and model.older_unread == 3


def test_the_inbox_forgets_read_changes_of_rows_it_dropped():
    model = InboxModel(max_rows=5)
    for n in range(1, 51):
        model.add_messages([inbox_message(n)])
        model.mark_read(0)
    assert model.unread_count() == 0 and len(model._read) <= 5  # bounded by the rows shown


def test_double_click_shows_the_whole_message(window, qtbot):
    window.show()
    window.add_messages([inbox_message(3, "line one\nline two", properties={"k": "v"})])
    window.show_message_details(window.inbox_model.index(0, InboxModel.TEXT))
    dialog = window.message_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.body.toPlainText() == "line one\nline two"
    assert "Properties: k=v" in dialog.meta.text()
    dialog.close()


def test_a_burst_of_messages_is_one_notification(qtbot, window, monkeypatch):
    from client_app.gui import notifications
    from client_app.gui.notifications import MessageNotifier

    monkeypatch.setattr(notifications, "MIN_SECONDS_BETWEEN", 0.3)
    notifier = MessageNotifier(None, window)
    shown = []
    notifier.notified.connect(lambda title, body: shown.append((title, body)))
    notifier.messages_arrived([inbox_message(1, "first")])
    assert shown == [("New message from the cloud", "first")]
    for n in range(2, 40):
        notifier.messages_arrived([inbox_message(n)])
    assert len(shown) == 1  # held back
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=3000)
    assert shown[1] == ("38 new messages from the cloud", "Latest: message 39")
    notifier.deleteLater()
