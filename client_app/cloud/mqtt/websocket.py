"""MQTT over WebSockets, as IoT Hub and DPS serve it on port 443 at the path `/$iothub/websocket`.

The device SDKs offer it (`websockets=True`) for networks that block 8883 ("MQTT over WebSockets on port
443", learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub; azure-iot-device `common/mqtt_transport.py`:
path `/$iothub/websocket`, subprotocol `mqtt`). Here it is a layer between TLS and the MQTT engine: after the
upgrade, `WebSocketReader.read` and `WebSocketWriter.write` carry the MQTT byte stream in binary messages
(packets may span or share messages, [MQTT-6.0.0-2]); the WebSocket protocol itself is wsproto's (sans-IO).
"""

from __future__ import annotations

import asyncio
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

PATH = "/$iothub/websocket"
SUBPROTOCOL = "mqtt"
_READ_CHUNK = 64 * 1024
_MAX_REQUEST = 16 * 1024  # the upgrade request's head
_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_UNSUPPORTED_DATA = 1003


class WebSocketRefused(Exception):
    """The client's upgrade request was refused (answered with an HTTP error) or never completed."""


async def accept(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
) -> tuple[WebSocketReader, WebSocketWriter]:
    """Answer the upgrade request on an established TLS stream; raises WebSocketRefused."""
    ws = WSConnection(ConnectionType.SERVER)
    received = 0
    async with asyncio.timeout(timeout):
        while True:
            data = await reader.read(_READ_CHUNK)
            received += len(data)
            if not data or received > _MAX_REQUEST:
                raise WebSocketRefused("no complete upgrade request")
            try:
                ws.receive_data(data)
                request = next((e for e in ws.events() if isinstance(e, Request)), None)
            except RemoteProtocolError as exc:
                writer.write(ws.send(exc.event_hint) if exc.event_hint else b"")
                raise WebSocketRefused(f"bad upgrade request: {exc}") from None
            if request is not None:
                break
    if request.target.split("?")[0] != PATH or SUBPROTOCOL not in request.subprotocols:
        writer.write(ws.send(RejectConnection(status_code=404)))
        raise WebSocketRefused(
            f"upgrade to {request.target[:100]!r} {request.subprotocols}: not MQTT at {PATH}"
        )
    writer.write(ws.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
    ws_writer = WebSocketWriter(ws, writer)
    return WebSocketReader(ws, reader, ws_writer), ws_writer


class WebSocketWriter:
    """What the MQTT engine writes to: each write is one binary message; the rest is the TLS stream's."""

    def __init__(self, ws: WSConnection, writer: asyncio.StreamWriter) -> None:
        self._ws = ws
        self._writer = writer

    def write(self, data: bytes) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._writer.write(self._ws.send(BytesMessage(data=data)))

    def send_control(self, data: bytes) -> None:
        self._writer.write(data)

    def close(self) -> None:
        if self._ws.state is ConnectionState.OPEN and not self._writer.is_closing():
            self._writer.write(self._ws.send(CloseConnection(code=1000)))
        self._writer.close()

    def __getattr__(self, name: str) -> Any:  # drain, wait_closed, is_closing, transport, get_extra_info
        return getattr(self._writer, name)


class WebSocketReader:
    """The StreamReader the MQTT engine reads from: the payload bytes of binary messages, b"" at the end.

    Pull-based (one socket read per call when nothing is buffered), so TCP back-pressure works as without it.
    """

    def __init__(self, ws: WSConnection, reader: asyncio.StreamReader, writer: WebSocketWriter) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()
        self._eof = False

    async def read(self, n: int) -> bytes:
        while not self._buffer and not self._eof:
            data = await self._reader.read(_READ_CHUNK)
            self._ws.receive_data(data or None)
            if not data:
                self._eof = True
            self._drain_events()
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    def _drain_events(self) -> None:
        try:
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    self._buffer += event.data
                elif isinstance(event, Ping):
                    self._writer.send_control(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        self._writer.send_control(self._ws.send(event.response()))
                    self._eof = True
                elif isinstance(event, TextMessage):  # MQTT rides in binary messages only [MQTT-6.0.0-1]
                    self._fail(_CLOSE_UNSUPPORTED_DATA, "text message")
        except RemoteProtocolError as exc:
            self._fail(_CLOSE_PROTOCOL_ERROR, str(exc))

    def _fail(self, code: int, reason: str) -> None:
        if self._ws.state is ConnectionState.OPEN:
            self._writer.send_control(self._ws.send(CloseConnection(code=code, reason=reason[:100])))
        self._eof = True
