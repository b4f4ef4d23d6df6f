"""Settings: provisioning endpoint, ID scope and proxy, validated before they are saved.

Saved to config.toml in the user config directory, with the same key names that
client_app.device.config reads (provisioning_host, id_scope, proxy); other keys are kept.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from client_app.device.config import CONFIG_FILE_NAME, ConfigError, DeviceConfig, ProxySetting
from client_app.hosts import is_ip_address
from client_app.pki import atomic_write

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_ID_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{2,63}$")


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    provisioning_host: str
    id_scope: str
    proxy: str  # "" = no proxy


def validate(settings: ConnectionSettings) -> dict[str, str]:
    """Field name -> problem in plain words; empty when everything is fine."""
    problems: dict[str, str] = {}
    host = settings.provisioning_host.strip()
    if not host:
        problems["provisioning_host"] = (
            "Enter the provisioning endpoint, e.g. global.azure-devices-provisioning.net."
        )
    elif not ((_HOST.match(host) and len(host) <= 253) or is_ip_address(host)):
        problems["provisioning_host"] = (
            "The provisioning endpoint must be a host name such as dps.example.com."
        )
    scope = settings.id_scope.strip()
    if not scope:
        problems["id_scope"] = "Enter the ID scope of your provisioning service (e.g. 0ne00ABC123)."
    elif not _ID_SCOPE.match(scope):
        problems["id_scope"] = "The ID scope is letters and digits only, like 0ne00ABC123."
    proxy = settings.proxy.strip()
    if proxy:
        try:
            ProxySetting.parse(proxy)
        except ConfigError:
            problems["proxy"] = (
                "Write the proxy as http://host:port or socks5://host:port (or leave it empty)."
            )
    return problems


def config_file(config: DeviceConfig) -> Path:
    return config.config_dir / CONFIG_FILE_NAME


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    return json.dumps(str(value), ensure_ascii=False)


def dump_toml(values: dict[str, Any]) -> str:
    """Enough TOML for a flat settings file plus one level of tables."""
    lines = ["# client-app settings (edited by the app's Settings dialog)"]
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if key not in tables]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def save_settings(config: DeviceConfig, settings: ConnectionSettings) -> DeviceConfig:
    """Validate, write config.toml atomically, and return the config to run with from now on."""
    problems = validate(settings)
    if problems:
        raise ValueError(" ".join(problems.values()))
    path = config_file(config)
    try:
        existing = tomllib.loads(path.read_text()) if path.exists() else {}
    except (OSError, tomllib.TOMLDecodeError):
        existing = {}  # unreadable: rewritten with what the user just entered
    existing["provisioning_host"] = settings.provisioning_host.strip()
    existing["id_scope"] = settings.id_scope.strip()
    proxy = settings.proxy.strip()
    if proxy:
        existing["proxy"] = proxy
    else:
        existing.pop("proxy", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, dump_toml(existing).encode(), 0o600)  # a proxy URL may carry a password
    return dataclasses.replace(
        config,
        provisioning_host=existing["provisioning_host"],
        id_scope=existing["id_scope"],
        proxy=ProxySetting.parse(proxy) if proxy else None,
    )


def _proxy_text(proxy: ProxySetting | None) -> str:
    if proxy is None:
        return ""
    if proxy.username:
        from urllib.parse import quote

        secret = f":{quote(proxy.password, safe='')}" if proxy.password else ""
        return f"{proxy.scheme}://{quote(proxy.username, safe='')}{secret}@{proxy.host}:{proxy.port}"
    return str(proxy)


class SettingsDialog(QDialog):
    """Edits the connection settings; emits saved(DeviceConfig) once they are written."""

    saved = Signal(object)

    def __init__(self, config: DeviceConfig, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setObjectName("settingsDialog")
        self.config = config
        self.host_edit = QLineEdit(config.provisioning_host)
        self.scope_edit = QLineEdit(config.id_scope)
        self.proxy_edit = QLineEdit(_proxy_text(config.proxy))
        self.proxy_edit.setPlaceholderText("none (e.g. http://proxy.example.com:3128)")
        self.errors: dict[str, QLabel] = {}
        form = QFormLayout()
        for name, label, edit in (
            ("provisioning_host", "Provisioning &endpoint", self.host_edit),  # &: Alt+E focuses the field
            ("id_scope", "ID &scope", self.scope_edit),
            ("proxy", "&Proxy", self.proxy_edit),
        ):
            error = QLabel()
            error.setObjectName(f"{name}Error")
            error.setWordWrap(True)
            error.setStyleSheet("color: #c9362c;")
            error.hide()
            self.errors[name] = error
            form.addRow(label, edit)
            form.addRow("", error)
            edit.textChanged.connect(lambda _text, n=name: self.errors[n].hide())
        note = QLabel(
            f"Saved in {config_file(config)}. Options given on the command line or in the environment "
            "take precedence."
            + (
                " This instance follows a local cloud, which sets these values itself."
                if config.local_cloud
                else ""
            )
        )
        note.setWordWrap(True)
        note.setStyleSheet("color: palette(placeholder-text);")
        note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.save_error = QLabel()
        self.save_error.setStyleSheet("color: #c9362c;")
        self.save_error.setWordWrap(True)
        self.save_error.hide()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.try_save)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(note)
        layout.addWidget(self.save_error)
        layout.addWidget(self.buttons)
        self.resize(520, self.sizeHint().height())

    def current(self) -> ConnectionSettings:
        return ConnectionSettings(self.host_edit.text(), self.scope_edit.text(), self.proxy_edit.text())

    def try_save(self) -> bool:
        problems = validate(self.current())
        for name, label in self.errors.items():
            label.setText(problems.get(name, ""))
            label.setVisible(name in problems)
        if problems:
            return False
        try:
            new_config = save_settings(self.config, self.current())
        except OSError as exc:
            self.save_error.setText(f"The settings could not be saved: {exc.strerror or exc}.")
            self.save_error.show()
            return False
        self.config = new_config
        self.saved.emit(new_config)
        self.accept()
        return True
