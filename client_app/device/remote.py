"""RemoteRuntime: the device core in a child process, seen from the window's process (no Qt).

It has the part of DeviceRuntime's interface the window uses (start, status, send, retry, reconnect_now,
reset_identity, inbox.list/set_read/mark_all_read/unread_count, outbox.list, stop, close), so the window's
controller does not care where the core runs. The child is `client-app --core-service` (core_service.py);
a reader thread turns its frames into the same RuntimeListener calls a DeviceRuntime makes on its own
threads, and resolves replies to calls. Calls block: make them off the GUI thread.

If the child dies or breaks the protocol, pending calls fail with CoreUnavailable and `on_lost(reason)`
is called once (not when this side stopped it): the window shows that and starts a new core.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from client_app.device import ipc
from client_app.device.config import DeviceConfig, ProxySetting
from client_app.device.messages import InboxMessage, OutboxMessage
from client_app.device.status import DeviceStatus

log = logging.getLogger(__name__)

CALL_TIMEOUT = 30.0  # seconds; the core answers in milliseconds unless its disk hangs
START_TIMEOUT = 60.0  # a cold start imports the SDK and opens the keyring
WINDOWS = sys.platform == "win32"


class CoreError(RuntimeError):
    """The core refused or failed a call; the text is the core's plain-words reason."""


class CoreUnavailable(CoreError):
    """The core process is not there (not started, stopped, or died)."""


