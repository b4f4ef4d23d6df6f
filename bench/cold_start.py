"""Cold start to a shown window: the app (from source, and frozen if given) against a bare PySide6 window.

Each run starts a fresh process on a private Xvfb display and polls the X server until a visible window
with the expected title exists. Page caches are dropped before every run when the script may do so
(root), so the first read of Qt and Python from disk is part of the figure.

    uv run python bench/cold_start.py [--frozen dist/client-app/client-app] [--runs N]

Needs Xvfb and xdotool (Debian packages xvfb, xdotool), gnome-keyring and dbus.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def time_to_window(command: list[str], title: str, env: dict[str, str], timeout: float = 60) -> float:
    with tempfile.TemporaryFile() as errors:
        return _time_to_window(command, title, env, timeout, errors)


def _time_to_window(command: list[str], title: str, env: dict[str, str], timeout: float, errors) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    try:
        while time.perf_counter() - started < timeout:
            found = subprocess.run(
                ["xdotool", "search", "--onlyvisible", "--name", title], env=env, capture_output=True
            )
            if found.returncode == 0 and found.stdout.strip():
                return time.perf_counter() - started
            if process.poll() is not None:
                errors.seek(0)
                said = " | ".join(errors.read().decode(errors="replace").strip().splitlines()[-3:])
                raise SystemExit(f"{command[0]} exited with {process.returncode} before a window: {said}")
            time.sleep(0.01)
        raise SystemExit(f"no window titled {title!r} within {timeout:.0f} s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(label: str, command: list[str], title: str, env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        drop_caches()
        times.append(time_to_window(command, title, env))
    median = statistics.median(times)
    print(f"{label:28} {median * 1000:8.0f} ms   (runs: {', '.join(f'{t * 1000:.0f}' for t in times)})")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frozen", type=Path, help="the built executable (dist/client-app/client-app)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required: apt-get install xvfb xdotool")
    app = shutil.which("client-app")
    if app is None:
        raise SystemExit("run through `uv run` so that the client-app command is on PATH")

    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as tmp, xvfb() as display:
        root = Path(tmp)
        with running_secret_service(root / "keyring-home", root / "keyring-run") as keyring:
            env = {**os.environ, **keyring.env, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
            data = ["--data-dir", str(root / "data")]
            print(f"page caches dropped before each run: {'yes' if drop_caches() else 'no (not root)'}")
            base = measure(
                "baseline: bare PySide6 window",
                [sys.executable, "-c", BASELINE],
                "^baseline-window$",
                env,
                args.runs,
            )
            source = measure("client-app (from source)", [app, *data], "^client-app", env, args.runs)
            print(f"{'ratio source / baseline':28} {source / base:8.2f}")
            if args.frozen:
                frozen = measure(
                    "client-app (frozen)", [str(args.frozen.resolve()), *data], "^client-app", env, args.runs
                )
                print(f"{'ratio frozen / baseline':28} {frozen / base:8.2f}")
                folder = args.frozen.resolve().parent
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
                print(f"bundle size: {size / 2**20:.0f} MiB in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
