"""The main window: status, first-run progress, the inbox, and the box to send to the cloud.

It knows nothing about the runtime: it shows what it is given (DeviceStatus, messages) and
emits signals for what the user asks. The AppController (app.py) connects the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QModelIndex, QSettings, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from client_app.device.messages import InboxMessage, OutboxMessage
    from client_app.device.status import DeviceStatus, FirstRunStep

MAX_MESSAGE_CHARS = 4096
DEFAULT_SIZE = (860, 620)
GEOMETRY_KEY = "main_window/geometry"


def import_panels() -> None:
    """What the panels need, imported by build_content(): the app shows the window's frame before that (on a
    cold start each module is time before the window, and Qt's namespace ~20 ms to set up its enums)."""
    global ConnectionState, FirstRunPanel, InboxModel, InboxPanel, OutboxModel, Qt, StatusBanner
    global describe, format_properties, send_hint, status_icon
    from PySide6.QtCore import Qt

    from client_app.device.status import ConnectionState
    from client_app.gui.first_run import FirstRunPanel
    from client_app.gui.icons import status_icon
    from client_app.gui.inbox_panel import InboxPanel
    from client_app.gui.models import InboxModel, OutboxModel, format_properties
    from client_app.gui.status_banner import StatusBanner
    from client_app.gui.status_text import describe, send_hint


def parse_properties(text: str) -> dict[str, str]:
    """'a=1, b=two' -> {'a': '1', 'b': 'two'}; raises ValueError with a plain message."""
    properties: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"“{part}” is not a property: write name=value, separated by commas")
        properties[key.strip()] = value.strip()
    return properties


def _table(model, stretch_column: int) -> QTableView:
    view = QTableView()
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    # Tab moves between widgets (not from cell to cell); the arrow keys move inside the table.
    view.setTabKeyNavigation(False)
    view.verticalHeader().hide()
    # Fixed row heights: the view never measures rows, which keeps big inboxes cheap.
    view.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
    view.verticalHeader().setDefaultSectionSize(view.fontMetrics().height() + 8)
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    header.setSectionResizeMode(stretch_column, QHeaderView.ResizeMode.Stretch)
    header.setHighlightSections(False)
    return view


class _MinimumSizeLayout(QVBoxLayout):
    """The window's content in a scroll area that scrolls only below the content's minimum size.

    Word-wrapped labels make a layout "height for width", and QScrollArea then scrolls below the preferred
    height: a scroll bar on a window with room to spare."""

    def hasHeightForWidth(self) -> bool:
        return False


