"""One app per data directory: a second launch asks the first to come forward, then exits.

Two parts, so that a start shows its window sooner: a file lock decides "already running?" before the
window (no QtNetwork needed for that), and the first instance's QLocalServer, which a second launch asks
to bring the window forward, listens from just after the window's first paint (`listen()`). A second
launch that finds the lock held waits for that server, so it never shows a window of its own.

A hand-over counts only when the first window answers it: a quitting window closes its server first
(`stop_listening()`) and may still be stopping for a few seconds, so a launch meanwhile keeps trying the lock
and starts normally once that window's process has ended, instead of handing over to a window that is going.

Named after the data directory, so test instances and a demo instance never meet a real one.
"""

from __future__ import annotations

import enum
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
SHOWN_REPLY = b"shown\n"  # the first window's answer: without it, nothing was handed over
LOCK_FILE = "window.lock"  # in the data directory; held by the window's process for its whole life
_CONNECT_TIMEOUT_MS = 500
_REPLY_TIMEOUT_MS = 2000  # a window answers from its event loop, which never waits that long
# How long a launch that finds the lock held waits for the window holding it to answer or to end: a starting
# window listens once it has painted (at most ~1 s after it took the lock on a slow cold start), a quitting
# one ends within 5 s (docs/desktop-app.md, Quit).
ANSWER_WAIT_SECONDS = 8.0


class Claim(enum.Enum):
    """What claim_lock() found."""

    FIRST = "first"  # this process holds the lock: it shows the window
    HANDED_OVER = "handed over"  # another window answered and comes forward
    NO_ANSWER = "no answer"  # another process held the lock all along and never answered
    LOCK_FAILED = "lock failed"  # the lock file could not be used (SingleInstance.lock_error says why)


def server_name(data_dir: Path) -> str:
    # Not hashlib: importing it loads OpenSSL's libcrypto (4 MB read from disk on a cold start) before the
    # window. A name, not a secret: two checksums of the path tell one user's data directories apart.
    path = str(Path(data_dir).expanduser().resolve()).encode()
    # Short: on Unix it becomes a socket path, which has a ~100 character limit.
    return f"client-app-{zlib.crc32(path):08x}{zlib.adler32(path):08x}"


class SingleInstance(QObject):
    """claim_lock() before the window (Claim.FIRST: this process is the only one), then listen() once the
    window is up; listen for activateRequested. stop_listening() first thing when quitting."""

    activateRequested = Signal()

    def __init__(self, data_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = server_name(data_dir)
        self.data_dir = Path(data_dir)
        self.lock_path = self.data_dir / LOCK_FILE
        self.server: QLocalServer | None = None
        self.lock_error = ""  # why the lock file could not be used (Claim.LOCK_FAILED)
        self._lock: InstanceLock | None = None

    def ask_running_instance(self) -> bool:
        """True when another window answered that it comes forward. Blocks: not from the thread of the
        window being asked."""
        from PySide6.QtNetwork import QLocalSocket

        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(_CONNECT_TIMEOUT_MS):
            return False
        socket.write(SHOW_COMMAND)
        socket.flush()
        said = b""
        while SHOWN_REPLY not in said and socket.waitForReadyRead(_REPLY_TIMEOUT_MS):
            said += bytes(socket.readAll().data())
        socket.abort()
        return SHOWN_REPLY in said

    def claim_lock(self) -> Claim:
        """Before any window: Claim.FIRST when no other window's process uses this data directory. Else the
        one that does is asked to come forward, for up to ANSWER_WAIT_SECONDS; if its process ends meanwhile
        (it was quitting), this one takes the lock and is FIRST after all."""
        deadline = time.monotonic() + ANSWER_WAIT_SECONDS
        while True:
            try:
                if self._take_lock():
                    return Claim.FIRST
            except OSError as exc:
                self.lock_error = exc.strerror or str(exc)
                log.error("single-instance lock %s not usable: %s", self.lock_path, exc)
                return Claim.HANDED_OVER if self.ask_running_instance() else Claim.LOCK_FAILED
            if self.ask_running_instance():
                return Claim.HANDED_OVER
            if time.monotonic() >= deadline:
                log.warning("another window holds %s but did not answer", self.lock_path)
                return Claim.NO_ANSWER
            time.sleep(0.05)  # a starting window listens after its first paint; a quitting one is ending

    def _take_lock(self) -> bool:
        lock = InstanceLock(self.lock_path)
        if not lock.acquire():  # the OS drops it when this process ends, however it ends
            return False
        self._lock = lock
        return True

    def listen(self) -> None:
        """Answer later launches (after claim_lock(); run_gui calls it once the window has painted)."""
        if self._lock is None:
            # Without the lock this process cannot know the socket is stale: it might be a live window's.
            log.warning("single-instance server not started: this process does not hold %s", self.lock_path)
            return
        from PySide6.QtNetwork import QLocalServer

        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            # A crashed instance leaves its socket file behind on Unix; it no longer holds the lock, we do.
            QLocalServer.removeServer(self.name)
            if not server.listen(self.name):
                log.warning("single-instance server not available: %s", server.errorString())
                return
        server.newConnection.connect(self._connected)
        self.server = server

    def _connected(self) -> None:
        if self.server is None:
            return
        while (socket := self.server.nextPendingConnection()) is not None:
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)
            if socket.bytesAvailable():
                self._read(socket)

    def _read(self, socket: QLocalSocket) -> None:
        if self.server is None:
            socket.abort()  # quitting: the launch that asked starts a window of its own once this one ends
            return
        if SHOW_COMMAND.strip() in bytes(socket.readAll().data()):
            self.activateRequested.emit()
            socket.write(SHOWN_REPLY)
            socket.flush()

    def stop_listening(self) -> None:
        """No more hand-overs: the first step of quitting (the window's process may take seconds to end)."""
        if self.server is not None:
            self.server.close()
            self.server.deleteLater()
            self.server = None

    def release(self) -> None:
        self.stop_listening()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def tell_user(claim: Claim, single: SingleInstance) -> int:
    """A launch that shows no window of its own says why, and returns its exit code. Only the hand-over is
    silent (its window comes forward); the others show a box, since a desktop launch has no console."""
    if claim is Claim.HANDED_OVER:
        print("client-app is already running: its window was brought forward.", file=sys.stderr)
        return 0
    if claim is Claim.NO_ANSWER:
        text = (
            "client-app is already running for this data folder, but it does not answer. If no client-app "
            "window or tray icon shows, end the client-app process (or sign out and in again), then start "
            "the app again."
        )
    else:
        text = (
            f"client-app cannot start: it cannot use its data folder {single.data_dir} "
            f"({single.lock_error}). Check that the folder exists and that you may write to it."
        )
    print(text, file=sys.stderr)
    from client_app.gui.errors import show_error

    show_error(text)
    return 1
