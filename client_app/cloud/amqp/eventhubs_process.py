"""The Event Hubs-compatible endpoint's own process: `python -m client_app.cloud.amqp.eventhubs_process`.

Started by the cloud (service.EventHubsService) at the first connection to the endpoint's address. It reads
one JSON line from stdin (EventHubsConfig: the database, the listening sockets the cloud bound, TLS, the
policies tokens are checked against), serves `$management` and the partition receivers from the cloud's SQLite
database (read-only; WAL lets it read while the cloud writes), and exits when stdin ends: the cloud stopped it
or died. It logs to stderr, which it shares with the cloud.
"""

from __future__ import annotations

import base64
import logging
import socket
import sys
from pathlib import Path

from client_app.cloud.amqp.auth import TokenChecker
from client_app.cloud.amqp.bridge import AmqpThread
from client_app.cloud.amqp.endpoint import AmqpEndpoint, Role
from client_app.cloud.amqp.eventhub import TelemetryReader
from client_app.cloud.amqp.service import AmqpTls, EventHubsConfig

log = logging.getLogger("client_app.cloud.eventhubs")

BAD_CONFIG = 2  # exit code: the configuration line is missing or wrong (a defect of the caller)
CANNOT_SERVE = 3  # exit code: the sockets or TLS files it names cannot be used


def _socket(listener: dict[str, object]) -> socket.socket:
    if "share" in listener:
        return socket.fromshare(base64.b64decode(str(listener["share"])))  # type: ignore[attr-defined]
    return socket.socket(fileno=int(listener["fd"]))  # type: ignore[call-overload]


def serve(config: EventHubsConfig) -> None:
    """Serve until stdin ends."""
    policies = config.access_policies()
    reader = TelemetryReader(Path(config.db_path), config.partitions)
    endpoint = AmqpEndpoint(
        role=Role.EVENT_HUBS,
        hub=None,
        checker=TokenChecker(lambda: policies, {config.host, config.hub_name}),
        reader=reader,
        entity=config.entity,
        hub_name=config.hub_name,
        created=config.created,
    )
    thread = endpoint.thread = AmqpThread(endpoint)
    context = AmqpTls(Path(config.chain_pem), Path(config.key_pem), config.passphrase.encode()).context()
    thread.start(
        [(_socket(listener), context if listener.get("tls") else None) for listener in config.listeners]
    )
    log.info("Event Hubs-compatible endpoint serving on %s", config.host)
    try:
        while sys.stdin.buffer.read(4096):  # nothing more is sent: the end is the signal
            pass
    finally:
        thread.call(reader.close)
        thread.stop()


def main() -> int:
    line = sys.stdin.buffer.readline()
    try:
        config = EventHubsConfig.from_line(line)
    except ValueError as exc:
        print(f"client-app-cloud Event Hubs endpoint: bad configuration on stdin: {exc}", file=sys.stderr)
        return BAD_CONFIG
    logging.basicConfig(  # the cloud's format, with this process's id: both write to the same stderr
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s [eventhubs %(process)d]: %(message)s",
        stream=sys.stderr,
    )
    try:
        serve(config)
    except (OSError, ValueError, KeyError) as exc:
        log.error("cannot serve the Event Hubs-compatible endpoint: %s", exc)
        return CANNOT_SERVE
    return 0


if __name__ == "__main__":
    sys.exit(main())
