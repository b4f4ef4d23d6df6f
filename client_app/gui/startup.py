"""run_gui(): the desktop app's start, window first.

The main window's frame (title, size, place, menus) is shown before the rest is loaded: its panels, the
style, the tray, the AppController with its bridge, the single-instance server and the device core's
process come right after its first paint. On a cold start every module and Qt class set up before
show() is time the user waits for a window (bench/cold_start.py). Whether another window already runs
on this data directory is decided before any window, with a file lock, so a second launch never shows
one: it asks the first to come forward and exits (or says why it cannot start, single_instance.tell_user).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from client_app.device.config import ConfigStore, DeviceConfig
from client_app.gui.first_paint import start_after_first_paint
from client_app.gui.main_window import MainWindow, import_panels
from client_app.gui.single_instance import Claim, SingleInstance, tell_user
from client_app.logsetup import open_held_log, setup_logging

if TYPE_CHECKING:
    from client_app.gui.app import AppController, CloudSwitch
    from client_app.gui.errors import ErrorReporter
    from client_app.gui.tray import StatusTray

log = logging.getLogger(__name__)

# Quit must end the process within 5 s: a core thread stuck in a blocking SDK call is a daemon and is
# left behind after this long (the outbox and inbox are already on disk).
QUIT_STOP_SECONDS = 3.0
COULD_NOT_START = "The app could not start. Details are in the log."
WINDOW_STATE_FILE = "window-state.ini"  # where the window was: not a setting, so not in config.toml
# Seconds another thread of the window's process may hold the interpreter lock while the GUI thread waits for
# it (Python's default, 5 ms, would be a 5 ms stall per hand-over): from the loading of the window's modules
# on (finish_or_fail), and the controller's threads (AppController.start) until the window closes.
GUI_SWITCH_INTERVAL = 0.001


def _load_the_rest() -> None:
    """What Desktop.finish_or_fail() builds from, imported off the GUI thread (imports only: no Qt object is
    made here). A failure is left to show, and be reported, when the GUI thread imports the same."""
    with contextlib.suppress(Exception):
        for module in ("app", "errors", "style", "tray"):
            importlib.import_module(f"client_app.gui.{module}")
        importlib.import_module("logging.handlers")  # the log file's handler (logsetup.py)
        importlib.import_module("PySide6.QtNetwork")  # the single-instance server (single_instance.py)
        import_panels()


def _quit_on_signals(app: QApplication, quit_app: Callable[[], None]) -> Callable[[], None]:
    """Ctrl-C and SIGTERM quit cleanly (core stopped, embedded demo cloud stopped at exit).

    Python runs signal handlers only between bytecodes, so a timer wakes the interpreter. The quit is
    queued: a signal that arrives before app.exec() (slow cold start) must not be lost."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _sig, _frame: QTimer.singleShot(0, quit_app))
    wake = QTimer(app)
    wake.timeout.connect(lambda: None)
    wake.start(300)

    def restore() -> None:
        wake.stop()
        wake.deleteLater()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


