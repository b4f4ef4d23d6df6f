"""Generic MQTT 3.1.1 server over TLS (asyncio streams) with a pluggable handler.

Two listener kinds share one connection engine: a direct TLS listener, and an HTTP CONNECT front where the
client first asks for a tunnel (`CONNECT name:8883 HTTP/1.1`) and TLS starts on the same socket after our
`200`. That is how the unmodified SDK (hard-wired to port 8883) reaches us on any port.

Per connection: the main task reads packets and answers PUBACK/PINGREQ/DISCONNECT itself; SUBSCRIBE,
UNSUBSCRIBE and PUBLISH go in order to a dispatch task that awaits the handler (a PUBLISH the handler can
settle synchronously, such as a method response, is settled by the main task when nothing is queued
ahead). Keeping PUBACKs off the dispatch path means a handler may `await conn.publish(...)` on the very
connection it is serving without deadlocking.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import gc
import logging
import os
import re
import ssl
import time
from typing import Any, NamedTuple, Protocol

from cryptography import x509

from client_app.cloud.mqtt import packets as p
from client_app.cloud.mqtt.ratelog import RateLimitedLog
from client_app.cloud.mqtt.tls import presented_chain
from client_app.cloud.mqtt.websocket import WebSocketRefused
from client_app.cloud.mqtt.websocket import accept as accept_websocket

_READ_CHUNK = 64 * 1024
_TLS_READ_BUFFER = 32 * 1024  # asyncio's SSL layer allocates 256 KiB per connection by default
_PROXY_HEADER_LIMIT = 8 * 1024
_MAX_UNREAD_BYTES = 1024 * 1024  # PINGRESPs are written without drain(); bound what a non-reader costs
_CLOSE_GRACE = 2.0  # seconds a closing transport may take to flush before it is aborted
_VALID_RETURN_CODES = frozenset({0, 2, 3, 4, 5})  # never 1: paho silently downgrades to MQTT 3.1 on it
# IoT Hub's idle limit: 1.5 × keep-alive, at most 1,767 s ("the maximum server-supported keep-alive value is
# 29.45 minutes", learn.microsoft.com/azure/iot/iot-mqtt-connect-to-iot-hub#default-keep-alive-timeout). A
# keep-alive of 0 gets the maximum too, as in Azure's MQTT adapter (Azure/azure-iot-protocol-gateway,
# src/ProtocolGateway.Core/Mqtt/MqttAdapter.cs DeriveKeepAliveTimeout): no connection idles forever.
MAX_IDLE_TIMEOUT = 1767.0
CLIENT_DISCONNECT = "client sent DISCONNECT"  # close reasons a handler may tell apart from a lost connection
SERVER_SHUTDOWN = "server shutting down"
_HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_LOG = logging.getLogger("client_app.cloud.mqtt")
WEBSOCKET_PORT = 443  # a CONNECT to this port is MQTT over WebSockets, as on IoT Hub; any other is plain MQTT


class ConnectDecision(NamedTuple):
    """The handler's answer to a CONNECT. Any (return_code, session_present) 2-tuple is accepted too."""

    # 0 accept; 2 identifier rejected; 3 server unavailable; 4 bad user name or password; 5 not authorized
    return_code: int
    session_present: bool = False


