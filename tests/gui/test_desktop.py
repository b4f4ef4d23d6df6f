"""The desktop app under a real X server, window manager and tray (tests/fixtures/x_display.py).

Each test runs `client-app` as a user would, in its own process, and watches it from outside.
"""

from __future__ import annotations

import json
import os
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
    if "QT_SCALE_FACTOR" in os.environ:
        env["QT_SCALE_FACTOR"] = os.environ["QT_SCALE_FACTOR"]
    command = [sys.executable, "-m", "client_app.main", "--data-dir", str(data_dir)]
    command += ["--provisioning-host", "127.0.0.1", "--id-scope", "0ne000TEST", *extra]
    console_path = data_dir.parent / "console.txt"
    with console_path.open("a") as console:
        process = subprocess.Popen(command, env=env, stdout=console, stderr=subprocess.STDOUT, text=True)
    process.console = console_path  # type: ignore[attr-defined]
    return process


def wait_shown(x_display, process: subprocess.Popen[str], name: str = "^client-app") -> str:
    """The app's window; on failure, say whether the app ended and what it printed."""
    try:
        return x_display.wait_window(name)
    except AssertionError as exc:
        said = process.console.read_text()[-2000:]  # type: ignore[attr-defined]
        raise AssertionError(f"{exc}; exit code {process.poll()}; the app printed:\n{said}") from None


def ended_within(process: subprocess.Popen[str], seconds: float) -> float | None:
    started = time.monotonic()
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return None
    return time.monotonic() - started


def core_pid(data_dir: Path, timeout: float = 30) -> int:
    """The device core's own process: it writes its pid into status.json once started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = json.loads((data_dir / "status.json").read_text()).get("pid")
        except (OSError, ValueError):
            pid = None
        if pid:
            return int(pid)
        time.sleep(0.1)
    raise AssertionError("the device core's process never reported its pid")


def gone(pid: int, within: float = 0.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def with_an_unread_message(data: Path) -> Path:
    """A data directory whose inbox holds one unread message from an earlier run."""
    from client_app.device.paths import DataLayout
    from client_app.device.store import Database, Inbox

    data.mkdir()
    db = Database(DataLayout(data).database)
    Inbox(db).add("m-1", "kept from last time", {})
    db.close()
    return data


@pytest.fixture
def shown_app(x_display, tmp_path):
    process = launch(x_display, tmp_path / "device")
    try:
        window = wait_shown(x_display, process)
        yield process, window
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_sigterm_with_the_window_shown_quits(shown_app, tmp_path):
    process, _window = shown_app
    core = core_pid(tmp_path / "device")
    assert core != process.pid  # the device core runs in a process of its own
    process.send_signal(signal.SIGTERM)
    assert ended_within(process, QUIT_WITHIN) is not None, "SIGTERM left the app running"
    assert process.returncode == 0
    assert gone(core), "the device core's process outlived the window's"


def test_the_core_process_ends_when_the_window_process_is_killed(shown_app, tmp_path):
    process, _window = shown_app
    core = core_pid(tmp_path / "device")
    process.kill()  # no chance to quit the core in order: it sees the connection end
    process.wait(5)
    assert gone(core, within=QUIT_WITHIN), "the device core's process kept running alone"


def test_ctrl_q_with_the_window_shown_quits(shown_app, x_display, tmp_path):
    process, window = shown_app
    core = core_pid(tmp_path / "device")
    x_display.xdotool("windowactivate", "--sync", window)
    x_display.xdotool("key", "--window", window, "ctrl+q")
    assert ended_within(process, QUIT_WITHIN) is not None, "Ctrl+Q left the app running"
    assert process.returncode == 0
    assert gone(core), "the device core's process outlived the window's"


def test_a_second_launch_during_the_first_ones_start_shows_no_window(x_display, tmp_path):
    """A double-click that lands twice: the first launch takes the lock before its window exists and its
    server listens only after its first paint; the second waits for it, brings it forward and exits."""
    first = launch(x_display, tmp_path / "device")
    second = launch(x_display, tmp_path / "device")
    try:
        deadline = time.monotonic() + 30
        while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ended, running = (first, second) if first.poll() is not None else (second, first)
        assert ended.returncode == 0, "neither launch gave way to the other"
        assert "already running" in ended.console.read_text()  # type: ignore[attr-defined]
        wait_shown(x_display, running)
        # Every window by that name is the running app's (or its window manager's frame, which has no pid).
        windows = x_display.xdotool("search", "--name", "^client-app").split()
        owners = {x_display.xdotool("getwindowpid", window) for window in windows}
        assert owners <= {str(running.pid), ""}, f"windows of processes {owners}, the app is {running.pid}"
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                ended_within(process, QUIT_WITHIN)


def test_a_launch_while_the_first_quits_shows_a_window_of_its_own(x_display, tmp_path):
    """The first app's quit takes seconds while its core stops (here its core is stopped outright, so the
    whole 3 s): a launch meanwhile must not hand over to the window that is going and exit, leaving no app.
    It waits for the first's lock and starts normally."""
    data = with_an_unread_message(tmp_path / "device")
    first = launch(x_display, data)
    second = None
    core = None
    try:
        # The title counts the unread message once the window has its core's first answers: from then on no
        # call to the core is under way, which a stopped core would hold for its full timeout.
        wait_shown(x_display, first, "unread")
        core = core_pid(data)
        os.kill(core, signal.SIGSTOP)  # its quit now waits out QUIT_STOP_SECONDS for the core
        first.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + QUIT_WITHIN
        while (
            x_display.xdotool("search", "--onlyvisible", "--name", "^client-app")
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)  # the window hides as the quit begins
        assert first.poll() is None, "the first app ended before the second launch could meet its quit"
        second = launch(x_display, data)
        assert ended_within(first, QUIT_WITHIN + 5) is not None
        window = wait_shown(x_display, second)
        assert second.poll() is None, "the second launch handed over to a window that was quitting"
        assert x_display.xdotool("getwindowpid", window) == str(second.pid)
    finally:
        if core is not None and not gone(core):
            os.kill(core, signal.SIGKILL)
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                ended_within(process, QUIT_WITHIN)


