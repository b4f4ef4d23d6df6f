"""The Event Hubs-compatible endpoint's own process: started by the first connection, restarted after a crash
without losing an event, ended with the cloud (stopped or killed), its configuration line checked; and each
AMQP host refusing the other's addresses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from azure.eventhub import EventHubConsumerClient
from azure.iot.device import Message
from proton.utils import BlockingConnection, LinkDetached

from client_app.cloud.amqp.service import EVENTHUBS_MODULE, EventHubsConfig
from client_app.cloud.server import CloudSettings, RunningCloud, start_in_thread
from client_app.cloud.store import partition_of
from tests.cloud.amqp_helpers import EventCollector, connected_device
from tests.cloud.sdk import PAHO_SOCKET_LEAKS, wait_for
from tests.fixtures.cloud import free_loopback

pytestmark = PAHO_SOCKET_LEAKS


def _endpoint_processes(parent: psutil.Process) -> list[psutil.Process]:
    """How to find the endpoint's process from the cloud's pid: its child running EVENTHUBS_MODULE."""
    return [child for child in parent.children() if EVENTHUBS_MODULE in " ".join(child.cmdline())]


def _partition_ids(cloud: RunningCloud) -> list[str]:
    client = EventHubConsumerClient.from_connection_string(
        cloud.info.eventhub_compatible_connection_string,
        "$Default",
        connection_verify=cloud.info.server_ca_pem,
    )
    with client:
        return client.get_partition_ids()


def _send(device, texts: list[str]) -> None:
    for text in texts:
        device.send_message(Message(text))


def test_the_endpoint_process_starts_at_the_first_connection(local_cloud):
    me = psutil.Process()
    time.sleep(0.3)
    assert local_cloud.cloud.eventhubs.pid is None and not _endpoint_processes(me)  # nobody has connected
    assert _partition_ids(local_cloud) == ["0", "1", "2", "3"]
    pid = local_cloud.cloud.eventhubs.pid
    assert [p.pid for p in _endpoint_processes(me)] == [pid]
    assert _partition_ids(local_cloud) == ["0", "1", "2", "3"]
    assert local_cloud.cloud.eventhubs.pid == pid  # one process serves every connection


def test_a_killed_endpoint_process_loses_nothing(local_cloud, enrolled_ca, tmp_path, caplog):
    device_id = "eh-crash"
    partition = str(partition_of(device_id, 4))
    with connected_device(local_cloud, enrolled_ca.issuing, device_id, tmp_path) as device:
        _send(device, ["1", "2", "3"])
        with EventCollector(local_cloud, partition, "-1") as before:
            wait_for(lambda: len(before.events) >= 3, what="events before the crash")
            first = local_cloud.cloud.eventhubs.pid
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: "exited (exit code -9)" in caplog.text, what="the cloud noticing the exit")
            _send(device, ["4", "5"])
            wait_for(lambda: len(before.events) >= 5, 30, "the connected consumer reconnecting")
            time.sleep(0.3)
        assert [e.body_as_str() for e in before.events] == ["1", "2", "3", "4", "5"]  # resumed where it was
        with EventCollector(local_cloud, partition, "-1") as after:
            wait_for(lambda: len(after.events) >= 5, what="stored events through a new process")
            _send(device, ["6", "7"])
            wait_for(lambda: len(after.events) >= 7, what="live events through the new process")
            time.sleep(0.3)
        assert local_cloud.cloud.eventhubs.pid not in (None, first)
    assert [e.body_as_str() for e in after.events] == ["1", "2", "3", "4", "5", "6", "7"]
    assert [e.sequence_number for e in after.events] == list(range(7))


def test_an_endpoint_process_that_cannot_serve_is_restarted_about_once_a_second(local_cloud, caplog):
    (local_cloud.data_dir / "server.pem").unlink()  # its TLS chain: read by each new endpoint process
    exits = "exited (exit code 3)"
    with socket.create_connection((local_cloud.info.eventhub_host, 5672), timeout=10):  # waits in the backlog
        wait_for(lambda: exits in caplog.text, what="the endpoint's process failing")
        time.sleep(3)
    assert 2 <= caplog.text.count(exits) <= 4  # retried, not in a tight loop


def test_stopping_the_cloud_ends_the_endpoint_process(tmp_path):
    cloud = start_in_thread(CloudSettings(data_dir=tmp_path / "cloud"))
    try:
        _partition_ids(cloud)
        child = psutil.Process(cloud.cloud.eventhubs.pid)
    finally:
        cloud.stop()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_killed_cloud_leaves_no_endpoint_process(tmp_path):
    """The endpoint's process reads its stdin to the end: when the cloud dies, so does it."""
    data = tmp_path / "served"
    server = subprocess.Popen(
        [sys.executable, "-m", "client_app.cloud.cli", "serve", "--data", str(data), "--no-proxy",
         "--mqtt-listen", f"{free_loopback()}:8883"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: (data / "connection.json").exists() or server.poll() is not None, 60, "the cloud")
        info = json.loads((data / "connection.json").read_text())
        cloud = psutil.Process(server.pid)
        assert not _endpoint_processes(cloud)
        with socket.create_connection((info["eventhub_host"], 5672), timeout=10):
            children = wait_for(lambda: _endpoint_processes(cloud), what="the endpoint's process")
        server.kill()
        server.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"the endpoint's process outlived the cloud: {alive}"
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate(timeout=10)


@pytest.mark.shared_cloud
@pytest.mark.parametrize(
    ("host", "address", "receive"),
    [
        ("amqp_host", "hub/ConsumerGroups/$Default/Partitions/0", True),
        ("amqp_host", "$management", False),
        ("eventhub_host", "/messages/devicebound", False),
        ("eventhub_host", "/messages/serviceBound/feedback", True),
    ],
)
def test_each_amqp_host_refuses_the_others_addresses(local_cloud, host, address, receive):
    connection = BlockingConnection(
        f"amqp://{getattr(local_cloud.info, host)}:5672", timeout=10, allowed_mechs="ANONYMOUS"
    )
    try:
        with pytest.raises(LinkDetached, match="amqp:not-found"):
            (connection.create_receiver if receive else connection.create_sender)(address)
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"", "not a JSON line"),
        (b"{oops\n", "not a JSON line"),
        (b"[]\n", "not a JSON object"),
        (b'{"db_path": "x"}\n', "missing "),
        (b'{"db_path": 1}\n', "missing "),
    ],
)
def test_a_bad_configuration_line_is_one_clear_error(line, error):
    result = subprocess.run([sys.executable, "-m", EVENTHUBS_MODULE], input=line, capture_output=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2
    message = result.stderr.decode()
    assert (
        len(message.strip().splitlines()) == 1
        and "bad configuration on stdin" in message
        and error in message
    )


def _config(**changes: object) -> dict[str, object]:
    fields = {
        "db_path": "cloud.db", "host": "127.0.0.9", "entity": "hub", "hub_name": "hub.example",
        "created": "2026-01-01T00:00:00Z", "partitions": 4, "chain_pem": "server.pem",
        "key_pem": "server.key.pem", "passphrase": "x", "policies": [], "log_level": 20, "listeners": [],
    }  # fmt: skip
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "error"),
    [({"partitions": "4"}, "partitions is not int"), ({"log_level": True}, "log_level is not int"),
     ({"policies": {}}, "policies is not list"), ({"extra": 1}, "unknown extra")],
)  # fmt: skip
def test_configuration_fields_are_checked(changes, error):
    with pytest.raises(ValueError, match=error):
        EventHubsConfig.from_line(json.dumps(_config(**changes)).encode())
    assert EventHubsConfig.from_line(json.dumps(_config()).encode()).partitions == 4


def test_a_configuration_it_cannot_serve_is_one_clear_error(tmp_path):
    line = json.dumps(_config(listeners=[{"tls": False, "fd": 999}], chain_pem=str(tmp_path / "none.pem")))
    result = subprocess.run([sys.executable, "-m", EVENTHUBS_MODULE], input=line.encode() + b"\n",
                            capture_output=True, timeout=60)  # fmt: skip
    assert result.returncode == 3
    message = result.stderr.decode()
    assert "cannot serve the Event Hubs-compatible endpoint" in message and "Traceback" not in message


def test_a_taken_event_hubs_port_fails_at_start(tmp_path):
    host = free_loopback(5671, 5672)
    with socket.socket() as squatter:
        squatter.bind((host, 5672))
        squatter.listen()
        with pytest.raises(OSError, match=f"cannot listen on {host}:5672"):
            start_in_thread(CloudSettings(data_dir=tmp_path / "cloud", eventhub_host=host))
