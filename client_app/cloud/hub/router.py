"""Topic routing: which job a device's publish or subscription belongs to (IoT Hub's MQTT topics,
iot-mqtt-connect-to-iot-hub). Pure: no store, no connection."""

from __future__ import annotations

from enum import Enum

C2D_FILTER = "devices/{}/messages/devicebound/#"
METHODS_FILTER = "$iothub/methods/POST/#"
TWIN_RES_FILTER = "$iothub/twin/res/#"
DESIRED_FILTER = "$iothub/twin/PATCH/properties/desired/#"


class DeviceRefused(Exception):
    """A publish or subscribe the device may not make; the handler turns it into RefusePublish / close."""


class Route(Enum):
    TELEMETRY = "telemetry"
    TWIN_GET = "twin-get"
    TWIN_REPORTED = "twin-reported"
    METHOD_RESPONSE = "method-response"


def route(device_id: str, topic: str) -> Route:
    """The job of a device's publish; DeviceRefused for another device's or an unknown topic."""
    if events_bag(device_id, topic) is not None:
        return Route.TELEMETRY
    if topic.startswith("$iothub/twin/GET/"):
        return Route.TWIN_GET
    if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
        return Route.TWIN_REPORTED
    if topic.startswith("$iothub/methods/res/"):
        return Route.METHOD_RESPONSE
    if topic.startswith("devices/"):
        raise DeviceRefused(f"publish to another device's topic {topic!r}")
    raise DeviceRefused(f"publish to unknown topic {topic!r}")


def check_filter(device_id: str, topic_filter: str) -> None:
    """The four filters a device may subscribe to (its C2D, methods, twin responses, desired patches)."""
    allowed = {C2D_FILTER.format(device_id), METHODS_FILTER, TWIN_RES_FILTER, DESIRED_FILTER}
    if topic_filter in allowed:
        return
    if topic_filter.startswith("devices/") and not topic_filter.startswith(f"devices/{device_id}/"):
        raise DeviceRefused(f"subscription to another device's topic {topic_filter[:100]!r}")
    raise DeviceRefused(f"unsupported topic filter {topic_filter[:100]!r}")


def events_bag(device_id: str, topic: str) -> str | None:
    """The property bag of a telemetry topic `devices/{id}/messages/events[/{bag}]`; None for other topics."""
    events = f"devices/{device_id}/messages/events"
    if topic == events or topic.startswith(events + "/"):
        return topic[len(events) + 1 :]
    return None


def c2d_topic(device_id: str, bag: str) -> str:
    return f"devices/{device_id}/messages/devicebound/{bag}"  # ASCII: device ids and encoded bags are
