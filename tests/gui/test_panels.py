"""Support panel, settings dialog, single instance and diagnostics (widgets fed directly)."""

from __future__ import annotations

import argparse
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from client_app.device.config import ConfigStore, DeviceConfig, load_config, validate_settings
from client_app.device.runtime import ConnectionState
from client_app.gui import diagnostics, single_instance
from client_app.gui.settings_dialog import SettingsDialog
from client_app.gui.single_instance import Claim, SingleInstance, server_name
from client_app.gui.support_panel import FIELDS, NOT_YET, SupportPanel
from client_app.pki import generate_key, private_key_to_pem
from tests.gui.conftest import make_status, second_launch

FULL_STATUS = dict(
    registration_id="desk-0123",
    device_id="desk-0123",
    assigned_hub="hub.client-app.localhost",
    id_scope="0ne00ABC123",
    provisioning_host="dps.client-app.localhost",
    certificate_subject="CN=desk-0123",
    certificate_issuer="CN=client_app Issuing CA",
    certificate_not_after=datetime(2027, 11, 27, 12, 0, tzinfo=UTC),
    certificate_thumbprint="0123456789ABCDEF0123456789ABCDEF01234567",
    keyring_backend="keyring.backends.SecretService.Keyring",
    last_connected=datetime(2026, 11, 27, 0, 1, tzinfo=UTC),
    last_disconnected=None,
    last_error="",
    outbox=3,
    inbox=42,
    log_dir="/var/log/client-app",
)


def test_support_panel_shows_every_field(qtbot):
    panel = SupportPanel()
    qtbot.addWidget(panel)
    panel.show_status(make_status(ConnectionState.CONNECTED, **FULL_STATUS))
    names = {name for name, _label in FIELDS}
    assert names >= {
        "registration_id", "device_id", "assigned_hub", "id_scope", "provisioning_host",
        "certificate_subject", "certificate_issuer", "certificate_not_after", "certificate_thumbprint",
        "keyring_backend", "last_connected", "last_disconnected", "last_error", "outbox", "inbox", "log_dir",
    }  # fmt: skip
    text = {name: label.text() for name, label in panel.values.items()}
    assert text["state"] == "Connected to hub.client-app.localhost"
    assert text["registration_id"] == "desk-0123"
    assert text["certificate_thumbprint"] == FULL_STATUS["certificate_thumbprint"]
    assert text["certificate_not_after"].startswith("2027-11-27")
    assert text["keyring_backend"] == "keyring.backends.SecretService.Keyring"
    assert text["last_disconnected"] == NOT_YET and text["last_error"] == NOT_YET
    assert text["outbox"] == "3" and text["inbox"] == "42"
    assert text["log_dir"] == "/var/log/client-app"
    for signal, button in (
        (panel.copyRequested, panel.copy_button),
        (panel.exportRequested, panel.export_button),
        (panel.reconnectRequested, panel.reconnect_button),
    ):
        with qtbot.waitSignal(signal, timeout=1000):
            qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_support_panel_names_the_identity_a_lost_key_replaced(qtbot):
    panel = SupportPanel()
    qtbot.addWidget(panel)
    panel.show_status(make_status(ConnectionState.CONNECTED, **FULL_STATUS))
    assert panel.values["previous_registration_id"].text() == NOT_YET
    replaced = {**FULL_STATUS, "previous_registration_id": "ca-0123456789abcdef0123"}
    panel.show_status(make_status(ConnectionState.CONNECTED, **replaced))
    assert panel.values["previous_registration_id"].text() == "ca-0123456789abcdef0123"


@pytest.fixture
def store(tmp_path: Path) -> ConfigStore:
    return ConfigStore(argparse.Namespace(data_dir=str(tmp_path / "data")), {})


@pytest.fixture
def config(store) -> DeviceConfig:
    return store.load()


