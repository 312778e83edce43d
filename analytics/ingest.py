"""Validation of an ingest batch: plain Python in, plain data out, no Django.

This is the hot path of the write API (10,000 points a request), so it is a hand-written
loop rather than a DRF serializer per point, which costs tens of microseconds a point.
Every problem of every point is collected, so the client can fix a batch in one go.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Names of clusters, nodes and metrics: printable, no spaces, no quotes.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,199}\Z")
# Label names as in Prometheus.
LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
MAX_LABELS = 32
MAX_LABEL_VALUE = 200
MAX_UNIT = 32
FIELDS = frozenset({"cluster", "node", "metric", "labels", "unit", "timestamp", "value"})
FLOAT_MAX = sys.float_info.max

# (cluster, node, metric, sorted label pairs)
SeriesKey = tuple[str, str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class PointError:
    index: int
    field: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "code": self.code, "message": self.message}


@dataclass(slots=True)
class ParsedBatch:
    """Valid points grouped by series address; `errors` is empty when all are valid."""

    keys: list[SeriesKey] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    # (index into keys, unix seconds, value), in request order
    rows: list[tuple[int, float, float]] = field(default_factory=list)
    # For each key, the request indexes of its points (to report per-series errors later)
    key_points: list[list[int]] = field(default_factory=list)
    errors: list[PointError] = field(default_factory=list)


def _parse_timestamp(raw: Any) -> float | str:
    """Unix seconds (number) or RFC 3339 with an offset -> unix seconds, else an error code."""
    kind = type(raw)
    if kind is int or kind is float:
        try:
            return float(raw) if math.isfinite(raw) else "not_finite"
        except OverflowError:
            return "not_finite"
    if kind is str:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            return "invalid_timestamp"
        if parsed.tzinfo is None:
            return "timestamp_without_timezone"
        return parsed.timestamp()
    return "invalid_timestamp"


_TS_MESSAGES = {
    "invalid_timestamp": "timestamp must be unix seconds or an RFC 3339 string",
    "timestamp_without_timezone": "timestamp must carry a timezone offset (e.g. 'Z')",
    "not_finite": "timestamp must be a finite number",
}


def parse_points(items: list[Any], *, min_ts: float, max_ts: float) -> ParsedBatch:
    """Validate `items` (the decoded JSON list) and group the valid points by series.

    Timestamps must lie in [min_ts, max_ts] (unix seconds). Values must be finite JSON
    numbers: NaN, Infinity, 1e400 and strings such as "nan" are refused.
    """
    batch = ParsedBatch()
    errors = batch.errors
    rows_append = batch.rows.append
    key_points = batch.key_points
    key_index: dict[SeriesKey, int] = {}
    good_names: set[str] = set()
    # Addresses exactly as sent (labels in the client's order) that passed the full check,
    # -> their key index. A batch repeats each address many times (10,000 points of 1,000
    # series); a repeat costs one dict lookup here instead of three name checks, the label
    # checks and a sort.
    seen: dict[tuple[Any, Any, Any, tuple[tuple[Any, Any], ...]], int] = {}
    isfinite = math.isfinite

    def bad(index: int, field_name: str | None, code: str, message: str) -> None:
        errors.append(PointError(index, field_name, code, message))

    for i, point in enumerate(items):
        # Fast path: a known address, a numeric timestamp in the window, a finite number.
        # Anything else, valid or not, takes the full check below, so the errors reported
        # are exactly those of the full check.
        if type(point) is dict and FIELDS.issuperset(point):
            labels = point.get("labels")
            try:
                k = seen.get(
                    (
                        point.get("cluster"),
                        point.get("node"),
                        point.get("metric"),
                        tuple(labels.items()) if labels else (),
                    )
                )
            except (TypeError, AttributeError):  # unhashable names or label values, labels not an object
                k = None
            if k is not None:
                sent_ts: Any = point.get("timestamp")
                sent_value: Any = point.get("value")
                sent_unit: Any = point.get("unit", "")
                ts_kind = type(sent_ts)
                value_kind = type(sent_value)
                # Comparisons of int and float are exact in Python, so an int in range
                # converts to float without overflow; NaN fails every comparison.
                if (
                    (ts_kind is float or ts_kind is int)
                    and min_ts <= sent_ts <= max_ts
                    and (
                        (value_kind is float and isfinite(sent_value))
                        or (value_kind is int and -FLOAT_MAX <= sent_value <= FLOAT_MAX)
                    )
                    and type(sent_unit) is str
                    and len(sent_unit) <= MAX_UNIT
                ):
                    key_points[k].append(i)
                    rows_append((k, float(sent_ts), float(sent_value)))
                    continue

        if type(point) is not dict:
            bad(i, None, "not_an_object", "each point must be a JSON object")
            continue
        n_errors = len(errors)
        if not FIELDS.issuperset(point):
            bad(i, None, "unknown_field", f"unknown field(s): {', '.join(sorted(set(point) - FIELDS))}")

        address = []
        for name in ("cluster", "node", "metric"):
            value = point.get(name)
            if type(value) is str and value in good_names:
                address.append(value)
            elif value is None:
                bad(i, name, "required", f"{name} is required")
            elif type(value) is not str or not NAME_RE.match(value):
                bad(i, name, "invalid_name", f"{name} must be 1-200 characters of letters, digits and _ . : / -")
            else:
                good_names.add(value)
                address.append(value)

        labels = point.get("labels")
        label_pairs: tuple[tuple[str, str], ...] = ()
        if labels:
            if type(labels) is not dict:
                bad(i, "labels", "invalid_labels", "labels must be an object of string values")
            elif len(labels) > MAX_LABELS:
                bad(i, "labels", "too_many_labels", f"at most {MAX_LABELS} labels")
            else:
                for name, value in labels.items():
                    if not LABEL_NAME_RE.match(name):
                        bad(i, "labels", "invalid_label_name", f"label name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
                    elif type(value) is not str or len(value) > MAX_LABEL_VALUE:
                        bad(
                            i,
                            "labels",
                            "invalid_label_value",
                            f"label {name!r} must be a string of at most 200 characters",
                        )
                label_pairs = tuple(sorted(labels.items()))

        unit = point.get("unit", "")
        if type(unit) is not str or len(unit) > MAX_UNIT:
            bad(i, "unit", "invalid_unit", f"unit must be a string of at most {MAX_UNIT} characters")

        raw_ts = point.get("timestamp")
        if raw_ts is None:
            bad(i, "timestamp", "required", "timestamp is required")
            ts = 0.0
        else:
            parsed_ts = _parse_timestamp(raw_ts)
            if type(parsed_ts) is str:
                bad(i, "timestamp", parsed_ts, _TS_MESSAGES[parsed_ts])
                ts = 0.0
            else:
                ts = parsed_ts  # type: ignore[assignment]
                if not min_ts <= ts <= max_ts:
                    bad(
                        i,
                        "timestamp",
                        "out_of_range",
                        "timestamp is outside the accepted window (raw retention .. now + skew)",
                    )

        value = point.get("value")
        kind = type(value)
        if value is None:
            bad(i, "value", "required", "value is required")
        elif kind is float:
            if not math.isfinite(value):
                bad(i, "value", "not_finite", "value must be a finite number (no NaN or Infinity)")
        elif kind is int:
            try:
                value = float(value)
            except OverflowError:
                bad(i, "value", "not_finite", "value must be a finite number")
        else:
            bad(i, "value", "not_a_number", "value must be a JSON number")

        if len(errors) > n_errors:
            continue
        key: SeriesKey = (address[0], address[1], address[2], label_pairs)
        k = key_index.get(key)
        if k is None:
            k = key_index[key] = len(batch.keys)
            batch.keys.append(key)
            batch.units.append(unit)
            key_points.append([])
        seen[(address[0], address[1], address[2], tuple(labels.items()) if labels else ())] = k
        key_points[k].append(i)
        rows_append((k, ts, value))  # type: ignore[arg-type]
    return batch
