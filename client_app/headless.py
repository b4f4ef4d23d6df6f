"""`client-app --headless`: the device core without a window, until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import sys
import threading

from client_app.device.config import DeviceConfig
from client_app.device.runtime import (
    ConnectionState,
    DeviceRuntime,
    DeviceStatus,
    FirstRunStep,
    InboxMessage,
    StepOutcome,
)


class _ConsoleListener:
    """One line on stderr per state change: enough to follow a headless run."""

    def __init__(self) -> None:
        self._last: tuple[str, str] | None = None

    def status_changed(self, status: DeviceStatus) -> None:
        line = (str(status.state), status.message)
        if line != self._last:
            self._last = line
            print(f"client-app: {status.state}: {status.message}", file=sys.stderr, flush=True)

    def step_changed(self, step: FirstRunStep, outcome: StepOutcome, detail: str) -> None:
        pass

    def message_received(self, message: InboxMessage) -> None:
        print(f"client-app: message {message.message_id}: {message.text[:200]}", file=sys.stderr, flush=True)

    def outbox_changed(self) -> None:
        pass


def run_headless(config: DeviceConfig) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runtime = DeviceRuntime(config, _ConsoleListener())
    try:
        runtime.start()
        if runtime.status().state is ConnectionState.ERROR and runtime.status().pid is None:
            return 1  # another instance holds the data directory; the listener printed why
        while not stop.wait(0.5):
            pass
    finally:
        runtime.close()
    return 0