def settings(host: str, scope: str, proxy: str) -> dict[str, str]:
    return {"provisioning_host": host, "id_scope": scope, "proxy": proxy}


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        (settings("global.azure-devices-provisioning.net", "0ne00ABC123", ""), set()),
        (settings("127.0.0.1", "0ne00ABC123", "socks5://proxy:1080"), set()),
        (settings("https://dps.example.com/", "0ne00ABC123", ""), set()),  # pasted URL: trimmed to the host
        (settings("", "", ""), {"provisioning_host", "id_scope"}),
        (settings("bad host!", "0ne 00", "ftp://x"), {"provisioning_host", "id_scope", "proxy"}),
        (settings("dps.example.com", "0ne00ABC123", "http://proxy"), {"proxy"}),
    ],
)
def test_settings_validation(values, bad):
    assert set(validate_settings(values)) == bad


def test_settings_dialog_validates_then_writes_config_toml(qtbot, store, config):
    dialog = SettingsDialog(store, config)
    qtbot.addWidget(dialog)
    dialog.show()
    fields_before = [edit.geometry() for edit in dialog.edits.values()]
    dialog.host_edit.setText("not a host")
    dialog.scope_edit.setText("")
    dialog.proxy_edit.setText("ftp://x")
    with qtbot.assertNotEmitted(dialog.saved):
        assert dialog.try_save() is False
    qtbot.wait(10)
    for name, error in dialog.errors.items():
        assert error.text(), name
        # The whole text fits (not cut in half), and the fields did not move under the pointer.
        assert error.heightForWidth(error.width()) <= error.height(), name
    assert [edit.geometry() for edit in dialog.edits.values()] == fields_before
    assert not store.path.exists()
    dialog.host_edit.setText("https://dps.example.com/")
    dialog.scope_edit.setText("0ne00ABC123")
    dialog.proxy_edit.setText("http://proxy.example.com:3128")
    with qtbot.waitSignal(dialog.saved, timeout=1000) as saved:
        assert dialog.try_save() is True
    new_config = saved.args[0]
    assert (
        new_config.provisioning_host == "dps.example.com"
        and str(new_config.proxy) == "http://proxy.example.com:3128"
    )
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    # The device core reads back exactly what the dialog wrote.
    reread = load_config(argparse.Namespace(data_dir=str(config.data_dir)), {})
    assert (reread.provisioning_host, reread.id_scope, str(reread.proxy)) == (
        "dps.example.com",
        "0ne00ABC123",
        "http://proxy.example.com:3128",
    )
    # Clearing the proxy removes it, other keys stay.
    store.path.write_text(store.path.read_text() + "keep_alive = 120\n")
    dialog2 = SettingsDialog(store, reread)
    qtbot.addWidget(dialog2)
    dialog2.proxy_edit.setText("")
    assert dialog2.try_save()
    reread = load_config(argparse.Namespace(data_dir=str(config.data_dir)), {})
    assert reread.proxy is None and reread.keep_alive == 120


def test_settings_go_to_the_file_that_was_read_with_the_same_precedence(tmp_path):
    chosen = tmp_path / "elsewhere" / "my.toml"
    args = argparse.Namespace(data_dir=str(tmp_path / "data"), config_file=str(chosen), id_scope="0neCLI0001")
    store = ConfigStore(args, {"CLIENT_APP_PROXY": "http://env-proxy:8080"})
    assert set(store.owned_elsewhere()) == {"id_scope", "proxy"}
    config = store.save(settings("dps.example.com", "0ne00FILE01", "http://file-proxy:1"))
    assert "dps.example.com" in chosen.read_text()
    assert "0ne00FILE01" not in chosen.read_text() and "file-proxy" not in chosen.read_text()
    # The command line and the environment still win, as at start-up.
    assert (config.provisioning_host, config.id_scope, str(config.proxy)) == (
        "dps.example.com",
        "0neCLI0001",
        "http://env-proxy:8080",
    )
    assert not (tmp_path / "data" / "config" / "config.toml").exists()


