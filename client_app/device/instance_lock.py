"""The single-instance lock: an OS file lock held for a process's whole life, with its pid in the file.

The OS drops it when the process ends, however it ends, so a lock is never stale. The device core holds
instance.lock on its data directory; the window holds window.lock (gui/single_instance.py) before it shows.
Light (the stdlib and paths.py): the window takes it on the way to its first paint.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import IO

from client_app.device.paths import private_file


class InstanceLock:
    """An exclusive OS lock on a file, held while an instance runs on this data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        """True when taken; False when another process holds it. OSError when the file cannot be used
        (an unwritable folder, a file system without locks): not the same as "held"."""
        handle = open(private_file(self.path), "r+")  # noqa: SIM115 - held open for the life of the instance
        try:
            if not _try_lock(handle):
                handle.close()
                return False
        except OSError:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
            self._handle.close()  # closing drops the lock
            self._handle = None


def running_pid(lock_file: Path) -> int | None:
    """The pid of the live instance holding the lock, else None (also for a stale pid left by a crash)."""
    try:
        handle = open(lock_file)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with handle:
        with contextlib.suppress(OSError):  # a lock that cannot be tested: believe the pid in the file
            if _try_lock(handle):
                return None  # we got it: nobody holds it; closing releases it again
        try:
            return int(handle.read().strip() or 0) or None
        except ValueError:
            return None


# What a lock held by another process raises: flock says EWOULDBLOCK (= EAGAIN), msvcrt EACCES or EDEADLOCK.
_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK}


def _try_lock(handle: IO[str]) -> bool:
    """True when taken, False when held elsewhere; any other OSError is raised."""
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        raise
    return True
