"""Start at login: off by default, an XDG autostart entry on Linux, a LaunchAgent on macOS, a Run value on
Windows (the Windows writer itself needs winreg and runs only there)."""

from __future__ import annotations

import argparse
import configparser
import plistlib
import shutil
import subprocess
from pathlib import Path

from client_app.device.config import ConfigStore
from client_app.gui import login_start

ROOT = Path(__file__).resolve().parents[2]


def test_off_by_default_and_switched_in_settings(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    store = ConfigStore(argparse.Namespace(data_dir=str(tmp_path / "data")), {})
    config = store.load()
    assert config.start_at_login is False and not login_start.starts_at_login("linux")
    from client_app.gui.app import AppController
    from client_app.gui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    controller = AppController(config, window, store=store)
    controller.open_settings()
    dialog = controller.settings_dialog
    assert not dialog.login_check.isChecked()
    dialog.host_edit.setText("dps.example.com")
    dialog.scope_edit.setText("0ne00ABC123")
    dialog.login_check.setChecked(True)
    assert dialog.try_save()
    entry = tmp_path / "xdg" / "autostart" / "client-app.desktop"
    assert entry.exists() and store.load().start_at_login is True
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(entry.read_text())
    assert parsed["Desktop Entry"]["Type"] == "Application" and parsed["Desktop Entry"]["Exec"]
    controller.shutdown()
    login_start.set_start_at_login(False, platform="linux")
    assert not entry.exists()


def test_macos_launch_agent_runs_at_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    login_start.set_start_at_login(True, platform="darwin", command=["/Applications/client-app"])
    agent = plistlib.loads(login_start.mac_agent_file().read_bytes())
    assert agent == {
        "Label": login_start.MAC_LABEL,
        "ProgramArguments": ["/Applications/client-app"],
        "RunAtLoad": True,
    }
    login_start.set_start_at_login(False, platform="darwin")
    assert not login_start.mac_agent_file().exists()


def test_packaged_desktop_file_is_valid():
    desktop = ROOT / "packaging" / "linux" / "client-app.desktop"
    validator = shutil.which("desktop-file-validate")
    assert validator is not None, "apt-get install desktop-file-utils (see .ci/run)"
    assert subprocess.run([validator, str(desktop)], capture_output=True, text=True).stdout == ""
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(desktop.read_text())
    entry = parsed["Desktop Entry"]
    assert entry["Exec"] == "client-app" and entry["Icon"] == "client-app"
    assert (ROOT / "packaging" / "linux" / f"{entry['Icon']}.svg").exists()
