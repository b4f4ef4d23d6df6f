"""Fixtures for the MQTT transport: a test PKI, a server on its own event-loop thread, a recording handler,
and small raw-socket / paho client helpers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from client_app.cloud.mqtt import packets as p
from client_app.cloud.mqtt.server import ConnectDecision, MqttConnection, MqttServer, RefusePublish
from client_app.cloud.mqtt.tls import server_context
from client_app.pki import CertificateAuthority, certificate_to_pem, generate_key, private_key_to_pem

T = TypeVar("T")
PROXY_NAME = "dps.test.local"  # never resolves: only reachable through the CONNECT front
HUB_NAME = "hub.test.local"
KEY_PASSWORD = b"server key password"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- PKI


@dataclass
class DeviceFiles:
    cert: Path  # leaf (+ intermediate when sent as a chain)
    key: Path
    leaf: x509.Certificate


@dataclass
class MqttPki:
    directory: Path
    root: CertificateAuthority
    issuing: CertificateAuthority
    foreign: CertificateAuthority  # unrelated root the server does not know
    server_chain: Path
    server_key: Path
    root_pem: Path  # what clients trust for the server
    trust_pem: bytes  # what the server trusts for clients
    _count: int = field(default=0)

    def device(
        self, rid: str, *, ca: CertificateAuthority | None = None, send_chain: bool = True
    ) -> DeviceFiles:
        ca = ca or self.issuing
        key = generate_key()
        leaf = ca.issue_device(rid, key.public_key())
        self._count += 1
        stem = self.directory / f"device-{self._count}-{rid}"
        chain = [leaf, *((ca.certificate,) if send_chain and not ca.is_root() else ())]
        cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_path.write_bytes(b"".join(certificate_to_pem(c) for c in chain))
        key_path.write_bytes(private_key_to_pem(key, None))
        return DeviceFiles(cert_path, key_path, leaf)

    def client_context(self, device: DeviceFiles, *, tls12: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2  # what the SDK does
        context.load_verify_locations(cafile=str(self.root_pem))
        context.load_cert_chain(str(device.cert), str(device.key))
        return context

    def server_ssl_context(self) -> ssl.SSLContext:
        return server_context(self.server_chain, self.server_key, self.trust_pem, KEY_PASSWORD)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MqttPki:
    directory = tmp_path_factory.mktemp("mqtt-pki")
    root = CertificateAuthority.root("MQTT Test Root")
    issuing = root.intermediate("MQTT Test Issuing CA")
    foreign = CertificateAuthority.root("Foreign Root")
    server_cert, server_key = issuing.issue_server([PROXY_NAME, HUB_NAME, "localhost"], ["127.0.0.1"])
    chain_path, key_path, root_path = (
        directory / "server.pem",
        directory / "server.key",
        directory / "root.pem",
    )
    chain_path.write_bytes(certificate_to_pem(server_cert) + certificate_to_pem(issuing.certificate))
    key_path.write_bytes(private_key_to_pem(server_key, KEY_PASSWORD))  # encrypted on purpose
    root_path.write_bytes(certificate_to_pem(root.certificate))
    trust = certificate_to_pem(root.certificate) + certificate_to_pem(issuing.certificate)
    return MqttPki(directory, root, issuing, foreign, chain_path, key_path, root_path, trust)


# -- handler


class RecordingHandler:
    """MqttHandler that records calls. Behaviour knobs are plain attributes set by the tests."""

    def __init__(self) -> None:
        self.authorized: list[MqttConnection] = []
        self.accepted: list[MqttConnection] = []  # authorize answered 0
        self.subscriptions: list[tuple[str, str, int]] = []
        self.published_messages: list[tuple[str, str, bytes, int]] = []
        self.retained: list[str] = []
        self.unsubscriptions: list[tuple[str, str]] = []
        self.disconnects: list[tuple[MqttConnection, str]] = []
        self.return_codes: dict[str, Any] = {}  # client id → decision (default accept)
        self.refuse_topics: set[str] = set()
        self.fail_topics: set[str] = set()
        self.echo_prefix = "echo/"  # published on echo/x → handler awaits conn.publish("reply/x") inline
        self.greet = False  # authorize spawns conn.publish("greeting"): must wait for the CONNACK
        self.greetings: list[asyncio.Task[None]] = []
        self.at_once_prefix = "now/"  # published_at_once settles these (when nothing is queued ahead of them)
        self.settled_at_once: list[str] = []

    async def authorize(self, conn: MqttConnection) -> ConnectDecision:
        self.authorized.append(conn)
        if self.greet:
            self.greetings.append(asyncio.create_task(conn.publish("greeting", b"hi", qos=0)))
        decision = self.return_codes.get(conn.client_id, ConnectDecision(0, False))
        if (decision if isinstance(decision, int) else decision[0]) == 0:
            self.accepted.append(conn)
        return decision

    async def subscribed(self, conn: MqttConnection, topic_filter: str, requested_qos: int) -> int:
        self.subscriptions.append((conn.client_id, topic_filter, requested_qos))
        return 0x80 if topic_filter.startswith("forbidden/") else min(requested_qos, 1)

    async def unsubscribed(self, conn: MqttConnection, topic_filter: str) -> None:
        self.unsubscriptions.append((conn.client_id, topic_filter))

    async def published(
        self, conn: MqttConnection, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> None:
        if topic in self.refuse_topics:
            raise RefusePublish(f"topic {topic} not allowed")
        if topic in self.fail_topics:
            raise RuntimeError("handler bug")
        self.published_messages.append((conn.client_id, topic, payload, qos))
        if retain:
            self.retained.append(topic)
        if topic.startswith("slow/"):
            await asyncio.sleep(0.002)
        if topic.startswith(self.echo_prefix):
            await conn.publish("reply/" + topic.removeprefix(self.echo_prefix), payload)

    def published_at_once(
        self, conn: MqttConnection, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> bool:
        if not topic.startswith(self.at_once_prefix):
            return False
        if topic in self.refuse_topics:
            raise RefusePublish(f"topic {topic} not allowed")
        self.published_messages.append((conn.client_id, topic, payload, qos))
        self.settled_at_once.append(topic)
        return True

    async def disconnected(self, conn: MqttConnection, reason: str) -> None:
        self.disconnects.append((conn, reason))

    def reasons(self, client_id: str) -> list[str]:
        return [reason for conn, reason in self.disconnects if conn.client_id == client_id]


# -- server on its own loop thread


class ServerThread:
    """MqttServer on an event loop in a background thread; tests stay synchronous (paho is blocking)."""

    def __init__(self, handler: RecordingHandler, context: ssl.SSLContext, **options: Any) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="mqtt-server-loop", daemon=True)
        self._thread.start()
        self.server = MqttServer(handler, context, **options)
        self.tls_port = self.call(self.server.listen_tls("127.0.0.1", 0))[1]
        self.proxy_port = self.call(self.server.listen_proxy("127.0.0.1", 0))[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start a coroutine on the server loop without waiting (returns a concurrent.futures.Future)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def connection(self, client_id: str, timeout: float = 5.0) -> MqttConnection:
        wait_until(lambda: client_id in self.server.connections, timeout, f"connection {client_id}")
        return self.server.connections[client_id]

    def stop(self) -> None:
        self.call(self.server.close(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture
def handler() -> Iterator[RecordingHandler]:
    handler = RecordingHandler()
    yield handler
    # Runs after the servers stopped: every accepted connection was reported gone exactly once.
    gone = [id(conn) for conn, _ in handler.disconnects]
    assert sorted(gone) == sorted(id(conn) for conn in handler.accepted), "disconnected() not exactly once"


@pytest.fixture
def make_server(pki: MqttPki, handler: RecordingHandler) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(**options: Any) -> ServerThread:
        started.append(ServerThread(handler, pki.server_ssl_context(), **options))
        return started[-1]

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()


# -- raw clients


class RawClient:
    """Blocking TLS socket speaking MQTT through the codec; used for what paho would never send."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.reader = p.PacketReader()
        self._received: list[p.Packet] = []

    def send(self, packet: p.Packet | bytes) -> None:
        self.sock.sendall(packet if isinstance(packet, bytes) else p.encode(packet))

    def receive(self, timeout: float = 5.0) -> p.Packet:
        """Next packet; raises EOFError when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while not self._received:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
                raise EOFError("connection closed") from exc
            if not data:
                raise EOFError("connection closed")
            self._received.extend(self.reader.feed(data))
        return self._received.pop(0)

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Drain until the server closes; fails if it stays open."""
        with contextlib.suppress(EOFError):
            while True:
                self.receive(timeout)
        self._received.clear()

    def connect(self, client_id: str, *, keepalive: int = 60, username: str = "user") -> p.Connack:
        self.send(p.Connect(client_id, username=username, keepalive=keepalive, clean_session=False))
        connack = self.receive()
        assert isinstance(connack, p.Connack)
        return connack

    def close(self) -> None:
        self.sock.close()