def test_a_demo_dialog_does_not_rewrite_what_the_local_cloud_owns(qtbot, tmp_path):
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    (cloud / "connection.json").write_text(
        '{"id_scope": "0ne00LOCAL1", "provisioning_host": "127.0.0.9", "proxy_host": "127.0.0.9",'
        ' "proxy_port": 8443}'
    )
    store = ConfigStore(argparse.Namespace(data_dir=str(tmp_path / "data")), {}, {"local_cloud": str(cloud)})
    dialog = SettingsDialog(store, store.load())
    qtbot.addWidget(dialog)
    assert all(edit.isReadOnly() for edit in dialog.edits.values())
    assert dialog.errors["id_scope"].text() == "Set by the local cloud."
    assert dialog.try_save()
    assert "0ne00LOCAL1" not in store.path.read_text()


def test_the_proxy_password_goes_to_the_keyring_not_the_file(keyring_env, tmp_path):
    store = ConfigStore(argparse.Namespace(data_dir=str(tmp_path / "data")), {})
    config = store.save(
        settings("dps.example.com", "0ne00ABC123", "http://me:s3cr%40t@proxy.example.com:3128")
    )
    text = store.path.read_text()
    assert "s3cr" not in text and "http://me@proxy.example.com:3128" in text
    assert config.proxy.password == "s3cr@t"
    assert store.load().proxy.password == "s3cr@t"  # read back from the keyring on the next start

    # The window's process reads the file without the keyring; its core's process fills the password in.
    from client_app.device.config import with_proxy_password

    windows = ConfigStore(argparse.Namespace(data_dir=str(tmp_path / "data")), {}, keyring=False).load()
    assert windows.proxy.username == "me" and windows.proxy.password is None
    assert with_proxy_password(windows).proxy.password == "s3cr@t"


def in_a_thread(qtbot, call):
    """Run a blocking claim beside this (GUI) thread, whose event loop goes on meanwhile."""
    result = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=20_000)
    return result[0]


@pytest.fixture
def instances(tmp_path):
    made: list[SingleInstance] = []

    def make(data: str = "data") -> SingleInstance:
        made.append(SingleInstance(tmp_path / data))
        return made[-1]

    yield make
    for instance in made:
        instance.release()
        instance.deleteLater()


def first_window(make, data: str = "data") -> SingleInstance:
    """What run_gui() does: the lock before the window, the server after its first paint."""
    instance = make(data)
    assert instance.claim_lock() is Claim.FIRST
    instance.listen()
    return instance


def test_second_instance_brings_the_first_forward(qtbot, tmp_path, instances):
    first = first_window(instances)
    first_window(instances, "other-data")  # another data dir: another app, no collision
    with qtbot.waitSignal(first.activateRequested, timeout=3000):
        assert second_launch(qtbot, tmp_path / "data") == Claim.HANDED_OVER.name
    assert server_name(tmp_path / "data") != server_name(tmp_path / "other-data")


def test_a_window_that_holds_the_lock_but_never_answers_gets_no_twin(qtbot, tmp_path, instances, monkeypatch):
    monkeypatch.setattr(single_instance, "ANSWER_WAIT_SECONDS", 0.2)
    first, second = instances(), instances()
    assert first.claim_lock() is Claim.FIRST  # its window is not up yet: no server
    assert second.claim_lock() is Claim.NO_ANSWER
    first.listen()
    assert second_launch(qtbot, tmp_path / "data") == Claim.HANDED_OVER.name  # now it answers


def test_a_launch_while_the_first_quits_starts_once_its_lock_is_free(qtbot, instances):
    """The first window stops listening as it starts quitting, and ends seconds later (its core stopping):
    a launch meanwhile is not handed over to it, it takes the lock once free and shows its own window."""
    first, second = first_window(instances), instances()
    first.stop_listening()
    seen = []
    first.activateRequested.connect(lambda: seen.append("shown"))
    threading.Timer(0.3, first.release).start()  # its process ends
    assert in_a_thread(qtbot, second.claim_lock) is Claim.FIRST
    assert seen == []


