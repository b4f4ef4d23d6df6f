"""The operator CLI's `send` and `telemetry --follow` over AMQP: the local cloud's own endpoint by default, or
any hub by connection string (Azure's cannot be reached here, so the same code runs against the local cloud,
as README says)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys

from azure.iot.device import Message
from click.testing import CliRunner

from client_app.cloud.cli import cli
from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.cloud.store import partition_of
from tests.cloud.amqp_helpers import EventCollector, connected_device, hub_connection_string
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, wait_for

pytestmark = PAHO_SOCKET_LEAKS


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_send_by_connection_string_with_ack_and_feedback_record(
    local_cloud, cloud_api, enrolled_ca, tmp_path
):
    env = {"IOTHUB_CONNECTION_STRING": hub_connection_string(local_cloud),
           "SSL_CERT_FILE": local_cloud.info.server_ca_pem}  # fmt: skip
    with connected_device(local_cloud, enrolled_ca.issuing, "cli-amqp-01", tmp_path) as device:
        code, out, err = _cli("send", "cli-amqp-01", "over amqp", "-p", "k=v", "--ack", "full",
                              "--message-id", "cli-mid", env=env)  # fmt: skip
        assert code == 0, err
        assert out.strip() == "queued message cli-mid for cli-amqp-01"
        message = wait_for(lambda: device.received and device.received[0], what="C2D from the CLI")
    assert (message.data, message.message_id, message.ack) == (b"over amqp", "cli-mid", "full")
    assert message.custom_properties == {"k": "v"}


def test_send_refusals_are_one_line(local_cloud):
    data = str(local_cloud.data_dir)
    code, _, err = _cli("--data", data, "send", "nobody", "x")
    assert code == 1 and "amqp:not-found" in err and "nobody" in err
    assert len(err.strip().splitlines()) == 1
    bad = hub_connection_string(local_cloud, key="QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    code, _, err = _cli("--hub-connection-string", bad, "send", "nobody", "x",
                        env={"SSL_CERT_FILE": local_cloud.info.server_ca_pem})  # fmt: skip
    assert code == 1 and "signature is not valid" in err


def test_send_without_the_amqp_endpoint_says_so(tmp_path):
    """C2D is AMQP only (as in Azure): a local cloud started with --no-amqp refuses it in one line."""
    with start_in_thread(CloudSettings(data_dir=tmp_path / "cloud", amqp=False)) as cloud:
        code, _, err = _cli("--data", str(cloud.data_dir), "send", "nobody", "x")
    assert code == 1 and "--no-amqp" in err and len(err.strip().splitlines()) == 1


def test_telemetry_follow_reads_the_event_hubs_endpoint(local_cloud, enrolled_ca, tmp_path):
    env = {**os.environ, "CLIENT_APP_CLOUD_DATA": str(local_cloud.data_dir)}
    command = [sys.executable, "-m", "client_app.cloud.cli", "--json", "telemetry", "--follow"]
    follow = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stderr is not None and "following" in follow.stderr.readline()
        with connected_device(local_cloud, enrolled_ca.issuing, "cli-amqp-02", tmp_path) as device:
            lines: list[str] = []
            assert follow.stdout is not None
            for attempt in range(20):  # the follower attaches its receivers a moment after it starts
                message = Message(f"live {attempt}", content_type="text/plain")
                message.custom_properties = {"n": str(attempt)}
                device.send_message(message)
                line = _readline(follow, 1.0)
                if line:
                    lines.append(line)
                    break
        event = json.loads(lines[0])
        assert event["deviceId"] == "cli-amqp-02" and event["body"].startswith("live ")
        assert event["systemProperties"]["contentType"] == "text/plain"
        assert event["properties"]["n"] == event["body"].split()[1]
    finally:
        follow.terminate()
        follow.communicate(timeout=15)


def _readline(process: subprocess.Popen[str], timeout: float) -> str | None:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout):
            return process.stdout.readline()
    return None


def test_consumer_groups_added_by_the_operator_are_readable(local_cloud, enrolled_ca, tmp_path):
    data = str(local_cloud.data_dir)
    assert (
        _cli("--data", data, "consumer-groups", "add", "analytics")[1].strip() == "consumer group analytics"
    )
    assert _cli("--data", data, "consumer-groups", "list")[1].split() == ["$Default", "analytics"]
    code, _, err = _cli("--data", data, "consumer-groups", "add", "bad!name")
    assert code == 1 and "invalid consumer group name" in err
    assert _cli("--data", data, "consumer-groups", "delete", "$Default")[0] == 1
    with connected_device(local_cloud, enrolled_ca.issuing, "cli-amqp-03", tmp_path) as device:
        device.send_message("for analytics")
    partition = str(partition_of("cli-amqp-03", 4))
    with EventCollector(local_cloud, partition, "-1", consumer_group="analytics") as collector:
        wait_for(lambda: collector.events, what="an event for the added consumer group")
    assert collector.events[0].body_as_str() == "for analytics"
    assert _cli("--data", data, "consumer-groups", "delete", "analytics")[0] == 0
    assert _cli("--data", data, "consumer-groups", "list")[1].split() == ["$Default"]


def test_expired_message_with_negative_ack_comes_back_as_feedback(local_cloud, enrolled_ca, tmp_path):
    data = str(local_cloud.data_dir)
    with connected_device(local_cloud, enrolled_ca.issuing, "cli-amqp-04", tmp_path) as device:
        device.disconnect()  # offline: the message waits in the queue until it expires
    code, _, err = _cli("--data", data, "send", "cli-amqp-04", "too late", "--ack", "negative", "--ttl", "1",
                        "--message-id", "late-1")  # fmt: skip
    assert code == 0, err
    code, out, err = _cli("--data", data, "--json", "feedback", "--timeout", "20")
    assert code == 0, err
    records = json.loads(out)
    assert [(r["originalMessageId"], r["statusCode"], r["description"]) for r in records] == [
        ("late-1", "Expired", "Expired")
    ]
    assert _cli("--data", data, "feedback", "--timeout", "1")[1].strip() == "(none)"  # completed: gone
