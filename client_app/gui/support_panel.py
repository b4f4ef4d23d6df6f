"""Connection details for support staff, with diagnostics and the heavier actions."""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from client_app.device.status import DeviceStatus
from client_app.gui.status_text import describe

# (DeviceStatus field, label) in the order support staff read them.
FIELDS: tuple[tuple[str, str], ...] = (
    ("state", "State"),
    ("registration_id", "Registration ID"),
    ("device_id", "Device ID"),
    ("previous_registration_id", "Previous ID (retire it)"),
    ("assigned_hub", "Assigned hub"),
    ("id_scope", "ID scope"),
    ("provisioning_host", "Provisioning endpoint"),
    ("certificate_subject", "Certificate subject"),
    ("certificate_issuer", "Certificate issuer"),
    ("certificate_not_after", "Certificate expires"),
    ("certificate_thumbprint", "Certificate thumbprint"),
    ("keyring_backend", "Keyring backend"),
    ("last_connected", "Last connected"),
    ("last_disconnected", "Last disconnected"),
    ("last_error", "Last error"),
    ("outbox", "Outbox (waiting to send)"),
    ("inbox", "Inbox (received)"),
    ("log_dir", "Log folder"),
)
NOT_YET = "—"


def field_text(status: DeviceStatus, name: str) -> str:
    if name == "state":
        return describe(status).headline
    value = getattr(status, name, None)
    if value is None or value == "":
        return NOT_YET
    if isinstance(value, datetime):
        local = value.astimezone() if value.tzinfo else value
        return local.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return str(value)


class SupportPanel(QDialog):
    copyRequested = Signal()  # "Copy all": the redacted diagnostics summary
    exportRequested = Signal()
    reconnectRequested = Signal()
    resetRequested = Signal()  # only after the user confirmed

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("supportPanel")
        self.setWindowTitle("Connection details")
        self.values: dict[str, QLabel] = {}
        self.form = QFormLayout()
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for name, label in FIELDS:
            self.values[name] = self._add_row(name, label)
        # The app and this computer: filled in by show_facts (version, OS, proxy, folders).
        self.facts: dict[str, QLabel] = {}
        self.copy_id_button = QPushButton("Copy device ID")
        self.copy_id_button.clicked.connect(self._copy_device_id)
        self.copy_button = QPushButton("Copy all")
        self.copy_button.setToolTip("Copies everything shown here and the versions, without keys or secrets.")
        self.copy_button.clicked.connect(self.copyRequested)
        self.export_button = QPushButton("Export diagnostics…")
        self.export_button.clicked.connect(self.exportRequested)
        self.reconnect_button = QPushButton("Reconnect now")
        self.reconnect_button.clicked.connect(self.reconnectRequested)
        self.reset_button = QPushButton("Reset identity…")
        self.reset_button.clicked.connect(self.ask_reset)
        self.feedback = QLabel()
        self.feedback.setWordWrap(True)
        self.feedback.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        for button in (self.copy_id_button, self.copy_button, self.export_button, self.reconnect_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.reset_button)
        layout = QVBoxLayout(self)
        layout.addLayout(self.form)
        layout.addWidget(self.feedback)
        layout.addLayout(buttons)
        self.reset_confirmation: QMessageBox | None = None
        self._status: DeviceStatus | None = None
        self.resize(640, self.sizeHint().height())

    def _add_row(self, name: str, label: str) -> QLabel:
        value = QLabel(NOT_YET)
        value.setObjectName(f"value_{name}")
        value.setWordWrap(True)
        value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.form.addRow(f"{label}:", value)
        return value

    def show_status(self, status: DeviceStatus) -> None:
        self._status = status
        for name, label in self.values.items():
            label.setText(field_text(status, name))
        self.copy_id_button.setEnabled(bool(status.device_id or status.registration_id))

    def show_facts(self, facts: dict[str, str]) -> None:
        """Facts about the app and this computer (label -> text), shown below the connection."""
        for label, text in facts.items():
            if label not in self.facts:
                self.facts[label] = self._add_row(f"fact_{len(self.facts)}", label)
            self.facts[label].setText(text or NOT_YET)

    def _copy_device_id(self) -> None:
        status = self._status
        if status is not None:
            QApplication.clipboard().setText(status.device_id or status.registration_id or "")
            self.show_feedback("Device ID copied to the clipboard.")

    def show_feedback(self, text: str) -> None:
        self.feedback.setText(text)

    def ask_reset(self) -> None:
        """Non-blocking confirmation: the event loop (and the connection) keeps running."""
        box = QMessageBox(self)
        box.setObjectName("resetConfirmation")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Reset identity")
        box.setText("Reset this computer's identity?")
        box.setInformativeText(
            "The certificate and its key are deleted and the app registers again as a new device. "
            "Messages already received stay in the list. Only do this when support asks you to."
        )
        box.setStandardButtons(QMessageBox.StandardButton.Reset | QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.finished.connect(lambda result: self._reset_answered(box, result))
        self.reset_confirmation = box
        box.open()

    def _reset_answered(self, box: QMessageBox, _result: int) -> None:
        confirmed = box.clickedButton() is box.button(QMessageBox.StandardButton.Reset)
        self.reset_confirmation = None
        box.deleteLater()
        if confirmed:
            self.show_feedback("Resetting the identity…")
            self.resetRequested.emit()