def test_a_quitting_window_does_not_answer_a_connection_it_had_not_read(qtbot, instances):
    """A launch connects just before the quit; the window reads it only after it stopped listening."""
    from PySide6.QtNetwork import QLocalSocket

    first = first_window(instances)

    socket = QLocalSocket()
    socket.connectToServer(first.name)
    assert socket.waitForConnected(1000)
    socket.write(single_instance.SHOW_COMMAND)
    socket.flush()
    first.stop_listening()
    qtbot.wait(200)
    assert not socket.waitForReadyRead(200) or single_instance.SHOWN_REPLY not in bytes(
        socket.readAll().data()
    )
    socket.abort()


def test_stale_socket_from_a_crash_is_reclaimed(qtbot, tmp_path, instances):
    from PySide6.QtNetwork import QLocalServer

    name = server_name(tmp_path / "data")
    crashed = QLocalServer()
    assert crashed.listen(name)
    socket_path = Path(crashed.fullServerName())
    crashed.close()
    socket_path.touch()  # what a killed process leaves behind
    instance = first_window(instances)
    assert instance.server is not None and instance.server.isListening()


def test_listening_without_the_lock_never_removes_a_live_windows_socket(qtbot, tmp_path, instances):
    first = first_window(instances)
    intruder = instances()  # e.g. a process that runs without the lock
    intruder.listen()
    assert intruder.server is None
    with qtbot.waitSignal(first.activateRequested, timeout=3000):
        assert second_launch(qtbot, tmp_path / "data", "ask_running_instance()") == "True"


def test_an_unusable_lock_file_is_reported_not_ignored(qtbot, tmp_path, instances):
    (tmp_path / "data" / single_instance.LOCK_FILE).mkdir(parents=True)  # open() fails: EISDIR
    instance = instances()
    assert instance.claim_lock() is Claim.LOCK_FAILED
    assert "directory" in instance.lock_error
    first_window(instances, "other-data")  # the check asks a running window: none here answers for "data"


def plain_config(tmp_path: Path) -> DeviceConfig:
    """Loopback only, should a broken check let the app start its core."""
    return DeviceConfig(
        provisioning_host="127.0.0.1",
        id_scope="0ne000TEST",
        data_dir=tmp_path / "data",
        log_dir=tmp_path / "logs",
        config_dir=tmp_path / "config",
    )


