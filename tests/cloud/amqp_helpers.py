"""AMQP test helpers: connection strings as a backend gets them, a device that sends and receives."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from azure.eventhub import EventData, EventHubConsumerClient

from client_app.cloud.server import RunningCloud
from tests.cloud.sdk import hub_client, register
from tests.fixtures.cloud import DeviceFiles, issue_device_files


def hub_connection_string(cloud: RunningCloud, policy: str = "service", key: str | None = None) -> str:
    """What Azure's portal shows for a hub policy; HostName is the AMQP endpoint's loopback address (the
    service API's too, when it listens on 443: then connection.json's iothub_connection_string is one)."""
    info = cloud.info
    if policy == "iothubowner" and key is None and info.service_host == info.amqp_host:
        return info.iothub_connection_string
    access = cloud.cloud.hub_policies[policy]
    return (f"HostName={cloud.info.amqp_host};SharedAccessKeyName={access.name};"
            f"SharedAccessKey={key or access.primary_key}")  # fmt: skip


@contextmanager
def connected_device(
    cloud: RunningCloud, issuing: Any, device_id: str, directory: Path, files: DeviceFiles | None = None
) -> Iterator[Any]:
    """A real azure-iot-device client, provisioned and connected; `.received` collects its C2D messages.
    Pass the `.files` of an earlier one to come back as the same device (DPS pins a registration's key)."""
    files = files or issue_device_files(issuing, device_id, directory)
    result = register(cloud.info, files)
    client = hub_client(cloud.info, files, result.registration_state.assigned_hub)
    client.files = files
    client.received = []
    client.on_message_received = client.received.append
    try:
        yield client
    finally:
        client.shutdown()


class EventCollector:
    """An EventHubConsumerClient receiving one partition on a thread; `.events` fills as events arrive."""

    def __init__(self, cloud: RunningCloud, partition: str, starting_position: Any, *,
                 inclusive: bool = False, consumer_group: str = "$Default", **client_options: Any
                 ) -> None:  # fmt: skip
        self.client = EventHubConsumerClient.from_connection_string(
            cloud.info.eventhub_compatible_connection_string,
            consumer_group,
            connection_verify=cloud.info.server_ca_pem,
            **client_options,
        )
        self.events: list[EventData] = []
        self.errors: list[Exception] = []
        self._thread = threading.Thread(
            target=self.client.receive,
            kwargs={
                "on_event": lambda _context, event: event is not None and self.events.append(event),
                "on_error": lambda _context, error: self.errors.append(error),
                "partition_id": partition,
                "starting_position": starting_position,
                "starting_position_inclusive": inclusive,
                "max_wait_time": 0.5,
            },
            daemon=True,
        )

    def __enter__(self) -> EventCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self._thread.join(30)
