"""The window ↔ device-core wire (client_app/device/ipc.py): frames, events, calls, and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client_app.core_service import CoreService
from client_app.device import ipc
from client_app.device.config import DeviceConfig, ProxySetting
from client_app.device.messages import InboxMessage, OutboxMessage
from client_app.device.remote import CoreUnavailable, RemoteRuntime
from client_app.device.status import ConnectionState, DeviceStatus, FirstRunStep, StepOutcome

NOW = datetime(2026, 11, 30, 19, 0, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def status_changed(self, status):
        self.events.append(("status", status))

    def step_changed(self, step, outcome, detail):
        self.events.append(("step", step, outcome, detail))

    def message_received(self, message):
        self.events.append(("message", message))

    def outbox_changed(self):
        self.events.append(("outbox",))


def frame(body: bytes) -> bytes:
    return ipc.HEADER.pack(len(body)) + body


def test_frames_survive_any_split_of_the_byte_stream():
    messages = [
        {"type": "outbox_changed"},
        {"type": "status", "status": {"state": "connected", "text": "é ⏎"}},
    ]
    data = b"".join(ipc.encode(m) for m in messages)
    for chunk in (1, 3, 7, len(data)):
        reader = ipc.FrameReader()
        got = []
        for start in range(0, len(data), chunk):
            got += reader.feed(data[start : start + chunk])
        assert got == messages and reader.pending == 0


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (ipc.HEADER.pack(ipc.MAX_FRAME + 1), "over the limit"),
        (frame(b"\xff\xfe{}"), "not UTF-8"),
        (frame(b'{"type": "status"'), "not JSON"),
        (frame(b"[1, 2]"), "a JSON list, not an object"),
        (frame(b'{"kind": "status"}'), "no string 'type'"),
        (frame(b'{"type": 7}'), "no string 'type'"),
    ],
)
def test_malformed_frames_are_a_clear_protocol_error(data, said):
    with pytest.raises(ipc.ProtocolError, match=said):
        ipc.FrameReader().feed(data)


@pytest.mark.parametrize(
    ("event", "said"),
    [
        ({"type": "launch_missiles"}, "unknown event type"),
        ({"type": "status", "status": "connected"}, "'status' must be an object"),
        ({"type": "status", "status": {"state": "sleeping"}}, "malformed 'status' event"),
        ({"type": "step", "step": "register"}, "malformed 'step' event"),
        ({"type": "step", "step": "dance", "outcome": "done"}, "malformed 'step' event"),
        ({"type": "message", "message": {"id": 1}}, "malformed InboxMessage"),
        (
            {"type": "message", "message": {"id": 1, "message_id": "m", "text": "t", "extra": 1}},
            "InboxMessage",
        ),
    ],
)
def test_malformed_events_are_a_clear_protocol_error_and_reach_no_listener(event, said):
    recorder = Recorder()
    with pytest.raises(ipc.ProtocolError, match=said):
        ipc.deliver_event(event, recorder)
    assert recorder.events == []


def test_events_arrive_as_the_core_made_them():
    status = DeviceStatus(state=ConnectionState.CONNECTED, message="ok", inbox=3, last_connected=NOW, pid=42)
    message = InboxMessage(7, "m-7", "hello", {"k": "v", "flag": None}, NOW, read=False)
    recorder = Recorder()
    for event in (
        ipc.status_event(status),
        ipc.step_event(FirstRunStep.REGISTER, StepOutcome.DONE, "Assigned to hub"),
        ipc.message_event(message),
        ipc.outbox_event(),
    ):
        ipc.deliver_event(json.loads(json.dumps(event)), recorder)  # as it travels
    assert recorder.events == [
        ("status", status),
        ("step", FirstRunStep.REGISTER, StepOutcome.DONE, "Assigned to hub"),
        ("message", message),
        ("outbox",),
    ]
    assert type(recorder.events[1][1]) is FirstRunStep


def test_messages_and_configuration_round_trip():
    sent = OutboxMessage(3, "id-3", "hi", {"a": "b"}, NOW, "delivered", NOW)
    assert ipc.outbox_from_wire(json.loads(json.dumps(ipc.to_wire(sent)))) == sent
    config = DeviceConfig(
        id_scope="0ne00000001",
        proxy=ProxySetting("http", "127.0.0.1", 3128, "user", "secret"),
        data_dir=Path("/tmp/d"),
        local_cloud=Path("/tmp/cloud"),
        backoff_cap=2.0,
        do_not_disturb=True,
    )
    again = ipc.config_from_wire(json.loads(json.dumps(ipc.to_wire(config))))
    assert again == config and again.proxy.password == "secret"
    with pytest.raises(ipc.ProtocolError, match="malformed DeviceConfig"):
        ipc.config_from_wire({"no_such_setting": 1})


def test_a_call_that_is_not_a_call_is_a_protocol_error():
    assert ipc.parse_call(ipc.call(1, "status")) == (1, "status", {})
    for bad in (
        {"type": "call", "id": "1", "method": "x"},
        {"type": "reply", "id": 1},
        {"type": "call", "id": 1},
    ):
        with pytest.raises(ipc.ProtocolError, match="expected a call"):
            ipc.parse_call(bad)
    with pytest.raises(ipc.ProtocolError, match="args must be an object"):
        ipc.parse_call({"type": "call", "id": 1, "method": "send", "args": ["x"]})


def test_channel_reports_a_clean_end_and_an_end_inside_a_frame():
    ours, theirs = socket.socketpair()
    channel = ipc.Channel(ours)
    theirs.sendall(ipc.encode({"type": "outbox_changed"}))
    theirs.close()
    assert channel.receive() == {"type": "outbox_changed"}
    assert channel.receive() is None
    channel.close()
    ours, theirs = socket.socketpair()
    theirs.sendall(ipc.encode({"type": "outbox_changed"})[:-2])
    theirs.close()
    channel = ipc.Channel(ours)
    with pytest.raises(ipc.ProtocolError, match="ended inside a frame"):
        channel.receive()
    channel.close()


def test_the_core_service_answers_bad_calls_in_plain_words():
    ours, theirs = socket.socketpair()
    service = CoreService(ipc.Channel(theirs))
    serving = threading.Thread(target=service.serve, daemon=True)
    serving.start()
    window = ipc.Channel(ours)
    window.send(ipc.call(1, "format_disk"))
    assert window.receive() == {"type": "reply", "id": 1, "error": "unknown command 'format_disk'"}
    window.send(ipc.call(2, "status"))
    assert window.receive() == {
        "type": "reply",
        "id": 2,
        "error": "RuntimeError: the device core has not started",
    }
    window.send(ipc.call(3, "send", wrong_argument=1))
    assert "unexpected keyword argument" in window.receive()["error"]
    window.send(ipc.call(4, "quit"))
    assert window.receive() == {"type": "reply", "id": 4, "result": None}
    serving.join(5)
    assert not serving.is_alive()
    window.close()
    service.channel.close()


def fake_core(script: str):
    """A stand-in for `client-app --core-service`: a Python snippet that gets the socket's fd."""

    def command(handle: str) -> list[str]:
        return [sys.executable, "-c", f"import os, socket\nsock = socket.socket(fileno={handle})\n{script}"]

    return command


