"""The desktop app under a real X server, window manager and tray (tests/fixtures/x_display.py).

Each test runs `client-app` as a user would, in its own process, and watches it from outside.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUIT_WITHIN = 5.0


def launch(x_display, data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    # No cloud needed: a closed loopback port keeps the app retrying, as it would be on a train.
    env = {**x_display.env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    command = [sys.executable, "-m", "client_app.main", "--data-dir", str(data_dir)]
    command += ["--provisioning-host", "127.0.0.1", "--id-scope", "0ne000TEST", *extra]
    with (data_dir.parent / "console.txt").open("a") as console:
        return subprocess.Popen(command, env=env, stdout=console, stderr=subprocess.STDOUT, text=True)


def ended_within(process: subprocess.Popen[str], seconds: float) -> float | None:
    started = time.monotonic()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return None
    return time.monotonic() - started


@pytest.fixture
def shown_app(x_display, tmp_path):
    process = launch(x_display, tmp_path / "device")
    try:
        window = x_display.wait_window("^client-app")
        yield process, window
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_sigterm_with_the_window_shown_quits(shown_app):
    process, _window = shown_app
    process.send_signal(signal.SIGTERM)
    assert ended_within(process, QUIT_WITHIN) is not None, "SIGTERM left the app running"
    assert process.returncode == 0


def test_ctrl_q_with_the_window_shown_quits(shown_app, x_display):
    process, window = shown_app
    x_display.xdotool("windowactivate", "--sync", window)
    x_display.xdotool("key", "--window", window, "ctrl+q")
    assert ended_within(process, QUIT_WITHIN) is not None, "Ctrl+Q left the app running"
    assert process.returncode == 0
