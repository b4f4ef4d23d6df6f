"""Issue 14 item 1: a device configured for a local cloud resolves and dials nothing but loopback, cloud up or
down. The system resolver is made unreachable for this process: any name (or off-machine address) handed to
socket.getaddrinfo is recorded and fails, as it would on a machine without DNS."""

from __future__ import annotations

import socket

import pytest

from client_app.device.runtime import ConnectionState
from client_app.hosts import is_loopback_address
from tests.device.e2e import config_for, running, wait_for, wait_state


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
