"""Desktop app (PySide6). Qt is imported only under this package."""

from client_app.gui import qt_fixes as _qt_fixes  # noqa: F401 - applied before any signal is emitted
