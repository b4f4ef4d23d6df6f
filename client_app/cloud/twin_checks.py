"""One seam for IoT Hub's twin-document limits as the service API applies them before storing anything.

Azure's rules ("Understand and use device twins in IoT Hub", Tags and properties format / Device twin size,
https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins): a JSON object per section, objects
nested at most 10 deep, tags up to 8 KB, desired and reported up to 32 KB each. The full rule set (keys,
string lengths, Azure's size arithmetic) is the local cloud's shared checker; this function is the one place
the service API calls, so it can be pointed at that checker.
"""

from __future__ import annotations

import json
from typing import Any

from client_app.cloud.errors import CloudError

MAX_DEPTH = 10
SECTION_LIMITS = {"tags": 8 * 1024, "desired": 32 * 1024, "reported": 32 * 1024}


def check_twin_section(section: str, document: Any) -> None:
    """Raise CloudError 400 / 400004 for a malformed section, 413 / 413001 for one over its size limit."""
    if not isinstance(document, dict):
        raise CloudError(400, 400004, f"twin {section} must be a JSON object")
    if _depth(document) - 1 > MAX_DEPTH:  # levels below the section itself
        raise CloudError(400, 400004, f"twin {section}: nested deeper than {MAX_DEPTH} levels")
    size = len(
        json.dumps({k: v for k, v in document.items() if not k.startswith("$")}).encode("utf-8", "replace")
    )
    if size > SECTION_LIMITS[section]:
        raise CloudError(413, 413001, f"twin {section} exceeds {SECTION_LIMITS[section] // 1024} KB")


def check_initial_twin(twin: dict[str, Any] | None) -> None:
    """An enrollment group's initialTwin: its tags and desired properties, as the hub will store them."""
    if twin is None:
        return
    check_twin_section("tags", twin.get("tags") or {})
    properties = twin.get("properties") or {}
    check_twin_section(
        "desired", properties.get("desired") or {} if isinstance(properties, dict) else properties
    )


def _depth(value: Any) -> int:
    """Nesting depth without recursion (a hostile document may nest thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
