"""Azure's published Node service SDKs (azure-iothub, @azure/event-hubs; `npm ci --prefix tests/node`) against
the local cloud's AMQP endpoint, pointed at it by connection string and NODE_EXTRA_CA_CERTS only."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest
from azure.iot.device import Message

from client_app.cloud.server import CloudSettings, start_in_thread
from client_app.cloud.store import partition_of
from tests.cloud.amqp_helpers import connected_device, hub_connection_string
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, wait_for
from tests.fixtures.node import NODE_DIR

pytestmark = [PAHO_SOCKET_LEAKS, pytest.mark.usefixtures("node_sdks")]


def _node(script: str, cloud: Any, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "NODE_EXTRA_CA_CERTS": cloud.info.server_ca_pem, **env}
    return subprocess.Popen(["node", str(NODE_DIR / script)], cwd=NODE_DIR, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _outcome(process: subprocess.Popen[str]) -> tuple[int, list[Any]]:
    out, err = process.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(("{", "["))]
    if not lines:
        raise AssertionError(f"node printed nothing useful: {out!r} {err[-2000:]!r}")
    return process.returncode, lines


def test_client_send_reaches_the_device_and_positive_ack_comes_back_as_feedback(local_cloud, enrolled_ca,
                                                                                 tmp_path):  # fmt: skip
    with connected_device(local_cloud, enrolled_ca.issuing, "node-c2d-01", tmp_path) as device:
        connection_string = hub_connection_string(local_cloud)
        node = _node("c2d_feedback.js", local_cloud, IOTHUB_CONNECTION_STRING=connection_string,
                     DEVICE_ID="node-c2d-01", MESSAGE_ID="node-mid-1", FEEDBACK="1")  # fmt: skip
        code, lines = _outcome(node)
        received = wait_for(lambda: device.received, what="the Node C2D message at the device")
    assert code == 0, lines
    assert lines[0] == {"sent": "node-mid-1"}
    message = received[0]
    assert (message.data, message.message_id, message.correlation_id) == (
        b"from node",
        "node-mid-1",
        "node-cid",
    )
    assert (message.content_type, message.ack) == ("text/plain", "positive")
    assert message.custom_properties == {"origin": "node"}
    feedback = lines[1]["feedback"]
    assert lines[1]["contentType"] == "application/vnd.microsoft.iothub.feedback.json"
    assert [(r["originalMessageId"], r["statusCode"], r["deviceId"]) for r in feedback] == [
        ("node-mid-1", "Success", "node-c2d-01")
    ]
    assert feedback[0]["deviceGenerationId"] and feedback[0]["enqueuedTimeUtc"].endswith("Z")


def test_client_send_refusals_as_the_node_sdk_names_them(local_cloud, enrolled_ca, tmp_path):
    with connected_device(local_cloud, enrolled_ca.issuing, "node-c2d-02", tmp_path) as device:
        device.disconnect()
    connection_string = hub_connection_string(local_cloud)
    code, lines = _outcome(_node("c2d_feedback.js", local_cloud, IOTHUB_CONNECTION_STRING=connection_string,
                                 DEVICE_ID="nobody", MESSAGE_ID="m"))  # fmt: skip
    assert code == 2 and lines[-1]["step"] == "send" and lines[-1]["error"] == "DeviceNotFoundError"
    bad_key = hub_connection_string(local_cloud, key="QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    code, lines = _outcome(_node("c2d_feedback.js", local_cloud, IOTHUB_CONNECTION_STRING=bad_key,
                                 DEVICE_ID="node-c2d-02", MESSAGE_ID="m"))  # fmt: skip
    # The SDK reports a refused put-token (401 on $cbs) as a failed open, and sends nothing.
    assert code == 2 and lines == [
        {"step": "open", "error": "Error", "message": "AMQP Transport: Could not connect"}
    ]


def _send(device: Any, texts: list[str]) -> None:
    for text in texts:
        message = Message(text, message_id=f"mid-{text}", content_type="application/json")
        message.custom_properties = {"origin": "device"}
        device.send_message(message)


def test_event_hubs_consumer_reads_from_start_sequence_number_and_latest(local_cloud, enrolled_ca, tmp_path):
    device_id = "node-eh-01"
    partition = str(partition_of(device_id, 4))
    connection = {"EVENTHUB_CONNECTION_STRING": local_cloud.info.eventhub_compatible_connection_string,
                  "PARTITION": partition}  # fmt: skip
    with connected_device(local_cloud, enrolled_ca.issuing, device_id, tmp_path) as device:
        _send(device, ["a", "b", "c"])
        code, lines = _outcome(
            _node("eventhub_read.js", local_cloud, START="earliest", EXPECTED="3", **connection)
        )
        assert code == 0, lines
        events = lines[-1]
        assert [e["body"] for e in events] == ["a", "b", "c"]
        assert [e["sequenceNumber"] for e in events] == [0, 1, 2]
        assert events[0]["properties"] == {"origin": "device"}
        assert events[0]["messageId"] == "mid-a" and events[0]["contentType"] == "application/json"
        system = events[0]["systemProperties"]
        assert system["iothub-connection-device-id"] == device_id
        assert system["iothub-message-source"] == "Telemetry"

        code, lines = _outcome(_node("eventhub_read.js", local_cloud, START="1", EXPECTED="1", **connection))
        assert code == 0 and [e["body"] for e in lines[-1]] == ["c"]

        latest = _node("eventhub_read.js", local_cloud, START="latest", EXPECTED="1", **connection)
        assert latest.stdout is not None and json.loads(latest.stdout.readline()) == {"ready": True}
        time.sleep(2)  # the receiver link is attached by now
        _send(device, ["d"])
        code, lines = _outcome(latest)
        assert code == 0 and [e["body"] for e in lines[-1]] == ["d"]


def test_event_hubs_consumer_resumes_after_a_restart_from_its_checkpoint(local_cloud, enrolled_ca, tmp_path):
    device_id = "node-eh-02"
    partition = str(partition_of(device_id, 4))
    with connected_device(local_cloud, enrolled_ca.issuing, device_id, tmp_path) as device:
        _send(device, ["one", "two"])
        files = device.files
    env = {"EVENTHUB_CONNECTION_STRING": local_cloud.info.eventhub_compatible_connection_string,
           "PARTITION": partition}  # fmt: skip
    code, lines = _outcome(_node("eventhub_read.js", local_cloud, START="earliest", EXPECTED="2", **env))
    assert code == 0 and [e["body"] for e in lines[-1]] == ["one", "two"]
    checkpoint = lines[-1][-1]["sequenceNumber"]
    local_cloud.stop()
    restarted = start_in_thread(CloudSettings(data_dir=local_cloud.data_dir))
    try:
        with connected_device(restarted, enrolled_ca.issuing, device_id, tmp_path, files) as device:
            _send(device, ["three"])
        code, lines = _outcome(
            _node("eventhub_read.js", restarted, START=str(checkpoint), EXPECTED="1", **env)
        )
        resumed = [(e["body"], e["sequenceNumber"]) for e in lines[-1]]
        assert code == 0 and resumed == [("three", checkpoint + 1)]
    finally:
        restarted.stop()
