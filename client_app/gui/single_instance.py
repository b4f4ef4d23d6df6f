"""One app per data directory: a second launch asks the first to come forward, then exits.

Two parts, so that a start shows its window sooner: a file lock decides "already running?" before the
window (no QtNetwork needed for that), and the first instance's QLocalServer, which a second launch asks
to bring the window forward, listens from just after the window's first paint (`listen()`). A second
launch that finds the lock held waits for that server, so it never shows a window of its own.

Named after the data directory, so test instances and a demo instance never meet a real one.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Signal

from client_app.device.instance_lock import InstanceLock

if TYPE_CHECKING:
    from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

SHOW_COMMAND = b"show\n"
LOCK_FILE = "window.lock"  # in the data directory; held by the window's process for its whole life
_CONNECT_TIMEOUT_MS = 500
# How long a second launch waits for the first one's server: the first listens once its window has painted,
# at most ~1 s after it took the lock on a slow cold start.
ANSWER_WAIT_SECONDS = 5.0


def server_name(data_dir: Path) -> str:
    # Not hashlib: importing it loads OpenSSL's libcrypto (4 MB read from disk on a cold start) before the
    # window. A name, not a secret: two checksums of the path tell one user's data directories apart.
    path = str(Path(data_dir).expanduser().resolve()).encode()
    # Short: on Unix it becomes a socket path, which has a ~100 character limit.
    return f"client-app-{zlib.crc32(path):08x}{zlib.adler32(path):08x}"


class SingleInstance(QObject):
    """claim() (or claim_lock(), then listen() once the window is up): True means this process is the only
    one; listen for activateRequested."""

    activateRequested = Signal()

    def __init__(self, data_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = server_name(data_dir)
        self.lock_path = Path(data_dir) / LOCK_FILE
        self.server: QLocalServer | None = None
        self.answered = False  # claim_lock() found another window, and it answered
        self._lock: InstanceLock | None = None

    def ask_running_instance(self, wait: float = 0.0) -> bool:
        """True when another instance answered and was asked to come forward (trying for `wait` seconds)."""
        from PySide6.QtNetwork import QLocalSocket

        deadline = time.monotonic() + wait
        while True:
            socket = QLocalSocket()
            socket.connectToServer(self.name)
            if socket.waitForConnected(_CONNECT_TIMEOUT_MS):
                socket.write(SHOW_COMMAND)
                socket.flush()
                socket.waitForBytesWritten(_CONNECT_TIMEOUT_MS)
                socket.disconnectFromServer()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)  # its window is still on the way: its server listens after the first paint

    def claim_lock(self) -> bool:
        """Before any window: True when no other window's process uses this data directory. Else the one
        that does is asked to come forward; False (it holds the lock but never answered: False too)."""
        lock = InstanceLock(self.lock_path)
        try:
            acquired = lock.acquire()  # the OS drops it when this process ends, however it ends
        except OSError as exc:
            log.warning("single-instance lock not available: %s", exc)
            return True  # still run: better two windows than none
        if acquired:
            self._lock = lock
            return True
        self.answered = self.ask_running_instance(wait=ANSWER_WAIT_SECONDS)
        if not self.answered:
            log.warning("another window holds %s but did not answer", self.lock_path)
        return False

    def listen(self) -> None:
        """Answer later launches (after claim_lock(); run_gui calls it once the window has painted)."""
        from PySide6.QtNetwork import QLocalServer

        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            # A crashed instance leaves its socket file behind on Unix: it no longer holds the lock.
            QLocalServer.removeServer(self.name)
            if not server.listen(self.name):
                log.warning("single-instance server not available: %s", server.errorString())
                return
        server.newConnection.connect(self._connected)
        self.server = server

    def claim(self) -> bool:
        """claim_lock() and listen() at once."""
        if not self.claim_lock():
            return False
        self.listen()
        return True

    def _connected(self) -> None:
        assert self.server is not None
        while (socket := self.server.nextPendingConnection()) is not None:
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)
            if socket.bytesAvailable():
                self._read(socket)

    def _read(self, socket: QLocalSocket) -> None:
        if SHOW_COMMAND.strip() in bytes(socket.readAll().data()):
            self.activateRequested.emit()

    def release(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server.deleteLater()
            self.server = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def tell_user_already_running(answered: bool = True) -> None:
    if answered:
        print("client-app is already running: its window was brought forward.", file=sys.stderr)
    else:
        print(
            "client-app is already running for this data folder but did not answer; "
            "if no window shows, end that process and start the app again.",
            file=sys.stderr,
        )
