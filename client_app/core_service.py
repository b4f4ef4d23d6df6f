"""`client-app --core-service HANDLE`: the device core in its own process, for the desktop window.

The window's process starts it (client_app/device/remote.py) and keeps only the rendering: the SDK's
threads (paho, azure-iot-device), the keyring, cryptography and SQLite then never compete with the GUI
thread for the interpreter lock. The same DeviceRuntime as `--headless`; the window's process sends
its configuration and commands over the socket it inherited (client_app/device/ipc.py) and receives
the core's events. The core owns the inbox/outbox database, the state files and the keyring.

The process ends when told to quit, on SIGTERM, or when the window's process is gone (end of file on
the socket): the core is stopped in order either way, so the outbox and inbox stay intact.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from client_app.device import ipc
from client_app.device.config import store_proxy_password, with_proxy_password
from client_app.logsetup import CORE_LOG_FILE, log_start, log_stop, setup_logging

log = logging.getLogger(__name__)

CORE_NICE = 5  # below the window's 0 (one step is ~1.25x less CPU when both want it)
STDIN_HANDLE = "stdin"  # Windows: the socket arrives as socket.share() bytes on stdin (no fd inheritance)


class _Events:
    """The core's RuntimeListener: every event becomes one frame to the window."""

    def __init__(self, channel: ipc.Channel) -> None:
        self._channel = channel

    def _send(self, frame: dict[str, Any]) -> None:
        try:
            self._channel.send(frame)
        except OSError:
            log.debug("the window's process is gone; event dropped")  # the serve loop sees the end

    def status_changed(self, status: Any) -> None:
        self._send(ipc.status_event(status))

    def step_changed(self, step: Any, outcome: Any, detail: str) -> None:
        self._send(ipc.step_event(step, outcome, detail))

    def message_received(self, message: Any) -> None:
        self._send(ipc.message_event(message))

    def outbox_changed(self) -> None:
        self._send(ipc.outbox_event())


class CoreService:
    """Answers the window's calls, one at a time, on the main thread."""

    def __init__(self, channel: ipc.Channel) -> None:
        self.channel = channel
        self.runtime: Any = None  # DeviceRuntime once started
        self.quitting = False
        self._methods: dict[str, Callable[..., Any]] = {
            "start": self.start,
            "status": lambda: self._core().status().to_json_dict(),
            "send": lambda text, properties=None: ipc.to_wire(self._core().send(text, properties or None)),
            "retry": lambda: self._core().retry(),
            "reconnect_now": lambda: self._core().reconnect_now(),
            "reset_identity": lambda: self._core().reset_identity(),
            "inbox_list": lambda limit: [ipc.to_wire(m) for m in self._core().inbox.list(limit)],
            "outbox_list": lambda limit: [ipc.to_wire(m) for m in self._core().outbox.list(limit)],
            "set_read": lambda ids, read: self._core().inbox.set_read(ids, read),
            "mark_all_read": lambda up_to: self._core().inbox.mark_all_read(up_to),
            "unread_count": lambda before=None: self._core().inbox.unread_count(before),
            "store_proxy_password": lambda proxy: store_proxy_password(ipc.proxy_from_wire(proxy)),
            "quit": self.quit,
        }

    def serve(self) -> None:
        while not self.quitting:
            frame = self.channel.receive()
            if frame is None:
                log.info("the window's process closed the connection: stopping")
                return
            call_id, method, args = ipc.parse_call(frame)
            self.channel.send(self._answer(call_id, method, args))

    def _answer(self, call_id: int, method: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = self._methods.get(method)
        if handler is None:
            return ipc.reply(call_id, error=f"unknown command {method!r}")
        try:
            return ipc.reply(call_id, handler(**args))
        except Exception as exc:  # told to the window in plain words; the details stay in this log
            log.exception("%s failed", method)
            ours = type(exc).__module__.startswith("client_app.")
            return ipc.reply(call_id, error=str(exc) if ours and str(exc) else f"{type(exc).__name__}: {exc}")

    def _core(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("the device core has not started")
        return self.runtime

    def start(self, config: dict[str, Any]) -> dict[str, Any]:
        device_config = ipc.config_from_wire(config)
        setup_logging(device_config.log_dir, file_name=CORE_LOG_FILE)
        log_start("core")
        from client_app.device.runtime import DeviceRuntime  # the SDK, keyring, cryptography: here only

        runtime = DeviceRuntime(with_proxy_password(device_config), _Events(self.channel))
        runtime.start()
        self.runtime = runtime
        return runtime.status().to_json_dict()

    def quit(self, stop_timeout: float = 10) -> None:
        self.quitting = True
        self.close(stop_timeout)

    def close(self, stop_timeout: float = 10) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.stop(stop_timeout)  # a worker stuck in the SDK is a daemon: left behind after this
            runtime.close()


def yield_to_the_window() -> None:
    """Run below the window's CPU priority, before any thread starts (threads inherit it): when the two
    want a core at once, the GUI thread goes first and the event loop stays smooth. The core's work is
    bursty and small; it only waits when the window is busy."""
    if hasattr(os, "nice"):  # POSIX; Windows has no nice
        try:
            os.nice(CORE_NICE)
        except OSError as exc:
            log.debug("could not lower this process's priority: %s", exc)


def inherited_socket(handle: str) -> socket.socket:
    if handle == STDIN_HANDLE:
        return socket.fromshare(sys.stdin.buffer.read())  # type: ignore[attr-defined]  # Windows only
    return socket.socket(fileno=int(handle))


def run_core_service(handle: str) -> int:
    yield_to_the_window()
    # Ctrl+C in a terminal is the window's to handle: it quits this process in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    service = CoreService(ipc.Channel(inherited_socket(handle)))
    code = 0
    try:
        service.serve()
    except ipc.ProtocolError as exc:
        log.error("the window's process sent something unreadable (%s): stopping", exc)
        code = 3
    except OSError as exc:
        log.info("the connection to the window's process broke (%s): stopping", exc)
    except SystemExit:
        log.info("SIGTERM: stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: a second SIGTERM must not cut it
        service.close()
        service.channel.close()
        if logging.getLogger().handlers:
            log_stop(code)
        logging.shutdown()
    # Not a normal interpreter exit: it would wait for SDK threads that may still hang in a network call.
    os._exit(code)
