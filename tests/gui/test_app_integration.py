"""The real app: DeviceRuntime + local cloud + private Secret Service, driven through its widgets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.device.runtime import ConnectionState, FirstRunStep
from client_app.gui.app import INITIAL_INBOX_ROWS
from client_app.gui.first_run import DONE, FAILED
from client_app.gui.main_window import MainWindow
from client_app.gui.models import InboxModel, OutboxModel
from client_app.logsetup import setup_logging
from client_app.pki import ISSUER_BUNDLE_PASSPHRASE
from tests.fixtures.cloud import api_client
from tests.fixtures.secret_service import KEYRING_PASSWORD, _start_bus
from tests.gui.conftest import second_launch

S = ConnectionState


def wait_state(qtbot, controller, state, timeout=60_000) -> None:
    __tracebackhide__ = True
    qtbot.waitUntil(
        lambda: controller.status is not None and controller.status.state == state, timeout=timeout
    )


def outbox_states(window: MainWindow) -> list[str]:
    model = window.outbox_model
    return [model.index(row, OutboxModel.STATE).data() for row in range(model.rowCount())]


def test_first_run_goes_to_connected(qtbot, running_app):
    window = running_app.window
    steps_seen = []
    window.first_run.retryRequested.connect(lambda: None)
    running_app.bridge.stepChanged.connect(lambda step, outcome, _d: steps_seen.append((step, outcome)))
    wait_state(qtbot, running_app, S.CONNECTED)
    # The key goes to the keyring once connected (the core defers it): wait for every tick.
    qtbot.waitUntil(window.first_run.all_done, timeout=20_000)
    for step in FirstRunStep:
        assert window.first_run.outcome(step) == DONE, step
    assert window.banner.headline.text().startswith("Connected to")
    assert running_app.tray.icon.toolTip().startswith("client-app\nConnected")
    assert running_app.tray.status_action.text().startswith("Connected to")
    # The steps were shown as they happened, in order.
    running = [step for step, outcome in steps_seen if outcome == "running"]
    assert running == list(FirstRunStep)[-len(running) :]
    assert all(type(step) is FirstRunStep for step, _outcome in steps_seen)  # Qt carries the enum itself
    qtbot.waitUntil(lambda: not window.first_run.isVisible(), timeout=5000)


def test_cloud_message_reaches_inbox_and_notifies(qtbot, running_app, cloud_api):
    window = running_app.window
    wait_state(qtbot, running_app, S.CONNECTED)
    device_id = running_app.status.device_id
    with qtbot.waitSignal(running_app.notifier.notified, timeout=30_000) as notified:
        cloud_api.send_c2d(device_id, "hello from the cloud", properties={"priority": "high"})
    assert notified.args == ["New message from the cloud", "hello from the cloud"]
    model = window.inbox_model
    assert model.rowCount() == 1
    assert model.index(0, InboxModel.TEXT).data() == "hello from the cloud"
    assert model.index(0, InboxModel.PROPERTIES).data() == "priority=high"
    assert model.index(0, InboxModel.UNREAD).data() == "●"
    assert window.inbox_box.title() == "Messages from the cloud (1 unread)"
    # Reading it tells the core, which counts it as read.
    rect = window.inbox_view.visualRect(window.inbox_box.proxy.index(0, InboxModel.TEXT))
    qtbot.mouseClick(window.inbox_view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: running_app.runtime.inbox.unread_count() == 0, timeout=5000)


def test_mark_all_read_reaches_messages_the_window_never_loaded(qtbot, running_app_factory, device_config):
    """The window loads the newest 1,000 messages; Mark all read means all of them in the core."""
    from client_app.device.store import Database, Inbox

    db = Database(device_config.layout.database)
    inbox = Inbox(db)
    for n in range(INITIAL_INBOX_ROWS + 5):
        inbox.add(f"m-{n}", f"message {n}", {})
    db.close()
    app = running_app_factory()
    window = app.window
    qtbot.waitUntil(lambda: window.inbox_model.rowCount() == INITIAL_INBOX_ROWS, timeout=30_000)
    assert window.windowTitle() == f"client-app ({INITIAL_INBOX_ROWS + 5} unread)"  # the 5 not loaded too
    qtbot.mouseClick(window.inbox_box.mark_all_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: app.runtime.inbox.unread_count() == 0, timeout=10_000)
    qtbot.waitUntil(lambda: app.status is not None and app.status.inbox_unread == 0, timeout=10_000)
    assert not window.inbox_box.mark_all_button.isEnabled()


def test_sending_while_offline_queues_then_delivers(qtbot, running_app, local_cloud, cloud_api):
    window = running_app.window
    wait_state(qtbot, running_app, S.CONNECTED)
    device_id = running_app.status.device_id
    data_dir = Path(local_cloud.info.data_dir)
    local_cloud.stop()
    wait_state(qtbot, running_app, S.RECONNECTING)
    assert window.banner.headline.text().startswith("Offline, reconnecting")
    assert window.banner.reconnect_button.isVisible()
    assert "Offline" in window.send_hint.text()
    qtbot.keyClicks(window.message_edit, "written while offline")
    qtbot.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: outbox_states(window) == ["Queued (offline)"], timeout=10_000)
    assert window.outbox_model.index(0, OutboxModel.TEXT).data() == "written while offline"
    qtbot.waitUntil(lambda: running_app.status.outbox == 1, timeout=5000)

    # The cloud comes back (new ports: the core re-reads connection.json); Reconnect now skips the wait.
    restarted = start_in_thread(CloudSettings(data_dir=data_dir))
    try:
        qtbot.mouseClick(window.banner.reconnect_button, Qt.MouseButton.LeftButton)
        wait_state(qtbot, running_app, S.CONNECTED)
        qtbot.waitUntil(lambda: outbox_states(window) == ["Delivered"], timeout=30_000)
        with api_client(restarted) as api:
            telemetry = api.telemetry(device_id)
        bodies = str(telemetry)
        assert "written while offline" in bodies
    finally:
        restarted.stop()


@pytest.fixture
def no_keyring(keyring_env, monkeypatch, tmp_path):
    """A session bus with no Secret Service on it, as on a desktop whose keyring daemon is not running.
    Calling the fixture's value starts one there: the core's process, started before, must find it."""
    runtime = tmp_path / "later-keyring-run"
    runtime.mkdir(mode=0o700)
    bus, address = _start_bus(runtime)
    env = {
        "DBUS_SESSION_BUS_ADDRESS": address,
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_DATA_HOME": str(tmp_path / "later-keyring-home"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    daemons: list[subprocess.Popen] = []

    def start_keyring() -> None:
        daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        daemons.append(daemon)
        assert daemon.stdin is not None
        daemon.stdin.write(KEYRING_PASSWORD.encode())
        daemon.stdin.close()

    yield start_keyring
    for process in [*daemons, bus]:
        process.terminate()
        process.wait(10)


def test_refused_registration_shows_blocked_with_retry(qtbot, running_app_factory, cloud_api, enrolled_ca):
    cloud_api.set_group_status(enrolled_ca.group_id, False)
    controller = running_app_factory()
    wait_state(qtbot, controller, S.BLOCKED)
    window = controller.window
    assert window.banner.headline.text() == "Blocked by the cloud"
    assert window.banner.retry_button.isVisible()
    assert window.first_run.outcome(FirstRunStep.REGISTER) == FAILED
    # Said once, in the banner: no second box, no second Retry, no Settings that cannot help.
    assert not window.first_run.failure_box.isVisible()
    assert "status" not in window.banner.detail.text()
    assert window.banner.device_id.text() == f"Device ID: {controller.status.registration_id}"
    assert window.send_hint.text().startswith("Blocked")
    assert controller.tray.tone.value == "problem"


def _keyring_secrets() -> list[bytes]:
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        return [item.get_secret() for item in collection.get_all_items()]
    finally:
        connection.close()


def test_support_panel_and_diagnostics_export_without_secrets(qtbot, running_app, local_cloud, tmp_path):
    log_file = setup_logging(running_app.config.log_dir, logging.DEBUG)
    root = logging.getLogger()
    handler = root.handlers[-1]
    try:
        wait_state(qtbot, running_app, S.CONNECTED)
        logging.getLogger("client_app.test").info("api token for the record: %s", local_cloud.info.api_token)
        service_key = local_cloud.info.iothub_connection_string.split("SharedAccessKey=")[1]
        logging.getLogger("client_app.test").info("and a shared access key: %s", service_key)
        running_app.open_support_panel()
        panel = running_app.support_panel
        assert panel is not None and panel.isVisible()
        status = running_app.status
        values = {name: label.text() for name, label in panel.values.items()}
        assert values["registration_id"] == status.registration_id
        assert values["device_id"] == status.device_id
        assert values["assigned_hub"] == status.assigned_hub
        assert values["id_scope"] == local_cloud.info.id_scope
        assert values["certificate_subject"].endswith(status.registration_id)
        assert "Issuing CA" in values["certificate_issuer"]
        assert values["certificate_thumbprint"] == status.certificate_thumbprint
        assert values["keyring_backend"].endswith("SecretService.Keyring")
        assert values["last_connected"] != "—"
        assert values["log_dir"] == str(running_app.config.log_dir)

        qtbot.mouseClick(panel.copy_button, Qt.MouseButton.LeftButton)
        from PySide6.QtWidgets import QApplication

        qtbot.waitUntil(lambda: "copied to the clipboard" in panel.feedback.text(), timeout=10_000)
        copied = QApplication.clipboard().text()
        assert status.registration_id in copied and "PRIVATE KEY" not in copied

        target = tmp_path / "diagnostics.zip"
        with qtbot.waitSignal(running_app.diagnosticsExported, timeout=20_000):
            running_app.export_diagnostics(target)
        qtbot.waitUntil(lambda: "Diagnostics saved" in panel.feedback.text(), timeout=5000)
        with zipfile.ZipFile(target) as archive:
            contents = {name: archive.read(name) for name in archive.namelist()}
        blob = b"\n".join(contents.values())
        assert "logs/client-app.log" in contents and log_file is not None
        assert status.registration_id.encode() in contents["status.json"]
        assert b"PRIVATE KEY" not in blob and b"-----BEGIN" not in blob
        assert local_cloud.info.api_token.encode() not in blob
        assert service_key.encode() not in blob
        assert ISSUER_BUNDLE_PASSPHRASE not in blob
        secrets = _keyring_secrets()
        assert secrets, "the device key should be in the keyring"
        for secret in secrets:
            assert secret not in blob
            for line in secret.splitlines():
                if len(line) > 16 and not line.startswith(b"-----"):
                    assert line not in blob
    finally:
        root.removeHandler(handler)
        handler.close()


def test_run_gui_until_quit_with_single_instance(qtbot, qapp, device_config):
    """The whole entry point: window, tray, single-instance server, core; quits cleanly."""
    from PySide6.QtCore import QTimer

    from client_app.gui.startup import run_gui

    seen = {}

    def check() -> None:
        windows = [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()]
        if windows and windows[0].banner.headline.text().startswith("Connected") and not seen:
            poll.stop()
            seen["connected"] = True
            seen["second_launch"] = second_launch(qtbot, device_config.data_dir)  # its loop goes on meanwhile
            qapp.quit()

    poll = QTimer()
    poll.timeout.connect(check)
    poll.start(100)
    safety = QTimer()  # never hang the suite; stopped after, so it cannot end a later test's wait
    safety.setSingleShot(True)
    safety.timeout.connect(qapp.quit)
    safety.start(60_000)
    try:
        assert run_gui(device_config) == 0
    finally:
        poll.stop()
        safety.stop()
    assert seen == {"second_launch": "HANDED_OVER", "connected": True}
    qtbot.wait(10)


def test_a_failure_after_the_first_paint_ends_with_a_plain_message(qtbot, qapp, device_config, monkeypatch):
    """The panels are built after the window shows: if that fails, no empty window stays behind."""
    from PySide6.QtWidgets import QMessageBox

    from client_app.gui.startup import run_gui

    said = []
    monkeypatch.setattr(MainWindow, "_build_inbox", lambda self: 1 / 0)  # one of the pieces built after it
    monkeypatch.setattr(QMessageBox, "critical", lambda parent, title, text: said.append(text))
    interval = sys.getswitchinterval()
    assert run_gui(device_config) == 1
    assert said == ["The app could not start. Details are in the log."]
    assert sys.getswitchinterval() == interval  # the process left as found (1 ms while it ran)
    qtbot.wait(10)


def test_reset_identity_after_confirmation_registers_anew(qtbot, running_app):
    from PySide6.QtWidgets import QMessageBox

    wait_state(qtbot, running_app, S.CONNECTED)
    qtbot.waitUntil(running_app.window.first_run.all_done, timeout=20_000)
    old_id = running_app.status.registration_id
    running_app.open_support_panel()
    panel = running_app.support_panel
    qtbot.mouseClick(panel.reset_button, Qt.MouseButton.LeftButton)
    panel.reset_confirmation.button(QMessageBox.StandardButton.Reset).click()
    qtbot.waitUntil(
        lambda: (
            running_app.status.registration_id not in (None, old_id)
            and running_app.status.state == S.CONNECTED
        ),
        timeout=60_000,
    )
    qtbot.waitUntil(lambda: panel.values["registration_id"].text() == running_app.status.registration_id)
    qtbot.waitUntil(running_app.window.first_run.all_done, timeout=20_000)


def test_saved_settings_restart_the_core_and_a_message_sent_meanwhile_is_kept(qtbot, running_app):
    window = running_app.window
    wait_state(qtbot, running_app, S.CONNECTED)
    old_runtime = running_app.runtime
    running_app.open_settings()
    dialog = running_app.settings_dialog
    # This instance follows a local cloud, which owns these values: shown, not rewritten.
    assert dialog.scope_edit.isReadOnly() and dialog.host_edit.isReadOnly()
    dialog.buttons.button(dialog.buttons.StandardButton.Save).click()
    running_app.send("sent during the restart", {})  # the worker is restarting the core right now
    qtbot.waitUntil(lambda: running_app.runtime is not old_runtime, timeout=20_000)
    assert running_app.store.path.exists()
    wait_state(qtbot, running_app, S.CONNECTED)
    qtbot.waitUntil(lambda: "Delivered" in outbox_states(window), timeout=30_000)
    assert window.outbox_model.index(0, OutboxModel.TEXT).data() == "sent during the restart"
    assert "did not" not in window.send_hint.text()


def test_retry_starts_a_core_that_could_not_start(qtbot, running_app_factory, device_config):
    device_config.data_dir.parent.mkdir(parents=True, exist_ok=True)
    device_config.data_dir.write_text("a file where the data directory belongs")
    controller = running_app_factory()
    window = controller.window
    wait_state(qtbot, controller, S.ERROR)
    assert controller.runtime is None
    assert "could not start" in window.first_run.failure_text.text()
    assert not window.banner.retry_button.isVisible()  # one Retry, next to the explanation
    # The user fixes it and presses Retry: the core starts now (before, Retry did nothing).
    device_config.data_dir.unlink()
    qtbot.mouseClick(window.first_run.retry_button, Qt.MouseButton.LeftButton)
    wait_state(qtbot, controller, S.CONNECTED)


def test_a_crashed_core_is_shown_and_started_again(qtbot, running_app):
    import signal as signals

    window = running_app.window
    wait_state(qtbot, running_app, S.CONNECTED)
    first = running_app.runtime
    os.kill(first.pid, signals.SIGKILL)  # what a crash in the SDK's native code would look like
    wait_state(qtbot, running_app, S.ERROR, timeout=10_000)
    text = window.banner.headline.text() + window.banner.detail.text()
    assert "restarts" in text and "Traceback" not in text
    # A new core process, the same identity: connected again, and it still takes commands.
    wait_state(qtbot, running_app, S.CONNECTED)
    assert running_app.runtime is not first and running_app.runtime.pid != first.pid
    running_app.send("after the crash", {})
    qtbot.waitUntil(lambda: outbox_states(window) == ["Delivered"], timeout=30_000)


def test_a_proxy_password_from_settings_goes_to_the_keyring_through_the_core(qtbot, running_app):
    from client_app.device import secrets
    from client_app.device.config import ConfigError, ProxySetting

    wait_state(qtbot, running_app, S.CONNECTED)
    proxy = ProxySetting.parse("http://me:s3cr%40t@proxy.example.com:3128")
    running_app.store.keep_proxy_password(proxy)  # what Settings → Save calls, here the core's process
    assert secrets.load_secret(secrets.proxy_entry("http://me@proxy.example.com:3128")) == "s3cr@t"
    running_app.shutdown(timeout=3)
    with pytest.raises(ConfigError, match="not running"):
        running_app.store.keep_proxy_password(proxy)
