"""The local cloud's HTTP servers (service API, local-only API): uvicorn with deadlines, a concurrency cap and
a body-size limit.

uvicorn never times out a request that is still arriving: a client that opens a connection and sends
nothing, or sends headers and then trickles (or never sends) its body, holds the connection for ever. Here a
request must have arrived whole, headers and body, within REQUEST_TIMEOUT of the connection becoming idle
(opened, or the previous response sent); otherwise the connection is closed. Time the application spends on
a complete request (a direct method waits up to 300 s for its device) is not limited. Past
MAX_CONCURRENCY open connections or running requests a request gets 503 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from client_app.cloud.errors import CloudError

log = logging.getLogger("client_app.cloud.http")

REQUEST_TIMEOUT = 10.0
MAX_CONCURRENCY = 256
# Uvicorn reads any request body whole into memory; the largest legitimate one (a 128 KB method payload, a
# twin or an enrollment group) stays far below this.
MAX_REQUEST_BODY = 1024 * 1024


class DeadlineH11Protocol(H11Protocol):
    """h11 protocol whose requests must arrive whole within REQUEST_TIMEOUT."""

    request_timeout = REQUEST_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        previous = getattr(self, "_deadline", None)
        if previous is not None:
            previous.cancel()
        self._deadline = self.loop.call_later(self.request_timeout, self._expire, self.cycle)

    def _expire(self, idle_cycle: Any) -> None:
        waiting = self.cycle is idle_cycle  # no new request has started since the connection went idle
        if (waiting or self.cycle.more_body) and not self.transport.is_closing():
            log.info(
                "HTTP request from %s not received within %g s; closing", self.client, self.request_timeout
            )
            self.transport.close()


class BodyLimit:
    """Refuse a request body over MAX_REQUEST_BODY (413) before more of it is read; pass the rest on whole.

    `render` shapes the refusal (the service API answers with Azure's error body)."""

    def __init__(self, app: ASGIApp, render: Callable[[str, CloudError], Response] | None = None) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_REQUEST_BODY:
                await self._refuse_large(scope, receive, send)
                return
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)

    async def _refuse_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = CloudError(413, 413001, f"request body exceeds {MAX_REQUEST_BODY // 1024} KB")
        log.warning("API %s %s -> 413 %s", scope["method"], scope["path"], error.message)
        response = self.render(scope["path"], error) if self.render else JSONResponse(error.to_json(), 413)
        await response(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn, stopped at once: its main loop notices `should_exit` only on its next 0.1 s tick and its
    shutdown always sleeps 0.1 s for connections to wind down, even when there are none (a test suite stops
    hundreds of clouds)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_now = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the cloud owns SIGINT/SIGTERM; uvicorn would re-raise them after shutting down

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # a tick a tenth of a second, as uvicorn's own loop
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit_now.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # graceful: in-flight requests get timeout_graceful_shutdown
            return
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()


def listening_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (0 does not);
    # without it each response (headers and body are separate writes) waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """One ASGI app on one bound socket, served on the running loop; `ssl` = (chain, key, passphrase)."""

    def __init__(self, app: Any, sock: socket.socket, ssl: tuple[str, str, str] | None = None) -> None:
        extra: dict[str, Any] = {}
        if ssl is not None:
            extra = {"ssl_certfile": ssl[0], "ssl_keyfile": ssl[1], "ssl_keyfile_password": ssl[2]}
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=3, http=DeadlineH11Protocol,
                                limit_concurrency=MAX_CONCURRENCY, **extra)  # fmt: skip
        self.sock = sock
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the HTTP server stopped during startup")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            # Idle keep-alive connections go at once: a TLS close would wait for the peer's close_notify,
            # and uvicorn's graceful shutdown for that.
            for connection in list(self._server.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                transport = getattr(connection, "transport", None)
                if transport is not None and (cycle is None or cycle.response_complete):
                    transport.abort()
            self._server.should_exit = True
            self._server.exit_now.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        self.sock.close()
