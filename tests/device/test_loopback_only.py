"""Issue 14 item 1: a device configured for a local cloud resolves and dials nothing but loopback, cloud up or
down. The system resolver is made unreachable for this process: any name (or off-machine address) handed to
socket.getaddrinfo is recorded and fails, as it would on a machine without DNS."""

from __future__ import annotations

import signal
import socket

import pytest

from client_app.device.runtime import ConnectionState
from client_app.hosts import is_loopback_address
from tests.device.e2e import app_status, config_for, headless, running, wait_for, wait_state


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = socket.getaddrinfo

    def resolver_unreachable(host, *args, **kwargs):
        text = host.decode() if isinstance(host, bytes) else str(host)
        if host is not None and not is_loopback_address(text):
            seen.append(text)
            raise socket.gaierror(socket.EAI_AGAIN, "resolver unreachable (test)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver_unreachable)
    return seen


def test_local_cloud_device_never_resolves_a_name(keyring_env, local_cloud, enrolled_ca, app_dirs, lookups):
    data, _ = app_dirs
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_state(runtime, ConnectionState.CONNECTED)  # cloud up: DPS and hub through the loopback proxy
    assert lookups == []
    local_cloud.stop()  # its connection.json goes; the device has a cached assignment to a host *name*
    with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
        wait_for(lambda: runtime.status().last_error, 30, "a failed attempt")
        first = runtime.status().updated_at
        wait_for(lambda: runtime.status().retry_at and runtime.status().updated_at != first, 30, "a retry")
        status = runtime.status()
    assert lookups == []
    assert status.state is ConnectionState.RECONNECTING and "not running" in (status.last_error or "")


RESOLVER_GUARD = """
import os, socket
_real = socket.getaddrinfo

def _resolver_unreachable(host, *args, **kwargs):
    text = host.decode() if isinstance(host, bytes) else str(host)
    if host is not None and text not in ("127.0.0.1", "::1") and not text.startswith("127."):
        with open(os.environ["RESOLVER_LOG"], "a") as log:
            log.write(text + "\\n")
        raise socket.gaierror(socket.EAI_AGAIN, "resolver unreachable (test)")
    return _real(host, *args, **kwargs)

socket.getaddrinfo = _resolver_unreachable
"""


def test_the_app_process_never_resolves_a_name(user_env, local_cloud, enrolled_ca, tmp_path):
    """The whole `client-app --headless` process (keyring, logs, SDK); sitecustomize guards the resolver."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(RESOLVER_GUARD)
    names = tmp_path / "resolved.txt"
    env = {**user_env, "PYTHONPATH": str(guard), "RESOLVER_LOG": str(names)}
    cloud_dir, bundle = local_cloud.data_dir, enrolled_ca.bundle_path

    def run_until(state: str) -> dict:
        app = headless(env, cloud_dir, bundle)
        try:
            return wait_for(lambda: (s := app_status(env, cloud_dir))["state"] == state and s, 60, state)
        finally:
            app.send_signal(signal.SIGTERM)
            app.communicate(timeout=30)

    run_until("connected")
    local_cloud.stop()
    status = run_until("reconnecting")
    assert not names.exists() or names.read_text() == ""
    assert "not running" in (status["last_error"] or "")
