"""Device twins: the `twins` table behind a write-through cache of parsed twins, in the device's and the
service's shapes (azure-iot-hub models.Twin), JSON merge patch and the twin's etag."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from client_app.cloud.errors import CloudError
from client_app.cloud.store import Store, dumps

_INSERT_TWIN = (
    "INSERT OR IGNORE INTO twins(device_id, desired, desired_version, reported, reported_version, tags) "
    "VALUES (?, ?, 1, '{}', 1, ?)"
)


@dataclass(frozen=True, slots=True)
class Twin:
    """One twin as stored, parsed. Shared by every reader (queries read all of them): read-only."""

    tags: dict[str, Any]
    desired: dict[str, Any]
    reported: dict[str, Any]
    desired_version: int
    reported_version: int
    tags_text: str  # as stored: the etag is derived from it
    properties: dict[str, Any]  # the device's view: desired and reported, each with its $version
    etag: str

    @classmethod
    def make(cls, tags_text: str, tags: dict[str, Any], desired: dict[str, Any], desired_version: int,
             reported: dict[str, Any], reported_version: int) -> Twin:  # fmt: skip
        properties = {
            "desired": {**desired, "$version": desired_version},
            "reported": {**reported, "$version": reported_version},
        }
        etag = twin_etag(tags_text, desired_version, reported_version)
        return cls(tags, desired, reported, desired_version, reported_version, tags_text, properties, etag)

    @property
    def version(self) -> int:
        return self.desired_version + self.reported_version


def _from_row(row: sqlite3.Row) -> Twin:
    return Twin.make(row["tags"], json.loads(row["tags"]), json.loads(row["desired"]), row["desired_version"],
                     json.loads(row["reported"]), row["reported_version"])  # fmt: skip


class Twins:
    """The one owner of the `twins` table. Every write goes through here and updates the cache with what was
    stored, so a read (twin GET, a query over every twin) costs no SQL once a twin has been read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, Twin] = {}
        self._complete = False  # the cache holds every stored twin (set by all(), cleared by create())

    def create(
        self, db: sqlite3.Connection | Store, device_id: str, desired: str = "{}", tags: str = "{}"
    ) -> None:
        """Insert (possibly inside the caller's transaction, which may still roll back): the next read of the
        twin, or of all twins, goes to the table."""
        db.execute(_INSERT_TWIN, (device_id, desired, tags))
        self._cache.pop(device_id, None)
        self._complete = False

    def get(self, device_id: str) -> Twin | None:
        twin = self._cache.get(device_id)
        if twin is None:
            row = self._store.one("SELECT * FROM twins WHERE device_id=?", (device_id,))
            if row is None:
                return None
            twin = _from_row(row)
            if not self._store.in_transaction:  # what a transaction shows may still be rolled back
                self._cache[device_id] = twin
        return twin

    def all(self) -> dict[str, Twin]:
        """Every twin by device id (the cache itself: read-only)."""
        if self._complete:
            return self._cache
        twins = dict(self._cache)
        for row in self._store.all("SELECT * FROM twins"):
            if row["device_id"] not in twins:
                twins[row["device_id"]] = _from_row(row)
        if not self._store.in_transaction:
            self._cache, self._complete = twins, True
        return twins

    def _cached(self, device_id: str) -> Twin | None:
        """The cached twin before a write to its row; None (and dropped) if not cached or not cacheable."""
        if self._store.in_transaction:
            self._cache.pop(device_id, None)
            self._complete = False
            return None
        return self._cache.get(device_id)

    def forget(self, device_id: str) -> None:
        """After the twin's row was deleted."""
        self._cache.pop(device_id, None)

    # Each write stores the document, then caches what the row now holds: parsed from the stored text, so the
    # cached twin has the key order a fresh read would give and shares nothing with the caller's documents.
    # (Inside a transaction, which may still roll back, the twin is dropped from the cache instead.)
    def set_desired(self, device_id: str, desired: dict[str, Any], version: int) -> None:
        text = dumps(desired)
        self._store.execute(
            "UPDATE twins SET desired=?, desired_version=? WHERE device_id=?", (text, version, device_id)
        )
        if (old := self._cached(device_id)) is not None:
            self._cache[device_id] = Twin.make(old.tags_text, old.tags, json.loads(text), version,
                                               old.reported, old.reported_version)  # fmt: skip

    def set_reported(self, device_id: str, reported: dict[str, Any], version: int) -> None:
        text = dumps(reported)
        self._store.execute(
            "UPDATE twins SET reported=?, reported_version=? WHERE device_id=?", (text, version, device_id)
        )
        if (old := self._cached(device_id)) is not None:
            self._cache[device_id] = Twin.make(old.tags_text, old.tags, old.desired, old.desired_version,
                                               json.loads(text), version)  # fmt: skip

    def set_tags(self, device_id: str, tags: dict[str, Any]) -> None:
        text = dumps(tags)
        self._store.execute("UPDATE twins SET tags=? WHERE device_id=?", (text, device_id))
        if (old := self._cached(device_id)) is not None:
            self._cache[device_id] = Twin.make(text, json.loads(text), old.desired, old.desired_version,
                                               old.reported, old.reported_version)  # fmt: skip

    @staticmethod
    def service_doc(device: dict[str, Any], twin: Twin) -> dict[str, Any]:
        """Azure's Twin (azure-iot-hub models.Twin) from the identity's JSON: the twin has its own etag, the
        identity's is deviceEtag."""
        return {
            "deviceId": device["deviceId"],
            "etag": twin.etag,
            "deviceEtag": device["etag"],
            "version": twin.version,
            "status": device["status"],
            "connectionState": device["connectionState"],
            "lastActivityTime": device["lastActivityTime"],
            "cloudToDeviceMessageCount": device["cloudToDeviceMessageCount"],
            "authenticationType": device["authentication"]["type"],
            "x509Thumbprint": device["authentication"]["x509Thumbprint"],
            "tags": twin.tags,
            "properties": twin.properties,
            "capabilities": {"iotEdge": False},
        }


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch as twins use it: nested objects merge, null deletes (`target` is left as it was)."""
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


def twin_etag(tags_text: str, desired_version: int, reported_version: int) -> str:
    """Changes with every tags, desired or reported change (derived from the stored content, no column)."""
    digest = hashlib.sha256(f"{tags_text}|{desired_version}|{reported_version}".encode())
    return base64.b64encode(digest.digest()[:9]).decode()


def check_etag(what: str, etag: str, if_match: str | None) -> None:
    if if_match is not None and if_match.strip('"') not in ("*", etag):
        raise CloudError(412, 412002, f"{what}: the If-Match etag {if_match!r} is not the current one")
