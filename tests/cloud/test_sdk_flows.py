"""End-to-end flows with the real azure-iot-device SDK (sync and aio) through the proxy front."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from azure.iot.device import Message, MethodResponse
from azure.iot.device.exceptions import ClientError, CredentialError

from client_app.cloud.service.client import ServiceError
from client_app.pki import CertificateAuthority, generate_key, load_certificates, sha256_thumbprint
from tests.cloud.sdk import (
    PAHO_SOCKET_LEAKS,
    dps_refusal,
    hub_client,
    provisioning_client,
    register,
    wait_for,
)
from tests.fixtures.cloud import enroll_root, issue_device_files


def _device_state(api: Any, device_id: str) -> str:
    return api.device(device_id)["connectionState"]


def test_sync_client_full_flow(local_cloud, cloud_api, enrolled_ca, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "sync-01", tmp_path)
    result = register(local_cloud.info, files)
    assert (result.status, result.registration_state.device_id) == ("assigned", "sync-01")
    assert result.registration_state.assigned_hub == local_cloud.info.hub_hostname
    registrations = cloud_api.registrations("test-group")
    assert [r["registrationId"] for r in registrations] == ["sync-01"]

    received: list[Any] = []
    patches: list[dict[str, Any]] = []
    client = hub_client(local_cloud.info, files, result.registration_state.assigned_hub)
    try:
        client.on_message_received = received.append
        client.on_twin_desired_properties_patch_received = patches.append
        client.on_method_request_received = lambda request: client.send_method_response(
            MethodResponse.create_from_method_request(
                request, 201, {"echo": request.payload, "m": request.name}
            )
        )
        assert _device_state(cloud_api, "sync-01") == "Connected"

        # Telemetry with system and custom properties, decoded and stored.
        message = Message(
            '{"t": 21.5}', message_id="mid-1", content_encoding="utf-8", content_type="application/json"
        )
        message.custom_properties = {"alert": "true", "sp ace": "a/b&c=d", "uni": "é€"}
        client.send_message(message)
        client.send_message(b"\xff\x00raw")
        stored = cloud_api.telemetry("sync-01")
        assert stored[0]["body"] == '{"t": 21.5}'
        assert stored[0]["systemProperties"] == {
            "messageId": "mid-1", "contentType": "application/json", "contentEncoding": "utf-8"
        }  # fmt: skip
        assert stored[0]["properties"] == {"alert": "true", "sp ace": "a/b&c=d", "uni": "é€"}
        assert stored[1]["bodyBase64"] == "/wByYXc="

        # Cloud-to-device with body, content type and custom properties.
        sent = cloud_api.send_c2d("sync-01", "reboot", content_type="text/plain",
                                  properties={"k/1": "v 1", "flag": "x&y"})  # fmt: skip
        wait_for(lambda: received, what="C2D message")
        assert received[0].data == b"reboot"
        assert received[0].message_id == sent
        assert received[0].content_type == "text/plain"
        assert received[0].custom_properties == {"k/1": "v 1", "flag": "x&y"}
        wait_for(lambda: cloud_api.device("sync-01")["cloudToDeviceMessageCount"] == 0,
                 what="C2D removed after PUBACK")  # fmt: skip

        # Twin: reported patch with versions, desired patch pushed with "$version".
        twin = client.get_twin()
        assert twin["desired"]["$version"] >= 1 and twin["reported"]["$version"] >= 1
        client.patch_twin_reported_properties({"fw": "1.0", "nested": {"a": 1}})
        client.patch_twin_reported_properties({"nested": {"a": None, "b": 2}})
        reported = cloud_api.twin("sync-01")["properties"]["reported"]
        assert reported == {"fw": "1.0", "nested": {"b": 2}, "$version": 3}
        cloud_api.update_twin("sync-01", {"properties": {"desired": {"interval": 20}}})
        patch = wait_for(lambda: next((p for p in patches if "interval" in p), None), what="desired patch")
        assert patch["interval"] == 20 and patch["$version"] >= 2

        # Direct method: the device's status and payload come back.
        answer = cloud_api.invoke("sync-01", "reboot", {"d": 5})
        assert answer == {"status": 201, "payload": {"echo": {"d": 5}, "m": "reboot"}}
        device = cloud_api.device("sync-01")
        assert device["lastActivityTime"] and device["status"] == "enabled"
    finally:
        client.shutdown()
    wait_for(lambda: _device_state(cloud_api, "sync-01") == "Disconnected", what="disconnected state")
    cloud_api.delete_device("sync-01")  # registering again creates it afresh, without history
    register(local_cloud.info, files)
    assert cloud_api.device("sync-01")["lastActivityTime"] is None


def test_aio_client_full_flow(local_cloud, cloud_api, enrolled_ca, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "aio-01", tmp_path)
    info = local_cloud.info

    async def scenario() -> None:
        result = await provisioning_client(info, files, aio=True).register()
        assert result.status == "assigned"
        client = hub_client(info, files, result.registration_state.assigned_hub, aio=True)
        received: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        try:
            await client.connect()

            async def on_method(request: Any) -> None:
                await client.send_method_response(
                    MethodResponse.create_from_method_request(request, 200, "pong")
                )

            client.on_message_received = lambda m: loop.call_soon_threadsafe(received.put_nowait, m)
            client.on_method_request_received = on_method
            message = Message("aio hello")
            message.custom_properties = {"n": "1"}
            await client.send_message(message)
            twin = await client.get_twin()
            assert "$version" in twin["desired"]
            await client.patch_twin_reported_properties({"aio": True})

            def invoke() -> Any:  # poll until the method subscription is in place (aio setters don't wait)
                try:
                    return cloud_api.invoke("aio-01", "ping")
                except ServiceError:  # 404103 until the device listens
                    return None

            assert await asyncio.to_thread(wait_for, invoke, 15, "method answer") == {
                "status": 200,
                "payload": "pong",
            }
            await asyncio.to_thread(cloud_api.send_c2d, "aio-01", "hi")
            message = await asyncio.wait_for(received.get(), 15)
            assert message.data == b"hi"
        finally:
            await client.shutdown()

    asyncio.run(scenario())
    stored = cloud_api.telemetry("aio-01")
    assert stored[0]["body"] == "aio hello" and stored[0]["properties"] == {"n": "1"}
    assert cloud_api.twin("aio-01")["properties"]["reported"]["aio"] is True


@PAHO_SOCKET_LEAKS
def test_c2d_queued_while_offline_and_after_a_drop(local_cloud, cloud_api, enrolled_ca, tmp_path):
    files = issue_device_files(enrolled_ca.issuing, "drop-01", tmp_path)
    result = register(local_cloud.info, files)
    received: list[bytes] = []
    client = hub_client(local_cloud.info, files, result.registration_state.assigned_hub)
    try:
        client.on_message_received = lambda m: received.append(m.data)
        # 1) A clean disconnect; messages queue while offline; the SDK reconnects without re-subscribing.
        client.disconnect()
        wait_for(lambda: _device_state(cloud_api, "drop-01") == "Disconnected", what="offline")
        for text in ("one", "two"):
            cloud_api.send_c2d("drop-01", text)
        assert cloud_api.device("drop-01")["cloudToDeviceMessageCount"] == 2
        client.connect()
        wait_for(lambda: received == [b"one", b"two"], what="queued C2D after reconnect")

        # 2) The server drops the connection: the SDK comes back by itself and still gets C2D.
        drops = threading.Event()
        client.on_connection_state_change = lambda: None if client.connected else drops.set()
        local_cloud.cloud.drop_connection("drop-01")
        wait_for(drops.is_set, what="drop seen by the SDK")
        wait_for(lambda: _device_state(cloud_api, "drop-01") == "Connected", what="automatic reconnect")
        cloud_api.send_c2d("drop-01", "three")
        wait_for(lambda: received == [b"one", b"two", b"three"], what="C2D after the drop")
    finally:
        client.shutdown()


@PAHO_SOCKET_LEAKS
def test_renewed_certificate_rebinds_the_device(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """Re-registering (here while the old identity is still connected to the hub) rebinds the device.
    Renewal keeps the key: a new key for a registered ID is refused (test_takeover.py)."""
    key = generate_key()
    old = issue_device_files(enrolled_ca.issuing, "renew-01", tmp_path / "old", key=key)
    register(local_cloud.info, old)
    thumbprint = cloud_api.device("renew-01")["authentication"]["x509Thumbprint"]
    drops: list[bool] = []
    old_client = hub_client(local_cloud.info, old)
    try:
        old_client.connect()
        old_client.on_connection_state_change = lambda: drops.append(old_client.connected)
        new = issue_device_files(enrolled_ca.issuing, "renew-01", tmp_path / "new", key=key)
        result = register(local_cloud.info, new)  # DPS and hub connections of one device are independent
        old_client.send_message("old identity still connected")
        assert drops == []
    finally:
        old_client.shutdown()
    assert result.registration_state.sub_status == "reprovisionedToInitialAssignment"
    renewed = cloud_api.device("renew-01")["authentication"]["x509Thumbprint"]
    assert renewed != thumbprint
    client = hub_client(local_cloud.info, new)
    try:
        client.connect()
        client.send_message(json.dumps({"renewed": True}))
    finally:
        client.shutdown()
    old_again = hub_client(local_cloud.info, old)
    try:
        with pytest.raises(CredentialError):  # the hub only knows the renewed certificate now
            old_again.connect()
    finally:
        old_again.shutdown()


def test_registration_ids_are_case_insensitive_device_ids_stay(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """DPS registration IDs ignore case, hub device IDs do not: the device keeps its first spelling."""
    key = generate_key()  # the same device: a new key would be refused (key pinning, test_takeover.py)
    first = issue_device_files(enrolled_ca.issuing, "case-01", tmp_path / "first", key=key)
    assert register(local_cloud.info, first).registration_state.device_id == "case-01"
    again = issue_device_files(enrolled_ca.issuing, "CASE-01", tmp_path / "again", key=key)
    state = register(local_cloud.info, again).registration_state
    assert state.device_id == "case-01"
    assert [d["deviceId"] for d in cloud_api.devices()] == ["case-01"]
    device = cloud_api.device("case-01")
    leaf = load_certificates(again.cert_file.read_bytes())[0]
    assert device["authentication"]["x509Thumbprint"]["primaryThumbprint"] == sha256_thumbprint(leaf)


@PAHO_SOCKET_LEAKS
def test_verified_intermediate_and_first_match(local_cloud, cloud_api, enrolled_ca, tmp_path):
    """A group on a verified intermediate; the group nearest the leaf decides, even when disabled."""
    info = local_cloud.info
    root = CertificateAuthority.root("second Root")
    issuing = root.intermediate("second Issuing")
    enroll_root(cloud_api, issuing, "second-issuing", None)  # PoP signed by the intermediate's key
    initial = {"tags": {"site": "lab"}, "properties": {"desired": {"interval": 60}}}
    cloud_api.create_group("int-group", "second-issuing", initial_twin=initial)
    files = issue_device_files(issuing, "int-01", tmp_path)
    result = register(info, files)
    assert result.status == "assigned"
    record = cloud_api.registration("int-01")
    assert record["x509"]["enrollmentGroupId"] == "int-group"
    twin = cloud_api.twin("int-01")  # the group's initial twin
    assert (twin["tags"], twin["properties"]["desired"]) == ({"site": "lab"}, {"interval": 60, "$version": 1})

    enroll_root(cloud_api, root, "second-root", "root-group")
    cloud_api.set_group_status("int-group", False)
    assert "invalid registration status" in dps_refusal(info, files)
    cloud_api.delete_group("int-group")
    assert register(info, files).status == "assigned"
    assert cloud_api.registration("int-01")["x509"]["enrollmentGroupId"] == "root-group"


@PAHO_SOCKET_LEAKS
def test_aio_client_refusals(local_cloud, cloud_api, enrolled_ca, tmp_path):
    info = local_cloud.info
    blocked = issue_device_files(enrolled_ca.issuing, "aio-blocked", tmp_path)
    disabled = issue_device_files(enrolled_ca.issuing, "aio-disabled", tmp_path)
    cloud_api.put_enrollment("aio-blocked", enabled=False)
    register(info, disabled)
    cloud_api.set_device_status("aio-disabled", False)

    async def scenario() -> None:
        with pytest.raises(ClientError):
            await provisioning_client(info, blocked, aio=True).register()
        client = hub_client(info, disabled, aio=True)
        try:
            with pytest.raises(CredentialError):
                await client.connect()
        finally:
            await client.shutdown()

    asyncio.run(scenario())
