"""1,000 concurrent TLS clients on one server loop (no thread per connection)."""

from __future__ import annotations

import asyncio
import resource
import time

import psutil
import pytest

from client_app.cloud.mqtt import packets as p
from tests.cloud.mqtt.conftest import MqttPki, RecordingHandler, ServerThread, wait_until

CLIENTS = 1000


async def _client(port: int, context, client_id: str, gate: asyncio.Semaphore):
    async with gate:  # bound concurrent handshakes, not concurrent connections
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1", ssl_handshake_timeout=60
        )
    writer.write(p.encode(p.Connect(client_id, username="u", keepalive=600, clean_session=False)))
    assert p.PacketReader().feed(await reader.readexactly(4)) == [p.Connack(0, False)]
    return reader, writer


async def _swarm(server: ServerThread, pki: MqttPki, handler: RecordingHandler) -> dict[str, float]:
    context = pki.client_context(pki.device("dev-swarm"))
    gate = asyncio.Semaphore(50)
    started = time.monotonic()
    streams = await asyncio.gather(
        *(_client(server.tls_port, context, f"swarm-{i}", gate) for i in range(CLIENTS))
    )
    connected = time.monotonic() - started
    try:
        assert len(server.server.connections) == CLIENTS
        for _reader, writer in streams:  # every connection is still served
            writer.write(p.encode(p.Pingreq()))
        answers = await asyncio.gather(*(reader.readexactly(2) for reader, _ in streams))
        assert set(answers) == {p.encode(p.Pingresp())}
    finally:
        for _reader, writer in streams:
            writer.write(p.encode(p.Disconnect()))
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for _, writer in streams), return_exceptions=True)
    return {"connect_s": connected}


@pytest.fixture
def enough_file_descriptors() -> None:
    """Both ends live in this process: ~2 descriptors per client. Raise the limit; root may lift the hard one.

    Only where even that is refused is the test skipped.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * CLIENTS + 200
    if soft < needed:
        new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, new_hard))
        except (ValueError, OSError):
            pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")


@pytest.mark.usefixtures("enough_file_descriptors")
def test_thousand_concurrent_tls_connections(
    server: ServerThread, pki: MqttPki, handler: RecordingHandler
) -> None:
    rss_before = psutil.Process().memory_info().rss
    stats = asyncio.run(_swarm(server, pki, handler))
    wait_until(lambda: len(handler.disconnects) == CLIENTS, timeout=30, what="all disconnects")
    assert {reason for _, reason in handler.disconnects} == {"client sent DISCONNECT"}
    assert server.server.connections == {}
    grown = (psutil.Process().memory_info().rss - rss_before) / CLIENTS
    print(
        f"{CLIENTS} clients connected in {stats['connect_s']:.1f} s; RSS growth {grown / 1024:.0f} KiB/conn"
    )
