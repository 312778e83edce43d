"""The ingest validator on plain data: no database, no Django."""

from __future__ import annotations

import json
from typing import Any

import pytest

from analytics.ingest import ParsedBatch, decode_points, parse_points

NOW = 1_800_000_000.0
WINDOW = {"min_ts": NOW - 7 * 86400, "max_ts": NOW + 300}


def point(**overrides: Any) -> dict[str, Any]:
    return {"cluster": "c1", "node": "n1", "metric": "cpu", "timestamp": NOW, "value": 1.0} | overrides


def fast(items: Any, max_points: int = 10_000) -> ParsedBatch | None:
    return decode_points(json.dumps({"points": items}).encode(), max_points=max_points, **WINDOW)


def codes(items: list[Any]) -> list[tuple[int, str | None, str]]:
    """The exact path's errors; the fast path must decline exactly when there are any."""
    errors = [(e.index, e.field, e.code) for e in parse_points(items, **WINDOW).errors]
    assert (fast(items) is None) == bool(errors), "the fast path must decline exactly the invalid batches"
    return errors


def columns(batch: ParsedBatch | None) -> tuple[Any, ...]:
    assert batch is not None
    return batch.keys, batch.units, batch.key_of, batch.ts, batch.values


def test_valid_points_are_grouped_by_series_in_request_order() -> None:
    items = [point(value=1), point(node="n2", value=2), point(value=3, timestamp=NOW + 1, labels={"b": "2", "a": "1"})]
    batch = parse_points(items, **WINDOW)
    assert batch.errors == []
    assert batch.keys == [
        ("c1", "n1", "cpu", ()),
        ("c1", "n2", "cpu", ()),
        ("c1", "n1", "cpu", (("a", "1"), ("b", "2"))),
    ]
    assert (batch.key_of, batch.ts, batch.values) == ([0, 1, 2], [NOW, NOW, NOW + 1], [1.0, 2.0, 3.0])
    assert columns(fast(items)) == columns(batch)


def test_fast_path_merges_label_orders_and_keeps_the_first_unit() -> None:
    items = [
        point(labels={"a": "1", "b": "2"}, unit="ms"),
        point(node="x"),
        point(labels={"b": "2", "a": "1"}, unit="s"),
    ]
    assert columns(fast(items)) == columns(parse_points(items, **WINDOW))
    assert columns(fast(items))[2] == [0, 1, 0]


def test_fast_path_declines_more_points_than_allowed() -> None:
    assert fast([point(), point()], max_points=1) is None
    assert fast([point()], max_points=1) is not None


@pytest.mark.parametrize("body", [b"[]", b'{"points": {}}', b'{"pts": []}', b'{"points": [', b"\xff"])
def test_fast_path_declines_bodies_of_the_wrong_shape(body: bytes) -> None:
    assert decode_points(body, max_points=10, **WINDOW) is None


def test_rfc3339_and_unix_seconds_are_the_same_instant() -> None:
    items = [point(timestamp="2027-01-15T08:00:00Z"), point(timestamp="2027-01-15T09:00:00+01:00")]
    body = json.dumps({"points": items}).encode()
    for batch in (parse_points(items, min_ts=0, max_ts=2e9), decode_points(body, min_ts=0, max_ts=2e9, max_points=2)):
        assert batch is not None
        assert batch.ts == [1_800_000_000.0, 1_800_000_000.0]


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
