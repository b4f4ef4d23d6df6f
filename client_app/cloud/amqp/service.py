"""Starts and stops the AMQP endpoint for a running local cloud (called from cloud/server.py).

Azure's SDKs dial fixed ports: 5671 (amqps) and, with `UseDevelopmentEmulator=true` in an Event Hubs
connection string, 5672 (plain AMQP, as Microsoft's Event Hubs emulator). So the endpoint listens on those
ports of a loopback address of its own (127.x.y.z, chosen once and kept in the store), which lets several
local clouds run side by side and keeps the connection strings valid across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_app.cloud.amqp.auth import PolicySource, TokenChecker
from client_app.cloud.amqp.bridge import AmqpThread
from client_app.cloud.amqp.endpoint import AmqpEndpoint
from client_app.cloud.amqp.eventhub import TelemetryReader

log = logging.getLogger("client_app.cloud.amqp")

AMQPS_PORT = 5671
AMQP_PORT = 5672


@dataclass(frozen=True)
class AmqpTls:
    chain_pem: Path
    key_pem: Path
    passphrase: bytes


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def pick_loopback_host(preferred: str | None, ports: tuple[int, ...] = (AMQPS_PORT, AMQP_PORT)) -> str | None:
    """`preferred` if its ports are free, else a random 127.x.y.z with free ports (Linux routes all of
    127/8 to loopback), else 127.0.0.1 if its ports are free (macOS without aliases); None if none is."""
    if preferred and all(port_free(preferred, p) for p in ports):
        return preferred
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        if all(port_free(host, p) for p in ports):
            return host
    return "127.0.0.1" if all(port_free("127.0.0.1", p) for p in ports) else None


class AmqpService:
    def __init__(self, *, hub: Any, db_path: Path, policies: PolicySource, hosts: set[str], hub_name: str,
                 entity: str, partitions: int, created: str) -> None:  # fmt: skip
        self.endpoint = AmqpEndpoint(
            hub=hub,
            checker=TokenChecker(policies, hosts),
            reader=TelemetryReader(db_path, partitions),
            entity=entity,
            hub_name=hub_name,
            created=created,
        )
        self._thread: AmqpThread | None = None

    def start(self, loop: asyncio.AbstractEventLoop, host: str, tls: AmqpTls, plain: bool = True) -> None:
        thread = self._thread = AmqpThread(self.endpoint, loop)
        self.endpoint.thread = thread
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls.chain_pem, tls.key_pem, tls.passphrase)
        listeners: list[tuple[str, int, ssl.SSLContext | None]] = [(host, AMQPS_PORT, context)]
        if plain:
            listeners.append((host, AMQP_PORT, None))
        thread.start(listeners)
        log.info("AMQP endpoint on %s:%d (TLS) %s", host, AMQPS_PORT, f"and :{AMQP_PORT}" if plain else "")

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.call(self.endpoint.reader.close)
            self._thread.stop()
            self._thread = None
