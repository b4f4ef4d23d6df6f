"""The desktop app's controller: the window, tray and dialogs on one side, the device core on the other.

run_gui() (client_app/gui/startup.py) shows the window's frame, builds its panels after its first paint and
this once the panels have painted.

The device core runs in a process of its own (client_app/core_service.py, started through
client_app/device/remote.py): this process only renders, so the SDK's threads never take the
interpreter lock from the GUI thread, and it never imports the SDK or the keyring.

AppController is the one place that talks to the core (a RemoteRuntime). Calls that may block (send,
retry, reset, stop) run on the bridge's worker thread; the core's events come back as Qt
signals. Widgets never see the runtime, and core threads never see a widget. A core process that
dies is shown as an error and started again.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot, qVersion
from PySide6.QtWidgets import QApplication

from client_app.device.config import ConfigError, ConfigStore, DeviceConfig, ProxySetting
from client_app.device.status import ConnectionState, DeviceStatus
from client_app.gui.bridge import MAX_MESSAGES_PER_TURN, RuntimeBridge
from client_app.gui.first_paint import start_after_first_paint
from client_app.gui.main_window import MainWindow
from client_app.gui.notifications import MessageNotifier
from client_app.gui.startup import GUI_SWITCH_INTERVAL

# Dialogs and the support panel are imported when first opened, not on the way to the first window: each Qt
# class a module names is set up (its enums made) on first use, which is CPU time before the window shows.
if TYPE_CHECKING:
    from PySide6.QtWidgets import QDialog

    from client_app.device.messages import InboxMessage
    from client_app.device.remote import RemoteRuntime
    from client_app.gui import diagnostics
    from client_app.gui.settings_dialog import SettingsDialog
    from client_app.gui.support_panel import SupportPanel
    from client_app.gui.tray import StatusTray

log = logging.getLogger(__name__)

_NEVER = datetime.min.replace(tzinfo=UTC)
INITIAL_INBOX_ROWS = 1000
OUTBOX_ROWS = 200
# A core process that died is started again after 1 s, then 2, 4 … 30 s while it keeps dying within a minute.
RESTART_DELAYS = (1.0, 30.0)
SETUP_PAINT_WAIT_MS = 200  # a hidden window never paints the first-run list: start without it after this

# Plain words for the commands the user can trigger.
COMMANDS = {
    "send": "Sending the message",
    "retry": "Retrying",
    "reconnect": "Reconnecting",
    "reset": "Resetting the identity",
    "restart": "Applying the new settings",
    "mark_read": "Marking messages read",
    "copy": "Copying diagnostics",
    "export": "Exporting diagnostics",
    "outbox": "Loading the sent messages",
    "start": "Starting the connection",
    "demo_cloud": "Switching the demo's local cloud",
}


class CloudSwitch(Protocol):
    """The demo's embedded local cloud (client_app.demo.CloudSwitch); the GUI never imports the demo."""

    def running(self) -> bool: ...
    def stop(self) -> None: ...
    def start(self) -> None: ...


