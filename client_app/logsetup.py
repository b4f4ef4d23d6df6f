"""The app's one log set-up: a size-rotated file, private to the user, with start and stop lines.

Used by every process mode (window, headless, status). Nothing secret is ever logged, so nothing is
redacted here (diagnostics redact what they export).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from pathlib import Path

from client_app.device.paths import private_dir

LOG_FILE = "client-app.log"
CORE_LOG_FILE = "client-app-core.log"  # the device core's own process beside the window (core_service.py)
MAX_BYTES = 2_000_000
BACKUPS = 5
REPEAT_WINDOW = 60.0  # seconds: the same message again within this is counted, not written
FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"

log = logging.getLogger("client_app")


MAX_HELD = 1000  # records kept in memory until the log file opens (hold_logging)


@functools.cache
def _private_handler_class() -> type[logging.FileHandler]:
    # Imported here: logging.handlers brings socket, pickle and queue (~6 ms), and the window's process opens
    # its log file only after its first paint (hold_logging).
    import logging.handlers

    class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
        """Log files are created 0600: they name hosts, devices and folders other local users need not see."""

        def _open(self):  # type: ignore[no-untyped-def]
            fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.chmod(self.baseFilename, 0o600)  # a file made by an older version keeps its mode otherwise
            return os.fdopen(fd, self.mode.replace("w", "a"), encoding=self.encoding, errors=self.errors)

    return PrivateRotatingFileHandler


class _HeldRecords(logging.Handler):
    """What is logged before the log file opens, kept to be written first when it does (open_held_log)."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < MAX_HELD:
            self.records.append(_formatted(record))


def _formatted(record: logging.LogRecord) -> logging.LogRecord:
    """A copy with its text made now: its args (and an exception's frames) are the caller's objects, which
    may change, or be kept alive, until the log file opens."""
    held = logging.makeLogRecord(record.__dict__)
    held.msg, held.args = record.getMessage(), None
    if record.exc_info:
        held.exc_text = held.exc_text or _EXCEPTIONS.formatException(record.exc_info)
        held.exc_info = None
    return held


_EXCEPTIONS = logging.Formatter()  # formatException() only: the same text the file's formatter makes


class RepeatFilter(logging.Filter):
    """The SDK reports one failure from several threads and retries ("Exception caught in background
    thread" eight times in a row): write a message once per window, then say how often it came."""

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        first, suppressed = self._seen.get(key, (float("-inf"), 0))
        if now - first < self.window:
            self._seen[key] = (first, suppressed + 1)
            return False
        self._seen[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} [and {suppressed} more like it in the last {self.window:.0f} s]"
        if len(self._seen) > 1000:  # a bounded memory of recent messages
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        return True


def setup_logging(log_dir: Path, level: int = logging.INFO, *, file_name: str = LOG_FILE) -> Path | None:
    """Idempotent: a second call (e.g. the window after the entry point) adds nothing. Each process writes
    its own file (`file_name`): two processes rotating one file would lose lines."""
    root = logging.getLogger()
    path = Path(log_dir) / file_name
    if _file_handler(path) is not None:
        return path
    root.setLevel(level)
    try:
        private_dir(Path(log_dir))
        handler = _private_handler_class()(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    except OSError:
        return None  # logging is a help, not a reason to refuse to start
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    # The SDK and paho are chatty at INFO; their warnings are what support needs.
    for name in ("azure.iot.device", "paho"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return path


def _file_handler(path: Path) -> logging.FileHandler | None:
    """The root logger's handler writing to `path` (compared as FileHandler keeps it: os.path.abspath, which
    also resolves `..`)."""
    wanted = os.path.abspath(path)
    files = (h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler))
    return next((h for h in files if h.baseFilename == wanted), None)


def hold_logging(log_dir: Path, level: int = logging.INFO) -> None:
    """The window's process: records are kept in memory until open_held_log(), just after the window's first
    paint, so that opening the log file costs nothing before the window shows."""
    root = logging.getLogger()
    if not any(isinstance(handler, _HeldRecords) for handler in root.handlers):
        root.setLevel(level)
        root.addHandler(_HeldRecords(Path(log_dir)))


def open_held_log() -> None:
    """Open the log file that records were held for (hold_logging) and write them there first."""
    root = logging.getLogger()
    for held in [h for h in root.handlers if isinstance(h, _HeldRecords)]:
        root.removeHandler(held)
        path = setup_logging(held.log_dir)
        handler = _file_handler(path) if path is not None else None
        if handler is not None:
            for record in held.records:
                handler.handle(record)


def log_start(mode: str) -> None:
    from client_app.device.twin import app_version  # importlib.metadata: only once logging starts

    # Not platform.platform(): on Linux it runs `uname -p` in a subprocess, on the way to the window.
    system = f"{platform.system()} {platform.release()}"
    log.info(
        "client-app %s starting (%s mode, pid %d, Python %s, %s)",
        app_version(),
        mode,
        os.getpid(),
        platform.python_version(),
        system,
    )


def log_stop(code: int) -> None:
    log.info("client-app stopped (exit code %d)", code)
