"""The local cloud's MqttHandler: DPS or Hub from the CONNECT username, then routes everything."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from client_app.cloud.dps.registration import Dps
from client_app.cloud.hub.hub import Hub, valid_device_id
from client_app.cloud.hub.router import DeviceRefused
from client_app.cloud.mqtt.ratelog import RateLimitedLog
from client_app.cloud.mqtt.server import ConnectDecision, RefusePublish
from client_app.pki import sha256_thumbprint

if TYPE_CHECKING:
    from client_app.cloud.mqtt.server import MqttConnection

log = logging.getLogger("client_app.cloud.handler")


@dataclass(frozen=True)
class Role:
    service: str  # "dps" | "hub"
    identity: str  # registration ID (DPS) or device ID (Hub)
    scope_or_host: str


def parse_username(username: str) -> Role | None:
    """`{scope}/registrations/{id}/api-version=…` → DPS; `{host}/{device}/?api-version=…` → Hub; else None."""
    parts = username.split("/")
    if len(parts) >= 4 and parts[1] == "registrations" and parts[3].startswith("api-version="):
        return Role("dps", parts[2], parts[0])
    if len(parts) >= 3 and parts[2].startswith("?"):
        return Role("hub", parts[1], parts[0])
    return None


class CloudHandler:
    def __init__(self, dps: Dps, hub: Hub) -> None:
        self.dps = dps
        self.hub = hub
        self._roles: dict[int, Role] = {}
        self._refusals = RateLimitedLog(log)  # per device: one that repeats a refused request costs a line

    def _role(self, conn: MqttConnection) -> Role:
        role = self._roles.get(id(conn))
        if role is None:  # the transport only calls us after an accepted CONNECT
            raise RefusePublish("connection has no role")
        return role

    async def authorize(self, conn: MqttConnection) -> ConnectDecision:
        role = parse_username(conn.username or "")
        if role is None:
            log.warning(
                "CONNECT %r refused: username %r is neither DPS nor IoT Hub", conn.client_id, conn.username
            )
            return ConnectDecision(2, False)
        if role.identity != conn.client_id or not valid_device_id(role.identity):
            log.warning(
                "CONNECT %r refused: client id does not match username %r", conn.client_id, conn.username
            )
            return ConnectDecision(2, False)
        if role.service == "dps":
            code, session = self.dps.authorize(conn, role.scope_or_host, role.identity), False
        elif (refusal := self.dps.connect_refusal(role.identity, conn.peer_chain)) is not None:
            log.warning("hub CONNECT %s refused: %s", role.identity, refusal)
            code, session = 5, False  # as the hub answers any certificate it does not accept
        else:
            code, session = self.hub.authorize(conn, role.scope_or_host, role.identity)
        if code == 0:
            self._roles[id(conn)] = role
            if role.service == "dps":
                # DPS and IoT Hub are separate endpoints: a device may be registering while its hub
                # connection is up. The transport keeps one connection per client id, read from
                # conn.client_id once authorize returns, so DPS gets its own namespace ('/' is never
                # part of a valid device id). The leaf's thumbprint is part of the key: DPS accepts any
                # CONNECT and judges the certificate at register, so another certificate claiming the same
                # registration ID must not replace (disconnect) the device's own DPS connection (issue 13).
                thumbprint = sha256_thumbprint(conn.peer_chain[0]) if conn.peer_chain else ""
                conn.client_id = f"$dps/{conn.client_id}/{thumbprint}"
            if role.service == "hub":
                self.hub.connected(conn, role.identity)
        return ConnectDecision(code, session)

    async def subscribed(self, conn: MqttConnection, topic_filter: str, requested_qos: int) -> int:
        """IoT Hub and DPS close the connection on a subscription they do not support (their devices never
        check the SUBACK: "IoT Hub would disconnect if there was a problem subscribing",
        Azure/azure-iot-middleware-freertos#89, source/azure_iot_hub_client.c); so do we, logging it once."""
        role = self._role(conn)
        try:
            if role.service == "dps":
                return self.dps.subscribe(topic_filter, requested_qos)
            return self.hub.subscribe(role.identity, topic_filter, requested_qos)
        except DeviceRefused as exc:
            self._refusals.log(logging.WARNING, f"{role.service}/{role.identity}", "%s %s: %s; closing",
                               role.service, role.identity, exc)  # fmt: skip
            conn.close(str(exc))
            return 0x80

    async def unsubscribed(self, conn: MqttConnection, topic_filter: str) -> None:
        role = self._role(conn)
        if role.service == "hub":  # the SDK unsubscribes when a handler is set back to None
            self.hub.unsubscribe(role.identity, topic_filter)

    async def published(
        self, conn: MqttConnection, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> None:
        role = self._role(conn)
        try:
            if role.service == "dps":
                await self.dps.published(conn, role.identity, topic, payload)
            else:
                await self.hub.device_published(conn, role.identity, topic, payload, retain=retain)
        except DeviceRefused as exc:
            log.warning("%s %s: %s; closing", role.service, role.identity, exc)
            raise RefusePublish(str(exc)) from exc

    def published_at_once(
        self, conn: MqttConnection, topic: str, payload: bytes, qos: int, *, retain: bool = False
    ) -> bool:
        """published()'s synchronous share (a device's method response), on the connection's reading task."""
        role = self._role(conn)
        try:
            return role.service == "hub" and self.hub.device_published_at_once(role.identity, topic, payload)
        except DeviceRefused as exc:
            log.warning("%s %s: %s; closing", role.service, role.identity, exc)
            raise RefusePublish(str(exc)) from exc

    async def disconnected(self, conn: MqttConnection, reason: str) -> None:
        role = self._roles.pop(id(conn), None)
        if role is not None and role.service == "hub":
            self.hub.disconnected(conn, role.identity, reason)
