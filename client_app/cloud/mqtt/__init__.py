"""Generic MQTT 3.1.1 server over TLS with a pluggable handler; knows nothing about DPS or IoT Hub."""

from client_app.cloud.mqtt.packets import MalformedPacket, PacketReader, encode
from client_app.cloud.mqtt.server import (
    ConnectDecision,
    ConnectionClosed,
    MqttConnection,
    MqttHandler,
    MqttServer,
    RefusePublish,
)
from client_app.cloud.mqtt.tls import add_trusted, presented_chain, server_context

__all__ = [
    "ConnectDecision",
    "ConnectionClosed",
    "MalformedPacket",
    "MqttConnection",
    "MqttHandler",
    "MqttServer",
    "PacketReader",
    "RefusePublish",
    "add_trusted",
    "encode",
    "presented_chain",
    "server_context",
]
