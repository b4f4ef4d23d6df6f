"""Desktop app (PySide6). Qt is imported only under this package."""
