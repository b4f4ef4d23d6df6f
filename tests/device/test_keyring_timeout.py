"""Issue 14 item 3: a Secret Service that never answers (its process stopped with SIGSTOP: D-Bus still
accepts the calls, nobody replies) must not hang first launch; the call times out with a clear error and
the usual keyring retry follows."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from client_app.device import secrets as keystore
from client_app.device.runtime import ConnectionState, DeviceRuntime
from tests.device.e2e import config_for, wait_state
from tests.fixtures.secret_service import SecretService, running_secret_service


def _service_pid(service: SecretService) -> int:
    """The pid behind org.freedesktop.secrets on this private bus, asked of the bus itself."""
    out = subprocess.run(
        ["dbus-send", "--session", "--dest=org.freedesktop.DBus", "--type=method_call", "--print-reply",
         "/org/freedesktop/DBus", "org.freedesktop.DBus.GetConnectionUnixProcessID",
         "string:org.freedesktop.secrets"],
        env={**os.environ, **service.env}, check=True, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.fixture
def frozen_keyring(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SecretService, int]]:
    """A private Secret Service for this test only (others must not see it stopped), and its pid."""
    with running_secret_service(tmp_path / "home", tmp_path / "run") as service:
        for key, value in service.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
        pid = _service_pid(service)
        os.kill(pid, signal.SIGSTOP)
        try:
            yield service, pid
        finally:
            os.kill(pid, signal.SIGCONT)


def test_keyring_call_times_out_with_a_clear_error(frozen_keyring):
    _, pid = frozen_keyring
    store = keystore.KeyringStore(timeout=1.0)
    started = time.monotonic()
    with pytest.raises(keystore.KeyringUnavailable, match="did not answer within 1 s") as info:
        store.load("ca-never-answered")
    assert time.monotonic() - started < 5 and "\n" not in str(info.value)
    # while that call still hangs, the next one waits for it (bounded), instead of piling up threads
    threads = threading.active_count()
    with pytest.raises(keystore.KeyringUnavailable, match="did not answer"):
        store.load("ca-never-answered")
    assert threading.active_count() == threads
    os.kill(pid, signal.SIGCONT)  # the service answers again: so do we
    with pytest.raises(keystore.KeyMissing):
        store.load("ca-never-answered")


def test_first_launch_with_a_frozen_keyring_is_an_error_then_retried(
    frozen_keyring, local_cloud, enrolled_ca, app_dirs, monkeypatch: pytest.MonkeyPatch
):
    _, pid = frozen_keyring
    monkeypatch.setattr(keystore, "KEYRING_TIMEOUT", 1.0)
    data, _ = app_dirs
    runtime = DeviceRuntime(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data))
    try:
        runtime.start()
        wait_state(runtime, ConnectionState.ERROR, timeout=15)
        status = runtime.status()
        assert "did not answer" in status.message and status.retry_at is not None  # retried by itself, too
        assert not (data / "state.json").exists()
        os.kill(pid, signal.SIGCONT)
        runtime.retry()
        wait_state(runtime, ConnectionState.CONNECTED)
    finally:
        runtime.close()