def test_a_core_that_sends_garbage_is_dropped_and_reported_without_a_crash():
    lost: list[str] = []
    answer_garbage = "sock.recv(65536)\nsock.sendall(b'\\x00\\x00\\x00\\x05hello')\nsock.recv(1)"
    runtime = RemoteRuntime(
        DeviceConfig(), Recorder(), on_lost=lost.append, command=fake_core(answer_garbage)
    )
    with pytest.raises(CoreUnavailable, match="unreadable"):
        runtime.start()  # the reply to "start" is not JSON: start fails in plain words
    assert lost == []  # start() said it; nothing was running to be lost
    assert runtime._process is not None and runtime._process.poll() is not None  # not left behind


def test_a_core_that_dies_later_fails_pending_calls_and_is_reported_once():
    lost: list[str] = []
    # Answers "start", then dies on the next call.
    script = (
        "import json, struct\n"
        "data = sock.recv(65536)\n"
        "call_id = json.loads(data[4:])['id']\n"
        "body = json.dumps({'type': 'reply', 'id': call_id, 'result': {}}).encode()\n"
        "sock.sendall(struct.pack('>I', len(body)) + body)\n"
        "sock.recv(65536)\n"
        "os._exit(9)\n"
    )
    runtime = RemoteRuntime(DeviceConfig(), Recorder(), on_lost=lost.append, command=fake_core(script))
    runtime.start()
    assert runtime.alive
    with pytest.raises(CoreUnavailable, match="stopped unexpectedly"):
        runtime.status()
    runtime._reader.join(5)
    assert lost == ["the app's connection part stopped unexpectedly"] and not runtime.alive
    with pytest.raises(CoreUnavailable):
        runtime.retry()
    runtime.close()
    assert lost == ["the app's connection part stopped unexpectedly"]  # closing is not a second loss


def test_the_core_runs_in_the_windows_session_in_a_process_group_of_its_own(tmp_path):
    """Ctrl+C in a terminal reaches only the window (which stops the core in order); and the core shares the
    window's session, so Linux's per-session CPU share (autogroup) does not give it half the machine."""
    seen = tmp_path / "seen.json"
    script = (
        "import json, struct\n"
        f"open({str(seen)!r}, 'w').write(json.dumps([os.getsid(0), os.getpgid(0), os.getpid()]))\n"
        "call_id = json.loads(sock.recv(65536)[4:])['id']\n"
        "body = json.dumps({'type': 'reply', 'id': call_id, 'result': {}}).encode()\n"
        "sock.sendall(struct.pack('>I', len(body)) + body)\n"
        "sock.recv(65536)\n"
    )
    runtime = RemoteRuntime(DeviceConfig(), Recorder(), command=fake_core(script))
    runtime.start()
    session, group, pid = json.loads(seen.read_text())
    assert session == os.getsid(0) and group == pid == runtime.pid
    runtime.close()


def test_the_core_service_runs_below_the_windows_priority():
    code = (
        "import os\n"
        "from client_app.core_service import CORE_NICE, yield_to_the_window\n"
        "before = os.nice(0)\n"
        "yield_to_the_window()\n"
        "print(os.nice(0) - before, CORE_NICE)\n"
    )
    lowered, wanted = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(wanted) > 0 and lowered == wanted
