"""The banner at the top of the window: icon, headline, a sentence, and the one useful action."""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from client_app.device.runtime import ConnectionState, DeviceStatus
from client_app.gui.icons import status_pixmap
from client_app.gui.status_text import TONE_COLOURS, Tone, describe


class StatusBanner(QFrame):
    retryRequested = Signal()
    reconnectRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("statusBanner")
        self._status: DeviceStatus | None = None
        self._tone: Tone | None = None
        self.icon = QLabel()
        self.headline = QLabel("Starting…")
        self.headline.setObjectName("statusHeadline")
        font = self.headline.font()
        font.setPointSizeF(font.pointSizeF() * 1.25)
        font.setBold(True)
        self.headline.setFont(font)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.retry_button = QPushButton("Retry")
        self.retry_button.clicked.connect(self.retryRequested)
        self.reconnect_button = QPushButton("Reconnect now")
        self.reconnect_button.clicked.connect(self.reconnectRequested)
        texts = QVBoxLayout()
        texts.addWidget(self.headline)
        texts.addWidget(self.detail)
        layout = QHBoxLayout(self)
        layout.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        layout.addLayout(texts, 1)
        layout.addWidget(self.retry_button, 0, Qt.AlignmentFlag.AlignVCenter)
        layout.addWidget(self.reconnect_button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.retry_button.hide()
        self.reconnect_button.hide()
        # Ticks the "reconnecting in N s" countdown between status updates.
        self._countdown = QTimer(self)
        self._countdown.setInterval(1000)
        self._countdown.timeout.connect(self._refresh)
        self._apply_tone(Tone.BUSY)

    @property
    def status(self) -> DeviceStatus | None:
        return self._status

    def show_status(self, status: DeviceStatus) -> None:
        self._status = status
        state = ConnectionState(status.state)
        self.retry_button.setVisible(state in (ConnectionState.ERROR, ConnectionState.BLOCKED))
        self.reconnect_button.setVisible(state is ConnectionState.RECONNECTING)
        if state is ConnectionState.RECONNECTING and status.retry_at is not None:
            self._countdown.start()
        else:
            self._countdown.stop()
        self._refresh()

    def _refresh(self, now: datetime | None = None) -> None:
        if self._status is None:
            return
        text = describe(self._status, now)
        self.headline.setText(text.headline)
        self.detail.setText(text.detail)
        self.detail.setVisible(bool(text.detail))
        self._apply_tone(text.tone)

    def _apply_tone(self, tone: Tone) -> None:
        # Each status update and countdown tick lands here; a new style sheet re-polishes the banner.
        if tone is self._tone:
            return
        self._tone = tone
        colour = TONE_COLOURS[tone]
        self.icon.setPixmap(status_pixmap(tone, 32))
        self.setProperty("tone", tone.value)
        self.setStyleSheet(
            f"#statusBanner {{ border-left: 6px solid {colour}; border-radius: 3px;"
            f" background: palette(alternate-base); }}"
        )