class AppController(QObject):
    """Connects a DeviceRuntime (through a RuntimeBridge) to the window, tray and dialogs."""

    diagnosticsExported = Signal(str)  # path of the written zip
    _diagnosticsCopied = Signal(str)  # the summary text
    _outboxLoaded = Signal(list)
    _runtimeReplaced = Signal(object, object)  # the new RemoteRuntime, its first DeviceStatus
    # RemoteRuntime, inbox history, unread messages older than it, sent messages, DeviceStatus
    _started = Signal(object, list, int, list, object)
    _startFailed = Signal(str)
    _demoCloudSwitched = Signal(bool)  # running now?

    def __init__(
        self,
        config: DeviceConfig,
        window: MainWindow,
        *,
        tray: StatusTray | None = None,
        notify: bool = True,
        store: ConfigStore | None = None,
        cloud_switch: CloudSwitch | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.store = store  # where Settings are saved; None: the dialog is not offered
        if store is not None:
            store.keep_proxy_password = self._keep_proxy_password  # the keyring is the core's
        self.window = window
        self.tray = tray
        self.bridge = RuntimeBridge(self)
        self.notifier = MessageNotifier(tray, window, self)
        self.notifier.enabled = notify and not config.do_not_disturb
        self.notifier.openRequested.connect(self.open_message)
        # Two references, one per thread: the GUI reads `runtime` (assigned only in GUI slots), the bridge's
        # worker calls `_worker_runtime` (assigned only on the worker). A restart on the worker never swaps
        # the object a GUI slot is reading, and a command queued during a restart runs on the new core.
        self.runtime: RemoteRuntime | None = None
        self._worker_runtime: RemoteRuntime | None = None
        self._shutting_down = False
        self._restart_delay = RESTART_DELAYS[0]
        self._last_loss = float("-inf")
        self.support_panel: SupportPanel | None = None
        self.settings_dialog: SettingsDialog | None = None
        self.about_dialog: QDialog | None = None
        self.status: DeviceStatus | None = None
        self._switch_interval = sys.getswitchinterval()

        self.bridge.statusChanged.connect(self.show_status)
        self.bridge.stepChanged.connect(window.step_changed)
        self.bridge.messagesArrived.connect(self._messages_arrived)
        self.bridge.outboxChanged.connect(self.refresh_outbox)
        self.bridge.commandFailed.connect(self._command_failed)
        self.bridge.coreLost.connect(self._core_lost)
        queued = Qt.ConnectionType.QueuedConnection
        self._outboxLoaded.connect(window.set_outbox, queued)
        self._runtimeReplaced.connect(self._runtime_replaced, queued)
        self._started.connect(self._core_started, queued)
        self._startFailed.connect(self._core_failed, queued)
        self.diagnosticsExported.connect(self._diagnostics_exported, queued)
        self._diagnosticsCopied.connect(self._diagnostics_copied, queued)

        window.sendRequested.connect(self.send)
        window.retryRequested.connect(self.retry)
        window.reconnectRequested.connect(self.reconnect_now)
        window.readChanged.connect(self._read_changed)
        window.allReadRequested.connect(self._all_read)
        window.settingsRequested.connect(self.open_settings)
        window.detailsRequested.connect(self.open_support_panel)
        window.exportDiagnosticsRequested.connect(self.export_diagnostics)
        window.openLogsRequested.connect(self.open_log_folder)
        window.aboutRequested.connect(self.open_about)
        self.cloud_switch = cloud_switch
        if cloud_switch is not None:
            window.add_demo_menu(cloud_switch.running())
            window.demoCloudToggleRequested.connect(self.toggle_demo_cloud)
            self._demoCloudSwitched.connect(window.demo_cloud_switched, queued)
        if tray is not None:
            tray.showWindowRequested.connect(window.bring_forward)
            tray.reconnectRequested.connect(self.reconnect_now)
            tray.detailsRequested.connect(self.open_support_panel)
            tray.settingsRequested.connect(self._settings_from_tray)
            tray.doNotDisturbChanged.connect(self.set_do_not_disturb)
            tray.set_do_not_disturb(config.do_not_disturb)
            window.inbox_box.unreadChanged.connect(tray.show_unread)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the core process off the GUI thread: spawning it and its first answers must not stall."""
        # What is loaded by now lives as long as the app: out of the collector's sight, so a full
        # collection during a burst walks only what came after (cheap: no walk happens here).
        gc.freeze()
        # The window's own threads (the core's event reader, the command worker) give the interpreter lock
        # back to the GUI thread after 1 ms instead of Python's 5: no repaint waits longer for it.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GUI_SWITCH_INTERVAL)
        if self.config.layout.chain_file.exists():
            self.bridge.run_command(COMMANDS["start"], self._start_core)
            return
        self.window.begin_setup()  # the first run: its steps are worth showing
        # Once they are on screen: starting the core (imports, a process to spawn) would compete with that
        # repaint for the interpreter lock and a CPU.
        start_after_first_paint(
            self.window.first_run,
            lambda: self.bridge.run_command(COMMANDS["start"], self._start_core),
            latest_ms=SETUP_PAINT_WAIT_MS,
        )

    def _new_core(self, config: DeviceConfig) -> RemoteRuntime:  # bridge worker thread
        from client_app.device.remote import RemoteRuntime

        runtime = RemoteRuntime(config, self.bridge, on_lost=self.bridge.core_lost)
        runtime.start()
        return runtime

    def _start_core(self) -> None:  # bridge worker thread
        old = self._worker_runtime
        if old is not None and old.alive:
            return  # a Retry and the automatic restart crossed: one core is enough
        self._worker_runtime = None
        if old is not None:
            old.close()  # a core process that died: reaped
        try:
            runtime = self._new_core(self.config)
        except Exception as exc:  # e.g. an unreadable data directory: say so, keep the window up
            log.error("the device core could not start: %s", exc)
            self._startFailed.emit(f"The app could not start its connection: {exc}")
            return
        try:
            # Later arrivals come through the bridge (the model drops duplicates).
            history = runtime.inbox.list(INITIAL_INBOX_ROWS)
            # Fewer than asked for is all there is; else the window counts the unread ones it did not load.
            full = len(history) == INITIAL_INBOX_ROWS
            older = runtime.inbox.unread_count(before=history[-1].id) if full else 0
            sent = runtime.outbox.list(OUTBOX_ROWS)
            status = runtime.status()
        except Exception as exc:
            log.error("the device core did not answer after starting: %s", exc)
            runtime.close()
            self._startFailed.emit(f"The app could not start its connection: {exc}")
            return
        self._worker_runtime = runtime
        self._started.emit(runtime, history, older, sent, status)

    @Slot(object, list, int, list, object)
    def _core_started(self, runtime: RemoteRuntime, history: list, older: int, sent: list,
                      status: DeviceStatus) -> None:  # fmt: skip
        self.runtime = runtime
        if history:
            self.window.inbox_box.set_older_unread(older, history[-1].id)
        self._show_history(history)
        self.window.set_outbox(sent)
        self.show_status(self._newest(status))

    def _show_history(self, history: list[InboxMessage]) -> None:
        """The inbox kept from earlier runs (newest first), a turn's worth at a time: a long one would
        otherwise hold the event loop for tens of milliseconds."""
        self.window.add_messages(history[:MAX_MESSAGES_PER_TURN])
        if len(history) > MAX_MESSAGES_PER_TURN:
            QTimer.singleShot(0, self, lambda: self._show_history(history[MAX_MESSAGES_PER_TURN:]))

    @Slot(str)
    def _core_failed(self, message: str) -> None:
        self.runtime = None
        self.show_status(
            DeviceStatus(state=ConnectionState.ERROR, message=message, log_dir=str(self.config.log_dir))
        )

    def _newest(self, status: DeviceStatus) -> DeviceStatus:
        """`status` was read on the worker; the core may have published a newer one since."""
        latest = self.bridge.latest_status()
        if latest is None or (latest.updated_at or _NEVER) < (status.updated_at or _NEVER):
            return status
        return latest

    @Slot(str)
    def _core_lost(self, reason: str) -> None:
        """The core's process died (or broke the protocol): say so in plain words, start a new one."""
        if self._shutting_down:
            return
        now = time.monotonic()
        recent = now - self._last_loss < 60
        self._last_loss = now
        self._restart_delay = min(self._restart_delay * 2, RESTART_DELAYS[1]) if recent else RESTART_DELAYS[0]
        self.runtime = None
        message = f"The app's connection stopped unexpectedly; it restarts in {self._restart_delay:.0f} s."
        self.show_status(
            DeviceStatus(
                state=ConnectionState.ERROR,
                message=message,
                last_error=reason,
                log_dir=str(self.config.log_dir),
            )
        )
        # The controller as context: a restart still pending when it is deleted (quit) goes with it.
        QTimer.singleShot(int(self._restart_delay * 1000), self, self._restart_lost_core)

    def _restart_lost_core(self) -> None:
        if not self._shutting_down and self.runtime is None:
            self.bridge.run_command(COMMANDS["start"], self._start_core)

    def shutdown(self, timeout: float = 10) -> None:
        """Stop the core and wait for it; the window may already be gone."""
        self._shutting_down = True
        self.bridge.shutdown()  # the worker is idle from here on: its runtime is ours to stop
        runtime, self._worker_runtime, self.runtime = self._worker_runtime, None, None
        if runtime is not None:
            runtime.stop(timeout)
            runtime.close()
        # Nothing from the core may reach widgets that are being torn down.
        self.bridge.blockSignals(True)
        sys.setswitchinterval(self._switch_interval)  # leave the process as found
        if self.support_panel is not None:
            self.support_panel.close()
            self.support_panel.deleteLater()
            self.support_panel = None

    # --- from the core ---------------------------------------------------------------------

    @Slot(object)
    def show_status(self, status: DeviceStatus) -> None:
        self.status = status
        self.window.show_status(status)
        if self.tray is not None:
            self.tray.show_status(status)
        if self.support_panel is not None:
            self.support_panel.show_status(status)

    @Slot(list)
    def _messages_arrived(self, messages: list[InboxMessage]) -> None:
        if self.window.add_messages(messages):
            self.notifier.messages_arrived(messages)

    @Slot()
    def refresh_outbox(self) -> None:
        self._on_worker("outbox", lambda runtime: self._outboxLoaded.emit(runtime.outbox.list(OUTBOX_ROWS)))

    @Slot(str, str)
    def _command_failed(self, what: str, why: str) -> None:
        text = f"{what} did not work: {why}"
        if what == COMMANDS["send"]:
            self.window.show_send_error(text)
        elif self.support_panel is not None and self.support_panel.isVisible():
            self.support_panel.show_feedback(text)
        else:
            self.window.statusBar().showMessage(text, 15000)

    # --- from the user ---------------------------------------------------------------------

    def _on_worker(self, command: str, call: Callable[[RemoteRuntime], Any]) -> None:
        """Run `call` on the bridge's worker with the runtime current *then* (not when queued)."""

        def with_runtime() -> None:
            runtime = self._worker_runtime
            if runtime is None:
                raise RuntimeError("the app's connection did not start")
            call(runtime)

        if self.runtime is not None:
            self.bridge.run_command(COMMANDS[command], with_runtime)

    def _run(self, command: str, method: str, *args: Any) -> None:
        self._on_worker(command, lambda runtime: getattr(runtime, method)(*args))

    @Slot(str, dict)
    def send(self, text: str, properties: dict[str, str]) -> None:
        # Persisted by the core before it returns; the outbox refresh shows it queued or delivered.
        if self.runtime is None:
            self.window.show_send_error("The message was not kept: the app's connection did not start.")
            return

        def send_and_refresh(runtime: RemoteRuntime) -> None:
            runtime.send(text, properties or None)
            self.bridge.outbox_changed()

        self._on_worker("send", send_and_refresh)

    @Slot()
    def retry(self) -> None:
        self.window.first_run.failure_box.hide()
        if self.runtime is None:
            self.start()  # the core itself did not start (e.g. an unwritable data directory): try that again
        else:
            self._run("retry", "retry")

    @Slot()
    def reconnect_now(self) -> None:
        self._run("reconnect", "reconnect_now")

    @Slot()
    def reset_identity(self) -> None:
        self.window.begin_setup()
        self._run("reset", "reset_identity")

    @Slot(list, bool)
    def _read_changed(self, messages: list[InboxMessage], read: bool) -> None:
        ids = [message.id for message in messages]
        self._on_worker("mark_read", lambda runtime: runtime.inbox.set_read(ids, read))

    @Slot(int)
    def _all_read(self, up_to: int) -> None:
        self._on_worker("mark_read", lambda runtime: runtime.inbox.mark_all_read(up_to))

    @Slot()
    def open_support_panel(self) -> None:
        if self.support_panel is None:
            from client_app.gui.support_panel import SupportPanel

            panel = SupportPanel(self.window)
            panel.copyRequested.connect(self.copy_diagnostics)
            panel.exportRequested.connect(self.export_diagnostics)
            panel.reconnectRequested.connect(self.reconnect_now)
            panel.resetRequested.connect(self.reset_identity)
            self.support_panel = panel
        if self.status is not None:
            self.support_panel.show_status(self.status)
        self.support_panel.show_facts(self.support_facts())
        self.support_panel.show()
        self.support_panel.raise_()
        self.support_panel.activateWindow()

    @Slot(object)
    def open_message(self, message: InboxMessage) -> None:
        """A notification was clicked: the window comes forward on that message."""
        self.window.bring_forward()
        self.window.inbox_box.reveal(message)

    @Slot()
    def toggle_demo_cloud(self) -> None:
        switch = self.cloud_switch
        if switch is None:
            return

        def toggle() -> None:  # bridge worker: stopping joins the cloud's thread
            if switch.running():
                switch.stop()
            else:
                switch.start()
            self._demoCloudSwitched.emit(switch.running())

        self.bridge.run_command(COMMANDS["demo_cloud"], toggle)

    @Slot(bool)
    def set_do_not_disturb(self, on: bool) -> None:
        self.notifier.enabled = not on
        self.config = dataclasses.replace(self.config, do_not_disturb=on)
        if self.store is not None:
            try:
                self.store.save({"do_not_disturb": on})  # a small local file write: kept for the next start
            except (ConfigError, OSError) as exc:
                self.window.statusBar().showMessage(f"Do not disturb is on until you quit ({exc}).", 15000)

    def _keep_proxy_password(self, proxy: ProxySetting) -> None:
        """Settings → Save with a proxy password: into the keyring through the core's process (this process
        never opens the keyring). A short call on the GUI thread, as the keyring write was before."""
        from client_app.device.remote import CoreError

        runtime = self.runtime
        if runtime is None:
            raise ConfigError("the proxy password could not be kept: the connection is not running yet")
        try:
            runtime.store_proxy_password(proxy)
        except CoreError as exc:
            raise ConfigError(str(exc)) from None

    def _apply_start_at_login(self, on: bool) -> None:
        from client_app.gui.login_start import set_start_at_login

        try:
            set_start_at_login(on)
        except OSError as exc:
            self.window.statusBar().showMessage(f"Start at login could not be changed: {exc}", 15000)

    def _settings_from_tray(self) -> None:
        self.window.bring_forward()
        self.open_settings()

    @Slot()
    def open_log_folder(self) -> None:
        from PySide6.QtCore import QUrl
        from PySide6.QtGui import QDesktopServices

        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.config.log_dir))):
            self.window.statusBar().showMessage(f"The logs are in {self.config.log_dir}", 15000)

    @Slot()
    def open_settings(self) -> None:
        if self.store is None:
            self.window.statusBar().showMessage("Settings are not available in this window.", 15000)
            return
        if self.settings_dialog is None:
            from client_app.gui.settings_dialog import SettingsDialog

            dialog = SettingsDialog(self.store, self.config, self.window)
            dialog.saved.connect(self.apply_config)
            dialog.finished.connect(lambda _result: self._settings_closed())
            self.settings_dialog = dialog
        self.settings_dialog.open()

    def _settings_closed(self) -> None:
        if self.settings_dialog is not None:
            self.settings_dialog.deleteLater()
            self.settings_dialog = None

    @Slot(object)
    def apply_config(self, config: DeviceConfig) -> None:
        """Restart the core with new settings, off the GUI thread (stop() joins threads)."""
        if config.start_at_login != self.config.start_at_login:
            self._apply_start_at_login(config.start_at_login)
        self.config = config

        def restart() -> None:  # bridge worker thread
            old, self._worker_runtime = self._worker_runtime, None
            if old is not None:
                old.close()  # the core stops and closes its database; its process ends
            try:
                runtime = self._new_core(config)  # a new process: the same path as the first start
                status = runtime.status()
            except Exception as exc:  # Retry then starts afresh instead of using the closed core
                log.error("the device core could not restart: %s", exc)
                self._startFailed.emit(f"The app could not start its connection: {exc}")
                return
            self._worker_runtime = runtime
            self._runtimeReplaced.emit(runtime, status)

        self.bridge.run_command(COMMANDS["restart"], restart)

    @Slot(object, object)
    def _runtime_replaced(self, runtime: RemoteRuntime, status: DeviceStatus) -> None:
        self.runtime = runtime
        self.show_status(self._newest(status))
        self.refresh_outbox()

    def support_facts(self) -> dict[str, str]:
        """What a support call asks besides the connection: full, readable paths (the user's own screen)."""
        import platform

        from client_app.device.twin import app_version

        config = self.config
        return {
            "App version": app_version(),
            # Not platform.platform(): it runs `uname -p` in a subprocess, here on the GUI thread.
            "Operating system": f"{platform.system()} {platform.release()} ({platform.machine()})",
            "Proxy": str(config.proxy) if config.proxy else "none",
            "Data folder": str(config.data_dir),
            "Settings file": str(self.store.path) if self.store else str(config.config_dir),
        }

    @Slot()
    def open_about(self) -> None:
        from client_app.gui.about import AboutDialog

        dialog = AboutDialog(self.window)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.about_dialog = dialog
        dialog.show()

    def app_facts(self) -> dict[str, Any]:
        from PySide6.QtWidgets import QSystemTrayIcon

        return {
            "qt": qVersion(),
            "qt_platform": QApplication.platformName(),
            "tray_available": QSystemTrayIcon.isSystemTrayAvailable(),
            "keeps_running_in_tray": self.window.keep_running_in_tray,
        }

    def _run_with_diagnostics(
        self, command: str, use: Callable[[diagnostics.Diagnostics], None], *, include_logs: bool
    ) -> None:
        """Gather diagnostics on the worker thread (they read files and wait on the core's lock)."""
        facts = self.app_facts()  # Qt calls stay on the GUI thread
        status = self.status

        def gather() -> None:
            runtime = self._worker_runtime
            current = runtime.status() if runtime is not None else status
            from client_app.gui import diagnostics

            use(diagnostics.collect(current, self.config, app_facts=facts, include_logs=include_logs))

        self.bridge.run_command(COMMANDS[command], gather)

    @Slot()
    def copy_diagnostics(self) -> None:
        self._run_with_diagnostics(
            "copy", lambda found: self._diagnosticsCopied.emit(found.summary_text()), include_logs=False
        )

    @Slot(str)
    def _diagnostics_copied(self, text: str) -> None:
        QApplication.clipboard().setText(text)
        if self.support_panel is not None:
            self.support_panel.show_feedback("Diagnostics copied to the clipboard (no keys or secrets).")

    @Slot()
    def export_diagnostics(self, path: Path | None = None) -> None:
        if path is None:
            from PySide6.QtWidgets import QFileDialog

            from client_app.gui.diagnostics import default_zip_name

            chosen, _filter = QFileDialog.getSaveFileName(
                self.window,
                "Export diagnostics",
                str(Path.home() / default_zip_name()),
                "Zip archives (*.zip)",
            )
            if not chosen:
                return
            path = Path(chosen)
        target = path  # narrowed to Path for the closure
        self._run_with_diagnostics(
            "export",
            lambda found: self.diagnosticsExported.emit(str(found.write_zip(target))),
            include_logs=True,
        )

    @Slot(str)
    def _diagnostics_exported(self, path: str) -> None:
        text = f"Diagnostics saved to {path}"
        if self.support_panel is not None and self.support_panel.isVisible():
            self.support_panel.show_feedback(text)
        self.window.statusBar().showMessage(text, 15000)