class MessageDialog(QDialog):
    """One cloud-to-device message in full (non-modal, reused)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageDialog")
        self.setWindowTitle("Message from the cloud")
        self.resize(520, 360)
        self.meta = QLabel()
        self.meta.setWordWrap(True)
        self.meta.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body = QPlainTextEdit()
        self.body.setReadOnly(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.meta)
        layout.addWidget(self.body, 1)
        layout.addWidget(buttons)

    def show_message(self, message: InboxMessage) -> None:
        when = message.received_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if message.received_at else ""
        self.meta.setText(f"Received {when}\nProperties: {format_properties(message.properties) or 'none'}")
        self.body.setPlainText(message.text)
        self.show()
        self.raise_()


class MainWindow(QMainWindow):
    sendRequested = Signal(str, dict)  # text, properties
    retryRequested = Signal()
    reconnectRequested = Signal()
    readChanged = Signal(list, bool)  # list[InboxMessage] the user marked read (True) or unread
    allReadRequested = Signal(int)  # Mark all read: every message up to this row id
    settingsRequested = Signal()
    detailsRequested = Signal()
    exportDiagnosticsRequested = Signal()
    openLogsRequested = Signal()
    aboutRequested = Signal()
    demoCloudToggleRequested = Signal()
    quitRequested = Signal()
    hiddenToTray = Signal()

    def __init__(self, parent: QWidget | None = None, *, content: bool = True) -> None:
        """content=False: the frame alone (title, size, menus); build_content() adds the panels. The app
        shows the frame first and builds the panels right after its first paint (gui/startup.py)."""
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("client-app")
        self.resize(*DEFAULT_SIZE)
        # Set by the app from QSystemTrayIcon.isSystemTrayAvailable(): without a tray, closing
        # must quit, never hide the only window for good.
        self.keep_running_in_tray = False
        self.setting_up = False  # first run: the steps are shown (begin_setup)
        self.quitting = False  # set by the app on Quit: closing then really closes
        self._status: DeviceStatus | None = None
        self._build_menus()
        if content:
            self.build_content()

    def build_content(self) -> None:
        for step in self.content_steps():
            step()

    def content_steps(self) -> list[Callable[[], None]]:
        """build_content() in pieces: the app runs one per event-loop turn after the frame has shown, so no
        turn holds the loop longer than a frame (gui/startup.py)."""
        return [self._build_status, self._build_inbox, self._build_send_box, self._assemble_content]

    def _build_status(self) -> None:
        import_panels()
        self.banner = StatusBanner()
        self.banner.retryRequested.connect(self.retryRequested)
        self.banner.reconnectRequested.connect(self.reconnectRequested)
        self.first_run = FirstRunPanel()
        self.first_run.retryRequested.connect(self.retryRequested)
        self.first_run.settingsRequested.connect(self.settingsRequested)
        self.first_run.hide()
        self._hide_first_run = QTimer(self)
        self._hide_first_run.setSingleShot(True)
        self._hide_first_run.setInterval(2500)  # let the last tick be seen
        self._hide_first_run.timeout.connect(self._maybe_hide_first_run)

    def _build_inbox(self) -> None:
        self.inbox_model = InboxModel(parent=self)
        self.inbox_view = _table(self.inbox_model, InboxModel.TEXT)
        self.inbox_view.setObjectName("inboxView")
        self.inbox_view.setToolTip("Double-click a message (or press Enter) to read all of it.")
        self.inbox_view.setAccessibleName("Messages from the cloud")
        self.inbox_box = InboxPanel(self.inbox_view, self.inbox_model)
        self.inbox_view.setColumnWidth(InboxModel.UNREAD, 24)
        self.inbox_view.setColumnWidth(InboxModel.TIME, 90)
        self.inbox_view.setColumnWidth(InboxModel.PROPERTIES, 180)
        self.inbox_box.readChanged.connect(self.readChanged)
        self.inbox_box.allReadRequested.connect(self.allReadRequested)
        self.inbox_box.openRequested.connect(self._show_message)
        self.inbox_box.unreadChanged.connect(self._update_title)
        self.message_dialog: MessageDialog | None = None

    def _build_send_box(self) -> None:
        self.message_edit = QLineEdit()
        self.message_edit.setObjectName("messageEdit")
        self.message_edit.setPlaceholderText("Write a message to the backend…")
        self.message_edit.setMaxLength(MAX_MESSAGE_CHARS)
        self.message_edit.returnPressed.connect(self._send_clicked)
        # No visible labels (the placeholders say it): screen readers need the names.
        self.message_edit.setAccessibleName("Message to send")
        self.properties_edit = QLineEdit()
        self.properties_edit.setPlaceholderText("Properties (optional): name=value, name=value")
        self.properties_edit.setAccessibleName("Properties of the message to send")
        self.properties_edit.returnPressed.connect(self._send_clicked)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send_clicked)
        self.send_hint = QLabel()
        self.send_hint.setWordWrap(True)
        self.send_hint.setStyleSheet("color: palette(placeholder-text);")
        self.outbox_model = OutboxModel(parent=self)
        self.outbox_view = _table(self.outbox_model, OutboxModel.TEXT)
        self.outbox_view.setObjectName("outboxView")
        self.outbox_view.setAccessibleName("Sent messages")
        self.outbox_view.setColumnWidth(OutboxModel.WRITTEN, 80)
        self.outbox_view.setColumnWidth(OutboxModel.TIME, 80)
        self.outbox_view.setColumnWidth(OutboxModel.PROPERTIES, 140)
        self.outbox_view.setColumnWidth(OutboxModel.STATE, 130)
        send_row = QHBoxLayout()
        send_row.addWidget(self.message_edit, 1)
        send_row.addWidget(self.send_button)
        self.send_box = QGroupBox("Send to the cloud")
        send_layout = QVBoxLayout(self.send_box)
        send_layout.addLayout(send_row)
        send_layout.addWidget(self.properties_edit)
        send_layout.addWidget(self.send_hint)
        send_layout.addWidget(self.outbox_view)

    def _assemble_content(self) -> None:
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.inbox_box)
        splitter.addWidget(self.send_box)
        splitter.setSizes([340, 260])

        central = QWidget()
        layout = _MinimumSizeLayout(central)
        layout.addWidget(self.banner)
        layout.addWidget(self.first_run)
        layout.addWidget(splitter, 1)
        # On a small screen (1366×800 at 200 %: 683×400 logical pixels) the content scrolls instead of
        # pushing the window past the screen's edges.
        scroller = QScrollArea()
        scroller.setObjectName("mainScroller")
        scroller.setWidgetResizable(True)
        scroller.setFrameShape(QFrame.Shape.NoFrame)
        scroller.setWidget(central)
        self.setCentralWidget(scroller)
        # Tab follows the layout: the message, Send beside it, then the properties below.
        QWidget.setTabOrder(self.message_edit, self.send_button)
        QWidget.setTabOrder(self.send_button, self.properties_edit)
        self._update_send_hint()

    def _build_menus(self) -> None:
        app_menu = self.menuBar().addMenu("&App")
        self.settings_action = QAction("&Settings…", self)
        self.settings_action.triggered.connect(self.settingsRequested)
        self.reconnect_action = QAction("&Reconnect now", self)
        self.reconnect_action.triggered.connect(self.reconnectRequested)
        quit_action = QAction("&Quit", self)
        # setShortcuts(), not setShortcut(): PySide's first setShortcut() sets up Qt's namespace (~15 ms), and
        # the menus are built before the window shows. It also gives Quit every key the platform has for it.
        quit_action.setShortcuts(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.quitRequested)
        app_menu.addAction(self.settings_action)
        app_menu.addAction(self.reconnect_action)
        app_menu.addSeparator()
        app_menu.addAction(quit_action)
        help_menu = self.menuBar().addMenu("&Help")
        self.details_action = QAction("&Connection details…", self)
        self.details_action.setShortcuts([QKeySequence("Ctrl+I")])
        self.details_action.triggered.connect(self.detailsRequested)
        export_action = QAction("&Export diagnostics…", self)
        export_action.triggered.connect(self.exportDiagnosticsRequested)
        logs_action = QAction("Open the &log folder", self)
        logs_action.triggered.connect(self.openLogsRequested)
        help_menu.addAction(self.details_action)
        help_menu.addAction(export_action)
        help_menu.addAction(logs_action)
        help_menu.addSeparator()
        about_action = QAction("&About client-app", self)
        about_action.setMenuRole(QAction.MenuRole.AboutRole)
        about_action.triggered.connect(self.aboutRequested)
        help_menu.addAction(about_action)

    # --- inputs ----------------------------------------------------------------------------

    def begin_setup(self) -> None:
        """This computer has no identity yet: show the first-run steps until it is connected.

        Later launches never show them: the banner alone speaks, with one Retry."""
        self.setting_up = True
        self.first_run.reset()
        self.first_run.show()

    def show_status(self, status: DeviceStatus) -> None:
        self._status = status
        state = ConnectionState(status.state)
        if self.setting_up:
            if state is ConnectionState.CONNECTED:
                self._hide_first_run.start()
            elif state is ConnectionState.BLOCKED:
                # Only an administrator can help: the banner says so once, with the device ID.
                self.first_run.failure_box.hide()
            elif state is ConnectionState.ERROR:
                # A failure outside any one step (e.g. no keyring at all, checked up front).
                self._hide_first_run.stop()
                self.first_run.show()
                self.first_run.show_general_failure(describe(status).detail)
        self.banner.show_status(status, offer_retry=not self._setup_failure_shown())
        self.setWindowIcon(status_icon(describe(status).tone))
        self._update_send_hint()

    def _setup_failure_shown(self) -> bool:
        """The first-run list explains a failure with its own Retry: the banner then offers none."""
        return self.setting_up and not self.first_run.failure_box.isHidden()

    def step_changed(self, step: FirstRunStep | str, outcome: str, detail: str) -> None:
        self.first_run.step_changed(step, outcome, detail)
        if self._status is not None:
            self.banner.show_status(self._status, offer_retry=not self._setup_failure_shown())
        if self.setting_up and self.first_run.all_done() and self._connected():
            self._hide_first_run.start()

    def add_messages(self, messages: Sequence[InboxMessage]) -> int:
        return self.inbox_box.add_messages(messages)

    def set_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        self.outbox_model.set_messages(messages)

    def show_send_error(self, text: str) -> None:
        self.send_hint.setText(text)
        self._send_hint_colour("#c9362c")

    # --- behaviour -------------------------------------------------------------------------

    def _connected(self) -> bool:
        return self._status is not None and ConnectionState(self._status.state) is ConnectionState.CONNECTED

    def _maybe_hide_first_run(self) -> None:
        # The keyring step may finish after connecting: keep the list until every step is done.
        if self._connected() and self.first_run.all_done():
            self.first_run.hide()
            self.setting_up = False

    def _update_send_hint(self) -> None:
        self._send_hint_colour("palette(placeholder-text)")
        self.send_hint.setText(send_hint(self._status))

    def _send_hint_colour(self, colour: str) -> None:
        style = f"color: {colour};"
        if self.send_hint.styleSheet() != style:  # a new style sheet re-polishes the widget: not per status
            self.send_hint.setStyleSheet(style)

    def _send_clicked(self) -> None:
        text = self.message_edit.text().strip()
        if not text:
            self.show_send_error("Write a message first.")
            return
        try:
            properties = parse_properties(self.properties_edit.text())
        except ValueError as exc:
            self.show_send_error(str(exc))
            return
        self.message_edit.clear()
        self.properties_edit.clear()  # they belonged to that message
        self._update_send_hint()
        self.sendRequested.emit(text, properties)

    def show_message_details(self, index: QModelIndex) -> None:
        """The whole message, selectable: the table shows one line of it. Opening it reads it."""
        self.inbox_box.set_read([index], True)
        self._show_message(self.inbox_box.message_at(index))

    def _show_message(self, message: InboxMessage) -> None:
        if self.message_dialog is None:
            self.message_dialog = MessageDialog(self)
        self.message_dialog.show_message(message)

    def _update_title(self, unread: int) -> None:
        self.setWindowTitle(f"client-app ({unread} unread)" if unread else "client-app")

    def add_demo_menu(self, cloud_running: bool) -> None:
        """`--demo` only: stop and start the embedded local cloud, to watch the app go offline and back."""
        menu = self.menuBar().insertMenu(self.menuBar().actions()[-1], QMenu("&Demo", self)).menu()
        self.demo_cloud_action = QAction(self)
        self.demo_cloud_action.triggered.connect(self._demo_toggle_clicked)
        menu.addAction(self.demo_cloud_action)
        self.demo_cloud_switched(cloud_running)

    def _demo_toggle_clicked(self) -> None:
        self.demo_cloud_action.setEnabled(False)  # one switch at a time
        self.demoCloudToggleRequested.emit()

    def demo_cloud_switched(self, running: bool) -> None:
        self.demo_cloud_action.setText("&Stop the local cloud" if running else "&Start the local cloud")
        self.demo_cloud_action.setEnabled(True)

    def place(self, state_file: Path | None) -> None:
        """Where the user left the window last time, if that still fits a screen; else a size that fits."""
        if state_file is not None:
            saved = QSettings(str(state_file), QSettings.Format.IniFormat).value(GEOMETRY_KEY)
            if isinstance(saved, QByteArray) and self.restoreGeometry(saved) and self._on_a_screen():
                return
        screen = (self.screen() or QGuiApplication.primaryScreen()).availableGeometry()
        # Leave room for the window manager's frame and title bar.
        width = min(DEFAULT_SIZE[0], int(screen.width() * 0.9))
        height = min(DEFAULT_SIZE[1], int(screen.height() * 0.85))
        self.resize(width, height)
        self.move(screen.center() - self.rect().center())

    def _on_a_screen(self) -> bool:
        """A saved place from another monitor set-up may be off every screen now, or larger than it."""
        frame = self.frameGeometry()
        for screen in QGuiApplication.screens():
            area = screen.availableGeometry()
            if (
                area.contains(frame.center())
                and frame.width() <= area.width()
                and frame.height() <= area.height()
            ):
                return True
        return False

    def remember_place(self, state_file: Path | None) -> None:
        if state_file is None:
            return
        try:
            state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return  # a convenience: never a reason to fail
        settings = QSettings(str(state_file), QSettings.Format.IniFormat)
        settings.setValue(GEOMETRY_KEY, self.saveGeometry())
        settings.sync()

    def bring_forward(self) -> None:
        """Show, un-minimise and raise (a second launch or a tray click asks for this)."""
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.show()
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.keep_running_in_tray and not self.quitting:
            event.ignore()
            self.hide()
            self.hiddenToTray.emit()
        else:
            event.accept()
            self.quitRequested.emit()
