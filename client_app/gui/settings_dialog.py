"""Settings: provisioning endpoint, ID scope and proxy, validated and saved by the ConfigStore.

The dialog only shows and edits: client_app.device.config.ConfigStore validates, writes the file it read
(config.toml or --config FILE), keeps the proxy password in the keyring, and merges the layers again.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from client_app.device.config import ConfigError, ConfigStore, DeviceConfig, proxy_text, validate_settings

ERROR_LINES = 2  # room kept under each field, so errors appearing never move the fields


class SettingsDialog(QDialog):
    """Edits the connection settings; emits saved(DeviceConfig) once they are written."""

    saved = Signal(object)

    def __init__(self, store: ConfigStore, config: DeviceConfig, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setObjectName("settingsDialog")
        self.setMinimumWidth(560)
        self.store = store
        self.config = config
        self.owners = store.owned_elsewhere()
        self.host_edit = QLineEdit(config.provisioning_host)
        self.scope_edit = QLineEdit(config.id_scope)
        self.proxy_edit = QLineEdit(proxy_text(config.proxy))
        self.proxy_edit.setPlaceholderText("none (e.g. http://proxy.example.com:3128)")
        self.edits = {
            "provisioning_host": self.host_edit,
            "id_scope": self.scope_edit,
            "proxy": self.proxy_edit,
        }
        self.errors: dict[str, QLabel] = {}
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for name, label in (
            ("provisioning_host", "Provisioning &endpoint"),  # &: Alt+E focuses the field
            ("id_scope", "ID &scope"),
            ("proxy", "&Proxy"),
        ):
            edit = self.edits[name]
            error = QLabel()
            error.setObjectName(f"{name}Error")
            error.setWordWrap(True)
            error.setStyleSheet("color: #c9362c;")
            error.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
            error.setMinimumHeight(error.fontMetrics().lineSpacing() * ERROR_LINES)
            self.errors[name] = error
            if name in self.owners:
                edit.setReadOnly(True)
                edit.setToolTip(f"Set by {self.owners[name]}: not changed here.")
                error.setText(f"Set by {self.owners[name]}.")
                error.setStyleSheet("color: palette(placeholder-text);")
            form.addRow(label, edit)
            form.addRow("", error)
            edit.textChanged.connect(lambda _text, n=name: self._clear_error(n))
        self.login_check = QCheckBox("Start client-app when I &log in")
        self.login_check.setChecked(config.start_at_login)
        form.addRow("", self.login_check)
        note = QLabel(
            f"Saved in {store.path}. Options given on the command line or in the environment take precedence."
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

    def values(self) -> dict[str, str | bool]:
        values: dict[str, str | bool] = {
            name: edit.text() for name, edit in self.edits.items() if name not in self.owners
        }
        values["start_at_login"] = self.login_check.isChecked()
        return values

    def _clear_error(self, name: str) -> None:
        if name not in self.owners:
            self.errors[name].setText("")

    def try_save(self) -> bool:
        problems = validate_settings({k: v for k, v in self.values().items() if isinstance(v, str)})
        for name, text in problems.items():
            self.errors[name].setText(text)
        if problems:
            return False
        try:
            new_config = self.store.save(self.values())
        except (ConfigError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.save_error.setText(f"The settings could not be saved: {reason}.")
            self.save_error.show()
            return False
        self.config = new_config
        self.saved.emit(new_config)
        self.accept()
        return True
