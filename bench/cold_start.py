"""Cold start to a shown window: the app (from source, and frozen if given) against a bare PySide6 window.

Each run starts a fresh process on a private Xvfb display and polls the X server until a visible window
with the expected title exists. Page caches are dropped before every run when the script may do so
(root), so the first read of Qt and Python from disk is part of the figure.

    uv run python bench/cold_start.py [--frozen dist/client-app/client-app ...] [--runs N]

Each command runs once untimed first, as an installed app has run before: Python writes its bytecode
then (the bench clears PYTHONDONTWRITEBYTECODE, or the app's modules were compiled from source on every
timed run and the baseline's not) and the data directory exists. Several --frozen builds are timed in
one run against the same baseline (an A/B of two builds).

Wall time on a shared machine is noisy, so each line also gives what the window's process had used when
its window was found (Linux /proc): CPU time, bytes it read from the disk and major page faults. These
do not depend on what else runs. Note what "page caches dropped" cannot drop: pages that other running
processes map. The baseline runs the venv's interpreter, whose libpython and system libraries are mapped
by every other Python process on the machine; a frozen app's own copies are not (docs/desktop-app.md).

Needs Xvfb, xdotool and xev (Debian packages xvfb, xdotool, x11-utils), gnome-keyring and dbus.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fixtures (reused, not copied)

from tests.fixtures.secret_service import running_secret_service

BASELINE = (
    "from PySide6.QtWidgets import QApplication, QLabel\n"
    "app = QApplication([])\n"
    "label = QLabel('baseline')\n"
    "label.setWindowTitle('baseline-window'); label.resize(400, 300); label.show()\n"
    "app.exec()\n"
)
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@contextmanager
def xvfb() -> Iterator[str]:
    read, write = os.pipe()
    server = subprocess.Popen(
        # -noreset: by default the server resets when its last client leaves, and a process connecting during
        # the reset fails ("no Qt platform plugin could be initialized"), as between two timed runs.
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        display = f":{pipe.readline().strip()}"
    try:
        yield display
    finally:
        server.terminate()
        server.wait(timeout=10)


def drop_caches() -> bool:
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


class MapTimes:
    """When each window was mapped (shown), from the X server's own MapNotify events: `xev` listening on the
    root window, whose children the top-level windows are here (no window manager). A poll alone says when it
    happened to look (every ~15 ms, and later while the app under test keeps the CPUs busy right after its
    show(), which the bare window does not), so the time of a window is taken from this record."""

    def __init__(self, env: dict[str, str]) -> None:
        self._times: dict[int, float] = {}
        self._process = subprocess.Popen(
            ["stdbuf", "-oL", "xev", "-root", "-event", "substructure"],  # line-buffered: each event at once
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, name="xev", daemon=True).start()

    def _read(self) -> None:
        """MapNotify event, serial 18, synthetic NO, window 0x50d,
        event 0x50d, window 0x400007, override NO    <- the mapped window is the second line's `window`"""
        assert self._process.stdout is not None
        mapped = False
        for line in self._process.stdout:
            if mapped:
                self._times[int(line.split(",")[1].split()[1], 16)] = time.perf_counter()
            mapped = line.startswith("MapNotify")

    def first_mapped(self, windows: list[int], since: float, wait: float = 1.0) -> float | None:
        """The earliest map time after `since` of these windows (xdotool's ids), or None if xev did not
        report one within `wait` s."""
        deadline = time.perf_counter() + wait
        while True:
            times = [self._times[w] for w in windows if self._times.get(w, 0.0) >= since]
            if times or time.perf_counter() > deadline:
                return min(times, default=None)
            time.sleep(0.005)

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)


@dataclass(frozen=True)
class Start:
    seconds: float  # exec to the window's MapNotify (or to the poll that saw it, if xev reported none)
    cpu_ms: float  # the process's user + system CPU time by then
    read_mb: float  # bytes it had read from the disk (page cache misses), /proc/PID/io read_bytes
    major_faults: int  # pages of mapped files (libraries) it waited for the disk for
    poll_lag: float | None = None  # s from the MapNotify to the poll that saw the window (None: no MapNotify)


