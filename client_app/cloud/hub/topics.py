"""Topic and property-bag helpers shared by DPS and Hub (device-protocol §3.3, §4.3, §4.4)."""

from __future__ import annotations

from urllib.parse import quote, unquote


def parse_bag(bag: str) -> dict[str, str | None]:
    """`k=v&k2=v2` → dict; `unquote` (not unquote_plus) both sides; a key without `=` maps to None."""
    result: dict[str, str | None] = {}
    for item in bag.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        result[unquote(key)] = unquote(value) if sep else None
    return result


def encode_bag(items: dict[str, str | None]) -> str:
    """All but A-Za-z0-9_.-~ percent-encoded: values never hold a raw `/` (the SDK splits on it)."""
    parts = []
    for key, value in items.items():
        parts.append(
            quote(key, safe="") if value is None else f"{quote(key, safe='')}={quote(value, safe='')}"
        )
    return "&".join(parts)


def query_of(topic: str) -> dict[str, str | None]:
    """Properties after the `?` of a request topic; keys keep their `$` (`$rid`)."""
    _, _, query = topic.partition("?")
    return parse_bag(query)


def request_id(topic: str) -> str | None:
    value = query_of(topic).get("$rid")
    return value or None
