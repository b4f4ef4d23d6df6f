"""The inbox: messages from the cloud, newest first, that stay where the reader put them.

A burst inserts rows above the view; when the reader has scrolled down the view is moved by the same
number of rows so the message being read does not move, and a "N new ↑" button jumps to the newest.
Read means looked at on purpose (a click, Enter, opening it, the context menu), never passed over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from PySide6.QtCore import QModelIndex, QPoint, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QApplication,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from client_app.gui.models import InboxModel, format_properties

if TYPE_CHECKING:
    from client_app.device.messages import InboxMessage

TITLE = "Messages from the cloud"


class InboxPanel(QGroupBox):
    readChanged = Signal(list, bool)  # list[InboxMessage] whose read state the user changed, read?
    allReadRequested = Signal(int)  # "Mark all read": every message up to this row id, loaded or not
    openRequested = Signal(object)  # InboxMessage to show in full
    unreadChanged = Signal(int)

    def __init__(self, view: QTableView, model: InboxModel, parent: QWidget | None = None) -> None:
        super().__init__(TITLE, parent)
        self.model = model
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(model)
        self.proxy.setFilterKeyColumn(-1)  # text and properties
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.view = view
        view.setModel(self.proxy)
        view.setVerticalScrollMode(QTableView.ScrollMode.ScrollPerItem)  # the scroll value counts rows
        view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        view.customContextMenuRequested.connect(self._context_menu)
        view.clicked.connect(lambda index: self.set_read([index], True))
        view.activated.connect(self._open)
        self.new_above = 0
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter messages…")
        self.filter_edit.setAccessibleName("Filter messages")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self.proxy.setFilterFixedString)
        self.new_button = QPushButton()
        self.new_button.setObjectName("newMessagesButton")
        self.new_button.setToolTip("Jump to the newest messages")
        self.new_button.clicked.connect(self.jump_to_newest)
        self.new_button.hide()
        self.mark_all_button = QPushButton("Mark all read")
        self.mark_all_button.clicked.connect(self.mark_all_read)
        tools = QHBoxLayout()
        tools.addWidget(self.filter_edit, 1)
        tools.addWidget(self.new_button)
        tools.addWidget(self.mark_all_button)
        self.empty = QLabel("No messages from the cloud yet.")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setStyleSheet("color: palette(placeholder-text);")
        layout = QVBoxLayout(self)
        layout.addLayout(tools)
        layout.addWidget(self.empty)
        layout.addWidget(view)
        self._scroll_before: int | None = None
        self.proxy.rowsAboutToBeInserted.connect(self._before_insert)
        self.proxy.rowsInserted.connect(self._after_insert)
        view.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.refresh()

    # --- messages in -------------------------------------------------------------------------

    def add_messages(self, messages: Sequence[InboxMessage]) -> int:
        added = self.model.add_messages(messages)
        if added:
            self.refresh()
        return added

    def _before_insert(self, _parent: QModelIndex, _first: int, _last: int) -> None:
        self._scroll_before = self.view.verticalScrollBar().value()

    def _after_insert(self, _parent: QModelIndex, first: int, last: int) -> None:
        before, self._scroll_before = self._scroll_before, None
        if not before or first != 0:
            return  # at the top the reader wants the newest; older rows below move nothing
        count = last - first + 1
        bar = self.view.verticalScrollBar()
        bar.setMaximum(bar.maximum() + count)  # the view updates its range later; the value must fit now
        bar.setValue(before + count)
        self.new_above += count
        self.new_button.setText(f"{self.new_above} new ↑")
        self.new_button.show()

    def _scrolled(self, value: int) -> None:
        if value == 0 and self._scroll_before is None:
            self.new_above = 0
            self.new_button.hide()

    def jump_to_newest(self) -> None:
        self.view.scrollToTop()
        self.new_above = 0
        self.new_button.hide()

    def reveal(self, message: InboxMessage) -> None:
        """Scroll to and select `message` (clearing a filter that hides it)."""
        row = self.model.row_of(message.id)
        if row is None:
            return
        index = self.proxy.mapFromSource(self.model.index(row, InboxModel.TEXT))
        if not index.isValid():
            self.filter_edit.clear()
            index = self.proxy.mapFromSource(self.model.index(row, InboxModel.TEXT))
        self.view.setCurrentIndex(index)
        self.view.scrollTo(index, QTableView.ScrollHint.PositionAtCenter)
        self.view.setFocus()

    # --- reading -----------------------------------------------------------------------------

    def message_at(self, index: QModelIndex) -> InboxMessage:
        return self.model.message_at(self._source_row(index))

    def _source_row(self, index: QModelIndex) -> int:
        return (self.proxy.mapToSource(index) if index.model() is self.proxy else index).row()

    def set_read(self, indexes: Sequence[QModelIndex], read: bool) -> None:
        changed = self.model.set_read([self._source_row(i) for i in indexes], read)
        if changed:
            self.refresh()
            self.readChanged.emit(changed, read)

    def mark_all_read(self) -> None:
        """All of them, not only the rows loaded here (at most the newest thousands): the core is told the
        newest id shown, one number, and marks every message up to it read."""
        newest = self.model.mark_all_read()
        self.refresh()
        if newest is not None:
            self.allReadRequested.emit(newest)

    def set_older_unread(self, count: int, before: int) -> None:
        """Unread messages older than the history loaded (ids below `before`): counted in the title too, and
        Mark all read stays on while there are any."""
        self.model.set_older_unread(count, before)
        self.refresh()

    def _open(self, index: QModelIndex) -> None:
        self.set_read([index], True)
        self.openRequested.emit(self.message_at(index))

    def refresh(self) -> None:
        unread = self.model.unread_count() + self.model.older_unread
        total = self.model.rowCount()
        self.setTitle(f"{TITLE} ({unread} unread)" if unread else TITLE)
        self.empty.setVisible(total == 0)
        self.view.setVisible(total > 0)
        self.mark_all_button.setEnabled(unread > 0)
        self.unreadChanged.emit(unread)

    # --- context menu ------------------------------------------------------------------------

    def context_menu(self, index: QModelIndex) -> QMenu:
        menu = QMenu(self)
        message = self.message_at(index)
        unread = self.model.is_unread(message)

        def action(text: str, slot) -> QAction:
            item = menu.addAction(text)
            item.triggered.connect(slot)
            return item

        action("Copy message", lambda: QApplication.clipboard().setText(message.text))
        copy_properties = action(
            "Copy properties", lambda: QApplication.clipboard().setText(format_properties(message.properties))
        )
        copy_properties.setEnabled(bool(message.properties))
        menu.addSeparator()
        if unread:
            action("Mark as read", lambda: self.set_read([index], True))
        else:
            action("Mark as unread", lambda: self.set_read([index], False))
        action("Mark all read", self.mark_all_read).setEnabled(self.mark_all_button.isEnabled())
        action("Open…", lambda: self._open(index))
        return menu

    def _context_menu(self, position: QPoint) -> None:
        index = self.view.indexAt(position)
        if index.isValid():
            menu = self.context_menu(index)
            menu.aboutToHide.connect(menu.deleteLater)
            menu.popup(self.view.viewport().mapToGlobal(position))
