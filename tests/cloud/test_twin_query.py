"""The IoT Hub query subset (cloud/hub/twin_query.py), pure: grammar, IoT Hub's undefined semantics."""

from __future__ import annotations

import pytest

from client_app.cloud.hub.twin_query import MAX_QUERY_LENGTH, QueryError, parse

TWINS = [
    {"deviceId": "a", "status": "enabled", "tags": {"ring": "beta", "n": 1},
     "properties": {"reported": {"v": "1.0", "temp": 20.5}, "desired": {}}},
    {"deviceId": "b", "status": "disabled", "tags": {"ring": "ga", "n": 2},
     "properties": {"reported": {"v": "2.0"}, "desired": {"interval": 5}}},
    {"deviceId": "c", "status": "enabled", "tags": {"n": "3"}, "properties": {"reported": {}, "desired": {}}},
]  # fmt: skip


def ids(sql: str) -> list[str]:
    return [t["deviceId"] for t in parse(sql).run(TWINS)]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM devices", ["a", "b", "c"]),
        ("select * from DEVICES where deviceId = 'b'", ["b"]),
        ("SELECT * FROM devices WHERE tags.ring = 'beta' OR tags.ring = \"ga\"", ["a", "b"]),
        ("SELECT * FROM devices WHERE tags.n > 1", ["b"]),  # "3" is a string: undefined, not a match
        ("SELECT * FROM devices WHERE tags.n >= 1 AND status != 'disabled'", ["a"]),
        ("SELECT * FROM devices WHERE NOT tags.ring = 'beta'", ["b"]),  # c has no ring: NOT undefined
        ("SELECT * FROM devices WHERE NOT (tags.ring = 'beta' OR tags.n = 2)", []),
        ("SELECT * FROM devices WHERE IS_DEFINED(properties.desired.interval)", ["b"]),
        ("SELECT * FROM devices WHERE NOT IS_DEFINED(tags.ring)", ["c"]),
        ("SELECT * FROM devices WHERE properties.reported.temp < 21", ["a"]),
        ("SELECT * FROM devices WHERE tags['ring'] <> 'ga'", ["a"]),
        ("SELECT * FROM devices WHERE devices.tags.n = 1", ["a"]),
        ("SELECT * FROM devices WHERE tags.ring = 'beta' AND tags.n = 1 OR deviceId = 'c'", ["a", "c"]),
    ],
)
def test_where(sql, expected):
    assert ids(sql) == expected


def test_projection_and_aggregates():
    assert parse("SELECT deviceId, tags.ring AS r FROM devices WHERE tags.n = 1").run(TWINS) == [
        {"deviceId": "a", "r": "beta"}
    ]
    assert parse("SELECT COUNT() FROM devices").run(TWINS) == [{"$1": 3}]
    assert parse("SELECT COUNT() AS n FROM devices WHERE status = 'x'").run(TWINS) == [{"n": 0}]
    grouped = parse("SELECT status, COUNT() AS n FROM devices GROUP BY status").run(TWINS)
    assert sorted(grouped, key=lambda r: r["status"]) == [
        {"status": "disabled", "n": 1},
        {"status": "enabled", "n": 2},
    ]
    assert parse("SELECT * FROM devices").item_type == "twin"
    assert parse("SELECT deviceId FROM devices").item_type == "raw"


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "SELECT",
        "SELECT * FROM",
        "SELECT * FROM jobs",
        "SELECT * FROM devices.modules",
        "SELECT * FROM devices WHERE",
        "SELECT * FROM devices WHERE tags.a",
        "SELECT * FROM devices WHERE (tags.a = 1",
        "SELECT * FROM devices WHERE tags.a == 1",
        "SELECT * FROM devices trailing",
        "SELECT deviceId FROM devices GROUP BY status",
        "SELECT status, tags.x, COUNT() FROM devices GROUP BY status",
        "SELECT * FROM devices WHERE tags.a = 'open",
        "SELECT # FROM devices",
        "x" * (MAX_QUERY_LENGTH + 1),
    ],
)
def test_malformed_queries_are_query_errors(sql):
    with pytest.raises(QueryError):
        parse(sql)
