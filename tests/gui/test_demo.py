"""`client-app --demo`: embedded local cloud + demo CA + enrollment, then the app; all reused next time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client_app import demo
from client_app.cloud.info import ConnectionInfo
from client_app.cloud.service.client import ServiceClient
from client_app.pki import load_issuer_bundle, sha1_thumbprint

BIN = Path(sys.executable).parent


def test_setup_is_idempotent_and_status_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.DEMO_DIR_ENV, str(tmp_path))
    try:
        device = tmp_path / "demo-device"
        assert demo.device_layer(None) == {"data_dir": str(device)}
        assert demo.device_layer("/elsewhere") == {}
        layer = demo.prepare_demo(device)
        cloud, bundle = Path(layer["local_cloud"]), Path(layer["issuer_bundle"])
        first_issuer = sha1_thumbprint(load_issuer_bundle(bundle).certificate)
        info = demo.connection_info(cloud)
        with ServiceClient.for_local_cloud(ConnectionInfo.from_json(info)) as api:
            assert api.certificates is not None
            certificate = api.certificates.get(demo.ROOT_CERTIFICATE_NAME)
            group = api.group(demo.ENROLLMENT_GROUP)
        assert certificate.properties.is_verified is True
        assert group["attestation"]["x509"]["caReferences"]["primary"] == demo.ROOT_CERTIFICATE_NAME
        assert group["identityPolicy"]["requireSelfCertifyingId"] is True  # issue 13
        # Second run in the same process (cloud still up): nothing is re-made.
        assert demo.prepare_demo(device) == layer
        assert sha1_thumbprint(load_issuer_bundle(bundle).certificate) == first_issuer
        with ServiceClient.for_local_cloud(ConnectionInfo.from_json(info)) as api:
            assert api.certificates is not None
            again = api.certificates.get(demo.ROOT_CERTIFICATE_NAME)
        assert again.etag == certificate.etag
    finally:
        demo.stop_cloud()
    assert not (cloud / "connection.json").exists()
    # --demo --status only locates the directories.
    assert demo.prepare_demo(device, status_only=True) == layer
    assert demo._running_cloud is None
    assert not (cloud / "connection.json").exists()


def test_a_damaged_demo_ca_says_what_to_delete(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.DEMO_DIR_ENV, str(tmp_path))
    demo.ensure_demo_ca(demo.ca_dir(tmp_path))
    (demo.ca_dir(tmp_path) / "private" / "root.key.pem").write_text("not a key\n")
    with pytest.raises(demo.DemoError) as failure:
        demo.prepare_demo(tmp_path / "demo-device")
    message = str(failure.value)
    assert "root.key.pem" in message and f"delete {demo.ca_dir(tmp_path)}" in message
    assert "\n" not in message
    assert demo._running_cloud is None  # nothing was started


def test_a_broken_demo_cloud_is_one_line_on_the_console_and_logged(tmp_path):
    cloud = demo.cloud_dir(tmp_path)
    cloud.mkdir(parents=True)
    (cloud / "cloud.db").write_text("not a database\n")
    env = {**os.environ, demo.DEMO_DIR_ENV: str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run(
        [str(BIN / "client-app"), "--demo", "--headless"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"delete {cloud}" in result.stderr and "(details in the log)" in result.stderr
    log = (demo.device_dir(tmp_path) / "logs" / "client-app.log").read_text()
    assert "Traceback" in log and "DemoError" in log


def _status(env: dict[str, str]) -> dict:
    result = subprocess.run(
        [str(BIN / "client-app"), "--demo", "--status"], env=env, capture_output=True, text=True, timeout=60
    )
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else {}


def _wait(env: dict[str, str], predicate, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(env)
        if status and predicate(status):
            return status
        time.sleep(0.5)
    raise AssertionError(f"demo did not reach the expected state; last status: {status}")


def _run_demo(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "client-app"), "--demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _quit(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the demo did not quit on SIGTERM:\n{output}")
    assert process.returncode == 0, output
    return output


@pytest.mark.timeout(240)
def test_demo_connects_receives_and_is_reused(tmp_path, keyring_env):
    env = {**os.environ, demo.DEMO_DIR_ENV: str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    cloud_dir = tmp_path / "demo-cloud"
    process = _run_demo(env)
    try:
        status = _wait(env, lambda s: s.get("state") == "connected")
        device_id = status["device_id"]
        sent = subprocess.run(
            [str(BIN / "client-app-cloud"), "--data", str(cloud_dir), "send", device_id, "hello"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        _wait(env, lambda s: s.get("inbox") == 1)
        # A second launch finds the running demo: it must not start a second cloud, only raise the window.
        second = subprocess.run(
            [str(BIN / "client-app"), "--demo"], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0
        assert "already running" in second.stdout + second.stderr
        assert (cloud_dir / "connection.json").exists()
    finally:
        output = _quit(process)
    assert f"local cloud data dir: {cloud_dir}" in output
    assert "send DEVICE-ID hello" in output and "Traceback" not in output
    assert not (cloud_dir / "connection.json").exists()  # the embedded cloud stopped with the app

    # Next run: same CA, same device identity, connected again without registering anew.
    ca_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo-ca").rglob("*") if p.is_file()}
    process = _run_demo(env)
    try:
        again = _wait(env, lambda s: s.get("state") == "connected")
        assert again["device_id"] == device_id
        assert again["inbox"] == 1
    finally:
        _quit(process)
    assert {p: p.stat().st_mtime_ns for p in ca_files} == ca_files


def test_demo_hints_work_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.DEMO_DIR_ENV, str(tmp_path))
    cloud = demo.cloud_dir(tmp_path)
    demo.start_cloud(cloud)
    try:
        hints = demo.demo_hints(cloud, tmp_path)
        assert any("telemetry --follow" in hint for hint in hints)
        for hint in (h for h in hints if "devices list" in h or "--status" in h):
            done = subprocess.run(hint, shell=True, cwd="/", capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (hint, done.stderr)
    finally:
        demo.stop_cloud()


def test_the_demo_menu_stops_and_starts_the_local_cloud(qtbot, tmp_path, monkeypatch):
    import argparse

    from client_app.device.config import load_config
    from client_app.gui.app import AppController
    from client_app.gui.main_window import MainWindow

    monkeypatch.setenv(demo.DEMO_DIR_ENV, str(tmp_path))
    cloud = demo.cloud_dir(tmp_path)
    demo.start_cloud(cloud)
    try:
        window = MainWindow()
        qtbot.addWidget(window)
        config = load_config(argparse.Namespace(data_dir=str(tmp_path / "device")), {})
        controller = AppController(config, window, cloud_switch=demo.cloud_switch())
        action = window.demo_cloud_action
        assert action.text() == "&Stop the local cloud"
        action.trigger()
        qtbot.waitUntil(lambda: action.text() == "&Start the local cloud", timeout=20_000)
        assert not (cloud / "connection.json").exists() and demo._running_cloud is None
        action.trigger()
        qtbot.waitUntil(lambda: action.text() == "&Stop the local cloud", timeout=20_000)
        assert (cloud / "connection.json").exists()
        controller.shutdown()
    finally:
        demo.stop_cloud()
