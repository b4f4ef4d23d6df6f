"""Ctrl-C / SIGTERM handling of the desktop app's event loop."""

from __future__ import annotations

import signal

from PySide6.QtCore import QTimer

from client_app.gui.startup import _quit_on_signals


def test_sigterm_before_the_event_loop_starts_still_quits(qapp):
    # A slow cold start can map the window before app.exec() runs; a SIGTERM then must not be lost.
    restore = _quit_on_signals(qapp, qapp.quit)
    guard = QTimer()
    guard.setSingleShot(True)
    guard.timeout.connect(lambda: qapp.exit(99))
    try:
        signal.raise_signal(signal.SIGTERM)
        guard.start(5000)
        assert qapp.exec() == 0
    finally:
        guard.stop()
        restore()
