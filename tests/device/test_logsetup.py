"""The one log set-up: private files, start and stop lines, repeats counted instead of written."""

from __future__ import annotations

import logging

import pytest

from client_app import logsetup
from client_app.device.twin import app_version
from client_app.main import main


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    before = list(root.handlers)
    yield root
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
            handler.close()


def test_log_file_is_private_and_set_up_once(tmp_path, clean_root):
    path = logsetup.setup_logging(tmp_path / "logs")
    assert logsetup.setup_logging(tmp_path / "logs") == path
    ours = [h for h in clean_root.handlers if getattr(h, "baseFilename", None) == str(path.absolute())]
    assert len(ours) == 1
    logging.getLogger("client_app.test").warning("hello")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "logs").stat().st_mode & 0o777) == "0o700"


def test_repeated_sdk_errors_are_written_once_then_counted(tmp_path, clean_root):
    filt = logsetup.RepeatFilter(window=60)

    def record() -> logging.LogRecord:
        message = "Exception caught in background thread"
        return logging.LogRecord("azure.iot.device.common", logging.ERROR, __file__, 1, message, (), None)

    passed = [filt.filter(record()) for _ in range(8)]
    assert passed == [True] + [False] * 7
    filt.window = 0  # the window is over: the next one is written, with the count
    later = record()
    assert filt.filter(later) and "7 more like it" in later.getMessage()


def test_each_run_logs_a_start_line_with_the_version_and_a_stop_line(tmp_path, clean_root, capsys):
    assert main(["--status", "--data-dir", str(tmp_path / "data")]) == 0
    text = (tmp_path / "data" / "logs" / "client-app.log").read_text()
    assert f"client-app {app_version()} starting (status mode" in text
    assert "client-app stopped (exit code 0)" in text


def test_held_lines_are_written_first_when_the_window_opens_its_log(tmp_path, clean_root):
    """The window's process holds its first lines until after its first paint, then writes them in order."""
    logs = tmp_path / "logs"
    logsetup.hold_logging(logs)
    logsetup.log_start("window")
    logging.getLogger("client_app.test").warning("before the window")
    assert not (logs / logsetup.LOG_FILE).exists()
    logsetup.open_held_log()
    logging.getLogger("client_app.test").warning("after the window")
    lines = (logs / logsetup.LOG_FILE).read_text().splitlines()
    assert f"client-app {app_version()} starting (window mode" in lines[0]
    assert [line.rsplit(": ", 1)[1] for line in lines[1:]] == ["before the window", "after the window"]
    assert oct((logs / logsetup.LOG_FILE).stat().st_mode & 0o777) == "0o600"


def test_a_log_dir_with_dot_dot_keeps_held_lines_and_one_handler(tmp_path, clean_root):
    """`--log-dir a/../logs`: the file handler is found under its normalised name, so the held lines are
    written and a second setup_logging() adds no second handler (which would write every line twice)."""
    (tmp_path / "a").mkdir()
    logs = tmp_path / "a" / ".." / "logs"
    logsetup.hold_logging(logs)
    logging.getLogger("client_app.test").warning("held")
    logsetup.open_held_log()
    logsetup.setup_logging(logs)
    logging.getLogger("client_app.test").warning("once")
    lines = (tmp_path / "logs" / logsetup.LOG_FILE).read_text().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["held", "once"]


def test_held_lines_keep_the_values_they_were_logged_with(tmp_path, clean_root):
    """A held record is formatted when logged: its arguments may change (or be big) before the file opens."""
    logs = tmp_path / "logs"
    logsetup.hold_logging(logs)
    pending = ["a"]
    logging.getLogger("client_app.test").warning("pending %s", pending)
    try:
        raise ValueError(f"bad {pending}")
    except ValueError:
        logging.getLogger("client_app.test").exception("failed")
    pending.append("b")  # what the caller does next
    logsetup.open_held_log()
    text = (logs / logsetup.LOG_FILE).read_text()
    assert "pending ['a']" in text and "['a', 'b']" not in text
    assert "ValueError: bad ['a']" in text  # the traceback too, made when held
