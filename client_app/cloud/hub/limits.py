"""IoT Hub's limits on twin JSON (tags, desired, reported), checked before anything is stored.

Source: "Understand and use device twins in IoT Hub", sections "Tags and properties format" and "Device twin
size" (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins), and the service SDK's model
docs (azure-iot-hub `TwinProperties`: "The maximum depth of the object is 10"; "keys are UTF-8 encoded,
case-sensitive and up-to 1KB in length. Allowed characters exclude UNICODE control characters (segments C0
and C1), '.', '$' and space"):

- keys: UTF-8, case-sensitive, up to 1 KB; no C0/C1 control characters, no '.', '$' or space;
- values: boolean, number, string, object, array (null in a patch deletes a key);
- strings: up to 4 KB (UTF-8); integers within -4503599627370496 .. 4503599627370495;
- depth: at most 10 levels of objects (and arrays) below the section itself;
- size: tags 8 KB, desired 32 KB, reported 32 KB, computed as IoT Hub does: for each property the length of
  its key plus its value; strings count their UTF-8 bytes without control characters, numbers 8, booleans 4,
  nested objects the sum of their contents. Service metadata (`$version`, `$metadata`) does not count.

Azure documents the rules but not the error codes; we answer 400 / 400004 (ArgumentInvalid) for a malformed
document and 413 / 413001 (MessageTooLarge) for one over the size limit (see docs/local-cloud.md).
"""

from __future__ import annotations

import math
from typing import Any

from client_app.cloud.errors import CloudError

MAX_DEPTH = 10
MAX_KEY_BYTES = 1024
MAX_STRING_BYTES = 4 * 1024
MIN_INTEGER = -4503599627370496
MAX_INTEGER = 4503599627370495
SECTION_LIMITS = {"tags": 8 * 1024, "desired": 32 * 1024, "reported": 32 * 1024}
INVALID = 400004  # IoT Hub's ArgumentInvalid
TOO_LARGE = 413001  # IoT Hub's MessageTooLarge

_NUMBER_SIZE = 8
_BOOLEAN_SIZE = 4


def check_twin(section: str, document: Any) -> None:
    """Raise CloudError unless `document` is a valid twin `section` ("tags", "desired" or "reported").

    Works on a stored document and on a patch alike (null values and top-level `$` keys such as `$version`
    are the patch's and the service's; they add nothing to the size). Check a patch before merging it (a deep
    patch never reaches the merge) and the merged result before storing it (the size limit is on the result).
    """
    if section not in SECTION_LIMITS:
        raise ValueError(f"unknown twin section {section!r}")
    if not isinstance(document, dict):
        raise _invalid(f"twin {section} must be a JSON object")
    size = _object_size(section, document, depth=0, top=True)
    if size > SECTION_LIMITS[section]:
        raise CloudError(
            413,
            TOO_LARGE,
            f"twin {section} of {size} bytes exceeds the {SECTION_LIMITS[section] // 1024} KB limit",
        )


def check_initial_twin(twin: Any) -> None:
    """An enrollment's initialTwin `{"tags": {...}, "properties": {"desired": {...}}}`, parts as above."""
    if not isinstance(twin, dict):
        raise _invalid("initialTwin must be a JSON object")
    unknown = set(twin) - {"tags", "properties"}
    if unknown:
        raise _invalid(f"initialTwin has unknown members {sorted(unknown)}")
    properties = twin.get("properties", {})
    if not isinstance(properties, dict) or set(properties) - {"desired"}:
        raise _invalid("initialTwin properties may only hold desired")
    check_twin("tags", twin.get("tags", {}))
    check_twin("desired", properties.get("desired", {}))


def _invalid(message: str) -> CloudError:
    return CloudError(400, INVALID, message)


def _object_size(path: str, obj: dict[Any, Any], depth: int, *, top: bool = False) -> int:
    size = 0
    for key, value in obj.items():
        if top and isinstance(key, str) and key.startswith("$"):
            continue  # $version, $metadata: read-only service members, ignored in patches, not counted
        _check_key(path, key)
        size += _text_size(key) + _value_size(f"{path}.{key}", value, depth)
    return size


def _value_size(path: str, value: Any, depth: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return _BOOLEAN_SIZE
    if isinstance(value, int):
        if not MIN_INTEGER <= value <= MAX_INTEGER:
            raise _invalid(f"{path}: integer {value} is outside {MIN_INTEGER}..{MAX_INTEGER}")
        return _NUMBER_SIZE
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(f"{path}: number is not finite")
        return _NUMBER_SIZE
    if isinstance(value, str):
        if len(_utf8(path, value)) > MAX_STRING_BYTES:
            raise _invalid(f"{path}: string longer than {MAX_STRING_BYTES} bytes")
        return _text_size(value)
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise _invalid(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            return _object_size(path, value, depth + 1)
        return sum(_value_size(f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))
    raise _invalid(f"{path}: unsupported value type {type(value).__name__}")


def _check_key(path: str, key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise _invalid(f"{path}: property names must be non-empty strings")
    if len(_utf8(path, key)) > MAX_KEY_BYTES:
        raise _invalid(f"{path}: property name longer than {MAX_KEY_BYTES} bytes")
    bad = next((c for c in key if c in ".$ " or _is_control(c)), None)
    if bad is not None:
        raise _invalid(
            f"{path}: property name {key[:64]!r} contains {bad!r} "
            "('.', '$', space and control characters are not allowed)"
        )


def _utf8(path: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \udXXX escape
        raise _invalid(f"{path}: text is not valid Unicode") from None


def _text_size(text: str) -> int:
    return len("".join(c for c in text if not _is_control(c)).encode("utf-8"))


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F  # C0, DEL and C1