def core_command(handle: str) -> list[str]:
    """How to start the core: the frozen executable is `client-app` itself; from source, the package."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--core-service", handle]
    return [sys.executable, "-m", "client_app.main", "--core-service", handle]


class _Inbox:
    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def list(self, limit: int = 100) -> list[InboxMessage]:
        return [ipc.inbox_from_wire(m) for m in self._call("inbox_list", limit=limit)]

    def set_read(self, row_ids: Sequence[int], read: bool = True) -> None:
        self._call("set_read", ids=list(row_ids), read=read)

    def mark_all_read(self, up_to: int) -> None:
        self._call("mark_all_read", up_to=up_to)

    def unread_count(self, before: int | None = None) -> int:
        return int(self._call("unread_count", before=before))


class _Outbox:
    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def list(self, limit: int = 100) -> list[OutboxMessage]:
        return [ipc.outbox_from_wire(m) for m in self._call("outbox_list", limit=limit)]


class RemoteRuntime:
    def __init__(
        self,
        config: DeviceConfig,
        listener: ipc.EventListener,
        *,
        on_lost: Callable[[str], None] | None = None,
        command: Callable[[str], list[str]] = core_command,
    ) -> None:
        self.config = config
        self._listener = listener
        self._on_lost = on_lost
        self._command = command
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: ipc.Channel | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._gone: str | None = None  # why the core is not there any more
        self._closing = False
        self._running = False  # started: a loss from here on is reported to on_lost
        self.inbox = _Inbox(self._call)
        self.outbox = _Outbox(self._call)

    @property
    def alive(self) -> bool:
        """Started, and neither stopped nor lost since."""
        return self._running and self._gone is None and not self._closing

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the core process and the core in it; raises CoreError with the core's reason."""
        ours, theirs = socket.socketpair()
        try:
            self._process = self._spawn(theirs)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel = ipc.Channel(ours)
        self._reader = threading.Thread(target=self._read, name="core-reader", daemon=True)
        self._reader.start()
        try:
            self._call("start", timeout=START_TIMEOUT, config=ipc.to_wire(self.config))
        except CoreError:
            self.close()
            raise
        self._running = True

    def _spawn(self, theirs: socket.socket) -> subprocess.Popen[bytes]:
        if WINDOWS:  # no fd inheritance for sockets: hand it over as socket.share() bytes on stdin
            process = subprocess.Popen(self._command("stdin"), stdin=subprocess.PIPE)
            assert process.stdin is not None
            process.stdin.write(theirs.share(process.pid))  # type: ignore[attr-defined]
            process.stdin.close()
            return process
        # A process group of its own: Ctrl+C in a terminal reaches the window, which quits the core in order.
        # Not a session of its own: Linux's scheduler shares the CPU fairly between sessions (autogroups),
        # so the core would take half the machine from the window whatever its priority (core_service.py).
        return subprocess.Popen(
            self._command(str(theirs.fileno())),
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            process_group=0,
        )

    def stop(self, timeout: float = 10) -> None:
        """Ask the core to stop (it waits up to `timeout` for its worker), then end the process."""
        process = self._process
        if process is None or self._closing:
            return
        self._closing = True
        try:
            if self._gone is None:  # a core that is gone already is only reaped
                self._call("quit", timeout=timeout + 0.5, stop_timeout=timeout)
        except CoreError as exc:
            log.warning("the core process did not stop cleanly: %s", exc)
        try:
            process.wait(0.5)
        except subprocess.TimeoutExpired:
            log.warning("the core process (pid %d) did not exit: killed", process.pid)
            process.kill()
            process.wait(5)

    def close(self) -> None:
        self.stop()
        if self._channel is not None:
            self._channel.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(2)

    # --- calls ----------------------------------------------------------------------------------------

    def status(self) -> DeviceStatus:
        return DeviceStatus.from_json_dict(self._call("status"))

    def send(self, text: str, properties: Mapping[str, str] | None = None) -> OutboxMessage:
        return ipc.outbox_from_wire(self._call("send", text=text, properties=dict(properties or {})))

    def retry(self) -> None:
        self._call("retry")

    def reconnect_now(self) -> None:
        self._call("reconnect_now")

    def reset_identity(self) -> None:
        self._call("reset_identity")

    def store_proxy_password(self, proxy: ProxySetting) -> None:
        """Into the keyring, which only the core's process opens (Settings → Save)."""
        self._call("store_proxy_password", proxy=dataclasses.asdict(proxy))

    def _call(self, method: str, *, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        future: Future[Any] = Future()
        with self._lock:
            if self._gone is not None or self._channel is None:
                raise CoreUnavailable(self._gone or "the app's connection part is not running")
            call_id = next(self._ids)
            self._pending[call_id] = future
        try:
            self._channel.send(ipc.call(call_id, method, **args))
            return future.result(timeout)
        except OSError as exc:
            raise CoreUnavailable(f"the app's connection part cannot be reached ({exc})") from None
        except TimeoutError:
            raise CoreUnavailable(
                f"the app's connection part did not answer within {timeout:.0f} s"
            ) from None
        finally:
            with self._lock:
                self._pending.pop(call_id, None)

    # --- the reader thread ------------------------------------------------------------------------------

    def _read(self) -> None:
        assert self._channel is not None
        reason = "the app's connection part stopped unexpectedly"
        try:
            while (frame := self._channel.receive()) is not None:
                self._handle(frame)
        except ipc.ProtocolError as exc:
            log.error("the core process broke the protocol (%s): it is stopped", exc)
            reason = "the app's connection part sent something unreadable"
            if self._process is not None:
                self._process.kill()
        except OSError as exc:
            if not self._closing:
                log.warning("the connection to the core process broke: %s", exc)
        self._lost(reason)

    def _handle(self, frame: dict[str, Any]) -> None:
        if frame["type"] != "reply":
            try:
                ipc.deliver_event(frame, self._listener)
            except ipc.ProtocolError:
                raise
            except Exception:  # the listener's bug must not stop the events after it
                log.warning("event %s: listener failed", frame["type"], exc_info=True)
            return
        call_id = frame.get("id")
        with self._lock:
            future = self._pending.get(call_id) if isinstance(call_id, int) else None
        if future is None:
            raise ipc.ProtocolError(f"reply to unknown call {call_id!r}")
        if frame.get("error"):
            future.set_exception(CoreError(str(frame["error"])))
        else:
            future.set_result(frame.get("result"))

    def _lost(self, reason: str) -> None:
        process = self._process
        code = None
        if process is not None:
            try:
                code = process.wait(5 if self._closing else 2)
            except subprocess.TimeoutExpired:
                process.kill()  # no longer talking to us: a core left running would keep the lock
                code = process.wait(5)
        with self._lock:
            self._gone = reason
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            if not future.done():
                future.set_exception(CoreUnavailable(reason))
        if self._closing or not self._running:
            return  # stopped by us, or start() raises the reason itself
        log.error("%s (core process pid %s, exit code %s)", reason, process.pid if process else None, code)
        if self._on_lost is not None:
            self._on_lost(reason)