def open_tls(port: int, context: ssl.SSLContext, server_hostname: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


@contextlib.contextmanager
def raw_client(server: ServerThread, pki: MqttPki, device: DeviceFiles) -> Iterator[RawClient]:
    client = RawClient(open_tls(server.tls_port, pki.client_context(device)))
    try:
        yield client
    finally:
        client.close()


# -- paho


class PahoClient:
    """paho-mqtt 1.6.1 (the SDK's transport) with events captured for assertions."""

    def __init__(self, client_id: str, device: DeviceFiles, pki: MqttPki, *, keepalive: int = 60,
                 websocket_path: str | None = None) -> None:  # fmt: skip
        transport = "tcp" if websocket_path is None else "websockets"
        self.client = mqtt.Client(
            client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311, transport=transport
        )
        if websocket_path is not None:
            self.client.ws_set_options(path=websocket_path)
        self.client.tls_set_context(pki.client_context(device))
        self.client.username_pw_set(f"scope/registrations/{client_id}/api-version=2019-03-31")
        self.keepalive = keepalive
        self.connack: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[mqtt.MQTTMessage] = []
        self.granted: dict[int, tuple[int, ...]] = {}
        self.acked: set[int] = set()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.disconnected.set()
        self.client.on_message = lambda _c, _u, message: self.messages.append(message)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = lambda _c, _u, mid: self.acked.add(mid)

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, rc: int) -> None:
        self.connack = rc
        self.connected.set()

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, granted: tuple[int, ...]) -> None:
        self.granted[mid] = tuple(granted)

    def connect(self, port: int, *, host: str = "127.0.0.1", proxy_port: int | None = None) -> PahoClient:
        if proxy_port is not None:
            import socks

            self.client.proxy_set(proxy_type=socks.HTTP, proxy_addr="127.0.0.1", proxy_port=proxy_port)
        self.client.connect(host, port, self.keepalive)
        self.client.loop_start()
        assert self.connected.wait(5), "no CONNACK"
        return self

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos)
        wait_until(lambda: info.mid in self.acked, what=f"PUBACK for {topic}")

    def subscribe(self, topic: str, qos: int = 1) -> tuple[int, ...]:
        _rc, mid = self.client.subscribe(topic, qos)
        wait_until(lambda: mid in self.granted, what=f"SUBACK for {topic}")
        return self.granted[mid]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho 1.6.1 leaves its internal wake-up socket pair open when the websockets transport closed the
        # connection itself; close it here so a leak reported in these tests is always ours.
        for sock in (self.client._sockpairR, self.client._sockpairW):
            if sock is not None:
                sock.close()


@pytest.fixture
def paho_clients() -> Iterator[list[PahoClient]]:
    """Register clients here so they are stopped even when a test fails."""
    clients: list[PahoClient] = []
    yield clients
    for client in clients:
        with contextlib.suppress(Exception):
            client.stop()
