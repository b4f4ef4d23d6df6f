"""The AMQP endpoint's own thread and event loop, and the hand-offs between it and the cloud's loop (the hub's
role; the Event Hubs role runs it in its own process, with no cloud loop).

Proton is used as an engine (Connection + Transport + Collector per client): asyncio on this thread does the
sockets and TLS, proton does SASL and AMQP. Owning the byte stream is what lets frames.py complete the frames
proton shortens, which Azure's Python Event Hubs client needs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from cproton import PN_TRANSPORT, isnull, pn_collector_peek, pn_collector_pop, pn_event_type
from proton import Collector, Condition, Connection, Event, Transport

from client_app.cloud.amqp import sasl
from client_app.cloud.amqp.frames import FramePadder

log = logging.getLogger("client_app.cloud.amqp")

READ_SIZE = 256 * 1024


class AmqpConnection:
    """One client: the socket streams, proton's engine objects, and the output padding."""

    def __init__(
        self, thread: AmqpThread, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.thread = thread
        self.reader = reader
        self.writer = writer
        self.connection = Connection()
        self.transport = Transport(Transport.SERVER)  # SASL is sasl.py's, before proton sees the stream
        self.collector = Collector()
        self.connection.collect(self.collector)
        self.transport.bind(self.connection)
        self.connection.io = self
        self._padder = FramePadder()
        self._processing = False

    async def run(self) -> None:
        try:
            self._push(await sasl.handshake(self.reader, self.writer))
            while not self.transport.closed:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    self.transport.close_tail()
                    self.process()
                    break
                self._push(data)
                self.process()
                await self.writer.drain()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError, sasl.SaslRefused) as exc:
            log.info("AMQP client connection lost: %s", exc)
        finally:
            self.thread.connections.discard(self)
            self.thread.endpoint.connection_gone(self.connection)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def _push(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            capacity = self.transport.capacity()
            if capacity <= 0:  # the engine closed its input (protocol error, close): drop the rest
                return
            self.transport.push(bytes(view[:capacity]))
            view = view[capacity:]
            self.process()

    def _dispatch(self, event: Event) -> None:
        try:
            event.dispatch(self.thread.endpoint)
        except Exception:  # a defect costs this client its connection, never the endpoint
            log.exception("AMQP event %s failed; closing that connection", event.type)
            self.connection.condition = Condition("amqp:internal-error", "internal error")
            self.connection.close()

    def process(self) -> None:
        """Dispatch pending engine events to the endpoint, then write what the engine has to send."""
        if self._processing:
            return
        self._processing = True
        collector = self.collector._impl
        try:
            while not isnull(raw := pn_collector_peek(collector)):
                # "Output is waiting" needs no handler (it is written below) nor proton's Python event
                # object: while events stream out there is one per flush. Seen through the public
                # `Collector.peek()` it costs 8.4 µs of CPU, through `cproton` (proton's own binding, pinned
                # in uv.lock) 0.4 µs (`time.process_time`, 10,000 peeks, proton 0.40), so this stays.
                if pn_event_type(raw) != PN_TRANSPORT:
                    self._dispatch(Event.wrap(raw))
                pn_collector_pop(collector)
            # The engine hands out its output in pieces: take all of it, or the rest waits for the next event.
            while (pending := self.transport.pending()) > 0:
                data = self.transport.peek(pending)
                self.transport.pop(pending)
                self.writer.write(self._padder.feed(data))
            if pending < 0:
                self.writer.close()
        finally:
            self._processing = False


class AmqpThread:
    """Runs the endpoint's event loop on a daemon thread. `call` runs a function there (from any thread) and
    then flushes every connection; `on_loop` runs one on the cloud's loop. Neither blocks the caller."""

    def __init__(self, endpoint: Any, cloud_loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.endpoint = endpoint
        self.cloud_loop = cloud_loop
        self.loop = asyncio.new_event_loop()
        self.connections: set[AmqpConnection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._run, name="client-app-cloud-amqp", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()  # its self-pipe sockets too, or they surface as ResourceWarnings in a later gc

    def start(self, listeners: list[tuple[socket.socket, ssl.SSLContext | None]]) -> None:
        """Serve on listening sockets bound by the caller (so a taken port fails where it is bound)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(listeners), self.loop).result(30)

    async def _listen(self, listeners: list[tuple[socket.socket, ssl.SSLContext | None]]) -> None:
        for sock, context in listeners:
            self._servers.append(await asyncio.start_server(self._accept, sock=sock, ssl=context,
                                                            limit=READ_SIZE))  # fmt: skip
        self.loop.create_task(self._tick())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = AmqpConnection(self, reader, writer)
        self.connections.add(connection)
        await connection.run()

    async def _tick(self) -> None:
        """Proton's timers: heartbeats the peers asked for, and idle-timeout checks."""
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.transport.tick(now)
                connection.process()

    def call(self, fn: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(self._run_and_flush, fn, args)

    def call_later(self, delay: float, fn: Callable[..., None]) -> None:
        """From any thread: run `fn` there after `delay` seconds; it flushes the connections it touched itself
        (the Event Hubs poll, where a pass over every connection would cost more than the events)."""
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, self._guarded, fn, ())

    def _run_and_flush(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._guarded(fn, args)
        for connection in list(self.connections):
            connection.process()

    @staticmethod
    def _guarded(fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("AMQP hand-off failed")

    def on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self.cloud_loop is not None, "only the hub's role hands work to the cloud's loop"
        self.cloud_loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10) -> None:
        if not self._thread.is_alive():
            if self._thread.ident is None:  # never started: the loop made in __init__ never ran
                self.loop.close()
            return

        async def close() -> None:
            for server in self._servers:
                server.close()
            for connection in list(self.connections):
                connection.writer.close()
            tasks = [task for task in asyncio.all_tasks(self.loop) if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
