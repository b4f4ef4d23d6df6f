"""Tell the user a message arrived: a tray balloon where there is a tray, else the taskbar.

At most one notification per few seconds: a burst of messages becomes one "N new messages".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QApplication, QWidget

from client_app.gui.tray import StatusTray

if TYPE_CHECKING:
    from client_app.device.messages import InboxMessage

PREVIEW_CHARS = 160
MIN_SECONDS_BETWEEN = 5.0


def notification_text(count: int, newest: InboxMessage) -> tuple[str, str]:
    text = newest.text
    preview = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
    if count == 1:
        return "New message from the cloud", preview
    return f"{count} new messages from the cloud", f"Latest: {preview}"


class MessageNotifier(QObject):
    notified = Signal(str, str)  # title, body: whatever was shown, however it was shown
    openRequested = Signal(object)  # the InboxMessage the clicked notification was about

    def __init__(self, tray: StatusTray | None, window: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tray = tray
        self.window = window
        self.enabled = True
        self._pending_count = 0
        self._newest: InboxMessage | None = None
        self._last_shown = float("-inf")
        self._later = QTimer(self)
        self._later.setSingleShot(True)
        self._later.timeout.connect(self._flush)
        self.shown_message: InboxMessage | None = None  # the newest message of the last notification
        if tray is not None:
            tray.icon.messageClicked.connect(self.clicked)

    def messages_arrived(self, messages: Sequence[InboxMessage]) -> None:
        if not self.enabled or not messages:
            return
        self._pending_count += len(messages)
        newest = max(messages, key=lambda m: m.id)  # ids grow with arrival
        if self._newest is None or newest.id > self._newest.id:
            self._newest = newest
        if self._later.isActive():
            return
        wait = MIN_SECONDS_BETWEEN - (time.monotonic() - self._last_shown)
        if wait <= 0:
            self._flush()
        else:
            self._later.start(int(wait * 1000))

    def _flush(self) -> None:
        if self._newest is None:
            return
        title, body = notification_text(self._pending_count, self._newest)
        self.shown_message = self._newest
        self._pending_count, self._newest = 0, None
        self._last_shown = time.monotonic()
        if self.tray is not None and self.tray.can_notify():
            self.tray.show_message(title, body)
        else:
            QApplication.alert(self.window)  # taskbar attention: works without a tray
        self.notified.emit(title, body)

    def clicked(self) -> None:
        """The user clicked the notification: open the window on the message it announced."""
        if self.shown_message is not None:
            self.openRequested.emit(self.shown_message)
