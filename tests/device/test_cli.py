"""`client-app --headless` / `--status` / `--send` as separate processes, as a user or support runs them."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from client_app.cloud.server import CloudSettings, start_in_thread
from tests.device.e2e import app_status, headless, plaintext_keys, run_app, wait_for
from tests.fixtures.cloud import api_client


def test_killed_process_delivers_its_outbox_on_next_start(user_env, local_cloud, enrolled_ca, tmp_path):
    cloud_dir, bundle = local_cloud.data_dir, enrolled_ca.bundle_path
    assert app_status(user_env, cloud_dir)["state"] == "not_provisioned"
    first = headless(user_env, cloud_dir, bundle)
    restarted = None
    try:
        live = wait_for(
            lambda: (s := app_status(user_env, cloud_dir))["state"] == "connected" and s, 60, "connected"
        )
        assert live["pid"] == first.pid and live["registration_id"] == live["device_id"]
        local_cloud.stop()
        wait_for(lambda: app_status(user_env, cloud_dir)["state"] == "reconnecting", 30, "reconnecting")
        queued = [
            json.loads(run_app(user_env, "--send", f"crash test {i}").stdout)["queued"] for i in range(3)
        ]
        wait_for(lambda: app_status(user_env, cloud_dir)["outbox"] == 3, 30, "outbox of 3")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # status.json still says "reconnecting" with the dead pid: --status must not believe it.
        after_kill = app_status(user_env, cloud_dir)
        assert after_kill["state"] == "stopped" and after_kill["pid"] is None and after_kill["outbox"] == 3

        restarted = start_in_thread(CloudSettings(data_dir=cloud_dir))
        second = headless(user_env, cloud_dir, bundle)
        try:
            wait_for(
                lambda: (s := app_status(user_env, cloud_dir))["state"] == "connected" and s["outbox"] == 0,
                60,
                "delivered after restart",
            )
            with api_client(restarted) as api:
                telemetry = api.telemetry(live["device_id"])
            ids = [t["systemProperties"].get("messageId") for t in telemetry]
            assert [i for i in ids if i in queued] == queued
        finally:
            second.send_signal(signal.SIGTERM)
            _, err = second.communicate(timeout=30)
        assert second.returncode == 0, err
        assert "Traceback" not in err and "connected" in err
        assert app_status(user_env, cloud_dir)["state"] == "stopped"
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=10)
        if restarted:
            restarted.stop()
    home = Path(user_env["HOME"])
    assert (home / ".local/share/client-app/state.json").exists()  # platformdirs under the relocated HOME
    assert list((home / ".local/state/client-app/log").glob("client-app.log*"))
    assert plaintext_keys(home) == []


def test_bad_options_give_one_line_not_a_traceback(user_env, tmp_path):
    out = run_app(user_env, "--status", "--local-cloud", str(tmp_path / "nope"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "no local cloud" in out.stderr
    out = run_app(user_env, "--headless", "--proxy", "nonsense")
    assert out.returncode == 2 and "proxy" in out.stderr and "Traceback" not in out.stderr


def test_no_keyring_is_a_clear_error_state(app_dirs, tmp_path):
    """No Secret Service at all: an error state that says what to do, and no key anywhere on disk."""
    home = tmp_path / "home"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "CLIENT_APP_", "PYTHON_KEYRING"))
    }
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "share"), XDG_RUNTIME_DIR=str(tmp_path))
    cloud = tmp_path / "cloud"
    cloud.mkdir()
    (cloud / "connection.json").write_text(
        json.dumps({"id_scope": "0ne0000TEST", "provisioning_host": "localhost"})
    )
    from client_app.pki import CertificateAuthority, write_issuer_bundle

    bundle = tmp_path / "bundle.pem"
    write_issuer_bundle(CertificateAuthority.root("r").intermediate("i"), bundle)
    proc = headless(env, cloud, bundle)
    try:
        wait_for(lambda: app_status(env, cloud)["state"] == "error", 30, "error state")
        status = app_status(env, cloud)
        assert "keyring" in status["last_error"] and "Secret Service" in status["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    assert plaintext_keys(home) == []
