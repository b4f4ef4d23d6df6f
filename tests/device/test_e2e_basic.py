"""First launch → connected, second launch without DPS, C2D into the inbox, twin and direct methods."""

from __future__ import annotations

import threading

from client_app.device.runtime import ConnectionState, FirstRunStep
from tests.device.e2e import config_for, running, wait_for, wait_state


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []
        self.messages: list[object] = []
        self.states: list[str] = []

    def status_changed(self, status) -> None:
        if not self.states or self.states[-1] != status.state:
            self.states.append(str(status.state))

    def step_changed(self, step, outcome, detail) -> None:
        self.steps.append((str(step), outcome))

    def message_received(self, message) -> None:
        self.messages.append(message)

    def outbox_changed(self) -> None:
        pass


def test_first_launch_then_reuse_without_dps(keyring_env, local_cloud, cloud_api, enrolled_ca, tmp_path):
    _, bundle = enrolled_ca
    config = config_for(local_cloud.data_dir, bundle, tmp_path / "app")
    recorder = Recorder()
    with running(config, recorder) as runtime:
        wait_state(runtime, ConnectionState.CONNECTED)
        status = runtime.status()
        assert status.registration_id and status.registration_id == status.device_id
        assert status.assigned_hub and status.certificate_not_after and status.last_connected
        assert status.keyring_backend.startswith("keyring.backends.SecretService")
        # the keyring write follows the first connection (it would slow it down otherwise)
        wait_for(lambda: (str(FirstRunStep.KEYRING), "done") in recorder.steps, what="keyring step")
        for step in FirstRunStep:
            assert (str(step), "done") in recorder.steps
        assert recorder.states[:4] == ["not_provisioned", "creating_identity", "provisioning", "connecting"]
        registration = cloud_api.registration(status.registration_id)
    assert runtime.status().state is ConnectionState.STOPPED

    with running(config, recorder := Recorder()) as runtime:
        wait_state(runtime, ConnectionState.CONNECTED)
        assert runtime.status().registration_id == status.registration_id
        assert "provisioning" not in recorder.states and "creating_identity" not in recorder.states
        again = cloud_api.registration(status.registration_id)
        assert again["etag"] == registration["etag"]
        assert again["lastUpdatedDateTimeUtc"] == registration["lastUpdatedDateTimeUtc"]

        # C2D → inbox, idempotent on message id
        device = status.device_id
        for _ in range(2):
            cloud_api.send_c2d(device, "hello device", message_id="c2d-1", properties={"k": "v"})
        wait_for(lambda: runtime.inbox.count() == 1, what="C2D in inbox")
        message = runtime.inbox.list()[0]
        assert (message.message_id, message.text, message.properties["k"]) == ("c2d-1", "hello device", "v")
        wait_for(lambda: recorder.messages, what="listener")

        # D2C with message id
        sent = runtime.send("hello cloud", {"kind": "test"})
        wait_for(lambda: runtime.outbox.queued_count() == 0, what="outbox drained")
        telemetry = cloud_api.telemetry(device)
        assert [t for t in telemetry if t["systemProperties"].get("messageId") == sent.message_id], telemetry

        # twin: reported properties and desired through the callback
        seen = []
        runtime.twin.on_desired(seen.append)
        twin = wait_for(
            lambda: (
                (t := cloud_api.twin(device))["properties"]["reported"].get("certificate_not_after") and t
            ),
            what="reported properties",
        )
        assert twin["properties"]["reported"]["registration_id"] == status.registration_id
        cloud_api.update_twin(device, {"properties": {"desired": {"interval": 7}}})
        wait_for(lambda: seen and seen[-1].get("interval") == 7, what="desired patch")

        # direct methods
        ping = cloud_api.invoke(device, "ping", 1)
        assert ping["status"] == 200 and ping["payload"]["pong"] is True
        diag = cloud_api.invoke(device, "get_diagnostics")
        assert diag["status"] == 200 and diag["payload"]["status"]["state"] == "connected"
        assert "PRIVATE KEY" not in str(diag)
        assert cloud_api.invoke(device, "nope")["status"] == 404

        # reconnect on request: a fresh SDK client, no extra threads left behind
        before, threads = runtime.status().last_connected, threading.active_count()
        runtime.reconnect_now()
        wait_for(lambda: runtime.status().last_connected != before, what="reconnected")
        wait_state(runtime, ConnectionState.CONNECTED)
        wait_for(lambda: threading.active_count() <= threads, what="no thread leak")


def test_files_are_private_to_the_user(keyring_env, local_cloud, cloud_api, enrolled_ca, tmp_path):
    """Issue 14 item 11: data, log and config directories 0700, files 0600 (whatever the umask)."""
    import os
    import stat

    data = tmp_path / "app"
    (data / "config").mkdir(parents=True, mode=0o755)
    old_umask = os.umask(0o022)
    try:
        with running(config_for(local_cloud.data_dir, enrolled_ca.bundle_path, data)) as runtime:
            wait_state(runtime, ConnectionState.CONNECTED)
            cloud_api.send_c2d(runtime.status().device_id, "private", message_id="private-1")
            wait_for(lambda: runtime.status().inbox == 1, what="message stored")
            modes = {
                str(path.relative_to(data)): stat.S_IMODE(path.stat().st_mode)
                for path in [data, *data.rglob("*")]
            }
    finally:
        os.umask(old_umask)
    for name in (".", "identity", "logs", "config"):
        assert modes.pop(name) == 0o700, name
    expected = {"messages.sqlite3", "messages.sqlite3-wal", "state.json", "status.json", "identity/chain.pem"}
    assert expected <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}
