"""Property bags against the SDK's own encoder and decoder (hypothesis), usernames, merge patches."""

from __future__ import annotations

import string

import pytest
from azure.iot.device import Message
from azure.iot.device.iothub.pipeline import mqtt_topic_iothub as sdk_topics
from hypothesis import given, settings
from hypothesis import strategies as st

from client_app.cloud.handler import Role, parse_username
from client_app.cloud.hub.hub import SYSTEM_KEYS
from client_app.cloud.hub.topics import encode_bag, parse_bag
from client_app.cloud.hub.twins import merge_patch
from client_app.cloud.server import CloudSettings

# Property names/values as a device or an operator might write them, `$` and `%` included.
text = st.text(alphabet=string.ascii_letters + string.digits + " -_.~/&=+%$#!é€", min_size=1, max_size=20)
custom = st.dictionaries(text.filter(lambda k: not k.startswith("$") and k != "iothub-ack"), text, max_size=6)


@settings(max_examples=150, deadline=None)
@given(custom=custom, message_id=st.one_of(st.none(), text), content_type=st.one_of(st.none(), text))
def test_sdk_telemetry_bag_decodes(custom, message_id, content_type):
    message = Message("x", message_id=message_id, content_type=content_type)
    message.custom_properties = custom
    topic = sdk_topics.encode_message_properties_in_topic(message, "devices/d/messages/events/")
    parsed = parse_bag(topic[len("devices/d/messages/events/") :])
    expected_system = {k: v for k, v in {"$.mid": message_id, "$.ct": content_type}.items() if v}
    assert {k: v for k, v in parsed.items() if k in SYSTEM_KEYS} == expected_system
    assert {k: v for k, v in parsed.items() if k not in SYSTEM_KEYS} == custom


@settings(max_examples=150, deadline=None)
@given(custom=custom, message_id=text)
def test_c2d_bag_is_what_the_sdk_reads(custom, message_id):
    topic = "devices/d/messages/devicebound/" + encode_bag({"$.mid": message_id, **custom})
    received = Message(b"")
    sdk_topics.extract_message_properties_from_topic(topic, received)
    assert received.message_id == message_id
    assert received.custom_properties == custom


def test_usernames_route_to_the_right_service():
    ua = "ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%28x%29"
    assert parse_username(f"0ne00ABC/registrations/dev-1/api-version=2019-03-31&{ua}") == Role(
        "dps", "dev-1", "0ne00ABC"
    )
    assert parse_username("hub.local/dev-1/?api-version=2019-10-01&DeviceClientType=x") == Role(
        "hub", "dev-1", "hub.local"
    )
    for bad in ("", "dev-1", "a/b", "0ne/registrations/dev-1", "hub/dev/api-version=1"):
        assert parse_username(bad) is None, bad


def test_merge_patch():
    base = {"a": 1, "n": {"x": 1, "y": 2}, "gone": True}
    patch = {"a": 2, "n": {"y": None, "z": 3}, "gone": None, "$version": 9}
    assert merge_patch(base, patch) == {"a": 2, "n": {"x": 1, "z": 3}}


def test_settings_refuse_non_loopback_addresses(tmp_path):
    for host in ("localhost", "::1", "127.0.0.2"):
        CloudSettings(data_dir=tmp_path, bind_host=host, mqtt_listen=(host, 8883))
    for host in ("0.0.0.0", "example.com", "10.0.0.1"):
        for refused in ({"bind_host": host}, {"mqtt_listen": (host, 8883)}):
            with pytest.raises(ValueError, match="loopback"):
                CloudSettings(data_dir=tmp_path, **refused)


def test_telemetry_keeps_only_the_newest_messages(tmp_path):
    import asyncio

    from client_app.cloud.store import Store, TelemetryWriter

    store = Store(tmp_path / "cloud.db")

    async def publish() -> None:
        writer = TelemetryWriter(store, keep=5)
        writer.start()
        for n in range(12):
            await writer.add("dev", str(n).encode(), {}, {})
        await writer.stop()

    try:
        asyncio.run(publish())
        bodies = [bytes(r["body"]).decode() for r in store.all("SELECT body FROM telemetry ORDER BY seq")]
    finally:
        store.close()
    assert bodies == ["7", "8", "9", "10", "11"]
