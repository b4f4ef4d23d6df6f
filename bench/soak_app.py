"""Idle soak of the desktop app: `client-app --demo` left alone, its RSS and CPU sampled; no growth allowed.

The app runs with its window on Qt's offscreen platform (or `--headless`, no window at all), a private Secret
Service and a private demo tree (embedded local cloud included, so the figures cover both). RSS and CPU are
summed over the app's processes (with a window, the device core runs in a child). Once the device
is connected and the warm-up is over, the RSS at that moment is the baseline: the peak after it may exceed it
by at most `--max-growth` percent (default 10), and the app's average CPU must stay under `--max-cpu` percent
of one core. Exit status 0 only if both hold.

    uv run python bench/soak_app.py --minutes 60      # the issue's hour (not part of any test run)
    uv run python bench/soak_app.py --minutes 1 --warmup-minutes 0.25     # proves it works
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.fixtures (reused, not copied)

from tests.fixtures.secret_service import running_secret_service

MIB = 1024 * 1024


def status(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "client_app.main", "--demo", "--status"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}


def wait_connected(app: subprocess.Popen[bytes], env: dict[str, str], timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if app.poll() is not None:
            raise SystemExit(f"the app exited with {app.returncode} before connecting")
        if status(env).get("state") == "connected":
            return time.monotonic() - started
        time.sleep(1)
    raise SystemExit(f"the app did not connect within {timeout:.0f} s: {status(env)}")


def tree(process: psutil.Process) -> list[psutil.Process]:
    """The app and its processes: with a window, the device core runs in a child (docs/desktop-app.md)."""
    return [process, *process.children(recursive=True)]


def rss(process: psutil.Process) -> int:
    return sum(member.memory_info().rss for member in tree(process))


def cpu_seconds(process: psutil.Process) -> float:
    return sum(sum(member.cpu_times()[:2]) for member in tree(process))  # user + system


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="idle time sampled after the warm-up")
    parser.add_argument("--warmup-minutes", type=float, default=2.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--headless", action="store_true", help="no window (client-app --headless)")
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent over the warm RSS")
    parser.add_argument("--max-cpu", type=float, default=2.0, help="average percent of one core")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-soak-app-") as tmp:
        root = Path(tmp)
        with running_secret_service(root / "keyring-home", root / "keyring-run") as keyring:
            env = {**os.environ, **keyring.env, "CLIENT_APP_DEMO_DIR": str(root / "demo"),
                   "QT_QPA_PLATFORM": "offscreen"}  # fmt: skip
            command = [
                sys.executable,
                "-m",
                "client_app.main",
                "--demo",
                *(["--headless"] if args.headless else []),
            ]
            app = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                process = psutil.Process(app.pid)
                connected = wait_connected(app, env)
                print(f"connected after {connected:.1f} s; warming up {args.warmup_minutes:g} min")
                time.sleep(args.warmup_minutes * 60)
                warm_rss, warm_cpu, warm_at = (
                    rss(process),
                    cpu_seconds(process),
                    time.monotonic(),
                )
                samples = []
                while time.monotonic() - warm_at < args.minutes * 60:
                    time.sleep(args.sample_seconds)
                    if app.poll() is not None:
                        raise SystemExit(f"the app exited with {app.returncode} during the soak")
                    samples.append(rss(process))
                cpu = (cpu_seconds(process) - warm_cpu) / (time.monotonic() - warm_at) * 100
                final_state = status(env).get("state")
            finally:
                app.send_signal(signal.SIGTERM)
                try:
                    app.wait(30)
                except subprocess.TimeoutExpired:
                    app.kill()
                    app.wait(10)
    peak, end = max(samples), samples[-1]
    growth = (peak / warm_rss - 1) * 100
    rows = [
        ("RSS after warm-up (baseline)", f"{warm_rss / MIB:.1f} MiB", "", None),
        ("RSS peak after warm-up", f"{peak / MIB:.1f} MiB (+{growth:.1f} %)", f"≤ +{args.max_growth:g} %",
         growth <= args.max_growth),
        ("RSS at the end", f"{end / MIB:.1f} MiB ({end / warm_rss:.2f}× baseline)", "", None),
        ("CPU while idle", f"{cpu:.2f} % of one core", f"≤ {args.max_cpu:g} %", cpu <= args.max_cpu),
        ("still connected at the end", str(final_state), "connected", final_state == "connected"),
    ]  # fmt: skip
    mode = "headless" if args.headless else "window (offscreen)"
    print(f"\nIdle app soak: {mode}, {args.minutes:g} min after {args.warmup_minutes:g} min warm-up, "
          f"{len(samples)} samples")  # fmt: skip
    for figure, measured, target, met in rows:
        print(
            f"{figure:<30} {measured:>34} {target:>10}  {'' if met is None else ('OK' if met else 'MISSED')}"
        )
    return 0 if all(met is not False for *_, met in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
