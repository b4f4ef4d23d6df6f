"""IoT Hub's twin limits (cloud/hub/limits.py): the rules, then the MQTT and REST paths that store twins."""

from __future__ import annotations

import json
from typing import Any

import pytest

from client_app.cloud.errors import CloudError
from client_app.cloud.hub.limits import check_initial_twin, check_twin
from client_app.cloud.service.client import ServiceError
from tests.cloud.sdk import RawDevice, register, wait_for
from tests.fixtures.cloud import issue_device_files


def nested(depth: int) -> dict[str, Any]:
    """{"top": {"l1": … {"lN": 1}}}: `depth` objects below the section, like Azure's own example."""
    value: Any = 1
    for level in range(depth, 0, -1):
        value = {f"l{level}": value}
    return {"top": value}


def refused(section: str, document: Any) -> tuple[int, int]:
    with pytest.raises(CloudError) as info:
        check_twin(section, document)
    assert info.value.message
    return info.value.status, info.value.error_code


def test_depth_ten_levels_below_the_section():
    check_twin("reported", nested(10))
    assert refused("reported", nested(11)) == (400, 400004)
    check_twin("desired", {"a": [[[[[[[[[[1]]]]]]]]]]})  # arrays count as levels too
    assert refused("desired", {"a": [[[[[[[[[[[1]]]]]]]]]]]}) == (400, 400004)
    assert refused("reported", nested(300)) == (400, 400004)


@pytest.mark.parametrize("key", ["a.b", "$x", "a b", "tab\there", "c1\x85", "", "k" * 1025])
def test_key_rules(key):
    assert refused("tags", {"ok": {key: 1}}) == (400, 400004)


@pytest.mark.parametrize("value", ["s" * 4097, 4503599627370496, -4503599627370497, float("nan"), "\udc00"])
def test_value_rules(value):
    assert refused("reported", {"v": value}) == (400, 400004)


def test_sizes_are_counted_as_iot_hub_counts():
    check_twin("reported", {"k" * 1024: "v" * 4096, "n": 1, "b": True, "x": None, "a": [1, "two"]})
    # 8 KB of tags: 4 keys of 1 byte + 4 strings of 2,047 bytes = 8,192 bytes.
    tags = {c: "x" * 2047 for c in "abcd"}
    check_twin("tags", tags)
    assert refused("tags", {**tags, "e": True}) == (413, 413001)
    # 32 KB of reported properties: numbers count 8 bytes, whatever their text.
    check_twin("reported", {f"k{i:04}": 123456789 for i in range(2340)})  # 2340 × (5 + 8) = 30,420
    assert refused("reported", {f"{i:04}": "x" * 4000 for i in range(9)}) == (413, 413001)
    # Control characters are not counted; $version is the service's.
    padded = "\x01" * 96 + "y" * 4000  # 4,096 bytes, 4,000 counted
    check_twin("tags", {"a": padded, "b": padded, "$version": 4})


def test_patch_members_and_documents():
    assert refused("desired", [1]) == (400, 400004)
    check_twin("desired", {"$version": 3, "gone": None})
    with pytest.raises(ValueError):
        check_twin("properties", {})
    check_initial_twin({"tags": {"site": "a"}, "properties": {"desired": {"interval": 60}}})
    check_initial_twin({})
    for bad in ([], {"tags": []}, {"properties": {"reported": {}}}, {"other": 1},
                {"properties": {"desired": nested(11)}}):  # fmt: skip
        with pytest.raises(CloudError):
            check_initial_twin(bad)


def test_mqtt_reported_patch_beyond_the_limits_is_refused_and_nothing_stored(
    local_cloud, cloud_api, enrolled_ca, tmp_path
):
    info = local_cloud.info
    files = issue_device_files(enrolled_ca.issuing, "deep-01", tmp_path)
    register(info, files)
    patches = [
        (json.dumps(nested(300)), 400),
        ("[" * 100_000 + "]" * 100_000, 400),  # too deep for the JSON parser itself
        (json.dumps({"bad.key": 1}), 400),
        (json.dumps({f"{i:04}": "x" * 4000 for i in range(9)}), 413),
        (json.dumps(nested(10)), 204),
    ]
    with RawDevice(info, files) as raw:
        for n, (body, status) in enumerate(patches):
            raw.publish(f"$iothub/twin/PATCH/properties/reported/?$rid={n}", body)
            wait_for(lambda n=n: len(raw.messages) > n, what=f"answer to patch {n}")
            assert raw.messages[n][0].startswith(f"$iothub/twin/res/{status}/?$rid={n}")
        assert not raw.disconnected.is_set()
    twin = cloud_api.twin("deep-01")
    assert twin["properties"]["reported"] == {**nested(10), "$version": 2}


def test_desired_patch_and_initial_twin_beyond_the_limits_are_refused(local_cloud, cloud_api, enrolled_ca,
                                                                      tmp_path):  # fmt: skip
    register(local_cloud.info, issue_device_files(enrolled_ca.issuing, "deep-02", tmp_path))
    with pytest.raises(ServiceError) as deep:
        cloud_api.update_twin("deep-02", {"properties": {"desired": nested(300)}})
    assert (deep.value.status, deep.value.code) == (400, 400004), deep.value
    assert cloud_api.twin("deep-02")["properties"]["desired"] == {"$version": 1}
    group = cloud_api.group("test-group")
    group["initialTwin"] = {"properties": {"desired": nested(300)}}
    with pytest.raises(ServiceError) as refused:
        cloud_api.replace_group(group)
    assert (refused.value.status, refused.value.code) == (400, 400004), refused.value
    assert cloud_api.groups()  # the list still reads
