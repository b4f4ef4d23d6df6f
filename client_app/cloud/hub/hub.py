"""IoT Hub: device registry, persistent MQTT sessions, telemetry, C2D queue, twins, direct methods."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from client_app.cloud.errors import CloudError, bad_request, not_found
from client_app.cloud.hub.c2d import C2dQueue, body_json
from client_app.cloud.hub.limits import check_initial_twin, check_twin
from client_app.cloud.hub.methods import Calls, MethodCalls
from client_app.cloud.hub.router import (
    C2D_FILTER,
    DESIRED_FILTER,
    METHODS_FILTER,
    DeviceRefused,
    Route,
    check_filter,
    events_bag,
    route,
)
from client_app.cloud.hub.topics import parse_bag, request_id
from client_app.cloud.hub.twin_query import Query
from client_app.cloud.hub.twins import Twin, Twins, check_etag, merge_patch
from client_app.cloud.mqtt.server import CLIENT_DISCONNECT, SERVER_SHUTDOWN
from client_app.cloud.store import DEFAULT_CONSUMER_GROUP, Store, TelemetryWriter, dumps, utc_now
from client_app.pki import sha256_thumbprint

if TYPE_CHECKING:
    from client_app.cloud.mqtt.packets import Will
    from client_app.cloud.mqtt.server import MqttConnection

log = logging.getLogger("client_app.cloud.hub.hub")

MAX_TELEMETRY = 256 * 1024
_CONSUMER_GROUP = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,48}[A-Za-z0-9])?$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-.%_*?!(),=@$':]{1,128}$")  # IoT Hub's set minus MQTT's wildcards + #

# Named columns: a migration that adds or reorders columns cannot shift these values.
_INSERT_DEVICE = (
    "INSERT INTO devices(device_id, thumbprint, enabled, generation_id, etag, created, updated) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SAVE_SESSION = "INSERT OR REPLACE INTO sessions(device_id, subscriptions) VALUES (?, ?)"

SYSTEM_KEYS = {
    "$.mid": "messageId",
    "$.cid": "correlationId",
    "$.uid": "userId",
    "$.ct": "contentType",
    "$.ce": "contentEncoding",
    "$.ifid": "interfaceId",
    "$.exp": "expiryTimeUtc",
    "$.on": "outputName",
}


# The fields of a twin a query's WHERE can judge (docs/local-cloud.md, "Query").
QUERY_FIELDS = frozenset({"deviceId", "status", "connectionState", "tags", "properties"})


def valid_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


@dataclass
class _Online:
    """One connected device: its connection, its C2D delivery task and its outstanding method calls."""

    conn: MqttConnection
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    methods: Calls = field(default_factory=dict)
    connected_at: str = field(default_factory=utc_now)


class Hub:
    def __init__(self, store: Store, telemetry: TelemetryWriter, hostnames: set[str]) -> None:
        self._store = store
        self._telemetry = telemetry
        self.hostnames = hostnames  # names/IPs devices may put into their username
        self._online: dict[str, _Online] = {}
        self._activity: dict[str, str] = {}
        self._subscriptions: dict[str, set[str]] = self._load_sessions()
        self._methods = MethodCalls()
        self.twins = Twins(store)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.c2d = C2dQueue(store)
        self.on_feedback = self.c2d.on_feedback  # new C2D feedback records (the AMQP endpoint)

    # ---- registry --------------------------------------------------------------------------------
    def _device_json(self, row: sqlite3.Row, queued: int | None = None) -> dict[str, Any]:
        device_id = row["device_id"]
        online = self._online.get(device_id)
        return {
            "deviceId": device_id,
            "generationId": row["generation_id"],
            "etag": row["etag"],
            "status": "enabled" if row["enabled"] else "disabled",
            "authentication": {
                "type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": row["thumbprint"]},
            },
            "connectionState": "Connected" if online else "Disconnected",
            "connectionStateUpdatedTime": row["connection_state_updated"],
            "lastActivityTime": self._activity.get(device_id, row["last_activity"]),
            "cloudToDeviceMessageCount": self.c2d.depth(device_id) if queued is None else queued,
            "createdDateTimeUtc": row["created"],
            "lastUpdatedDateTimeUtc": row["updated"],
        }

    def _row(self, device_id: str) -> sqlite3.Row:
        row = self._store.one("SELECT * FROM devices WHERE device_id=?", (device_id,))
        if row is None:
            raise not_found("device", device_id, 404001)
        return row

    def devices(self) -> list[dict[str, Any]]:
        queued = self.c2d.depths()
        rows = self._store.all("SELECT * FROM devices ORDER BY device_id")
        return [self._device_json(r, queued.get(r["device_id"], 0)) for r in rows]

    def device(self, device_id: str) -> dict[str, Any]:
        return self._device_json(self._row(device_id))

    def provision(self, device_id: str, thumbprint: str, initial_twin: dict[str, Any]) -> None:
        """Create the device on first assignment, or bind it to a renewed leaf (new thumbprint)."""
        check_initial_twin(initial_twin)  # groups are checked when stored; this guards older databases
        now = utc_now()
        with self._store.transaction() as db:
            existing = db.execute("SELECT thumbprint FROM devices WHERE device_id=?", (device_id,)).fetchone()
            if existing is None:
                db.execute(
                    _INSERT_DEVICE,
                    (device_id, thumbprint, 1, uuid.uuid4().hex, secrets.token_hex(8), now, now),
                )
                desired = initial_twin.get("properties", {}).get("desired", {})
                self.twins.create(db, device_id, dumps(desired), dumps(initial_twin.get("tags", {})))
                log.info("device %s created (thumbprint %s)", device_id, thumbprint)
            elif existing["thumbprint"] != thumbprint:
                db.execute(
                    "UPDATE devices SET thumbprint=?, etag=?, updated=? WHERE device_id=?",
                    (thumbprint, secrets.token_hex(8), now, device_id),
                )
                log.info("device %s now bound to renewed certificate %s", device_id, thumbprint)

    def set_enabled(self, device_id: str, enabled: bool) -> dict[str, Any]:
        self._row(device_id)
        self._store.execute(
            "UPDATE devices SET enabled=?, etag=?, updated=? WHERE device_id=?",
            (int(enabled), secrets.token_hex(8), utc_now(), device_id),
        )
        online = self._online.get(device_id)
        if not enabled and online is not None:
            online.conn.close("device disabled by the operator")
        log.info("device %s %s", device_id, "enabled" if enabled else "disabled")
        return self.device(device_id)

    def delete(self, device_id: str) -> None:
        self._row(device_id)
        online = self._online.get(device_id)
        if online is not None:
            online.conn.close("device deleted by the operator")
        with self._store.transaction() as db:
            for table in ("devices", "twins", "sessions", "c2d"):
                db.execute(f"DELETE FROM {table} WHERE device_id=?", (device_id,))
        self._subscriptions.pop(device_id, None)
        self.twins.forget(device_id)
        self._activity.pop(device_id, None)  # a device created again under this id starts without history

    # ---- connections -----------------------------------------------------------------------------
    def authorize(self, conn: MqttConnection, hostname: str, device_id: str) -> tuple[int, bool]:
        """CONNACK code + session-present: thumbprint auth of the leaf, like IoT Hub's self-signed mode."""
        if hostname not in self.hostnames:
            log.warning("hub CONNECT %s refused: unknown hub host name %r", device_id, hostname)
            return 5, False
        row = self._store.one("SELECT enabled, thumbprint FROM devices WHERE device_id=?", (device_id,))
        thumbprint = _leaf_thumbprint(conn)
        if row is None:
            log.warning("hub CONNECT %s refused: device not registered", device_id)
            return 5, False
        if not row["enabled"]:
            log.warning("hub CONNECT %s refused: device disabled", device_id)
            return 5, False
        if thumbprint != row["thumbprint"]:
            log.warning("hub CONNECT %s refused: certificate %s is not the registered %s",
                        device_id, thumbprint, row["thumbprint"])  # fmt: skip
            return 5, False
        if conn.clean_session:  # MQTT-3.1.2-6: start without the stored session (the SDK never asks for this)
            self._drop_session(device_id)
        return 0, bool(self._subscriptions.get(device_id))

    def connected(self, conn: MqttConnection, device_id: str) -> None:
        previous = self._online.get(device_id)
        if previous is not None:
            self._stop_online(previous, "a new connection for this device replaced it")
            previous.conn.close("replaced by a new connection (400027)")
        online = _Online(conn)
        online.task = asyncio.create_task(self._deliver_c2d(device_id, online), name=f"c2d-{device_id}")
        self._online[device_id] = online
        self._mark_state(device_id)
        log.info("device %s connected", device_id)
        self._kick(device_id)

    def disconnected(self, conn: MqttConnection, device_id: str, reason: str) -> None:
        online = self._online.get(device_id)
        if online is None or online.conn is not conn:
            return  # an older connection that a newer one already replaced
        del self._online[device_id]
        self._stop_online(online, reason)
        if conn.clean_session:  # a clean session ends with its connection
            self._drop_session(device_id)
        self._mark_state(device_id)
        log.info("device %s disconnected: %s", device_id, reason)
        if conn.will is not None and reason not in (CLIENT_DISCONNECT, SERVER_SHUTDOWN):
            self._spawn(self._will(device_id, conn.will))

    async def _will(self, device_id: str, will: Will) -> None:
        """A connection lost without DISCONNECT: IoT Hub sends its Will message as telemetry marked
        `iothub-MessageType: Will`; the Will topic must be the device's events topic
        (iot-mqtt-connect-to-iot-hub, "Sending device-to-cloud messages")."""
        bag = events_bag(device_id, will.topic)
        if bag is None:
            log.warning(
                "device %s: Will message to %r dropped (not its events topic)", device_id, will.topic[:100]
            )
            return
        try:
            await self._telemetry_in(device_id, bag, will.message, {"iothub-MessageType": "Will"})
        except DeviceRefused as exc:
            log.warning("device %s: Will message dropped: %s", device_id, exc)
            return
        log.info("device %s: Will message stored as telemetry", device_id)

    def _stop_online(self, online: _Online, reason: str) -> None:
        if online.task is not None:
            online.task.cancel()
        for future in online.methods.values():
            if not future.done():
                future.set_exception(CloudError(404, 404103, f"device disconnected: {reason}"))

    def _mark_state(self, device_id: str) -> None:
        now = utc_now()
        self._store.execute(
            "UPDATE devices SET connection_state_updated=?, last_activity=COALESCE(?, last_activity) "
            "WHERE device_id=?",
            (now, self._activity.get(device_id), device_id),
        )

    def touch(self, device_id: str) -> None:
        self._activity[device_id] = utc_now()

    def flush_activity(self) -> None:
        for device_id, when in self._activity.items():
            self._store.execute("UPDATE devices SET last_activity=? WHERE device_id=?", (when, device_id))

    # ---- subscriptions (persisted: the SDK never re-subscribes after a reconnect) ----------------
    def _load_sessions(self) -> dict[str, set[str]]:
        rows = self._store.all("SELECT device_id, subscriptions FROM sessions")
        return {r["device_id"]: set(json.loads(r["subscriptions"])) for r in rows}

    def subscribe(self, device_id: str, topic_filter: str, requested_qos: int) -> int:
        check_filter(device_id, topic_filter)
        filters = self._subscriptions.setdefault(device_id, set())
        if topic_filter not in filters:
            filters.add(topic_filter)
            self._store.execute(_SAVE_SESSION, (device_id, json.dumps(sorted(filters))))
        if topic_filter == C2D_FILTER.format(device_id):
            self._kick(device_id)
        return min(requested_qos, 1)  # IoT Hub grants QoS 2 subscriptions as QoS 1

    def unsubscribe(self, device_id: str, topic_filter: str) -> None:
        filters = self._subscriptions.get(device_id, set())
        if topic_filter in filters:
            filters.discard(topic_filter)
            self._store.execute(_SAVE_SESSION, (device_id, json.dumps(sorted(filters))))

    def _drop_session(self, device_id: str) -> None:
        if self._subscriptions.pop(device_id, None) is not None:
            self._store.execute("DELETE FROM sessions WHERE device_id=?", (device_id,))

    def _subscribed(self, device_id: str, topic_filter: str) -> bool:
        return topic_filter in self._subscriptions.get(device_id, ())

    # ---- device publishes ------------------------------------------------------------------------
    async def device_published(
        self, conn: MqttConnection, device_id: str, topic: str, payload: bytes, *, retain: bool = False
    ) -> None:
        self.touch(device_id)
        job = route(device_id, topic)
        if job is Route.TELEMETRY:
            # IoT Hub keeps no retained messages: it adds the `mqtt-retain` application property and passes
            # the message on (iot-mqtt-connect-to-iot-hub, "Sending device-to-cloud messages"; the value
            # "true" as in Azure/azure-iot-protocol-gateway src/ProtocolGateway.Core/Mqtt/Util.cs).
            bag = events_bag(device_id, topic) or ""
            await self._telemetry_in(device_id, bag, payload, {"mqtt-retain": "true"} if retain else {})
        elif job is Route.TWIN_GET:
            await self._twin_get(conn, device_id, topic)
        elif job is Route.TWIN_REPORTED:
            await self._twin_reported(conn, device_id, topic, payload)
        else:
            self._method_response(device_id, topic, payload)

    def device_published_at_once(self, device_id: str, topic: str, payload: bytes) -> bool:
        """The publishes device_published settles without awaiting (a method response): done here, on the
        connection's reading task; False for the rest, which go to device_published."""
        if route(device_id, topic) is not Route.METHOD_RESPONSE:
            return False
        self.touch(device_id)
        self._method_response(device_id, topic, payload)
        return True

    async def _telemetry_in(
        self, device_id: str, bag: str, payload: bytes, added: dict[str, str | None]
    ) -> None:
        if len(payload) + len(bag) > MAX_TELEMETRY:
            raise DeviceRefused(f"telemetry of {len(payload) + len(bag)} bytes exceeds 256 KB (413001)")
        system: dict[str, str] = {}
        custom: dict[str, str | None] = dict(added)
        for key, value in parse_bag(bag).items():
            if key in SYSTEM_KEYS:
                system[SYSTEM_KEYS[key]] = value or ""
            else:
                custom[key] = value
        await self._telemetry.add(device_id, payload, system, custom)

    def telemetry(
        self, device_id: str | None, after: int, limit: int, *, tail: int | None = None
    ) -> list[dict[str, Any]]:
        """Oldest first after sequence number `after`; or, with `tail`, the newest `tail` messages."""
        where, params = ("WHERE device_id=?", [device_id]) if device_id is not None else ("", [])
        if tail is not None:
            sql = f"SELECT * FROM (SELECT * FROM telemetry {where} ORDER BY seq DESC LIMIT ?) ORDER BY seq"
            rows = self._store.all(sql, [*params, tail])
        else:
            where = f"{where} AND seq>?" if where else "WHERE seq>?"
            rows = self._store.all(
                f"SELECT * FROM telemetry {where} ORDER BY seq LIMIT ?", [*params, after, limit]
            )
        return [_telemetry_json(r) for r in rows]

    # ---- Event Hubs-compatible consumer groups ---------------------------------------------------
    def consumer_groups(self) -> list[dict[str, Any]]:
        rows = self._store.all("SELECT name, created FROM consumer_groups ORDER BY name")
        return [{"name": DEFAULT_CONSUMER_GROUP, "created": None}] + [
            {"name": r["name"], "created": r["created"]} for r in rows
        ]

    def add_consumer_group(self, name: str) -> dict[str, Any]:
        """Idempotent, as ARM's PUT of `eventHubEndpoints/events/ConsumerGroups/{name}` (Event Hubs' naming
        rules: 1-50 letters, digits, '.', '-', '_', starting and ending with a letter or digit)."""
        if not _CONSUMER_GROUP.match(name) or name.lower() == DEFAULT_CONSUMER_GROUP.lower():
            raise bad_request(f"invalid consumer group name {name!r}")
        self._store.execute(
            "INSERT OR IGNORE INTO consumer_groups(name, created) VALUES (?, ?)", (name, utc_now())
        )
        return next(g for g in self.consumer_groups() if g["name"].lower() == name.lower())

    def delete_consumer_group(self, name: str) -> None:
        if name.lower() == DEFAULT_CONSUMER_GROUP.lower():
            raise bad_request("the $Default consumer group cannot be deleted")
        if not self._store.execute("DELETE FROM consumer_groups WHERE name=?", (name,)).rowcount:
            raise not_found("consumer group", name)

    # ---- cloud-to-device: the queue is hub/c2d.py; the hub checks the device and wakes its delivery --------
    def expire_c2d(self, device_id: str | None = None) -> None:
        self.c2d.expire(device_id)

    def delete_feedback(self, ids: list[int]) -> None:
        self.c2d.delete_feedback(ids)

    def send_c2d(self, device_id: str, body: bytes, **options: Any) -> dict[str, Any]:
        """Queue a C2D message (options: C2dQueue.send's) and wake the device's delivery."""
        self._row(device_id)
        sent = self.c2d.send(device_id, body, **options)
        self._kick(device_id)
        return sent

    def purge_c2d(self, device_id: str) -> dict[str, Any]:
        self._row(device_id)
        return self.c2d.purge(device_id)

    def _kick(self, device_id: str) -> None:
        online = self._online.get(device_id)
        if online is not None:
            online.wake.set()

    async def _deliver_c2d(self, device_id: str, online: _Online) -> None:
        """Deliver the queue oldest first, one at a time; a message leaves the queue only on PUBACK."""
        if not await online.conn.wait_accepted():  # authorize() runs before the CONNACK
            return
        while True:
            await online.wake.wait()
            online.wake.clear()
            while self._subscribed(device_id, C2D_FILTER.format(device_id)):
                try:
                    if not await self.c2d.deliver_next(device_id, online.conn):
                        break
                except (TimeoutError, ConnectionError, OSError):
                    return  # the connection is failing; the next one starts its own delivery

    # ---- twins -----------------------------------------------------------------------------------
    def _twin(self, device_id: str) -> Twin:
        twin = self.twins.get(device_id)
        if twin is None:
            self._row(device_id)  # 404 for unknown devices
            self.twins.create(self._store, device_id)
            twin = self.twins.get(device_id)
        assert twin is not None
        return twin

    def twin(self, device_id: str) -> dict[str, Any]:
        """Service view of the twin (shape of the IoT Hub service API)."""
        twin = self._twin(device_id)
        return self.twins.service_doc(self.device(device_id), twin)

    def patch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        check_twin("desired", patch)
        twin = self._twin(device_id)
        desired = merge_patch(twin.desired, patch)
        check_twin("desired", desired)
        version = twin.desired_version + 1
        self.twins.set_desired(device_id, desired, version)
        online = self._online.get(device_id)
        if online is not None and self._subscribed(device_id, DESIRED_FILTER):
            # The SDK drops a desired patch without "$version"; it re-reads the twin after a reconnect anyway.
            body = json.dumps({**patch, "$version": version}).encode()
            topic = f"$iothub/twin/PATCH/properties/desired/?$version={version}"
            self._spawn(online.conn.publish(topic, body, 1))
        return self.twin(device_id)

    async def _twin_get(self, conn: MqttConnection, device_id: str, topic: str) -> None:
        # Answered even without a $iothub/twin/res/# subscription: the SDK's reconnect GET never subscribes.
        rid = request_id(topic) or ""
        body = json.dumps(self._twin(device_id).properties).encode()
        await self._respond(conn, f"$iothub/twin/res/200/?$rid={rid}", body)

    async def _twin_reported(self, conn: MqttConnection, device_id: str, topic: str, payload: bytes) -> None:
        rid = request_id(topic) or ""
        try:
            patch = json.loads(payload)
            check_twin("reported", patch)
            twin = self._twin(device_id)
            reported = merge_patch(twin.reported, patch)
            check_twin("reported", reported)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep for the parser
            log.warning("device %s: reported patch refused, invalid JSON (%s)", device_id, exc)
            await self._respond(conn, f"$iothub/twin/res/400/?$rid={rid}", b"")
            return
        except CloudError as exc:
            log.warning("device %s: reported patch refused: %s", device_id, exc.message)
            await self._respond(conn, f"$iothub/twin/res/{exc.status}/?$rid={rid}", b"")
            return
        version = twin.reported_version + 1
        self.twins.set_reported(device_id, reported, version)
        await self._respond(conn, f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"")

    # ---- direct methods --------------------------------------------------------------------------
    async def invoke(self, device_id: str, method: str, payload: Any, timeout: float) -> tuple[int, Any]:
        online = self._online.get(device_id)
        if online is None or not self._subscribed(device_id, METHODS_FILTER):
            self._row(device_id)  # 404001 for an unknown device; a subscribed one exists (delete drops it)
            raise CloudError(
                404, 404103, f"device '{device_id}' is not online (or not listening for methods)"
            )
        return await self._methods.invoke(online.conn, online.methods, device_id, method, payload, timeout)

    def _method_response(self, device_id: str, topic: str, payload: bytes) -> None:
        online = self._online.get(device_id)
        self._methods.answered(online.methods if online else None, device_id, topic, payload)

    # ---- service API: registry writes, twin updates, query, purge, statistics ---------------------
    def create_device(self, device_id: str, thumbprint: str, *, enabled: bool = True) -> dict[str, Any]:
        """A new X.509 (thumbprint) identity; an existing ID is refused (409001 DeviceAlreadyExists)."""
        if not valid_device_id(device_id):
            raise bad_request(
                f"device id {device_id!r}: up to 128 of A-Z a-z 0-9 - . % _ * ? ! ( ) , = @ $ ' :",
                400004,
            )
        if self._store.one("SELECT 1 FROM devices WHERE device_id=?", (device_id,)) is not None:
            raise CloudError(409, 409001, f"device {device_id!r} already exists")
        now = utc_now()
        with self._store.transaction() as db:
            db.execute(
                _INSERT_DEVICE,
                (device_id, thumbprint, int(enabled), uuid.uuid4().hex, secrets.token_hex(8), now, now),
            )
            self.twins.create(db, device_id)
        log.info("device %s created by the service API", device_id)
        return self.device(device_id)

    def check_device_etag(self, device_id: str, if_match: str | None) -> None:
        """412 / 412002 (PreconditionFailed) unless If-Match is absent, `*` or the identity's etag."""
        check_etag(f"device {device_id!r}", self._row(device_id)["etag"], if_match)

    def query(self, query: Query) -> list[dict[str, Any]]:
        """Run a parsed query over every twin. WHERE judges each twin's query document (identity, status,
        connection state, tags and properties: the cached twins and one read of the registry's ids and
        status); whole twins are built only for the rows SELECT * returns, or when the answer needs more."""
        twins = self.twins.all()
        online = self._online
        documents = [
            {
                "deviceId": device_id,
                "status": "enabled" if enabled else "disabled",
                "connectionState": "Connected" if device_id in online else "Disconnected",
                "tags": twin.tags,
                "properties": twin.properties,
            }
            for device_id, enabled in self._store.all(
                "SELECT device_id, enabled FROM devices ORDER BY device_id"
            )
            if (twin := twins.get(device_id)) is not None
        ]
        selected = query.select(documents)
        if query.reads_only(QUERY_FIELDS):
            return query.shape(selected)
        ids = [document["deviceId"] for document in selected]
        rows = {r["device_id"]: r for r in self._device_rows(ids)}
        queued = self.c2d.depths()
        whole = [self.twins.service_doc(self._device_json(rows[i], queued.get(i, 0)), twins[i]) for i in ids]
        return query.shape(whole)

    def _device_rows(self, device_ids: list[str], chunk: int = 500) -> list[sqlite3.Row]:
        rows = []
        for start in range(0, len(device_ids), chunk):
            ids = device_ids[start : start + chunk]
            marks = ",".join("?" * len(ids))
            rows += self._store.all(f"SELECT * FROM devices WHERE device_id IN ({marks})", ids)
        return rows

    def update_twin(
        self,
        device_id: str,
        tags: dict[str, Any] | None,
        desired: dict[str, Any] | None,
        *,
        if_match: str | None,
        replace: bool,
    ) -> dict[str, Any]:
        """PATCH (merge) or PUT (replace) tags and desired properties under the twin's etag."""
        twin = self._twin(device_id)
        check_etag(f"twin {device_id!r}", twin.etag, if_match)
        current_tags, current_desired = twin.tags, twin.desired
        patch: dict[str, Any] = {}
        if desired is not None:  # replace = a patch that also deletes what the new document lacks
            check_twin("desired", desired)
            patch = (
                {**{k: None for k in current_desired if k not in desired}, **desired} if replace else desired
            )
            check_twin("desired", merge_patch(current_desired, patch))
        if tags is not None:
            check_twin("tags", tags)
            new_tags = tags if replace else merge_patch(current_tags, tags)
            check_twin("tags", new_tags)
            self.twins.set_tags(device_id, new_tags)
        if patch:
            self.patch_desired(device_id, patch)
        return self.twin(device_id)

    def connected_count(self) -> int:
        return len(self._online)

    def listening_for_methods(self, device_id: str) -> bool:
        return device_id in self._online and self._subscribed(device_id, METHODS_FILTER)

    def statistics(self) -> dict[str, int]:
        row = self._store.one("SELECT COUNT(*), COALESCE(SUM(enabled), 0) FROM devices")
        total, enabled = (int(row[0]), int(row[1])) if row else (0, 0)
        return {
            "totalDeviceCount": total,
            "enabledDeviceCount": enabled,
            "disabledDeviceCount": total - enabled,
        }

    # ---- helpers ---------------------------------------------------------------------------------
    @staticmethod
    async def _respond(conn: MqttConnection, topic: str, body: bytes) -> None:
        # Awaited, not spawned: a device that keeps asking without reading the answers is held back by TCP
        # back-pressure (and cut off by the write timeout) instead of growing our write buffer.
        await conn.publish(topic, body, 0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("publish to device failed: %r", task.exception())

    async def close(self) -> None:
        for online in list(self._online.values()):
            self._stop_online(online, "server stopping")
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            self.flush_activity()


def _leaf_thumbprint(conn: MqttConnection) -> str:
    return sha256_thumbprint(conn.peer_chain[0]) if conn.peer_chain else ""


def _telemetry_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "sequenceNumber": row["seq"],
        "deviceId": row["device_id"],
        "enqueuedTimeUtc": row["received"],
        "systemProperties": json.loads(row["system_properties"]),
        "properties": json.loads(row["properties"]),
        **body_json(bytes(row["body"])),
    }