class Desktop:
    """What run_gui builds: the window's frame at once, the rest after its first paint (finish())."""

    def __init__(
        self,
        app: QApplication,
        config: DeviceConfig,
        store: ConfigStore | None,
        cloud_switch: CloudSwitch | None,
        single: SingleInstance,
    ) -> None:
        self.app = app
        self.config = config
        self.store = store
        self.cloud_switch = cloud_switch
        self.single = single
        self.window = MainWindow(content=False)
        self.reporter: ErrorReporter | None = None
        self.tray: StatusTray | None = None
        self.controller: AppController | None = None
        self._hint_shown = False
        self._switch_interval = sys.getswitchinterval()  # restored by close()
        # Without a tray (e.g. GNOME without AppIndicator) closing the window quits.
        self.window.quitRequested.connect(self.quit)

    def quit(self, code: int = 0) -> None:
        self.single.stop_listening()  # first: a launch from now on must not hand over to a window that goes
        # Not app.quit(): since Qt 6 it first asks every window to close, and a window that hides to the
        # tray refuses, so Quit would only hide it. exit() ends the loop whatever the windows say.
        self.window.quitting = True
        self.app.exit(code)

    def finish_or_fail(self) -> None:
        """After the frame's first paint, the rest, one piece per event-loop turn: together they take ~50 ms
        of the GUI thread, and the window must answer within a frame at 60 Hz meanwhile (bench/ui_stall.py).
        Their modules load first, on a thread of their own while the loop goes on; then the log and style,
        the panels, and the tray and the controller (the core starts once the panels have painted)."""
        sys.setswitchinterval(GUI_SWITCH_INTERVAL)  # the loop waits ≤ 1 ms for the loader's lock
        loader = threading.Thread(target=_load_the_rest, name="load-window", daemon=True)
        loader.start()
        poll = QTimer(self.window)
        poll.setInterval(2)

        def loaded() -> None:
            if loader.is_alive():
                return
            poll.stop()
            poll.deleteLater()
            content = self.window.content_steps()
            self._run_steps([self._open_log_and_style, *content, self._after_panels_paint])

        poll.timeout.connect(loaded)
        poll.start()

    def _run_steps(self, steps: list[Callable[[], None]]) -> None:
        """The first step now, the others each in a later turn; a failure must not leave an empty window."""
        try:
            steps[0]()
        except Exception:
            log.exception("the app could not start")
            from client_app.gui.errors import show_error

            show_error(COULD_NOT_START, self.window)
            self.quit(1)
            return
        if len(steps) > 1:
            QTimer.singleShot(0, self.window, lambda: self._run_steps(steps[1:]))

    def _open_log_and_style(self) -> None:
        from client_app.gui.errors import ErrorReporter
        from client_app.gui.style import install_style

        open_held_log()  # the entry point held the log's first lines until now
        setup_logging(self.config.log_dir)  # for a direct call of run_gui(); else already done
        self.reporter = ErrorReporter(lambda: self.window, self.config.log_dir)
        self.reporter.install()
        install_style(self.app)

    def _after_panels_paint(self) -> None:
        # The panels' first paint (~10 ms with the style) has a turn of its own, before the controller's.
        panels = self.window.centralWidget()
        start_after_first_paint(panels, lambda: self._run_steps([self._start_controller]))

    def _start_controller(self) -> None:
        from client_app.gui.app import AppController
        from client_app.gui.tray import StatusTray

        window = self.window
        if StatusTray.available():
            self.tray = StatusTray()
            self.tray.show()
            window.keep_running_in_tray = True
            self.app.setQuitOnLastWindowClosed(False)
            self.tray.quitRequested.connect(self.quit)
        window.hiddenToTray.connect(self._hidden_to_tray)
        self.controller = AppController(
            self.config, window, tray=self.tray, store=self.store, cloud_switch=self.cloud_switch
        )
        self.single.activateRequested.connect(window.bring_forward)
        self.single.listen()
        # The panels have painted (_after_panels_paint): the core's process starts in the next turn, its
        # imports and process start no longer competing with that paint for the CPUs and the disk.
        QTimer.singleShot(0, window, self.controller.start)

    def _hidden_to_tray(self) -> None:
        if self.tray is not None and not self._hint_shown and self.tray.can_notify():
            self._hint_shown = True
            self.tray.show_message(
                "client-app keeps running", "It stays connected here. Quit from this icon's menu."
            )

    def close(self) -> None:
        self.single.stop_listening()  # also when the loop ended without quit() (stopping takes seconds)
        self.window.hide()
        if self.controller is not None:
            self.controller.shutdown(timeout=QUIT_STOP_SECONDS)
            self.controller.deleteLater()
        self.single.release()
        if self.tray is not None:
            self.tray.dispose()
        if self.reporter is not None:
            self.reporter.uninstall()
        gc.unfreeze()  # AppController.start() froze it: leave the process as found (tests run it in theirs)
        sys.setswitchinterval(self._switch_interval)  # as run_gui() found it, after the controller's restore
        self.window.deleteLater()


def run_gui(
    config: DeviceConfig, store: ConfigStore | None = None, cloud_switch: CloudSwitch | None = None
) -> int:
    """Run the desktop app until the user quits; returns the process exit code."""
    app = QApplication.instance() or QApplication(sys.argv)
    assert isinstance(app, QApplication)
    app.setApplicationName("client-app")
    # No display name: Qt appends it to every window title ("client-app (3 unread) — client-app").
    app.setDesktopFileName("client-app")

    single = SingleInstance(config.data_dir)
    claim = single.claim_lock()
    if claim is not Claim.FIRST:
        single.deleteLater()
        return tell_user(claim, single)

    desktop = Desktop(app, config, store, cloud_switch, single)
    state_file = config.config_dir / WINDOW_STATE_FILE
    desktop.window.place(state_file)
    desktop.window.show()
    restore_signals = _quit_on_signals(app, desktop.quit)
    code = 1
    try:
        start_after_first_paint(desktop.window, desktop.finish_or_fail)
        code = app.exec()
    except Exception:
        log.exception("the app failed")
        from client_app.gui.errors import show_error

        show_error(COULD_NOT_START)
    finally:
        desktop.window.remember_place(state_file)
        desktop.close()  # signals still queue a quit meanwhile: a second Ctrl+C cannot cut the stop short
        restore_signals()
        single.deleteLater()
    return code