def process_usage(pid: int) -> tuple[float, float, int]:
    """CPU ms, MB read from disk, major faults of a live process so far (zeros where /proc says nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except (OSError, ValueError):
        return 0.0, 0.0, 0
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_ms = (int(stat[11]) + int(stat[12])) * 1000 / ticks  # utime, stime (fields 14, 15)
    return cpu_ms, int(io["read_bytes"]) / 2**20, int(stat[9])  # majflt (field 12)


def time_to_window(
    command: list[str], title: str, env: dict[str, str], maps: MapTimes, timeout: float = 60
) -> Start:
    with tempfile.TemporaryFile() as errors:
        return _time_to_window(command, title, env, maps, timeout, errors)


def _time_to_window(
    command: list[str], title: str, env: dict[str, str], maps: MapTimes, timeout: float, errors
) -> Start:
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        while time.perf_counter() - started < timeout:
            found = subprocess.run(
                ["xdotool", "search", "--onlyvisible", "--name", title], env=env, capture_output=True
            )
            if found.returncode == 0 and found.stdout.strip():
                seen = time.perf_counter()
                usage = process_usage(process.pid)
                mapped = maps.first_mapped([int(w) for w in found.stdout.split()], started)
                if mapped is None:
                    return Start(seen - started, *usage)
                return Start(mapped - started, *usage, poll_lag=seen - mapped)
            if process.poll() is not None:
                errors.seek(0)
                said = " | ".join(errors.read().decode(errors="replace").strip().splitlines()[-3:])
                raise SystemExit(f"{command[0]} exited with {process.returncode} before a window: {said}")
            time.sleep(0.01)
        raise SystemExit(f"no window titled {title!r} within {timeout:.0f} s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(
    label: str, command: list[str], title: str, env: dict[str, str], maps: MapTimes, runs: int
) -> float:
    time_to_window(command, title, env, maps)  # untimed: bytecode written, data directory made
    starts = []
    for _ in range(runs):
        drop_caches()
        starts.append(time_to_window(command, title, env, maps))
    median = statistics.median(start.seconds for start in starts)
    print(
        f"{label:28} {median * 1000:8.0f} ms   (runs: {', '.join(f'{s.seconds * 1000:.0f}' for s in starts)})"
    )
    cpu = statistics.median(start.cpu_ms for start in starts)
    read = statistics.median(start.read_mb for start in starts)
    faults = statistics.median(start.major_faults for start in starts)
    print(f"{'':28} CPU {cpu:5.0f} ms, read {read:5.1f} MB from disk, {faults:5.0f} major faults (medians)")
    lags = [start.poll_lag for start in starts if start.poll_lag is not None]
    lag = f"a poll saw it a median {statistics.median(lags) * 1000:.0f} ms later" if lags else "no MapNotify"
    print(f"{'':28} {len(lags)} of {runs} timed by the window's MapNotify ({lag})")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frozen",
        type=Path,
        action="append",
        default=[],
        help="a built executable (dist/client-app/client-app); repeat to compare builds",
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("Xvfb", "xdotool", "xev", "stdbuf"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required: apt-get install xvfb xdotool x11-utils")
    app = shutil.which("client-app")
    if app is None:
        raise SystemExit("run through `uv run` so that the client-app command is on PATH")

    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp, xvfb() as display:
        root = Path(tmp)
        with running_secret_service(root / "keyring-home", root / "keyring-run") as keyring:
            env = {**os.environ, **keyring.env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            data = ["--data-dir", str(root / "data")]
            print(f"page caches dropped before each run: {'yes' if drop_caches() else 'no (not root)'}")
            maps = MapTimes(env)
            try:
                _measure_all(args, app, data, env, maps)
            finally:
                maps.close()
    return 0


def _measure_all(
    args: argparse.Namespace, app: str, data: list[str], env: dict[str, str], maps: MapTimes
) -> None:
    baseline = [sys.executable, "-c", BASELINE]
    base = measure("baseline: bare PySide6 window", baseline, "^baseline-window$", env, maps, args.runs)
    source = measure("client-app (from source)", [app, *data], "^client-app", env, maps, args.runs)
    print(f"{'ratio source / baseline':28} {source / base:8.2f}")
    for executable in args.frozen:
        folder = executable.resolve().parent
        command = [str(executable.resolve()), *data]
        frozen = measure("client-app (frozen)", command, "^client-app", env, maps, args.runs)
        print(f"{'ratio frozen / baseline':28} {frozen / base:8.2f}")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        print(f"bundle size: {size / 2**20:.0f} MiB in {folder}")


if __name__ == "__main__":
    sys.exit(main())
