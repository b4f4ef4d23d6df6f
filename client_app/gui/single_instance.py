"""One app per data directory: a second launch asks the first to come forward, then exits.

Named after the data directory, so test instances and a demo instance never meet a real one.
"""

from __future__ import annotations

import logging
import sys
import zlib
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

SHOW_COMMAND = b"show\n"
_CONNECT_TIMEOUT_MS = 500


def server_name(data_dir: Path) -> str:
    # Not hashlib: importing it loads OpenSSL's libcrypto (4 MB read from disk on a cold start) before the
    # window. A name, not a secret: two checksums of the path tell one user's data directories apart.
    path = str(Path(data_dir).expanduser().resolve()).encode()
    # Short: on Unix it becomes a socket path, which has a ~100 character limit.
    return f"client-app-{zlib.crc32(path):08x}{zlib.adler32(path):08x}"


class SingleInstance(QObject):
    """Call claim(): True means this process is the only one; listen for activateRequested."""

    activateRequested = Signal()

    def __init__(self, data_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = server_name(data_dir)
        self.server: QLocalServer | None = None

    def ask_running_instance(self) -> bool:
        """True when another instance answered and was asked to come forward."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(_CONNECT_TIMEOUT_MS):
            return False
        socket.write(SHOW_COMMAND)
        socket.flush()
        socket.waitForBytesWritten(_CONNECT_TIMEOUT_MS)
        socket.disconnectFromServer()
        return True

    def claim(self) -> bool:
        if self.ask_running_instance():
            return False
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            # A crashed instance leaves its socket file behind on Unix: nobody answered above.
            QLocalServer.removeServer(self.name)
            if not server.listen(self.name):
                log.warning("single-instance server not available: %s", server.errorString())
                return True  # still run: better two windows than none
        server.newConnection.connect(self._connected)
        self.server = server
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


def tell_user_already_running() -> None:
    print("client-app is already running: its window was brought forward.", file=sys.stderr)
