"""The ingest validator on plain data: no database, no Django."""

from __future__ import annotations

import json
from typing import Any

import pytest

from analytics.ingest import parse_points

NOW = 1_800_000_000.0
WINDOW = {"min_ts": NOW - 7 * 86400, "max_ts": NOW + 300}


def point(**overrides: Any) -> dict[str, Any]:
    return {"cluster": "c1", "node": "n1", "metric": "cpu", "timestamp": NOW, "value": 1.0} | overrides


def codes(items: list[Any]) -> list[tuple[int, str | None, str]]:
    return [(e.index, e.field, e.code) for e in parse_points(items, **WINDOW).errors]


def test_valid_points_are_grouped_by_series_in_request_order() -> None:
    batch = parse_points(
        [point(value=1), point(node="n2", value=2), point(value=3, timestamp=NOW + 1, labels={"b": "2", "a": "1"})],
        **WINDOW,
    )
    assert batch.errors == []
    assert batch.keys == [
        ("c1", "n1", "cpu", ()),
        ("c1", "n2", "cpu", ()),
        ("c1", "n1", "cpu", (("a", "1"), ("b", "2"))),
    ]
    assert batch.rows == [(0, NOW, 1.0), (1, NOW, 2.0), (2, NOW + 1, 3.0)]


def test_rfc3339_and_unix_seconds_are_the_same_instant() -> None:
    batch = parse_points(
        [point(timestamp="2027-01-15T08:00:00Z"), point(timestamp="2027-01-15T09:00:00+01:00")], min_ts=0, max_ts=2e9
    )
    assert batch.rows[0][1] == batch.rows[1][1] == 1_800_000_000.0


# The JSON text as a client sends it: Python's json module reads NaN/Infinity literals and
# overflows 1e400 to inf, exactly as the API's parser does.
@pytest.mark.parametrize(
    "value_json, code",
    [
        ("NaN", "not_finite"),
        ("Infinity", "not_finite"),
        ("-Infinity", "not_finite"),
        ("1e400", "not_finite"),
        ('"nan"', "not_a_number"),
        ('"inf"', "not_a_number"),
        ('"1.5"', "not_a_number"),
        ("true", "not_a_number"),
        ("[1]", "not_a_number"),
        ("null", "required"),
    ],
)
def test_non_finite_or_non_numeric_values_are_refused(value_json: str, code: str) -> None:
    items = json.loads(f'[{{"cluster":"c","node":"n","metric":"m","timestamp":{NOW},"value":{value_json}}}]')
    assert codes(items) == [(0, "value", code)]


@pytest.mark.parametrize(
    "timestamp, code",
    [
        (NOW - 8 * 86400, "out_of_range"),
        (NOW + 301, "out_of_range"),
        ("2027-01-15T08:00:00", "timestamp_without_timezone"),
        ("yesterday", "invalid_timestamp"),
        (float("nan"), "not_finite"),
        (10**400, "not_finite"),
        (True, "invalid_timestamp"),
        (None, "required"),
    ],
)
def test_bad_timestamps_are_refused(timestamp: Any, code: str) -> None:
    assert codes([point(timestamp=timestamp)]) == [(0, "timestamp", code)]


def test_window_edges_are_inclusive() -> None:
    assert codes([point(timestamp=WINDOW["min_ts"]), point(timestamp=WINDOW["max_ts"])]) == []


@pytest.mark.parametrize(
    "overrides, field, code",
    [
        ({"cluster": None}, "cluster", "required"),
        ({"node": ""}, "node", "invalid_name"),
        ({"metric": "cpu usage"}, "metric", "invalid_name"),
        ({"metric": ["cpu"]}, "metric", "invalid_name"),
        ({"metric": "x" * 201}, "metric", "invalid_name"),
        ({"labels": ["a"]}, "labels", "invalid_labels"),
        ({"labels": {"1bad": "x"}}, "labels", "invalid_label_name"),
        ({"labels": {"env": 3}}, "labels", "invalid_label_value"),
        ({"labels": {f"l{i}": "v" for i in range(33)}}, "labels", "too_many_labels"),
        ({"unit": 5}, "unit", "invalid_unit"),
        ({"valeu": 1.0}, None, "unknown_field"),
    ],
)
def test_bad_fields_are_refused(overrides: dict[str, Any], field: str | None, code: str) -> None:
    assert codes([point(**overrides)]) == [(0, field, code)]


def test_every_bad_point_is_listed_with_its_index() -> None:
    items = [point(), "not an object", point(value="x"), point(), point(cluster=None, value=float("inf"))]
    assert codes(items) == [
        (1, None, "not_an_object"),
        (2, "value", "not_a_number"),
        (4, "cluster", "required"),
        (4, "value", "not_finite"),
    ]
