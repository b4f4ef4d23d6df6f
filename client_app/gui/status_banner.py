"""The banner at the top of the window: icon, headline, a sentence, and the one useful action."""

from __future__ import annotations

from datetime import datetime

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from client_app.device.status import ConnectionState, DeviceStatus
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
        # Blocked: the administrator needs this computer's device ID, so it is shown with a copy button.
        self.device_id = QLabel()
        self.device_id.setObjectName("bannerDeviceId")
        self.device_id.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_id_button = QPushButton("Copy device ID")
        self.copy_id_button.clicked.connect(self._copy_device_id)
        id_row = QHBoxLayout()
        id_row.setContentsMargins(0, 0, 0, 0)
        id_row.addWidget(self.device_id)
        id_row.addWidget(self.copy_id_button)
        id_row.addStretch(1)
        self.id_row = QWidget()
        self.id_row.setLayout(id_row)
        self.id_row.hide()
        self.retry_button = QPushButton("Retry")
        self.retry_button.clicked.connect(self.retryRequested)
        self.reconnect_button = QPushButton("Reconnect now")
        self.reconnect_button.clicked.connect(self.reconnectRequested)
        texts = QVBoxLayout()
        texts.addWidget(self.headline)
        texts.addWidget(self.detail)
        texts.addWidget(self.id_row)
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

    def show_status(self, status: DeviceStatus, *, offer_retry: bool = True) -> None:
        """offer_retry=False when another part of the window already offers the one Retry."""
        self._status = status
        state = ConnectionState(status.state)
        needs_retry = state in (ConnectionState.ERROR, ConnectionState.BLOCKED)
        self.retry_button.setVisible(offer_retry and needs_retry)
        self.reconnect_button.setVisible(state is ConnectionState.RECONNECTING)
        device_id = status.device_id or status.registration_id
        self.device_id.setText(f"Device ID: {device_id}")
        self.id_row.setVisible(state is ConnectionState.BLOCKED and bool(device_id))
        if state is ConnectionState.RECONNECTING and status.retry_at is not None:
            self._countdown.start()
        else:
            self._countdown.stop()
        self._refresh()

    def _copy_device_id(self) -> None:
        if self._status is not None:
            QApplication.clipboard().setText(self._status.device_id or self._status.registration_id or "")

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