def window_geometry(x_display, window: str) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the window's frame as the X server has it."""
    lines = dict(
        line.split("=", 1) for line in x_display.xdotool("getwindowgeometry", "--shell", window).splitlines()
    )
    return int(lines["X"]), int(lines["Y"]), int(lines["WIDTH"]), int(lines["HEIGHT"])


def test_fits_a_small_screen_at_200_percent(x_display, tmp_path, monkeypatch):
    # 1366×800 at QT_SCALE_FACTOR=2: 683×400 logical pixels for a window made for 860×620.
    monkeypatch.setenv("QT_SCALE_FACTOR", "2")
    process = launch(x_display, tmp_path / "device")
    try:
        window = wait_shown(x_display, process)
        time.sleep(0.5)
        x, y, width, height = window_geometry(x_display, window)
        assert x >= 0 and y >= 0 and x + width <= 1366 and y + height <= 800, (x, y, width, height)
    finally:
        process.send_signal(signal.SIGTERM)
        ended_within(process, QUIT_WITHIN)


def test_window_size_and_position_are_remembered(x_display, tmp_path):
    data = tmp_path / "device"
    process = launch(x_display, data)
    window = wait_shown(x_display, process)
    x_display.xdotool("windowsize", "--sync", window, "700", "500")
    x_display.xdotool("windowmove", "--sync", window, "120", "90")
    time.sleep(0.5)
    placed = window_geometry(x_display, window)
    process.send_signal(signal.SIGTERM)
    assert ended_within(process, QUIT_WITHIN) is not None
    again = launch(x_display, data)
    try:
        window = wait_shown(x_display, again)
        time.sleep(0.5)
        assert window_geometry(x_display, window) == placed
    finally:
        again.send_signal(signal.SIGTERM)
        ended_within(again, QUIT_WITHIN)


