"""connection.json: what a device or an operator needs to reach a running local cloud (stdlib only)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONNECTION_FILE = "connection.json"
SECRET_FIELDS = frozenset(
    {"api_token", "iothub_connection_string", "dps_connection_string"}
    | {"eventhub_compatible_connection_string"}  # carries the service policy's key
)


@dataclass(frozen=True)
class ConnectionInfo:
    """What a device or an operator needs to reach this cloud; written to DATA_DIR/connection.json."""

    id_scope: str
    provisioning_host: str
    hub_hostname: str
    server_ca_pem: str
    mqtt_host: str | None
    mqtt_port: int | None
    proxy_host: str | None
    proxy_port: int | None
    api_url: str
    api_token: str
    data_dir: str
    # The HTTPS service API (Azure's IoT Hub and DPS REST): HostName of both connection strings, the owner
    # policies' connection strings; clients trust server_ca_pem (REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS).
    service_host: str | None = None
    iothub_connection_string: str | None = None
    dps_connection_string: str | None = None
    amqp_host: str | None = None  # AMQP service endpoint: amqps on amqp_port (5671), plain AMQP on 5672
    amqp_port: int | None = None
    # Event Hubs-compatible endpoint (Endpoint=sb://{eventhub_host}/;...;EntityPath=...), on 5671 and 5672 of
    # an address of its own; trust server_ca_pem for its TLS
    eventhub_compatible_connection_string: str | None = None
    eventhub_host: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, data_dir: Path) -> ConnectionInfo:
        return cls.from_json(read_connection_json(data_dir))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ConnectionInfo:
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})


def read_connection_json(data_dir: Path) -> dict[str, Any]:
    """DATA_DIR/connection.json as a running cloud wrote it: its one parser (stdlib only, so the device core,
    the demo and the operator tools share it). FileNotFoundError: the cloud is not running (it removes the
    file when it stops); ValueError (or OSError): the file is damaged or unreadable."""
    raw = json.loads((Path(data_dir) / CONNECTION_FILE).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{CONNECTION_FILE} is not a JSON object")
    return raw
