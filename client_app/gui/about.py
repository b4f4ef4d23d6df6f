"""Help → About: what a support call asks first (version, build, Qt and SDK versions) and the licences."""

from __future__ import annotations

import html
import sys

from PySide6.QtCore import Qt, qVersion
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from client_app.gui.diagnostics import versions

# The libraries the app ships with and their licences (as published on PyPI for the pinned versions).
LICENCES: tuple[tuple[str, str], ...] = (
    ("Qt 6 / PySide6", "LGPL-3.0"),
    ("azure-iot-device (Azure IoT SDK)", "MIT"),
    ("paho-mqtt", "EPL-2.0 or EDL-1.0"),
    ("cryptography", "Apache-2.0 or BSD-3-Clause"),
    ("keyring", "MIT"),
    ("platformdirs", "MIT"),
)


def build_kind() -> str:
    return "installed build (PyInstaller)" if getattr(sys, "frozen", False) else "from source"


def about_facts() -> dict[str, str]:
    found = versions()
    return {
        "Version": found.get("client-app", "unknown"),
        "Build": build_kind(),
        "Qt": qVersion(),
        "PySide6": found.get("PySide6-Essentials", "unknown"),
        "Azure IoT device SDK": found.get("azure-iot-device", "unknown"),
        "Python": found["python"],
    }


def about_text(facts: dict[str, str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}:&nbsp;</td><td>{html.escape(v)}</td></tr>" for k, v in facts.items()
    )
    licences = "".join(f"<li>{html.escape(name)}: {html.escape(lic)}</li>" for name, lic in LICENCES)
    return (
        "<h3>client-app</h3><p>Connects this computer to its backend through Azure IoT Hub.</p>"
        f"<table>{rows}</table><p>Open-source parts and their licences:</p><ul>{licences}</ul>"
    )


def facts_text(facts: dict[str, str]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in facts.items())


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle("About client-app")
        self.facts = about_facts()
        self.text = QLabel(about_text(self.facts))
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setWordWrap(True)
        self.copy_button = QPushButton("Copy version details")
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(facts_text(self.facts)))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
