"""Unexpected errors: logged with their traceback, shown to the user in plain words, never as a trace.

sys.excepthook catches exceptions escaping Qt slots on the GUI thread (PySide6 reports them
there); threading.excepthook catches those of other threads, which must not touch widgets, so
they are posted to the GUI thread through a signal.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, Signal, Slot

if TYPE_CHECKING:  # imported when the first box is shown, not on the way to the window
    from PySide6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger("client_app.gui.errors")

_MIN_SECONDS_BETWEEN_DIALOGS = 5.0  # an error in a repaint would otherwise pop a box per frame


def plain_message(log_dir: Path | None) -> str:
    where = f" Details were written to the log in {log_dir}." if log_dir else ""
    return (
        "Something went wrong inside the app. It keeps running; if something looks wrong, "
        f"quit and start it again.{where}"
    )


def show_error(text: str, parent: QWidget | None = None) -> None:
    """One plain sentence in a modal box, for an app that cannot go on (no window, or not started)."""
    from PySide6.QtWidgets import QMessageBox

    QMessageBox.critical(parent, "client-app", text)


class ErrorReporter(QObject):
    """Installed by run_gui; uninstall() restores the previous hooks (tests rely on it)."""

    errorShown = Signal(str)
    _posted = Signal(str)

    def __init__(self, parent_window: Callable[[], QWidget | None], log_dir: Path | None) -> None:
        super().__init__()
        self._parent_window = parent_window
        self._log_dir = log_dir
        self._last_shown = 0.0
        self.box: QMessageBox | None = None
        self._previous_hook = sys.excepthook
        self._previous_thread_hook = threading.excepthook
        self._posted.connect(self._show, Qt.ConnectionType.QueuedConnection)

    def install(self) -> None:
        sys.excepthook = self._excepthook
        threading.excepthook = self._thread_excepthook

    def uninstall(self) -> None:
        sys.excepthook = self._previous_hook
        threading.excepthook = self._previous_thread_hook

    def _excepthook(self, kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            self._previous_hook(kind, value, tb)
            return
        log.error("Unexpected error", exc_info=(kind, value, tb))
        self._posted.emit(plain_message(self._log_dir))

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log.error(
            "Unexpected error in thread %s",
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )
        self._posted.emit(plain_message(self._log_dir))

    @Slot(str)
    def _show(self, text: str) -> None:
        now = time.monotonic()
        if (
            self.box is not None and self.box.isVisible()
        ) or now - self._last_shown < _MIN_SECONDS_BETWEEN_DIALOGS:
            return
        self._last_shown = now
        from PySide6.QtWidgets import QMessageBox

        box = QMessageBox(self._parent_window())
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("client-app")
        box.setText(text)
        box.finished.connect(lambda _result: self._closed(box))
        box.open()  # non-modal for the event loop: the connection keeps running behind it
        self.box = box
        self.errorShown.emit(text)

    def _closed(self, box: QMessageBox) -> None:
        if self.box is box:
            self.box = None
        box.deleteLater()
