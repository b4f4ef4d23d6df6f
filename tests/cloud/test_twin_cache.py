"""The hub's twin cache (cloud/hub/twins.py): every write is visible to the next twin GET and query, and the
cache always equals what a fresh read of the table (a restarted cloud) would give."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import QuerySpecification

from client_app.cloud.hub.hub import Hub
from client_app.cloud.hub.twin_query import parse
from client_app.cloud.hub.twins import Twins
from client_app.cloud.store import Store
from tests.cloud.sdk import hub_client, register, wait_for
from tests.fixtures.cloud import issue_device_files


class _Device:
    """Stands in for a device's MQTT connection: records what the hub answers."""

    clean_session = False

    def __init__(self) -> None:
        self.answers: list[str] = []

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.answers.append(topic)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    store = Store(tmp_path / "cloud.db")
    hub = Hub(store, None, {"hub"})  # type: ignore[arg-type]  # no telemetry here
    for n in range(3):
        hub.create_device(f"d{n}", f"{n:02x}" * 32)
    return hub


def query(hub: Hub, sql: str) -> list[dict[str, Any]]:
    return hub.query(parse(sql))


def assert_as_stored(hub: Hub) -> None:
    """The cached twins are the table's content: a fresh cache (as after a restart) gives the same answers."""
    fresh = Twins(hub._store)
    assert fresh.all() == hub.twins.all()
    for device_id in hub.twins.all():
        assert fresh.get(device_id) == hub.twins.get(device_id)


def test_writes_are_visible_to_the_next_get_and_query(hub):
    assert query(hub, "SELECT deviceId FROM devices WHERE tags.ring = 'beta'") == []  # the cache is warm now
    etag = hub.twin("d1")["etag"]

    hub.update_twin("d1", {"ring": "beta"}, None, if_match=etag, replace=False)
    assert hub.twin("d1")["tags"] == {"ring": "beta"}
    assert hub.twin("d1")["etag"] != etag
    assert query(hub, "SELECT deviceId FROM devices WHERE tags.ring = 'beta'") == [{"deviceId": "d1"}]

    hub.patch_desired("d2", {"interval": 5})
    assert hub.twin("d2")["properties"]["desired"] == {"interval": 5, "$version": 2}
    assert query(hub, "SELECT deviceId FROM devices WHERE properties.desired.interval = 5") == [
        {"deviceId": "d2"}
    ]

    device = _Device()
    asyncio.run(
        hub._twin_reported(device, "d0", "$iothub/twin/PATCH/properties/reported/?$rid=7", b'{"v": 2}')
    )
    assert device.answers == ["$iothub/twin/res/204/?$rid=7&$version=2"]
    assert hub.twin("d0")["properties"]["reported"] == {"v": 2, "$version": 2}
    rows = query(
        hub, "SELECT properties.reported.v AS v, COUNT() AS n FROM devices GROUP BY properties.reported.v"
    )
    assert {r.get("v"): r["n"] for r in rows} == {2: 1, None: 2}

    hub.update_twin("d1", {"other": 1}, {"a": 1}, if_match="*", replace=True)  # PUT: tags replaced
    assert query(hub, "SELECT deviceId FROM devices WHERE tags.ring = 'beta'") == []
    assert [t["deviceId"] for t in query(hub, "SELECT * FROM devices WHERE tags.other = 1")] == ["d1"]
    assert_as_stored(hub)


def test_registry_changes_reach_the_next_query(hub):
    assert len(query(hub, "SELECT * FROM devices")) == 3
    hub.create_device("d9", "ff" * 32, enabled=False)
    assert [t["deviceId"] for t in query(hub, "SELECT * FROM devices WHERE status = 'disabled'")] == ["d9"]
    hub.set_enabled("d9", True)
    assert query(hub, "SELECT COUNT() AS n FROM devices WHERE status = 'enabled'") == [{"n": 4}]

    hub.patch_desired("d0", {"old": True})
    hub.delete("d0")
    assert "d0" not in [t["deviceId"] for t in query(hub, "SELECT * FROM devices")]
    hub.create_device("d0", "00" * 32)  # the same id again: a new twin, nothing of the old one
    assert hub.twin("d0")["properties"]["desired"] == {"$version": 1}
    assert query(hub, "SELECT deviceId FROM devices WHERE IS_DEFINED(properties.desired.old)") == []

    hub.provision("d5", "55" * 32, {"tags": {"ring": "ga"}, "properties": {"desired": {"x": 1}}})
    assert query(hub, "SELECT deviceId, properties.desired.x AS x FROM devices WHERE tags.ring = 'ga'") == [
        {"deviceId": "d5", "x": 1}
    ]
    assert_as_stored(hub)


def test_a_rolled_back_creation_leaves_no_twin(hub):
    hub.twins.all()
    with pytest.raises(RuntimeError), hub._store.transaction() as db:
        hub.twins.create(db, "ghost", json.dumps({"x": 1}))
        assert hub.twins.get("ghost") is not None  # visible inside the transaction, as in SQLite
        hub.twins.set_tags("d0", {"lost": True})
        assert "ghost" in hub.twins.all()
        raise RuntimeError("rolled back")
    assert hub.twins.get("ghost") is None
    assert "ghost" not in hub.twins.all()
    assert hub.twin("d0")["tags"] == {}
    assert_as_stored(hub)


def test_cached_documents_do_not_share_the_callers_objects(hub):
    patch = {"nested": {"a": 1}}
    hub.patch_desired("d1", patch)
    patch["nested"]["a"] = 2  # the caller changes its own document afterwards
    assert hub.twin("d1")["properties"]["desired"]["nested"] == {"a": 1}
    assert_as_stored(hub)


def test_a_devices_reported_patch_reaches_the_next_query_on_the_wire(
    local_cloud, enrolled_ca, tmp_path, monkeypatch
):
    """Azure's SDKs on both sides: the device reports over MQTT, the backend queries and reads the twin."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", local_cloud.info.server_ca_pem)
    registry = IoTHubRegistryManager.from_connection_string(local_cloud.info.iothub_connection_string)
    files = issue_device_files(enrolled_ca.issuing, "cached-1", tmp_path)
    register(local_cloud.info, files)
    client = hub_client(local_cloud.info, files)
    try:
        client.connect()

        def releases() -> list[Any]:
            items = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices")).items
            return [(t.device_id, t.properties.reported.get("release")) for t in items]

        assert releases() == [("cached-1", None)]  # the cache is warm from here on
        for release in ("A", "B"):
            client.patch_twin_reported_properties({"release": release})  # returns once the hub answered
            assert releases() == [("cached-1", release)]
            assert registry.get_twin("cached-1").properties.reported["release"] == release
        assert wait_for(
            lambda: registry.get_twin("cached-1").connection_state == "Connected", what="connected"
        )
    finally:
        client.shutdown()
        registry.amqp_svc_client.disconnect_sync()
