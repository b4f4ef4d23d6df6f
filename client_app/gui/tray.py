"""Tray icon whose look follows the connection state, with a small menu."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from client_app.device.status import DeviceStatus
from client_app.gui.icons import status_icon
from client_app.gui.status_text import Tone, describe, tooltip


class StatusTray(QObject):
    showWindowRequested = Signal()
    reconnectRequested = Signal()
    detailsRequested = Signal()
    settingsRequested = Signal()
    doNotDisturbChanged = Signal(bool)
    quitRequested = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tone = Tone.BUSY
        self.icon = QSystemTrayIcon(status_icon(self.tone), self)
        self.icon.setToolTip("client-app\nStarting…")
        self.menu = QMenu()
        self.status_action = QAction("Starting…", self.menu)
        self.status_action.setEnabled(False)  # a label: the state at a glance
        self.unread_action = QAction("No unread messages", self.menu)
        self.unread_action.triggered.connect(self.showWindowRequested)
        show_action = QAction("Show window", self.menu)
        show_action.triggered.connect(self.showWindowRequested)
        details_action = QAction("Connection details…", self.menu)
        details_action.triggered.connect(self.detailsRequested)
        settings_action = QAction("Settings…", self.menu)
        settings_action.triggered.connect(self.settingsRequested)
        reconnect_action = QAction("Reconnect now", self.menu)
        reconnect_action.triggered.connect(self.reconnectRequested)
        self.dnd_action = QAction("Do not disturb", self.menu)
        self.dnd_action.setCheckable(True)
        self.dnd_action.toggled.connect(self.doNotDisturbChanged)
        self.quit_action = QAction("Quit", self.menu)
        self.quit_action.triggered.connect(self.quitRequested)
        for action in (
            self.status_action,
            self.unread_action,
            None,
            show_action,
            details_action,
            settings_action,
            reconnect_action,
            None,
            self.dnd_action,
            None,
            self.quit_action,
        ):
            if action is None:
                self.menu.addSeparator()
            else:
                self.menu.addAction(action)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)

    @staticmethod
    def available() -> bool:
        """False on e.g. GNOME without the AppIndicator extension: then there is no tray at all."""
        return QSystemTrayIcon.isSystemTrayAvailable()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def show_status(self, status: DeviceStatus) -> None:
        text = describe(status)
        if text.tone is not self.tone:
            self.tone = text.tone
            self.icon.setIcon(status_icon(text.tone))
        self.icon.setToolTip(tooltip(status))
        self.status_action.setText(text.headline)

    def show_unread(self, unread: int) -> None:
        self.unread_action.setText(
            f"{unread} unread message{'s' if unread != 1 else ''}" if unread else "No unread messages"
        )
        self.unread_action.setEnabled(unread > 0)

    def set_do_not_disturb(self, on: bool) -> None:
        """Show the saved setting without announcing it as a change."""
        self.dnd_action.blockSignals(True)
        self.dnd_action.setChecked(on)
        self.dnd_action.blockSignals(False)

    def can_notify(self) -> bool:
        return self.icon.isVisible() and self.available() and QSystemTrayIcon.supportsMessages()

    def show_message(self, title: str, body: str) -> None:
        self.icon.showMessage(title, body, QSystemTrayIcon.MessageIcon.Information, 8000)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.showWindowRequested.emit()

    def dispose(self) -> None:
        self.icon.hide()
        self.icon.setContextMenu(None)
        self.menu.deleteLater()