@pytest.fixture
def boxes(qapp, monkeypatch) -> Iterator[list[str]]:
    """The texts of the error boxes shown (not shown: nobody would click them); the app never runs long."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QMessageBox

    said: list[str] = []
    monkeypatch.setattr(QMessageBox, "critical", lambda parent, title, text: said.append(text))
    safety = QTimer()  # a launch that wrongly starts its window is quit, not left to hang the suite
    safety.setSingleShot(True)
    safety.timeout.connect(qapp.quit)
    safety.start(5000)
    yield said
    safety.stop()


def test_a_launch_whose_first_window_never_answers_says_so_and_fails(qtbot, tmp_path, boxes, monkeypatch):
    from client_app.device.instance_lock import InstanceLock
    from client_app.gui.startup import run_gui

    monkeypatch.setattr(single_instance, "ANSWER_WAIT_SECONDS", 0.2)
    config = plain_config(tmp_path)
    hung = InstanceLock(config.data_dir / single_instance.LOCK_FILE)  # a window that holds it, hung
    assert hung.acquire()
    try:
        assert run_gui(config) != 0
    finally:
        hung.release()
    assert len(boxes) == 1 and "already running" in boxes[0] and "does not answer" in boxes[0]


def test_a_launch_that_cannot_use_its_lock_file_says_so_and_fails(qtbot, tmp_path, boxes):
    from client_app.gui.startup import run_gui

    config = plain_config(tmp_path)
    (config.data_dir / single_instance.LOCK_FILE).mkdir(parents=True)
    assert run_gui(config) != 0
    assert len(boxes) == 1 and str(config.data_dir) in boxes[0] and "Traceback" not in boxes[0]


# Real key material, made here: a repository never holds a private key, not even a test's.
PEM_KEY = private_key_to_pem(generate_key(), None).decode().strip()
ENCRYPTED_KEY = private_key_to_pem(generate_key(), b"passphrase").decode().splitlines()
KEY_LINES = PEM_KEY.splitlines()


def test_redaction_keeps_ordinary_paths_readable():
    line = (
        "logs in /var/tmp/pytest-of-me/client-app-demo/demo-device/logs/client-app.log, C:/Users/Me/AppData/x"
    )
    assert diagnostics.redact(line) == line
    home = f"{Path.home()}/.local/share/client-app/demo-device/logs"
    assert diagnostics.redact(home) == "~/.local/share/client-app/demo-device/logs"  # the user name goes
    secret = "k/" + "Zm9vYmFyYmF6cXV4cXV1eHF1dXhx/dXV4cXV1eA"  # base64 with a slash is still removed
    assert "Zm9vYmFy" not in diagnostics.redact(f"key {secret} here")


@pytest.mark.parametrize(
    ("line", "leak"),
    [
        (f"loaded key {PEM_KEY} ok", KEY_LINES[1][:20]),
        ("\n".join([*ENCRYPTED_KEY[:2], "(truncated"]), ENCRYPTED_KEY[1][:12]),
        ("GET /x Authorization: Bearer abcDEF123-_token", "abcDEF123"),
        ('{"api_token": "s3cr3t-Value-42"}', "s3cr3t"),
        ("pass_phrase=hunter2hunter2 next", "hunter2"),
        ("proxy http://alice:pw1234@proxy:3128", "pw1234"),
        ("token Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA== here", "Zm9vYmFyYmF6"),
        ("sig=Ab3dEf9h%2Bxyz&se=1700000000", "Ab3dEf9h"),
        ("ProxyOptions(proxy_password='hunter22')", "hunter22"),
        ("access_token=abc123xyz&x=1", "abc123xyz"),
        ('{"clientSecret": "abcdef12"}', "abcdef12"),
        # The log rotated (or the tail was cut) inside a PEM block: its END has no BEGIN.
        pytest.param("\n".join([*KEY_LINES[-3:], "INFO next"]), KEY_LINES[-2][:8], id="cut-pem-block"),
    ],
)
def test_redaction_removes_secrets(line, leak):
    assert leak not in diagnostics.redact(line)


def test_redaction_keeps_what_follows_a_cut_pem_block_and_stays_linear():
    assert diagnostics.redact("AbC=\n-----END CERTIFICATE-----\nINFO next").endswith("\nINFO next")
    started = time.monotonic()
    diagnostics.redact("a-" * 100_000 + " 1." * 50_000)  # e.g. a long dashed hex dump in a log line
    assert time.monotonic() - started < 10  # was minutes: a quadratic URL pattern


def test_redaction_keeps_public_identifiers():
    thumb = "0123456789ABCDEF0123456789ABCDEF01234567"
    device = "desktop-3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
    text = f"connected as {device} thumbprint {thumb} to hub.client-app.localhost"
    assert diagnostics.redact(text, keep=[device]) == text


def test_diagnostics_zip_is_allow_listed_and_redacted(tmp_path, config):
    logs = config.log_dir
    logs.mkdir(parents=True)
    (logs / "client-app.log").write_text(
        f"INFO started\nDEBUG key {PEM_KEY}\nINFO api_token=letmein-123456\n"
    )
    (logs / "client-app.log.1").write_text("INFO older\n")
    (logs / "notes.txt").write_text("not a log file: never included")
    identity = config.data_dir / "identity"
    identity.mkdir(parents=True)
    (identity / "chain.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    status = make_status(ConnectionState.CONNECTED, **FULL_STATUS)
    result = diagnostics.collect(status, config, app_facts={"qt": "6.x"})
    path = result.write_zip(tmp_path / "diag.zip")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        blob = b"".join(archive.read(n) for n in names)
        status_json = json.loads(archive.read("status.json"))
    assert names == {
        "manifest.json", "status.json", "config.json", "versions.json", "os.json", "app.json", "summary.txt",
        "logs/client-app.log", "logs/client-app.log.1",
    }  # fmt: skip
    assert b"PRIVATE KEY" not in blob and b"letmein" not in blob and b"MIGHAgEA" not in blob
    assert status_json["certificate_thumbprint"] == FULL_STATUS["certificate_thumbprint"]
    assert status_json["registration_id"] == "desk-0123"
    assert not list(tmp_path.glob("*.partial"))


def test_clicking_a_notification_opens_the_window_on_that_message(qtbot, store, config):
    from client_app.gui.app import AppController
    from client_app.gui.main_window import MainWindow
    from client_app.gui.models import InboxModel
    from client_app.gui.tray import StatusTray
    from tests.gui.test_widgets import inbox_message

    window = MainWindow()
    qtbot.addWidget(window)
    controller = AppController(config, window, tray=StatusTray(), store=store)
    try:
        window.add_messages([inbox_message(n) for n in range(1, 301)])
        controller.notifier.messages_arrived([inbox_message(42)])
        window.hide()
        controller.tray.icon.messageClicked.emit()
        assert window.isVisible()
        current = window.inbox_view.currentIndex()
        assert window.inbox_box.message_at(current).id == 42
        assert window.inbox_view.visualRect(current).intersects(window.inbox_view.viewport().rect())
        assert current.sibling(current.row(), InboxModel.TEXT).data() == "message 42"
    finally:
        controller.tray.dispose()


def test_do_not_disturb_in_the_tray_is_kept(qtbot, store, config):
    from client_app.gui.app import AppController
    from client_app.gui.main_window import MainWindow
    from client_app.gui.tray import StatusTray

    window = MainWindow()
    qtbot.addWidget(window)
    controller = AppController(config, window, tray=StatusTray(), store=store)
    texts = [a.text() for a in controller.tray.menu.actions() if a.text()]
    for wanted in ("Connection details…", "Settings…", "Do not disturb", "Quit", "No unread messages"):
        assert wanted in texts
    assert controller.notifier.enabled
    controller.tray.dnd_action.trigger()
    assert not controller.notifier.enabled
    assert store.load().do_not_disturb is True
    controller.tray.dispose()
    # The next start remembers it.
    again = AppController(store.load(), window, tray=StatusTray(), store=store)
    assert again.tray.dnd_action.isChecked() and not again.notifier.enabled
    again.tray.dispose()


def test_support_panel_has_what_a_support_call_needs(qtbot, store, config):
    from client_app.device.twin import app_version
    from client_app.gui.app import AppController
    from client_app.gui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    controller = AppController(config, window, store=store)
    controller.show_status(
        make_status(ConnectionState.CONNECTED, registration_id="desk-9", device_id="desk-9")
    )
    controller.open_support_panel()
    panel = controller.support_panel
    facts = {label: value.text() for label, value in panel.facts.items()}
    assert facts["App version"] == app_version()
    assert facts["Proxy"] == "none"
    assert facts["Data folder"] == str(config.data_dir)  # whole and readable, not "~/.[token removed]"
    assert facts["Settings file"] == str(store.path)
    assert facts["Operating system"]
    qtbot.mouseClick(panel.copy_id_button, Qt.MouseButton.LeftButton)
    from PySide6.QtWidgets import QApplication

    assert QApplication.clipboard().text() == "desk-9"
    assert panel.copy_button.text() == "Copy all"
    panel.close()


def test_about_names_versions_build_and_licences(qtbot):
    from PySide6.QtCore import qVersion

    from client_app.gui.about import AboutDialog
    from client_app.gui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    about = next(a for a in window.menuBar().actions()[-1].menu().actions() if "About" in a.text())
    with qtbot.waitSignal(window.aboutRequested, timeout=1000):
        about.trigger()
    dialog = AboutDialog(window)
    qtbot.addWidget(dialog)
    text = dialog.text.text()
    for wanted in (qVersion(), "Azure IoT device SDK", "LGPL-3.0", "MIT", "from source", "Version"):
        assert wanted in text
