"""Table models for the inbox and the sent messages.

Rows are inserted in batches (one beginInsertRows per burst), never by rebuilding widgets, so a
flood of cloud-to-device messages keeps the event loop responsive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

if TYPE_CHECKING:
    from client_app.device.messages import InboxMessage, OutboxMessage


Index = QModelIndex | QPersistentModelIndex
_ROOT = QModelIndex()
Message = TypeVar("Message", bound=Any)  # InboxMessage or OutboxMessage


# Row ids grow with arrival (SQLite autoincrement): a total order that needs no clock.
def _arrival_order(message: InboxMessage | OutboxMessage) -> int:
    return message.id


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return ""
    local = moment.astimezone() if moment.tzinfo else moment
    today = datetime.now(local.tzinfo).date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def format_properties(properties: Mapping[str, str | None] | None) -> str:
    if not properties:
        return ""
    return ", ".join(key if value is None else f"{key}={value}" for key, value in sorted(properties.items()))


class _MessageTable(QAbstractTableModel, Generic[Message]):
    """The table plumbing both message lists share; subclasses name COLUMNS and render cell()."""

    COLUMNS: tuple[str, ...] = ()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[Message] = []  # newest first

    def message_at(self, row: int) -> Message:
        return self._rows[row]

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        return self.cell(self._rows[index.row()], index.column(), role)

    def cell(self, message: Message, column: int, role: int) -> Any:
        raise NotImplementedError

    def rowCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = _ROOT) -> int:
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> str | None:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None


class InboxModel(_MessageTable["InboxMessage"]):
    """Cloud-to-device messages, newest first. Columns: unread marker, time, text, properties."""

    COLUMNS = ("", "Received", "Message", "Properties")
    UNREAD, TIME, TEXT, PROPERTIES = range(4)
    MessageRole = Qt.ItemDataRole.UserRole + 1

    def __init__(self, max_rows: int = 5000, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._read: dict[Any, bool] = {}  # id -> read, as changed in this session (the core keeps the truth)
        self._ids: set[Any] = set()
        self._unread = 0  # kept as rows change: asked after every batch, never counted over all rows
        self._max_rows = max_rows
        self._bold = QFont()
        self._bold.setBold(True)

    # --- updates ---------------------------------------------------------------------------

    def add_messages(self, messages: Iterable[InboxMessage]) -> int:
        """Insert messages not shown yet (any order in, newest first out). Returns how many."""
        fresh = [m for m in messages if m.id not in self._ids]
        if not fresh:
            return 0
        fresh.sort(key=_arrival_order, reverse=True)
        self._unread += sum(1 for m in fresh if self.is_unread(m))
        if self._rows and _arrival_order(fresh[-1]) < _arrival_order(self._rows[0]):
            # Older than what is shown (initial load racing live delivery): place by time.
            self.beginResetModel()
            self._rows = sorted(self._rows + fresh, key=_arrival_order, reverse=True)
            self._ids.update(m.id for m in fresh)
            self.endResetModel()
        else:
            self.beginInsertRows(_ROOT, 0, len(fresh) - 1)
            self._rows[0:0] = fresh
            self._ids.update(m.id for m in fresh)
            self.endInsertRows()
        self._trim()
        return len(fresh)

    def _trim(self) -> None:
        extra = len(self._rows) - self._max_rows
        if extra > 0:
            first = len(self._rows) - extra
            self.beginRemoveRows(_ROOT, first, len(self._rows) - 1)
            for message in self._rows[first:]:
                self._ids.discard(message.id)
                self._unread -= self.is_unread(message)
            del self._rows[first:]
            self.endRemoveRows()

    def mark_read(self, row: int) -> InboxMessage | None:
        """Mark one row read; returns the message when it was unread (so the core can be told)."""
        changed = self.set_read([row], True)
        return changed[0] if changed else None

    def set_read(self, rows: Iterable[int], read: bool) -> list[InboxMessage]:
        """Mark rows read or unread; returns the messages that changed (so the core can be told)."""
        changed: list[InboxMessage] = []
        for row in rows:
            if 0 <= row < len(self._rows) and self.is_unread(self._rows[row]) == read:
                message = self._rows[row]
                self._read[message.id] = read
                self._unread += -1 if read else 1
                changed.append(message)
                self.dataChanged.emit(self.index(row, 0), self.index(row, len(self.COLUMNS) - 1))
        return changed

    def mark_all_read(self) -> list[InboxMessage]:
        changed = [m for m in self._rows if self.is_unread(m)]
        for message in changed:
            self._read[message.id] = True
        self._unread -= len(changed)
        if changed:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(self.COLUMNS) - 1))
        return changed

    def row_of(self, message_id: int) -> int | None:
        return next((row for row, m in enumerate(self._rows) if m.id == message_id), None)

    def is_unread(self, message: InboxMessage) -> bool:
        return not self._read.get(message.id, message.read)

    def unread_count(self) -> int:
        return self._unread

    def cell(self, message: InboxMessage, column: int, role: int) -> Any:
        unread = self.is_unread(message)
        if role == Qt.ItemDataRole.DisplayRole:
            if column == self.UNREAD:
                return "●" if unread else ""
            if column == self.TIME:
                return format_time(message.received_at)
            if column == self.TEXT:
                return message.text.replace("\n", " ⏎ ")
            if column == self.PROPERTIES:
                return format_properties(message.properties)
        elif role == Qt.ItemDataRole.ToolTipRole:
            if column == self.UNREAD:
                return "Unread" if unread else "Read"
            if column == self.TEXT:
                return message.text
            if column == self.PROPERTIES:
                return format_properties(message.properties) or None
        elif role == Qt.ItemDataRole.FontRole and unread:
            return self._bold
        elif role == Qt.ItemDataRole.ForegroundRole and column == self.UNREAD:
            return QBrush(QColor("#2f6fd6"))
        elif role == Qt.ItemDataRole.AccessibleTextRole and column == self.UNREAD:
            return "unread" if unread else "read"
        elif role == self.MessageRole:
            return message
        return None


OUTBOX_STATE_TEXT = {
    "queued": "Queued (offline)",
    "delivered": "Delivered",
}


class OutboxModel(_MessageTable["OutboxMessage"]):
    """Messages sent to the cloud, newest first. Columns: written, sent (once delivered), text, properties,
    state. A queued message has no "Sent" time: it has not been sent."""

    COLUMNS = ("Written", "Sent", "Message", "Properties", "State")
    WRITTEN, TIME, TEXT, PROPERTIES, STATE = range(5)

    def set_messages(self, messages: Sequence[OutboxMessage]) -> None:
        rows = sorted(messages, key=_arrival_order, reverse=True)
        if [m.id for m in rows] == [m.id for m in self._rows]:
            # Same messages: only states changed; repaint in place (keeps selection and scroll).
            self._rows = rows
            if rows:
                self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(self.COLUMNS) - 1))
            return
        self.beginResetModel()
        self._rows = rows
        self.endResetModel()

    def cell(self, message: OutboxMessage, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            if column == self.WRITTEN:
                return format_time(message.created_at)
            if column == self.TIME:
                return format_time(message.delivered_at) if str(message.state) == "delivered" else ""
            if column == self.TEXT:
                return message.text.replace("\n", " ⏎ ")
            if column == self.PROPERTIES:
                return format_properties(message.properties)
            if column == self.STATE:
                return OUTBOX_STATE_TEXT.get(str(message.state), str(message.state).capitalize())
        elif role == Qt.ItemDataRole.ToolTipRole and column in (self.TEXT, self.PROPERTIES):
            return message.text if column == self.TEXT else format_properties(message.properties) or None
        elif role == Qt.ItemDataRole.ForegroundRole and column == self.STATE:
            return QBrush(QColor("#2e9d4f" if str(message.state) == "delivered" else "#d08a12"))
        return None