def test_the_title_names_the_app_once(x_display, tmp_path):
    data = with_an_unread_message(tmp_path / "device")
    process = launch(x_display, data)
    try:
        window = wait_shown(x_display, process, "unread")
        assert x_display.xdotool("getwindowname", window) == "client-app (1 unread)"
    finally:
        process.send_signal(signal.SIGTERM)
        ended_within(process, QUIT_WITHIN)


def tray_icon(x_display, timeout: float = 20) -> tuple[int, int]:
    """The centre of the app's icon in the tray host: the small window of the app's class."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for window in x_display.xdotool("search", "--class", "client-app").splitlines():
            x, y, width, height = window_geometry(x_display, window)
            if width <= 64 and height <= 64:
                return x + width // 2, y + height // 2
        time.sleep(0.1)
    raise AssertionError("no client-app icon in the tray")


def test_tray_quit_with_the_window_shown_quits(shown_app, x_display, tmp_path):
    process, _window = shown_app
    core = core_pid(tmp_path / "device")
    x, y = tray_icon(x_display)
    x_display.xdotool("mousemove", str(x), str(y), "click", "3")  # the tray menu
    time.sleep(0.5)
    x_display.xdotool("key", "Up", "Return")  # its last item: Quit
    assert ended_within(process, QUIT_WITHIN) is not None, "tray → Quit left the app running"
    assert process.returncode == 0
    assert gone(core), "the device core's process outlived the window's"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_quits_mid_burst_with_its_messages_intact(x_display, tmp_path, keyring_env):
    """SIGTERM while 300 cloud-to-device messages pour in: the demo ends within 5 s, what was stored stays."""
    import threading

    from client_app import demo
    from client_app.cloud.amqp.operator import OperatorError
    from client_app.cloud.info import ConnectionInfo
    from client_app.cloud.service.client import ServiceClient
    from client_app.device.paths import DataLayout
    from client_app.device.store import Database, Inbox, Outbox
    from tests.gui.test_demo import _wait

    env = {**x_display.env, demo.DEMO_DIR_ENV: str(tmp_path)}
    command = [sys.executable, "-m", "client_app.main", "--demo"]
    with (tmp_path / "console.txt").open("w") as console:
        process = subprocess.Popen(command, env=env, stdout=console, stderr=subprocess.STDOUT)
    try:
        x_display.wait_window("^client-app", timeout=60)
        connected = _wait(env, lambda s: s.get("state") == "connected")
        device_id, core = connected["device_id"], connected["pid"]
        queued = subprocess.run([*command, "--send", "kept in the outbox"], env=env, timeout=60, check=True)
        assert queued.returncode == 0
        info = demo.connection_info(demo.cloud_dir(tmp_path))
        sent: list[int] = []

        def burst() -> None:
            with ServiceClient.for_local_cloud(ConnectionInfo.from_json(info), timeout=5) as api:
                for n in range(300):
                    try:
                        api.send_c2d(device_id, f"burst {n}")
                    except OperatorError:
                        return  # the cloud went away with the app
                    sent.append(n)

        sender = threading.Thread(target=burst, daemon=True)
        sender.start()
        _wait(env, lambda s: s.get("inbox", 0) >= 20, timeout=60)  # mid-burst
        process.send_signal(signal.SIGTERM)
        assert ended_within(process, QUIT_WITHIN) is not None, "SIGTERM mid-burst left the demo running"
        assert process.returncode == 0
        assert gone(core), "the device core's process outlived the window's"
        sender.join(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    db = Database(DataLayout(tmp_path / "demo-device").database)
    try:
        inbox = Inbox(db).list(1000)
        assert 20 <= len(inbox) <= len(sent)
        assert len({m.message_id for m in inbox}) == len(inbox)
        assert "kept in the outbox" in [m.text for m in Outbox(db).list(10)]
    finally:
        db.close()
