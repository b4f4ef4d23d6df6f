"""The cloud-to-device queue: IoT Hub's limits, expiry, delivery one message at a time, feedback records."""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from client_app.cloud.errors import CloudError, bad_request
from client_app.cloud.hub.router import c2d_topic
from client_app.cloud.hub.topics import encode_bag, parse_bag
from client_app.cloud.store import Store, dumps, utc_now

if TYPE_CHECKING:
    from client_app.cloud.mqtt.server import MqttConnection

log = logging.getLogger("client_app.cloud.hub.c2d")

MAX_C2D = 64 * 1024
MAX_C2D_QUEUE = 50
MAX_TOPIC = 0xFFFF  # MQTT's limit on a topic name, in bytes
DEFAULT_C2D_TTL = 3600.0
FEEDBACK_ACKS = (None, "none", "positive", "negative", "full")
DELIVERY_TIMEOUT = 60.0  # IoT Hub's fixed C2D lock time: unacknowledged → delivered again later


class C2dQueue:
    """Rows of the `c2d` table. Reads count and list unexpired messages only and never delete: removal
    happens on PUBACK, purge, and in expire() (the cloud's sweep), which writes the `Expired` feedback."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.on_feedback: list[Callable[[], None]] = []  # new C2D feedback records (the AMQP endpoint)

    def depth(self, device_id: str) -> int:
        row = self._store.one(
            "SELECT COUNT(*) FROM c2d WHERE device_id=? AND expiry>=?", (device_id, time.time())
        )
        return int(row[0])

    def depths(self) -> dict[str, int]:
        rows = self._store.all(
            "SELECT device_id, COUNT(*) FROM c2d WHERE expiry>=? GROUP BY device_id", (time.time(),)
        )
        return {r[0]: int(r[1]) for r in rows}

    def expire(self, device_id: str | None = None) -> None:
        """Drop expired C2D messages, of one device or of all (the cloud sweeps every few seconds, so that
        `Expired` feedback does not wait until someone looks at the device's queue)."""
        where, params = (
            ("device_id=? AND expiry<?", (device_id, time.time()))
            if device_id
            else ("expiry<?", (time.time(),))
        )
        with self._store.transaction() as db:
            for row in db.execute(f"SELECT * FROM c2d WHERE {where}", params).fetchall():
                self._feedback(db, row, "Expired")
            db.execute(f"DELETE FROM c2d WHERE {where}", params)

    def _feedback(self, db: sqlite3.Connection, row: sqlite3.Row, status: str) -> None:
        """A feedback record (IoT Hub's shape, Azure docs "Message feedback") when the message's ack asks
        for this outcome: positive → Success, negative → Expired (and the other failures), full → both."""
        ack = parse_bag(row["properties"]).get("iothub-ack")
        if ack not in ("full", "positive" if status == "Success" else "negative"):
            return
        generation = db.execute("SELECT generation_id FROM devices WHERE device_id=?", (row["device_id"],))
        generation_row = generation.fetchone()
        record = {
            "originalMessageId": row["message_id"],
            "description": status,
            "statusCode": status,
            "deviceGenerationId": generation_row["generation_id"] if generation_row else "",
            "deviceId": row["device_id"],
            "enqueuedTimeUtc": utc_now(),
        }
        db.execute("INSERT INTO c2d_feedback(record) VALUES (?)", (dumps(record),))
        # After the current transaction: readers on other connections see the row only once it commits.
        asyncio.get_running_loop().call_soon(self._feedback_committed)

    def _feedback_committed(self) -> None:
        for callback in self.on_feedback:
            callback()

    def delete_feedback(self, ids: list[int]) -> None:
        """Feedback records the service has completed (accepted on the feedback link)."""
        self._store.executemany("DELETE FROM c2d_feedback WHERE id=?", [(i,) for i in ids])

    def send(
        self,
        device_id: str,
        body: bytes,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        properties: dict[str, str] | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        ttl_seconds: float | None = None,
        ack: str | None = None,
        expiry_utc: str | None = None,
    ) -> dict[str, Any]:
        """Queue a C2D message. `ack` (none/positive/negative/full, IoT Hub's `iothub-ack`) asks for feedback;
        `expiry_utc` is the absolute expiry as the sender set it, passed to the device as `$.exp`."""
        ttl = DEFAULT_C2D_TTL if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= 2 * 86400:
            raise bad_request("ttlSeconds must be in (0, 172800]")
        if ack not in FEEDBACK_ACKS:
            raise bad_request(f"iothub-ack must be one of {', '.join(FEEDBACK_ACKS[1:])}", 400004)
        message_id = message_id or str(uuid.uuid4())
        system = {"$.mid": message_id, "$.to": f"/devices/{device_id}/messages/deviceBound"}
        if correlation_id:
            system["$.cid"] = correlation_id
        if expiry_utc:
            system["$.exp"] = expiry_utc
        if ack and ack != "none":
            system["iothub-ack"] = ack
        if content_type:
            system["$.ct"] = content_type
        if content_encoding:
            system["$.ce"] = content_encoding
        bag = encode_bag({**system, **(properties or {})})
        # Counted as sent: percent-encoding can triple the properties, and a topic past MQTT's 65,535 bytes
        # could never be delivered (it would block the device's queue until its TTL).
        size = len(body) + len(bag)
        if size > MAX_C2D or len(c2d_topic(device_id, bag)) > MAX_TOPIC:
            raise CloudError(
                413,
                413001,
                f"message of {size} bytes (body + encoded properties) exceeds the 64 KB C2D limit",
            )
        if self.depth(device_id) >= MAX_C2D_QUEUE:
            raise CloudError(403, 403004, f"device '{device_id}' already has {MAX_C2D_QUEUE} queued messages")
        cursor = self._store.execute(
            "INSERT INTO c2d(device_id, message_id, body, content_type, properties, enqueued, expiry) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (device_id, message_id, body, content_type, bag, utc_now(), time.time() + ttl),
        )
        log.info("C2D %s queued for %s (%d bytes)", message_id, device_id, len(body))
        return {"messageId": message_id, "sequenceNumber": cursor.lastrowid, "deviceId": device_id}

    def purge(self, device_id: str) -> dict[str, Any]:
        purged = self._store.execute("DELETE FROM c2d WHERE device_id=?", (device_id,)).rowcount
        log.info("C2D queue of %s purged (%d messages)", device_id, purged)
        return {"deviceId": device_id, "totalMessagesPurged": purged}

    async def deliver_next(self, device_id: str, conn: MqttConnection) -> bool:
        """Publish the oldest unexpired message; it leaves the queue on PUBACK. False: the queue is empty.
        Raises what publish raised (TimeoutError, ConnectionError, OSError) when the device did not
        acknowledge: the message stays queued."""
        row = self._store.one(
            "SELECT * FROM c2d WHERE device_id=? AND expiry>=? ORDER BY seq LIMIT 1", (device_id, time.time())
        )
        if row is None:
            return False
        topic = c2d_topic(device_id, row["properties"])
        try:
            await asyncio.wait_for(conn.publish(topic, bytes(row["body"]), 1), DELIVERY_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.warning("C2D %s to %s not acknowledged (%r); stays queued", row["message_id"], device_id, exc)
            raise
        with self._store.transaction() as db:
            db.execute("DELETE FROM c2d WHERE seq=?", (row["seq"],))
            self._feedback(db, row, "Success")
        log.info("C2D %s delivered to %s", row["message_id"], device_id)
        return True


def body_json(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"bodyBase64": base64.b64encode(body).decode()}
