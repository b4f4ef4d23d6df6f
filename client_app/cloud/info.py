"""connection.json: what a device or an operator needs to reach a running local cloud (no heavy imports)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONNECTION_FILE = "connection.json"


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
    amqp_host: str | None = None  # AMQP service endpoint: amqps on amqp_port (5671), plain AMQP on 5672
    amqp_port: int | None = None
    # Event Hubs-compatible endpoint (Endpoint=sb://...;EntityPath=...); trust server_ca_pem for its TLS
    eventhub_compatible_connection_string: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, data_dir: Path) -> ConnectionInfo:
        raw = json.loads((data_dir / CONNECTION_FILE).read_text())
        return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__})
