"""Table models for the inbox and the sent messages.

Rows are inserted in batches (one insert per burst), never by rebuilding widgets, so a flood of
cloud-to-device messages keeps the event loop responsive.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QFont, QStandardItem, QStandardItemModel

if TYPE_CHECKING:
    from client_app.device.messages import InboxMessage, OutboxMessage


Index = QModelIndex | QPersistentModelIndex
_ROOT = QModelIndex()
Message = TypeVar("Message", bound=Any)  # InboxMessage or OutboxMessage


# Row ids grow with arrival (SQLite autoincrement): a total order that needs no clock.
def _newest_first(message: InboxMessage | OutboxMessage) -> int:
    return -message.id


_FONT = Qt.ItemDataRole.FontRole
_DISPLAY = Qt.ItemDataRole.DisplayRole
_TOOLTIP = Qt.ItemDataRole.ToolTipRole
ROWS_RESTYLED_PER_TURN = 200  # rows whose read/unread cells change per event-loop turn (~2 ms)
_CELL_FLAGS = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemNeverHasChildren


def _prototype() -> QStandardItem:
    """The item Qt clones (in C++) for each cell setItemData() fills; the model owns it."""
    cell = QStandardItem()
    cell.setFlags(_CELL_FLAGS)
    return cell


def format_time(moment: datetime | None) -> str:
    """HH:MM:SS today, else YYYY-MM-DD HH:MM (by hand: strftime is most of the cost of a new inbox row)."""
    if moment is None:
        return ""
    local = moment.astimezone() if moment.tzinfo else moment
    if local.date() == datetime.now(local.tzinfo).date():
        return f"{local.hour:02}:{local.minute:02}:{local.second:02}"
    return f"{local.year:04}-{local.month:02}-{local.day:02} {local.hour:02}:{local.minute:02}"


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


class InboxModel(QStandardItemModel):
    """Cloud-to-device messages, newest first. Columns: unread marker, time, text, properties.

    The cells are Qt's own items, filled once when a message arrives and when it is read or unread: a
    repaint, which asks every visible cell for a dozen roles, then never calls into Python. With a Python
    data() that was most of each repaint during a burst, and every call had to take the interpreter lock
    back from the thread that reads the core's events.

    Cells are written through indexes (setItemData), never as QStandardItems made in Python: PySide keeps
    the wrapper of an item given to setItem() registered at its address after the model deletes the item
    (a cell replaced, a row trimmed), still claiming a live object, and hands it out for the next C++
    object made at that address (a QHeaderView came back as a QStandardItem; a crash when Qt calls into
    Python with one). A cell without a wrapper cannot leave one behind.
    """

    COLUMNS = ("", "Received", "Message", "Properties")
    UNREAD, TIME, TEXT, PROPERTIES = range(4)

    def __init__(self, max_rows: int = 5000, parent: QObject | None = None) -> None:
        super().__init__(0, len(self.COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(self.COLUMNS))
        self._rows: list[InboxMessage] = []  # newest first, row for row
        # id -> read, as changed in this session, for the rows shown (the core keeps the truth)
        self._read: dict[Any, bool] = {}
        self._ids: set[Any] = set()
        self._unread = 0  # kept as rows change: asked after every batch, never counted over all rows
        self.older_unread = 0  # unread messages older than every row held: not loaded, or dropped (_trim)
        self._max_rows = max_rows
        self.setItemPrototype(_prototype())  # what setItemData() fills an empty cell from: the flags
        self._looks = {unread: self._look(unread) for unread in (True, False)}
        # "Received" is a time for today's messages and a date for older ones: at midnight, today's
        # become yesterday's.
        self._day_timer = QTimer(self)
        self._day_timer.setSingleShot(True)
        self._day_timer.timeout.connect(self._new_day)
        self._start_day_timer()

    @staticmethod
    def _look(unread: bool) -> list[dict[int, Any]]:
        """One row's cells without the message (roles per column): what a read state changes."""
        font = QFont()
        font.setBold(True)
        cells: list[dict[int, Any]] = [{_FONT: font if unread else None} for _column in InboxModel.COLUMNS]
        cells[InboxModel.UNREAD].update(
            {
                _DISPLAY: "●" if unread else "",
                _TOOLTIP: "Unread" if unread else "Read",
                Qt.ItemDataRole.AccessibleTextRole: "unread" if unread else "read",
                Qt.ItemDataRole.ForegroundRole: QBrush(QColor("#2f6fd6")),
            }
        )
        return cells

    def message_at(self, row: int) -> InboxMessage:
        return self._rows[row]

    # --- updates ---------------------------------------------------------------------------

    def add_messages(self, messages: Iterable[InboxMessage]) -> int:
        """Insert messages not shown yet (any order in, newest first out). Returns how many.

        A run of messages that lands in one place is one insert: a burst is one insert at the top; an
        initial load that raced live delivery, one insert below the newer rows (nothing else moves)."""
        fresh = sorted({m.id: m for m in messages if m.id not in self._ids}.values(), key=_newest_first)
        runs: dict[int, list[InboxMessage]] = {}  # row in the current list -> the messages that go there
        for message in fresh:
            runs.setdefault(self._row_for(message), []).append(message)
        for at in sorted(runs, reverse=True):  # from the bottom up: the rows above keep their numbers
            self._insert(at, runs[at])
        self._trim()
        return len(fresh)

    def _row_for(self, message: InboxMessage) -> int:
        return bisect.bisect_left(self._rows, _newest_first(message), key=_newest_first)

    def _insert(self, at: int, run: list[InboxMessage]) -> None:
        self._rows[at:at] = run
        self._ids.update(m.id for m in run)
        self._unread += sum(1 for m in run if self.is_unread(m))
        # One insert for the run (views and the filter see one change), then its cells, told as one change.
        self.insertRows(at, len(run))
        with self._changing(at, at + len(run) - 1):
            for row, message in enumerate(run, at):
                for column, roles in enumerate(self._cells(message)):
                    self.setItemData(self.index(row, column), roles)

    def _cells(self, message: InboxMessage) -> list[dict[int, Any]]:
        marker, time, text, properties = (dict(cell) for cell in self._looks[self.is_unread(message)])
        time[_DISPLAY] = format_time(message.received_at)
        text[_DISPLAY] = message.text.replace("\n", " ⏎ ")
        text[_TOOLTIP] = message.text
        shown = format_properties(message.properties)
        properties[_DISPLAY] = shown
        if shown:
            properties[_TOOLTIP] = shown
        return [marker, time, text, properties]

    @contextmanager
    def _changing(self, first: int, last: int) -> Iterator[None]:
        """Change the cells of rows first..last silently, then tell views and the filter once."""
        blocked = self.blockSignals(True)
        try:
            yield
        finally:
            self.blockSignals(blocked)
        self.dataChanged.emit(self.index(first, 0), self.index(last, len(self.COLUMNS) - 1))

    def _trim(self) -> None:
        extra = len(self._rows) - self._max_rows
        if extra > 0:
            first = len(self._rows) - extra
            for message in self._rows[first:]:
                self._ids.discard(message.id)
                self._unread -= self.is_unread(message)
                self.older_unread += self.is_unread(message)
                self._read.pop(message.id, None)  # kept for shown rows only: bounded by max_rows
            del self._rows[first:]
            self.removeRows(first, extra)

    def mark_read(self, row: int) -> InboxMessage | None:
        """Mark one row read; returns the message when it was unread (so the core can be told)."""
        changed = self.set_read([row], True)
        return changed[0] if changed else None

    def set_read(self, rows: Iterable[int], read: bool) -> list[InboxMessage]:
        """Mark rows read or unread; returns the messages that changed (so the core can be told)."""
        rows = sorted({row for row in rows if 0 <= row < len(self._rows)})
        changing = [row for row in rows if self.is_unread(self._rows[row]) == read]
        if changing:
            self._show_read(changing, read)
        return [self._rows[row] for row in changing]

    def mark_all_read(self) -> int | None:
        """Every row read; returns the newest row's id, up to which the core marks all its messages read,
        those beyond the rows kept here too (None: no rows)."""
        unread = [row for row, message in enumerate(self._rows) if self.is_unread(message)]
        if unread:
            self._show_read(unread, True)
        self.older_unread = 0
        return self._rows[0].id if self._rows else None

    def set_older_unread(self, count: int, before: int) -> None:
        """The core's count of unread messages with ids below `before` (the oldest it just listed), less the
        ones held here already (rows kept from before a restart of the core)."""
        held = sum(1 for message in self._rows if message.id < before and self.is_unread(message))
        self.older_unread = max(0, count - held)

    def _show_read(self, rows: list[int], read: bool) -> None:
        """The state at once; the cells a turn's worth of rows at a time (top first, where the reader looks):
        restyling all of a 5,000-row inbox would hold the event loop for ~50 ms."""
        ids = [self._rows[row].id for row in rows]
        self._read.update(dict.fromkeys(ids, read))
        self._unread += -len(rows) if read else len(rows)
        self._restyle(ids)

    def _restyle(self, ids: list[int]) -> None:
        """Show the read state of these messages (by id: rows move as messages arrive meanwhile)."""
        rows = [row for row in map(self.row_of, ids[:ROWS_RESTYLED_PER_TURN]) if row is not None]
        if rows:
            with self._changing(min(rows), max(rows)):
                for row in rows:
                    for column, roles in enumerate(self._looks[self.is_unread(self._rows[row])]):
                        self.setItemData(self.index(row, column), roles)
        if len(ids) > ROWS_RESTYLED_PER_TURN:
            QTimer.singleShot(0, self, lambda: self._restyle(ids[ROWS_RESTYLED_PER_TURN:]))

    def _start_day_timer(self) -> None:
        now = datetime.now()
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time())
        self._day_timer.start(int((midnight - now).total_seconds() * 1000) + 1000)

    def _new_day(self) -> None:
        """Yesterday's messages show their date now. Every row is checked: today's may sit above them (a
        message in the first second of the day), and a late timer (after a suspend) may have skipped days."""
        rows = []
        for row, message in enumerate(self._rows):
            shown = format_time(message.received_at)
            if shown != self.index(row, self.TIME).data():
                rows.append((row, shown))
        if rows:
            with self._changing(rows[0][0], rows[-1][0]):
                for row, shown in rows:
                    self.setData(self.index(row, self.TIME), shown)
        self._start_day_timer()

    # --- queries -----------------------------------------------------------------------------

    def row_of(self, message_id: int) -> int | None:
        row = bisect.bisect_left(self._rows, -message_id, key=_newest_first)
        return row if row < len(self._rows) and self._rows[row].id == message_id else None

    def is_unread(self, message: InboxMessage) -> bool:
        return not self._read.get(message.id, message.read)

    def unread_count(self) -> int:
        return self._unread


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
        rows = sorted(messages, key=_newest_first)
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
