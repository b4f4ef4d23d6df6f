"""Device twins: rows of the `twins` table, parsed once per content, in the device's and the service's shapes
(azure-iot-hub models.Twin), JSON merge patch and the twin's etag."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from typing import Any

from client_app.cloud.errors import CloudError
from client_app.cloud.store import Store, dumps

_INSERT_TWIN = (
    "INSERT OR IGNORE INTO twins(device_id, desired, desired_version, reported, reported_version, tags) "
    "VALUES (?, ?, 1, '{}', 1, ?)"
)

Parsed = tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]  # tags, desired, reported, etag


class Twins:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[tuple[Any, ...], Parsed]] = {}  # device id → (row content, parsed)

    @staticmethod
    def create(db: sqlite3.Connection | Store, device_id: str, desired: str = "{}", tags: str = "{}") -> None:
        db.execute(_INSERT_TWIN, (device_id, desired, tags))

    def row(self, device_id: str) -> sqlite3.Row | None:
        return self._store.one("SELECT * FROM twins WHERE device_id=?", (device_id,))

    def rows(self) -> dict[str, sqlite3.Row]:
        return {r["device_id"]: r for r in self._store.all("SELECT * FROM twins")}

    def forget(self, device_id: str) -> None:
        self._cache.pop(device_id, None)

    def parsed(self, row: sqlite3.Row) -> Parsed:
        """(tags, desired, reported, etag) of a twin row, parsed once per content: queries read every twin.

        The cached documents are shared: callers copy before they change anything."""
        device_id, tags, desired, reported = row["device_id"], row["tags"], row["desired"], row["reported"]
        key = (tags, desired, reported, row["desired_version"], row["reported_version"])
        hit = self._cache.get(device_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        parsed = (json.loads(tags), json.loads(desired), json.loads(reported), twin_etag(row))
        self._cache[device_id] = (key, parsed)
        return parsed

    def device_doc(self, row: sqlite3.Row, parsed: Parsed | None = None) -> dict[str, Any]:
        """The twin as the device reads it (`$iothub/twin/GET`)."""
        _, desired, reported, _ = parsed or self.parsed(row)
        return {
            "desired": {**desired, "$version": row["desired_version"]},
            "reported": {**reported, "$version": row["reported_version"]},
        }

    def service_doc(self, device: dict[str, Any], row: sqlite3.Row) -> dict[str, Any]:
        # Azure's Twin (azure-iot-hub models.Twin): the twin has its own etag, the identity's is deviceEtag.
        parsed = self.parsed(row)
        return {
            "deviceId": device["deviceId"],
            "etag": parsed[3],
            "deviceEtag": device["etag"],
            "version": row["desired_version"] + row["reported_version"],
            "status": device["status"],
            "connectionState": device["connectionState"],
            "lastActivityTime": device["lastActivityTime"],
            "cloudToDeviceMessageCount": device["cloudToDeviceMessageCount"],
            "authenticationType": device["authentication"]["type"],
            "x509Thumbprint": device["authentication"]["x509Thumbprint"],
            "tags": dict(parsed[0]),
            "properties": self.device_doc(row, parsed),
            "capabilities": {"iotEdge": False},
        }

    def set_desired(self, device_id: str, desired: dict[str, Any], version: int) -> None:
        self._store.execute(
            "UPDATE twins SET desired=?, desired_version=? WHERE device_id=?",
            (dumps(desired), version, device_id),
        )

    def set_reported(self, device_id: str, reported: dict[str, Any], version: int) -> None:
        self._store.execute(
            "UPDATE twins SET reported=?, reported_version=? WHERE device_id=?",
            (dumps(reported), version, device_id),
        )

    def set_tags(self, device_id: str, tags: dict[str, Any]) -> None:
        self._store.execute("UPDATE twins SET tags=? WHERE device_id=?", (dumps(tags), device_id))


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch as twins use it: nested objects merge, null deletes."""
    result = dict(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $version and friends are the service's
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = value
    return result


def twin_etag(row: sqlite3.Row) -> str:
    """Changes with every tags, desired or reported change (derived from the content, no column)."""
    digest = hashlib.sha256(f"{row['tags']}|{row['desired_version']}|{row['reported_version']}".encode())
    return base64.b64encode(digest.digest()[:9]).decode()


def check_etag(what: str, etag: str, if_match: str | None) -> None:
    if if_match is not None and if_match.strip('"') not in ("*", etag):
        raise CloudError(412, 412002, f"{what}: the If-Match etag {if_match!r} is not the current one")
