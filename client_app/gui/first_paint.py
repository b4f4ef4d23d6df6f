"""start_after_first_paint(): run something once a widget has painted (gui/startup.py builds the rest of the
window and starts the device core that way). Qt's core classes only: it is used before the window shows."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QWidget


class _FirstPaint(QObject):
    """Calls `then` once, after the watched widget's first paint (or after `latest_ms` at the latest)."""

    def __init__(self, widget: QWidget, then: Callable[[], None], latest_ms: int) -> None:
        super().__init__(widget)
        self._widget = widget
        self._then: Callable[[], None] | None = then
        widget.installEventFilter(self)
        # A window that never paints (started minimised) still connects. Timers die with this object.
        QTimer.singleShot(latest_ms, self, self._fire)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self._widget and event.type() == QEvent.Type.Paint and self._then is not None:
            QTimer.singleShot(0, self, self._fire)  # after this paint has reached the screen
        return False

    def _fire(self) -> None:
        then, self._then = self._then, None
        if then is not None:
            self._widget.removeEventFilter(self)
            then()


def start_after_first_paint(widget: QWidget, then: Callable[[], None], latest_ms: int = 1000) -> None:
    """Run `then` once the widget has painted: on a cold start (page cache empty) what it loads then reads the
    disk after the window's files, not in competition with them, and what it builds comes after the window."""
    _FirstPaint(widget, then, latest_ms)