class RefusePublish(Exception):
    """Raised by MqttHandler.published to drop the message (no PUBACK) and close the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionClosed(ConnectionError):
    """MqttConnection.publish on a connection that closed before the message was sent or acknowledged."""


class MqttHandler(Protocol):
    """Implemented by the services. Every method runs on the server's event loop."""

    async def authorize(self, conn: MqttConnection) -> ConnectDecision:
        """Decide the CONNACK. `conn` is not yet registered and cannot publish yet."""
        ...

    async def subscribed(self, conn: MqttConnection, topic_filter: str, requested_qos: int) -> int:
        """Granted QoS (0/1/2) or 0x80 for failure. Called once per filter of a SUBSCRIBE."""
        ...

    async def published(
        self, conn: MqttConnection, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> None:
        """A client PUBLISH; the PUBACK is sent after this returns. Raise RefusePublish to drop and close."""
        ...

    async def disconnected(self, conn: MqttConnection, reason: str) -> None:
        """Exactly once per authorized connection, after its last subscribed/published call finished."""
        ...

    # Optional: `async def unsubscribed(self, conn, topic_filter: str) -> None` is called when present.
    # Optional: `def published_at_once(self, conn, topic, payload, qos, *, retain=False) -> bool` settles a
    # PUBLISH without awaiting anything (True; its PUBACK follows once the callbacks already due have run) or
    # declines it (False: published() gets it). It is called on the reading task, only when nothing is queued
    # ahead, so handler calls and PUBACKs keep the order the PUBLISHes came in (MQTT 3.1.1 section 4.6).


class MqttConnection:
    """One accepted, CONNECT-ed client. Created by MqttServer; handlers receive it."""

    def __init__(
        self,
        server: MqttServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        packet_reader: p.PacketReader,
        connect: p.Connect,
        *,
        peer_chain: list[x509.Certificate],
        proxy_target: str | None,
    ) -> None:
        self.client_id: str = connect.client_id
        self.username: str = connect.username or ""
        self.password: bytes | None = connect.password
        self.keepalive: int = connect.keepalive
        self.clean_session: bool = connect.clean_session
        self.will: p.Will | None = connect.will
        self.peer_chain: list[x509.Certificate] = peer_chain
        self.proxy_target: str | None = proxy_target
        self.websocket = False  # MQTT over WebSockets (set by the server after the upgrade)
        sockname = writer.get_extra_info("sockname")
        self.local_host: str = sockname[0] if sockname else ""
        self.peer_address: tuple[str, int] | None = _address(writer.get_extra_info("peername"))
        self.connected_at: float = time.time()
        self.close_reason: str | None = None

        self._server = server
        self._log = server.log
        self._reader = reader
        self._writer = writer
        self._packet_reader = packet_reader
        self._accepted = False
        self._settled = asyncio.Event()  # CONNACK 0 sent, or the connection ended before that
        self._done = asyncio.Event()  # set after handler.disconnected returned
        self._main_task: asyncio.Task[Any] | None = None
        self._reading = False  # main task is parked in reader.read(): safe to cancel
        self._dispatch_task: asyncio.Task[None] | None = None
        self._queue: collections.deque[tuple[p.Packet, int]] = collections.deque()  # (packet, approx size)
        self._queued_bytes = 0
        self._queue_ready = asyncio.Event()  # dispatcher: something to do
        self._queue_space = asyncio.Event()  # reader: the dispatcher made room
        self._inflight = asyncio.Semaphore(server.max_inflight)
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_packet_id = 1
        self._idle_limit = 0.0  # keep-alive: seconds of silence allowed (set when serving starts)
        self._last_packet = 0.0  # loop time of the last packet received
        self._idle_timer: asyncio.TimerHandle | None = None
        self._write_low_water: int = writer.transport.get_write_buffer_limits()[0]
        self._dispatching = False  # the dispatch task is inside a handler call
        self._published_at_once = getattr(server.handler, "published_at_once", None)

    def __repr__(self) -> str:
        return f"<MqttConnection {self.client_id!r} from {self._peer_text()}>"

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def accepted(self) -> bool:
        """CONNACK 0 has been sent and the connection is still open."""
        return self._accepted and not self.closed

    # -- public API

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Send a PUBLISH; for QoS 1 return when the client PUBACKed it.

        Called before the CONNACK is out (e.g. from a task spawned in authorize), it waits for it first.
        Raises ConnectionClosed if the connection closes first (no retransmission: MQTT 3.1.1 only resends on
        a reconnect, which the services own), ValueError for QoS 2 or an invalid topic.
        """
        if qos not in (0, 1):
            raise ValueError(f"unsupported QoS {qos!r} (0 or 1)")
        message = p.Publish(p.check_topic_name(topic), bytes(payload), qos, None)
        if not self._accepted and not await self.wait_accepted():
            raise ConnectionClosed(self.close_reason or "connection not accepted")
        if qos == 0:
            await self._send(message)
            return
        async with self._inflight:  # cap on unacknowledged messages towards this client
            packet_id = self._allocate_packet_id()
            acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending[packet_id] = acked
            try:
                await self._send(p.Publish(message.topic, message.payload, 1, packet_id))
                await acked
            finally:
                self._pending.pop(packet_id, None)

    def close(self, reason: str) -> None:
        """Close the connection (idempotent; the first reason wins and is passed to handler.disconnected).

        Event-loop thread only; from another thread use loop.call_soon_threadsafe(conn.close, reason).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._writer.close()
        self._queue_ready.set()
        self._queue_space.set()
        self._settled.set()
        if self._reading and self._main_task is not None and self._main_task is not asyncio.current_task():
            self._main_task.cancel()  # wake the reader now rather than after the TLS close handshake

    async def wait_accepted(self) -> bool:
        """Wait until the CONNACK is out (True) or the connection ended first (False).

        Do not await this (or publish) inside authorize(): the CONNACK is sent after authorize returns.
        """
        await self._settled.wait()
        return self.accepted

    async def wait_closed(self) -> None:
        """Return once the connection is torn down and handler.disconnected (if due) returned."""
        await self._done.wait()

    # -- connection engine: the CONNECT phase (authorize, CONNACK) and the session belong to the connection

    async def serve(self, early_packets: list[p.Packet]) -> None:
        """Called once by the server after CONNECT: ask the handler, then refuse or serve until closed."""
        try:
            return_code, session_present = await self._decide()
            if return_code:
                await self._reject(return_code)
                return
            await self._accept(session_present, early_packets)
        finally:
            self._settled.set()  # e.g. cancelled during authorize: nobody may wait forever
            if not self._accepted:
                self._done.set()

    async def _decide(self) -> tuple[int, bool]:
        if self._server.closing:
            return 3, False
        if not self.client_id:
            return 2, False  # no generated ids: connections are keyed by client id
        try:
            decision = await self._server.handler.authorize(self)
            return_code, session_present = (decision, False) if isinstance(decision, int) else decision
        except Exception as exc:
            self._log.error("%s: handler.authorize failed: %r", self._peer_text(), exc)
            return 3, False
        if return_code not in _VALID_RETURN_CODES:
            self._log.error(
                "%s: handler returned invalid CONNACK code %r; using 3", self._peer_text(), return_code
            )
            return 3, False
        return return_code, bool(session_present) and return_code == 0

    async def _accept(self, session_present: bool, early_packets: list[p.Packet]) -> None:
        """Send CONNACK 0 and serve until closed; always ends with handler.disconnected."""
        self._main_task = asyncio.current_task()
        try:
            await self._server.register(self)
            await self._send(p.Connack(0, session_present))
            self._accepted = True  # publish() proceeds only once CONNACK is on the wire
            self._settled.set()
            self._dispatch_task = asyncio.get_running_loop().create_task(self._dispatch_loop())
            self._log.info(
                "%s: connected%s (user %r, keepalive %d)", self._peer_text(),
                " over WebSockets" if self.websocket else "", self.username, self.keepalive,
            )  # fmt: skip
            self._handle_packets(early_packets)
            await self._read_loop()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            self.close("server task cancelled")
            raise
        except Exception as exc:  # a bug must cost this connection only
            self._log.error("%s: internal error: %r", self._peer_text(), exc, exc_info=True)
            self.close(f"internal error: {exc!r}")
        finally:
            await self._teardown()

    async def _reject(self, return_code: int) -> None:
        self.close_reason = f"refused with CONNACK {return_code}"
        self._log.info("%s: %s", self._peer_text(), self.close_reason)
        if not self._writer.is_closing():
            self._writer.write(p.encode(p.Connack(return_code)))
        self._settled.set()
        await _close_writer(self._writer)
        self._done.set()

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_limit = self._server.idle_timeout(self.keepalive)
        self._last_packet = loop.time()
        if self._idle_limit:
            self._idle_timer = loop.call_at(self._last_packet + self._idle_limit, self._check_idle)
        try:
            await self._read_packets(loop)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()

    async def _read_packets(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self.closed:
            if self._backlogged():
                await self._wait_for_room()
                self._last_packet = loop.time()  # we were slow, not the client
                continue
            try:
                self._reading = True
                data = await self._reader.read(_READ_CHUNK)
            except asyncio.CancelledError:
                if self.closed and (task := asyncio.current_task()) is not None:
                    task.uncancel()  # our own wake-up from close() (or from the keep-alive check)
                    return
                raise
            except (OSError, ssl.SSLError) as exc:
                self.close(f"connection lost: {exc!r}")
                return
            finally:
                self._reading = False
            if not data:
                self.close("connection lost")
                return
            try:
                received = self._packet_reader.feed(data)
            except p.MalformedPacket as exc:
                self._close_logged(f"malformed packet: {exc}", logging.WARNING)
                return
            if received:
                self._last_packet = loop.time()
                self._handle_packets(received)

    def _check_idle(self) -> None:
        """The keep-alive deadline, kept lazily: a packet only stores its time, and this one timer per
        connection fires at most once per idle limit, re-armed while packets keep coming (a timer re-armed
        on every read cost each packet a heap push and a cancel)."""
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        deadline = self._last_packet + self._idle_limit
        if not self._reading:  # waiting for the handler to make room: we are slow, not the client
            deadline = loop.time() + self._idle_limit
        if deadline > loop.time():
            self._idle_timer = loop.call_at(deadline, self._check_idle)
            return
        self._close_logged(f"keepalive expired (no packet for {self._idle_limit:g} s)", logging.INFO)

    def _handle_packets(self, received: list[p.Packet]) -> None:
        """Answer transport-level packets at once; queue the rest, in order, for the handler."""
        for packet in received:
            if self.closed:
                return
            match packet:
                case p.Puback(packet_id):
                    acked = self._pending.get(packet_id)
                    if acked is not None and not acked.done():
                        acked.set_result(None)
                    elif self._log.isEnabledFor(logging.DEBUG):  # no peer text formatted per packet otherwise
                        self._log.debug("%s: PUBACK for unknown packet id %d", self._peer_text(), packet_id)
                case p.Pingreq():
                    self._reply_nowait(p.Pingresp())
                case p.Disconnect():
                    self.close(CLIENT_DISCONNECT)
                case p.Publish() if self._dispatcher_idle() and self._published_now(packet):
                    pass
                case p.Publish() | p.Subscribe() | p.Unsubscribe():
                    self._enqueue(packet)
                case _:
                    self._close_logged(
                        f"unexpected {type(packet).__name__.upper()} from client", logging.WARNING
                    )

    def _reply_nowait(self, packet: p.Packet) -> None:
        """Answer from the reading task without drain(); a client not reading its answers is cut off."""
        self._send_nowait(packet)
        if self._writer.transport.get_write_buffer_size() > _MAX_UNREAD_BYTES:
            self._close_logged(f"client is not reading its {type(packet).__name__.upper()}s", logging.WARNING)

    def _dispatcher_idle(self) -> bool:
        return not self._queue and not self._dispatching and self._published_at_once is not None

    def _published_now(self, packet: p.Publish) -> bool:
        """Give a PUBLISH to the handler's synchronous hook on the reading task, when nothing is queued ahead
        of it (the order holds): a publish it settles at once skips the hop to the dispatch task and back."""
        settle = self._published_at_once
        assert settle is not None
        try:
            if not settle(self, packet.topic, packet.payload, packet.qos, retain=packet.retain):
                return False
        except Exception as exc:
            self._handler_failed(exc)
            return True
        if packet.qos == 1 and packet.packet_id is not None:
            # After the callbacks already due, such as the task the handler just woke (a method call's
            # HTTP response goes out first): the PUBACK's send is a syscall that would delay it.
            asyncio.get_running_loop().call_soon(self._ack_now, p.Puback(packet.packet_id))
        return True

    def _ack_now(self, packet: p.Packet) -> None:
        if not self.closed:
            self._reply_nowait(packet)

    def _enqueue(self, packet: p.Packet) -> None:
        size = len(packet.payload) + len(packet.topic) if isinstance(packet, p.Publish) else 0
        size += 64  # bookkeeping per packet
        if self._queued_bytes + size > self._server.max_queued_bytes:
            self._close_logged("client floods packets without waiting for acknowledgements", logging.WARNING)
            return
        self._queue.append((packet, size))
        self._queued_bytes += size
        self._queue_ready.set()

    def _backlogged(self) -> bool:
        """Stop reading while the handler lags behind, except when we await PUBACKs from this client:
        those may sit behind the backlog in the stream, and a handler waiting for them must not deadlock."""
        server = self._server
        full = (
            len(self._queue) >= server.max_pending_packets
            or self._queued_bytes >= server.max_queued_bytes // 4
        )
        return full and not self._pending and not self.closed

    async def _wait_for_room(self) -> None:
        while self._backlogged():
            self._queue_space.clear()
            await self._queue_space.wait()

    async def _dispatch_loop(self) -> None:
        """Hand queued packets to the handler in order. Packets fully received before a hang-up, DISCONNECT
        or close() are still handled (their acks are skipped); an error close drops them (queue cleared)."""
        while True:
            if not self._queue:
                if self.closed:
                    return
                self._queue_ready.clear()
                await self._queue_ready.wait()
                continue
            packet, size = self._queue.popleft()
            self._queued_bytes -= size
            self._queue_space.set()
            self._dispatching = True
            try:
                await self._dispatch(packet)
            except Exception as exc:
                self._handler_failed(exc)
            finally:
                self._dispatching = False

    def _handler_failed(self, exc: Exception) -> None:
        match exc:
            case ConnectionClosed():
                pass  # e.g. the handler's own conn.publish() failed because the client left
            case RefusePublish(reason=reason):
                self._close_logged(f"publish refused: {reason}", logging.WARNING)
            case _:
                self._log.debug("%s: handler traceback", self._peer_text(), exc_info=exc)
                self._close_logged(f"handler error: {exc!r}", logging.ERROR)

    async def _dispatch(self, packet: p.Packet) -> None:
        handler = self._server.handler
        match packet:
            case p.Publish(topic, payload, qos, packet_id, retain):
                await handler.published(self, topic, payload, qos, retain=retain)
                if qos == 1 and packet_id is not None:
                    await self._ack(p.Puback(packet_id))
            case p.Subscribe(packet_id, topics):
                codes = []
                for topic_filter, qos in topics:
                    if self.closed:  # the handler closed us (e.g. an unsupported filter): skip the rest
                        return
                    codes.append(
                        self._granted(await handler.subscribed(self, topic_filter, qos), topic_filter)
                    )
                await self._ack(p.Suback(packet_id, tuple(codes)))
            case p.Unsubscribe(packet_id, topics):
                unsubscribed = getattr(handler, "unsubscribed", None)
                for topic_filter in topics:
                    if unsubscribed is not None:
                        await unsubscribed(self, topic_filter)
                await self._ack(p.Unsuback(packet_id))

    async def _ack(self, packet: p.Packet) -> None:
        if not self.closed:  # after a hang-up the client re-sends unacknowledged QoS 1 messages itself
            await self._send(packet)

    def _granted(self, code: object, topic_filter: str) -> int:
        if isinstance(code, int) and code in (0, 1, 2, p.SUBACK_FAILURE):
            return code
        self._log.warning(
            "%s: handler granted invalid code %r for %r; sending 0x80", self._peer_text(), code, topic_filter
        )
        return p.SUBACK_FAILURE

    async def _teardown(self) -> None:
        """Stop dispatch, fail waiting publishers, tell the handler (exactly once), then finish the socket."""
        self.close("connection closed")
        for acked in self._pending.values():
            if not acked.done():
                acked.set_exception(ConnectionClosed(self.close_reason or "connection closed"))
        try:
            if self._dispatch_task is not None:
                await _finish(self._dispatch_task, self._server.handler_grace)
            try:
                await self._server.handler.disconnected(self, self.close_reason or "connection closed")
            except Exception as exc:
                self._log.error("%s: handler.disconnected failed: %r", self._peer_text(), exc)
        finally:
            self._server.unregister(self)
            self._done.set()  # before the TLS close handshake: a half-dead peer must not delay its successor
            await _close_writer(self._writer)

    # -- writing

    async def _send(self, packet: p.Packet) -> None:
        # One write() per packet: the transport buffers it whole, so concurrent senders never interleave
        # bytes; drain() only waits for buffer space, bounded so a stalled reader cannot block us forever.
        self._send_nowait(packet)
        transport = self._writer.transport
        if transport.get_write_buffer_size() <= self._write_low_water and not transport.is_closing():
            return  # drain() would return at once (writing pauses only past the high-water mark): no timer
        try:
            async with asyncio.timeout(self._server.write_timeout):
                await self._writer.drain()
        except TimeoutError:
            self._close_logged("client is not reading (write timeout)", logging.WARNING)
        except (OSError, ssl.SSLError) as exc:
            self.close(f"connection lost: {exc!r}")
        if self.closed:
            raise ConnectionClosed(self.close_reason)

    def _send_nowait(self, packet: p.Packet) -> None:
        if self.closed:
            raise ConnectionClosed(self.close_reason)
        self._writer.write(p.encode(packet))

    def _allocate_packet_id(self) -> int:
        for _ in range(0xFFFF):
            packet_id = self._next_packet_id
            self._next_packet_id = packet_id % 0xFFFF + 1
            if packet_id not in self._pending:
                return packet_id
        raise RuntimeError("no free packet identifier")  # unreachable while max_inflight < 65535

    # -- helpers

    def _close_logged(self, reason: str, level: int) -> None:
        """Close for a protocol or handler error: packets still queued for the handler are dropped."""
        if not self.closed:
            self._log.log(level, "%s: closing: %s", self._peer_text(), reason)
        self._queue.clear()
        self._queued_bytes = 0
        self.close(reason)

    def _peer_text(self) -> str:
        where = f"{self.peer_address[0]}:{self.peer_address[1]}" if self.peer_address else "?"
        return f"mqtt client {self.client_id!r} ({where})"


class MqttServer:
    """Accepts TLS (direct or behind the HTTP CONNECT front) MQTT clients and hands them to `handler`."""

    def __init__(
        self,
        handler: MqttHandler,
        ssl_context: ssl.SSLContext,
        *,
        log: logging.Logger | None = None,
        max_packet_size: int = p.DEFAULT_MAX_PACKET_SIZE,
        connect_timeout: float = 10.0,
        tls_handshake_timeout: float = 10.0,
        proxy_header_timeout: float = 5.0,
        max_inflight: int = 20,
        max_pending_packets: int = 100,
        max_queued_bytes: int = 16 * 1024 * 1024,
        write_timeout: float = 30.0,
        handler_grace: float = 10.0,
        max_idle_timeout: float = MAX_IDLE_TIMEOUT,
        max_pending_handshakes: int = 128,
        refusal_log_interval: float = 10.0,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.log = log or _LOG
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout  # TCP/TLS accepted → CONNECT must arrive within this
        self.tls_handshake_timeout = tls_handshake_timeout
        self.proxy_header_timeout = proxy_header_timeout
        self.max_inflight = max_inflight  # server→client QoS 1 messages awaiting PUBACK, per connection
        # Client packets queued for the handler, per connection: at max_pending_packets (or a quarter of
        # max_queued_bytes) reading pauses (TCP back-pressure); past max_queued_bytes the client is cut off.
        self.max_pending_packets = max_pending_packets
        self.max_queued_bytes = max_queued_bytes
        self.write_timeout = write_timeout
        self.handler_grace = handler_grace  # how long teardown waits for a running handler call
        self.max_idle_timeout = max_idle_timeout
        # Connections accepted but not yet through TLS and CONNECT each hold a socket and up to ~300 KiB of
        # TLS buffers; past this many the oldest is dropped (a real device gets through in milliseconds, a
        # half-open one waits for its timeout): they can neither exhaust memory and fds nor lock devices out.
        self.max_pending_handshakes = max_pending_handshakes
        self.refusals = RateLimitedLog(self.log, refusal_log_interval)  # floods cost a line per interval
        self.connections: dict[str, MqttConnection] = {}
        self._pending: dict[asyncio.Task[Any], None] = {}  # insertion order: oldest first
        self._trim_due = False  # the cap was reached: give the memory back once the flood is over
        self._listeners: list[asyncio.Server] = []
        self._tasks: dict[asyncio.Task[Any], MqttConnection | None] = {}
        self._closing = False

    async def listen_tls(self, host: str, port: int, *, websocket: bool = False) -> tuple[str, int]:
        """Direct TLS listener; port 0 picks a free port. Returns the bound (host, port). With `websocket`,
        clients speak MQTT over WebSockets inside TLS (IoT Hub's port 443 flavour).

        TLS is started by our own task (as behind the proxy) rather than by asyncio's `ssl=` listener: the
        handshake is then tracked (server.close() ends it) and a refused client certificate gets a log line.
        """
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            client = self._on_websocket_client if websocket else self._on_direct_client
            return _PausedUntilTls(asyncio.StreamReader(loop=loop), client, loop=loop)

        listener = await loop.create_server(factory, host, port, backlog=1024)
        return self._add_listener(listener)

    async def listen_proxy(self, host: str, port: int) -> tuple[str, int]:
        """HTTP CONNECT front (plain TCP; TLS starts inside the tunnel). Returns the bound (host, port)."""
        listener = await asyncio.start_server(self._on_proxy_client, host, port, backlog=1024)
        return self._add_listener(listener)

    def idle_timeout(self, keepalive: int) -> float:
        """Seconds of silence after which a client with this keep-alive is disconnected."""
        return min(keepalive * 1.5, self.max_idle_timeout) if keepalive else self.max_idle_timeout

    @property
    def pending_handshakes(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        """Stop listening, close every connection (handlers see 'server shutting down') and wait for them."""
        self._closing = True
        for listener in self._listeners:
            listener.close()
        for task, conn in list(self._tasks.items()):
            if conn is not None:
                conn.close(SERVER_SHUTDOWN)
            else:
                task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.handler_grace + 2 * _CLOSE_GRACE)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    # -- accepting

    def _add_listener(self, listener: asyncio.Server) -> tuple[str, int]:
        self._listeners.append(listener)
        host, port = listener.sockets[0].getsockname()[:2]
        self.log.info("mqtt: listening on %s:%d", host, port)
        return host, port

    async def _on_direct_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._guarded(self._serve_direct(reader, writer), writer)

    async def _on_websocket_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._guarded(self._serve_direct(reader, writer, websocket=True), writer)

    async def _on_proxy_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._guarded(self._serve_proxied(reader, writer), writer)

    async def _guarded(self, work: Any, writer: asyncio.StreamWriter) -> None:
        """Track the connection task; whatever happens, the socket is closed when it ends."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = None
        self._admit(task)
        try:
            await work
        except asyncio.CancelledError:
            pass  # server shutdown or dropped as the oldest pending handshake; the task ends here
        except Exception as exc:
            self.log.error("mqtt: connection handling failed: %r", exc, exc_info=True)
        finally:
            self._pending.pop(task, None)
            del self._tasks[task]
            if self._trim_due and not self._pending:
                self._trim_due = False  # later: the transports' last callbacks free their buffers first
                asyncio.get_running_loop().call_later(1.0, _release_free_memory)
            if not writer.transport.is_closing():
                writer.transport.abort()

    def _admit(self, task: asyncio.Task[Any]) -> None:
        """Count a new connection as pending; at the cap, drop the oldest pending one to make room."""
        if len(self._pending) >= self.max_pending_handshakes:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.cancel()
            self._trim_due = True
            self.refusals.log(
                logging.WARNING, "pending-cap",
                "mqtt: %d connections without TLS + CONNECT yet (the cap); dropped the oldest",
                self.max_pending_handshakes,
            )  # fmt: skip
        self._pending[task] = None

    async def _serve_direct(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, websocket: bool = False
    ) -> None:
        if await self._start_tls(writer, _peer_text(writer), None):
            await self._serve(reader, writer, None, websocket=websocket)

    async def _serve_proxied(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_text(writer)
        target = await self._proxy_handshake(reader, writer, peer)
        if target is None:
            await _close_writer(writer)
        elif await self._start_tls(writer, peer, target[0]):
            await self._serve(reader, writer, target[0], websocket=target[1] == WEBSOCKET_PORT)

    async def _start_tls(self, writer: asyncio.StreamWriter, peer: str, target: str | None) -> bool:
        try:
            async with asyncio.timeout(self.tls_handshake_timeout):
                await _client_hello(writer)
            await writer.start_tls(self.ssl_context, ssl_handshake_timeout=self.tls_handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            via = f" (proxied to {target})" if target else ""
            reason = _short(exc)
            self.refusals.log(
                logging.INFO, f"tls:{reason}", "mqtt %s%s: TLS handshake failed: %s", peer, via, reason
            )
            writer.transport.abort()
            return False
        return True

    async def _proxy_handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> tuple[str, int] | None:
        """Read the CONNECT request; answer 200 and return the target (host, port), or an error and None."""
        try:
            async with asyncio.timeout(self.proxy_header_timeout):
                request = await _read_http_head(reader)
        except (TimeoutError, OSError) as exc:
            reason = _short(exc) or "timeout"
            message = "mqtt proxy %s: no complete CONNECT request: %s"
            self.refusals.log(logging.INFO, f"proxy:{reason}", message, peer, reason)
            return None
        if request is None:
            return None
        status, target = _parse_connect_request(request)
        if target is None:
            self.refusals.log(
                logging.INFO, f"proxy:{status}", "mqtt proxy %s: refused request (%s)", peer, status
            )
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            return None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        writer.transport.pause_reading()  # the ClientHello that follows is for TLS, not for this reader
        return target

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        proxy_target: str | None,
        *,
        websocket: bool = False,
    ) -> None:
        """From an established TLS stream: [WebSocket upgrade →] CONNECT → authorize → CONNACK → serve."""
        peer = _peer_text(writer)
        _shrink_tls_buffer(writer.transport)
        if websocket:
            try:
                upgraded = await accept_websocket(reader, writer, self.connect_timeout)
                reader, writer = upgraded  # type: ignore[assignment]  # the same read/write surface
            except (WebSocketRefused, TimeoutError, OSError, ssl.SSLError) as exc:
                reason = _short(exc) or "timeout"
                self.refusals.log(
                    logging.INFO, f"ws:{reason[:80]}", "mqtt %s: WebSocket refused: %s", peer, reason
                )
                await _close_writer(writer)
                return
        packet_reader = p.PacketReader(self.max_packet_size)
        try:
            first, early = await self._read_connect(reader, packet_reader)
        except p.UnsupportedProtocolLevel as exc:
            # As IoT Hub's MQTT codec does (Azure/DotNetty src/DotNetty.Codecs.Mqtt/MqttDecoder.cs,
            # DecodeConnectPacket): protocol name "MQTT" at another level (MQTT 5) gets CONNACK 1
            # "unacceptable protocol version", then a close. MQTT 3.1's name "MQIsdp" is closed without one.
            self.refusals.log(logging.INFO, "level", "mqtt %s: %s; CONNACK 1", peer, exc)
            writer.write(p.encode(p.Connack(1)))
            await _close_writer(writer)
            return
        except (TimeoutError, OSError, ssl.SSLError, p.MalformedPacket, ValueError) as exc:
            reason = _short(exc) or "timeout"
            self.refusals.log(
                logging.INFO, f"connect:{reason[:80]}", "mqtt %s: no valid CONNECT: %s", peer, reason
            )
            await _close_writer(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._pending.pop(task, None)  # through TLS and CONNECT: no longer pending
        chain = presented_chain(writer.get_extra_info("ssl_object"))
        conn = MqttConnection(
            self, reader, writer, packet_reader, first, peer_chain=chain, proxy_target=proxy_target
        )
        conn.websocket = websocket
        self._tasks[task] = conn
        await conn.serve(early)

    async def _read_connect(
        self, reader: asyncio.StreamReader, packet_reader: p.PacketReader
    ) -> tuple[p.Connect, list[p.Packet]]:
        async with asyncio.timeout(self.connect_timeout):
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    raise ConnectionAbortedError("closed before CONNECT")
                received = packet_reader.feed(data)
                if received:
                    break
        first, *early = received
        if not isinstance(first, p.Connect):
            raise ValueError(f"first packet is {type(first).__name__.upper()}, not CONNECT")
        if any(isinstance(packet, p.Connect) for packet in early):
            raise ValueError("second CONNECT")
        return first, early

    # -- registry

    @property
    def closing(self) -> bool:
        """True once close() began: new connections get CONNACK 3."""
        return self._closing

    async def register(self, conn: MqttConnection) -> None:
        """One connection per client id: the newest wins; the older one is closed and torn down first."""
        older = self.connections.get(conn.client_id)
        self.connections[conn.client_id] = conn
        if older is not None and older is not conn:
            older.close("replaced by a new connection with the same client id")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.handler_grace + 2 * _CLOSE_GRACE):
                    await older.wait_closed()

    def unregister(self, conn: MqttConnection) -> None:
        if self.connections.get(conn.client_id) is conn:
            del self.connections[conn.client_id]


# -- module helpers


class _PausedUntilTls(asyncio.StreamReaderProtocol):
    """Stream protocol that reads nothing until start_tls takes over the transport.

    A client sends its ClientHello at once; were reading on, those bytes could land in the plain-text
    StreamReader before start_tls runs and the handshake would stall.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]  # before the selector ever watches the socket
        super().connection_made(transport)


def _release_free_memory() -> None:
    """Free what cycles hold and hand freed heap memory back to the OS (glibc's malloc_trim; elsewhere the
    collection alone).

    Thousands of handshakes started and dropped leave the heap fragmented: without this the process keeps
    its peak size (+100 MiB after three floods of 1,000) although every connection is gone; with it, it
    returns to where it started.
    """
    gc.collect()  # cancelled handshakes leave reference cycles (exceptions, tracebacks) holding their buffers
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def _client_hello(writer: asyncio.StreamWriter) -> None:
    """Wait until the client has sent something (its ClientHello) on a paused transport.

    start_tls allocates ~256 KiB of buffers per connection at once; a client that connects and stays silent
    costs only its socket this way. The wait watches a duplicate of the socket's descriptor: the paused
    transport's own descriptor may not be given to add_reader.
    """
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = os.dup(sock.fileno())
    try:
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    except NotImplementedError:  # Windows' proactor loop: no readiness API; the handshake timeout still holds
        os.close(fd)
        return
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _read_http_head(reader: asyncio.StreamReader) -> bytes | None:
    """Bytes up to the blank line; None if the client hung up. Bytes after the head are refused later."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _PROXY_HEADER_LIMIT:
            return data  # parse fails on the missing terminator → 400
        chunk = await reader.read(_PROXY_HEADER_LIMIT)
        if not chunk:
            return None
        data += chunk
    return data


def _parse_connect_request(request: bytes) -> tuple[str, tuple[str, int] | None]:
    """(HTTP status line, target (host, port)); the target is None when the request is refused."""
    head, terminator, rest = request.partition(b"\r\n\r\n")
    if rest or not terminator or len(head) > _PROXY_HEADER_LIMIT:
        return "400 Bad Request", None  # oversized, or data before our 200 (TLS must wait for it)
    try:
        lines = head.decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return "400 Bad Request", None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return "400 Bad Request", None
    method, target, _version = parts
    if method != "CONNECT":
        return "405 Method Not Allowed", None
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not _HOST_RE.fullmatch(host):
        return "400 Bad Request", None
    for line in lines[1:]:
        name, colon, _value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            return "400 Bad Request", None
    return "200 Connection established", (host.strip("[]"), int(port))


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Graceful close (flushes what was written, e.g. a refusing CONNACK); abort if the peer stalls."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_GRACE):
            await writer.wait_closed()
    except (TimeoutError, OSError, ssl.SSLError):
        writer.transport.abort()


async def _finish(task: asyncio.Task[None], grace: float) -> None:
    """Let a task end on its own for `grace` seconds, then cancel it."""
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        task.cancel()
        await asyncio.wait({task})


def _shrink_tls_buffer(transport: asyncio.BaseTransport) -> None:
    """Cut asyncio's per-connection TLS read buffer from 256 KiB to 32 KiB (≈ 300 → 80 KiB per client).

    Relies on CPython's sslproto internals (3.11-3.13); if they differ, nothing is changed.
    """
    protocol = getattr(transport, "_ssl_protocol", None)
    if protocol is None or not isinstance(getattr(protocol, "_ssl_buffer", None), bytearray):
        return
    if getattr(protocol, "max_size", 0) > _TLS_READ_BUFFER:
        protocol.max_size = _TLS_READ_BUFFER  # instance attribute: also bounds each SSL read
        protocol._ssl_buffer = bytearray(_TLS_READ_BUFFER)
        protocol._ssl_buffer_view = memoryview(protocol._ssl_buffer)


def _address(raw: Any) -> tuple[str, int] | None:
    return (str(raw[0]), int(raw[1])) if raw else None


def _peer_text(writer: asyncio.StreamWriter) -> str:
    address = _address(writer.get_extra_info("peername"))
    return f"{address[0]}:{address[1]}" if address else "?"


def _short(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
