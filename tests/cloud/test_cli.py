"""The operator CLI, as written in the issue, against a running cloud; and `serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from azure.iot.device import MethodResponse
from click.testing import CliRunner

from client_app.cloud.cli import cli
from client_app.pki import CertificateAuthority, certificate_to_pem
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, hub_client, register, wait_for
from tests.fixtures.cloud import free_loopback, issue_device_files


def run(data: Path, *args: str, ok: bool = True) -> tuple[str, str]:
    result = CliRunner().invoke(cli, ["--data", str(data), *args], catch_exceptions=False)
    assert (result.exit_code == 0) == ok, (args, result.output)
    return result.stdout, result.stderr


@PAHO_SOCKET_LEAKS
def test_operator_workflow(local_cloud, tmp_path):
    data = local_cloud.data_dir
    root = CertificateAuthority.root("cli Root")
    issuing = root.intermediate("cli Issuing")
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(certificate_to_pem(root.certificate))

    out, _ = run(data, "certificates", "upload", "cli-root", str(root_pem))
    assert "unverified" in out
    run(data, "enrollment-groups", "create", "cli-group", "--ca", "cli-root", ok=False)  # not verified yet
    code = run(data, "certificates", "verification-code", "cli-root")[0].strip().splitlines()[-1]
    proof = tmp_path / "proof.pem"
    proof.write_bytes(certificate_to_pem(root.issue_verification(code)[0]))
    assert "verified" in run(data, "certificates", "verify", "cli-root", str(proof))[0]
    assert "cli-root" in run(data, "certificates", "list")[0]
    assert "enabled" in run(data, "enrollment-groups", "create", "cli-group", "--ca", "cli-root")[0]
    again = CliRunner().invoke(
        cli, ["--data", str(data), "enrollment-groups", "create", "cli-group", "--ca", "cli-root"]
    )
    assert again.exit_code == 1 and "already exists" in again.stderr  # create never replaces
    assert "disabled" in run(data, "enrollment-groups", "disable", "cli-group")[0]
    assert "enabled" in run(data, "enrollment-groups", "enable", "cli-group")[0]

    files = issue_device_files(issuing, "cli-01", tmp_path)
    register(local_cloud.info, files)
    assert "cli-01" in run(data, "enrollment-groups", "registrations", "cli-group")[0]
    assert "cli-01" in run(data, "registrations", "cli-group")[0]  # through Azure's DPS service API
    assert "disabled" in run(data, "enrollments", "block", "cli-02")[0]

    received = []
    client = hub_client(local_cloud.info, files)
    try:
        client.on_message_received = received.append
        client.on_method_request_received = lambda r: client.send_method_response(
            MethodResponse.create_from_method_request(r, 200, {"got": r.payload})
        )
        listing = run(data, "devices", "list")[0]
        assert "cli-01" in listing and "Connected" in listing
        run(data, "send", "cli-01", "hello device", "--property", "k=v", "--content-type", "text/plain")
        message = wait_for(lambda: received and received[0], what="C2D")
        assert (message.data, message.custom_properties, message.content_type) == (
            b"hello device",
            {"k": "v"},
            "text/plain",
        )
        out = run(data, "invoke", "cli-01", "reboot", "--payload", '{"delay": 1}', "--timeout", "10")[0]
        assert out.splitlines() == ["status: 200", 'payload: {"got": {"delay": 1}}']
        assert '"interval": 5' in run(data, "twin", "cli-01", "--set-desired", '{"interval": 5}')[0]
        assert (
            "cli-01" in run(data, "query", "SELECT * FROM devices WHERE properties.desired.interval = 5")[0]
        )
        counted = run(data, "--json", "query", "SELECT COUNT() AS n FROM devices")[0]
        assert json.loads(counted) == [{"n": 1}]
        # The same code path as against a real hub: a connection string and the usual CA-trust variable.
        env = {"IOTHUB_CONNECTION_STRING": local_cloud.info.iothub_connection_string,
               "SSL_CERT_FILE": local_cloud.info.server_ca_pem}  # fmt: skip
        by_string = CliRunner(env=env).invoke(cli, ["query", "SELECT deviceId FROM devices"])
        assert by_string.exit_code == 0 and '"deviceId": "cli-01"' in by_string.stdout, by_string.output
        client.send_message("from device")
        assert "cli-01: from device" in run(data, "telemetry", "cli-01")[0]
        assert json.loads(run(data, "--json", "telemetry")[0].splitlines()[-1])["body"] == "from device"
        assert (
            json.loads(run(data, "devices", "list", "--json")[0])[0]["deviceId"] == "cli-01"
        )  # Azure's list
    finally:
        client.shutdown()


def test_errors_are_one_line(local_cloud, tmp_path):
    data = local_cloud.data_dir
    for args in (
        ["devices", "show", "nobody"],
        ["twin", "nobody", "--set-desired", "{oops"],
        ["send", "nobody", "x", "--property", "novalue"],
        ["certificates", "upload", "x", str(tmp_path / "missing.pem")],
    ):
        _, err = run(data, *args, ok=False)
        assert len(err.strip().splitlines()) == 1 and err.startswith("client-app-cloud: "), (args, err)
    _, err = run(data, "devices", "show", "a?b", ok=False)  # `?` is a device ID character, not a query
    assert "device 'a?b' not found" in err
    _, err = run(tmp_path / "nowhere", "devices", "list", ok=False)
    assert "connection.json" in err and len(err.strip().splitlines()) == 1


def test_serve_foreground_process(tmp_path):
    data = tmp_path / "served"
    env = {**os.environ, "CLIENT_APP_CLOUD_DATA": str(data)}
    command = [sys.executable, "-m", "client_app.cloud.cli"]
    help_text = subprocess.run(
        [*command, "serve", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "[default: 127.0.0.1:8883]" in help_text  # a direct listener by default, as other clients need
    wrong_port = subprocess.run([*command, "serve", "--data", str(data), "--mqtt-listen", "127.0.0.1:9883"],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
    assert wrong_port.returncode != 0 and "must use port 8883" in wrong_port.stderr
    host = free_loopback()  # not 127.0.0.1:8883: another copy of the suite may be running
    server = subprocess.Popen([*command, "serve", "--data", str(data), "--assignment-delay", "0",
                               "--mqtt-listen", f"{host}:8883"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        wait_for(
            lambda: (data / "connection.json").exists() or server.poll() is not None, 30, "connection.json"
        )
        info = json.loads((data / "connection.json").read_text())
        for key in ("id_scope", "provisioning_host", "hub_hostname", "server_ca_pem", "api_url", "api_token",
                    "mqtt_host", "mqtt_port", "proxy_host", "proxy_port"):  # fmt: skip
            assert key in info
        assert (info["mqtt_host"], info["mqtt_port"]) == (host, 8883) and info["proxy_port"]
        assert Path(info["server_ca_pem"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
        listing = subprocess.run(
            [*command, "devices", "list"], env=env, capture_output=True, text=True, timeout=30
        )
        assert listing.returncode == 0 and "(none)" in listing.stdout
        follow = subprocess.Popen([*command, "telemetry", "--follow"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert follow.stderr is not None and "following" in follow.stderr.readline()
        follow.send_signal(signal.SIGINT)
        _, follow_err = follow.communicate(timeout=10)
        assert follow.returncode in (0, 130) and "Traceback" not in follow_err
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert b"Traceback" not in err
    assert not (data / "connection.json").exists()
    assert not any(b"PRIVATE KEY-----" in p.read_bytes() and b"ENCRYPTED" not in p.read_bytes()
                   for p in data.iterdir() if p.is_file())  # fmt: skip
