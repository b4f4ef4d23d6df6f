"""The wire between the desktop app's window process and its device-core process (stdlib only, no Qt).

One stream socket, frames of length-prefixed JSON: a 4-byte big-endian length, then that many bytes of
UTF-8 JSON holding one object with a string "type". Events flow one way, core → window, as in one
process; the window asks with calls and the core answers each with a reply:

    core → window   {"type": "status", "status": {DeviceStatus.to_json_dict()}}
                    {"type": "step", "step": "register", "outcome": "running", "detail": "…"}
                    {"type": "message", "message": {InboxMessage}}
                    {"type": "outbox_changed"}
                    {"type": "reply", "id": 7, "result": …}  or  {…, "error": "plain words"}
    window → core   {"type": "call", "id": 7, "method": "send", "args": {"text": "…", "properties": {}}}

Anything else (a length over MAX_FRAME, bytes that are not UTF-8 JSON, a frame that is not an object,
an unknown type, fields of the wrong shape) raises ProtocolError with one line saying what was wrong:
the reader drops the connection, never the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from client_app.device.config import DeviceConfig, ProxySetting
from client_app.device.messages import InboxMessage, OutboxMessage
from client_app.device.status import DeviceStatus, FirstRunStep, StepOutcome

HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 2**20  # a reply with 1,000 inbox rows of 64 KiB each still fits
EVENT_TYPES = ("status", "step", "message", "outbox_changed")


class ProtocolError(ValueError):
    """A frame that breaks the protocol; the message says how, in one line."""


class EventListener(Protocol):  # the device core's RuntimeListener, seen from the window's side
    def status_changed(self, status: DeviceStatus) -> None: ...
    def step_changed(self, step: FirstRunStep, outcome: StepOutcome, detail: str) -> None: ...
    def message_received(self, message: InboxMessage) -> None: ...
    def outbox_changed(self) -> None: ...


# --- framing -------------------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"a {message.get('type')!r} frame of {len(body)} bytes is over {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Incremental decoder: feed() bytes as they arrive, get the complete frames back."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self._max:
                raise ProtocolError(f"frame length {length} is over the limit of {self._max} bytes")
            if len(self._buffer) < HEADER.size + length:
                break
            body = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            frames.append(decode_body(body))
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        frame = json.loads(body.decode())
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame is a JSON {type(frame).__name__}, not an object")
    if not isinstance(frame.get("type"), str):
        raise ProtocolError("frame has no string 'type'")
    return frame


class Channel:
    """Frames over a connected stream socket. send() from any thread; receive() from one reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._reader = FrameReader()
        self._ready: deque[dict[str, Any]] = deque()

    def send(self, message: Mapping[str, Any]) -> None:
        data = encode(message)
        with self._send_lock:
            self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next frame; None when the other side closed cleanly between frames."""
        while not self._ready:
            data = self.sock.recv(65536)
            if not data:
                if self._reader.pending:
                    raise ProtocolError(f"the connection ended inside a frame ({self._reader.pending} bytes)")
                return None
            self._ready.extend(self._reader.feed(data))
        return self._ready.popleft()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# --- messages --------------------------------------------------------------------------------------------


def call(call_id: int, method: str, **args: Any) -> dict[str, Any]:
    return {"type": "call", "id": call_id, "method": method, "args": args}


def reply(call_id: int, result: Any = None, error: str | None = None) -> dict[str, Any]:
    return (
        {"type": "reply", "id": call_id, "error": error}
        if error
        else {"type": "reply", "id": call_id, "result": result}
    )


def status_event(status: DeviceStatus) -> dict[str, Any]:
    return {"type": "status", "status": status.to_json_dict()}


def step_event(step: FirstRunStep, outcome: StepOutcome, detail: str) -> dict[str, Any]:
    return {"type": "step", "step": str(step), "outcome": str(outcome), "detail": detail or ""}


def message_event(message: InboxMessage) -> dict[str, Any]:
    return {"type": "message", "message": to_wire(message)}


def outbox_event() -> dict[str, Any]:
    return {"type": "outbox_changed"}


def parse_call(frame: Mapping[str, Any]) -> tuple[int, str, dict[str, Any]]:
    call_id, method, args = frame.get("id"), frame.get("method"), frame.get("args", {})
    if frame.get("type") != "call" or not isinstance(call_id, int) or not isinstance(method, str):
        raise ProtocolError(f"expected a call with an integer id and a method, got {_shape(frame)}")
    if not isinstance(args, dict):
        raise ProtocolError(f"call {method!r}: args must be an object")
    return call_id, method, args


def deliver_event(frame: Mapping[str, Any], listener: EventListener) -> None:
    """Decode one core → window event and hand it to the listener, as the core would in one process."""
    kind = frame.get("type")
    try:
        if kind == "status":
            status = DeviceStatus.from_json_dict(_object(frame, "status"))
            listener.status_changed(status)
        elif kind == "step":
            step, outcome = FirstRunStep(frame["step"]), StepOutcome(frame["outcome"])
            listener.step_changed(step, outcome, str(frame.get("detail") or ""))
        elif kind == "message":
            listener.message_received(inbox_from_wire(_object(frame, "message")))
        elif kind == "outbox_changed":
            listener.outbox_changed()
        else:
            raise ProtocolError(f"unknown event type {kind!r}")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed {kind!r} event: {type(exc).__name__}: {exc}") from None


def _object(frame: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = frame.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(f"{frame.get('type')!r} frame: {name!r} must be an object")
    return value


def _shape(frame: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {type(v).__name__}" for k, v in list(frame.items())[:6]) + "}"


# --- plain data on the wire ------------------------------------------------------------------------------


def to_wire(value: Any) -> dict[str, Any]:
    """A message or configuration dataclass as JSON values (times ISO 8601, paths as text)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if isinstance(item, datetime):
            item = item.isoformat()
        elif isinstance(item, Path):
            item = str(item)
        elif dataclasses.is_dataclass(item):
            item = dataclasses.asdict(item)  # type: ignore[arg-type]
        out[f.name] = item
    return out


def _times(data: Mapping[str, Any], *names: str) -> dict[str, Any]:
    out = dict(data)
    for name in names:
        if isinstance(out.get(name), str):
            out[name] = datetime.fromisoformat(out[name])
    return out


def inbox_from_wire(data: Mapping[str, Any]) -> InboxMessage:
    return _build(InboxMessage, _times(data, "received_at"))


def outbox_from_wire(data: Mapping[str, Any]) -> OutboxMessage:
    return _build(OutboxMessage, _times(data, "created_at", "delivered_at"))


_PATH_FIELDS = ("server_ca_pem", "issuer_bundle", "data_dir", "log_dir", "config_dir", "local_cloud")


def proxy_from_wire(data: Mapping[str, Any]) -> ProxySetting:
    return _build(ProxySetting, data)


def config_from_wire(data: Mapping[str, Any]) -> DeviceConfig:
    values = dict(data)
    for name in _PATH_FIELDS:
        if values.get(name) is not None:
            values[name] = Path(values[name])
    if values.get("proxy") is not None:
        values["proxy"] = proxy_from_wire(values["proxy"])
    return _build(DeviceConfig, values)


def _build(cls: Callable[..., Any], values: Mapping[str, Any]) -> Any:
    if not isinstance(values, Mapping):
        raise ProtocolError(f"{cls.__name__} must be an object")  # type: ignore[attr-defined]
    try:
        return cls(**values)
    except TypeError as exc:
        raise ProtocolError(f"malformed {cls.__name__}: {exc}") from None  # type: ignore[attr-defined]
