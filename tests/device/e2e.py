"""Helpers for the end-to-end tests: real local cloud, real SDK, real keyring."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from client_app.device.config import DeviceConfig, add_config_arguments, load_config
from client_app.device.runtime import ConnectionState, DeviceRuntime, RuntimeListener
from tests.fixtures.polling import wait_for


def config_for(cloud_dir: Path, bundle: Path, data_dir: Path, *extra: str) -> DeviceConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        [
            "--local-cloud",
            str(cloud_dir),
            "--issuer-bundle",
            str(bundle),
            "--data-dir",
            str(data_dir),
            "--backoff-cap",
            "2",
            *extra,
        ]
    )
    return load_config(args, {})


@contextmanager
def running(config: DeviceConfig, listener: RuntimeListener | None = None) -> Iterator[DeviceRuntime]:
    """A started runtime, closed (core stopped, database closed) when the block ends."""
    runtime = DeviceRuntime(config, listener)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.close()


def wait_state(runtime: DeviceRuntime, state: ConnectionState, timeout: float = 30) -> None:
    try:
        wait_for(lambda: runtime.status().state is state, timeout, f"state {state}")
    except AssertionError:
        raise AssertionError(f"expected {state}, got {runtime.status()}") from None


PLAINTEXT_KEY_MARKERS = (b"BEGIN PRIVATE KEY", b"BEGIN EC PRIVATE KEY", b"BEGIN RSA PRIVATE KEY")


def plaintext_keys(*roots: Path) -> list[Path]:
    """Files holding an unencrypted private key ("ENCRYPTED PRIVATE KEY" does not match)."""
    found = []
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(marker in data for marker in PLAINTEXT_KEY_MARKERS):
                    found.append(path)
    return found


CLIENT_APP = str(Path(sys.executable).with_name("client-app"))
REQUIRED = {
    "state",
    "registration_id",
    "device_id",
    "assigned_hub",
    "certificate_not_after",
    "last_error",
    "outbox",
    "inbox",
}


def run_app(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLIENT_APP, *args], env=env, capture_output=True, text=True, timeout=60)


def app_status(env: dict[str, str], cloud_dir: Path) -> dict:
    out = run_app(env, "--status", "--local-cloud", str(cloud_dir))
    assert out.returncode == 0, out.stderr
    assert "PRIVATE KEY" not in out.stdout
    data = json.loads(out.stdout)
    assert set(data) >= REQUIRED
    return data


def headless(env: dict[str, str], cloud_dir: Path, bundle: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLIENT_APP, "--headless", "--local-cloud", str(cloud_dir), "--issuer-bundle", str(bundle)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
