"""Validation of an ingest batch: JSON in, columns of valid points out, no Django.

This is the hot path of the write API (10,000 points a request). It has two parts:

- `decode_points`, the fast path: msgspec decodes and type-checks the body in C straight
  into typed structs (no intermediate dicts), then one light loop groups points by series
  and a few checks run once per distinct series rather than once per point. It answers
  only "all valid" or "not sure" (None).
- `parse_points`, the exact path: a plain-Python check of already-decoded JSON that lists
  every problem of every point, by index. The API falls back to it whenever the fast path
  declines, so clients get the same error report either way.

A DRF serializer per point would cost tens of microseconds a point; see bench/ingest.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import msgspec

# Names of clusters, nodes and metrics: printable, no spaces, no quotes.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,199}\Z")
# Label names as in Prometheus.
LABEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\Z")
MAX_LABELS = 32
MAX_LABEL_VALUE = 200
MAX_UNIT = 32
FIELDS = frozenset({"cluster", "node", "metric", "labels", "unit", "timestamp", "value"})

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
    """Valid points, as columns in request order; `errors` is empty when all are valid."""

    keys: list[SeriesKey] = field(default_factory=list)  # distinct series, first-seen order
    units: list[str] = field(default_factory=list)  # per key, as sent with its first point
    key_of: list[int] = field(default_factory=list)  # per point: index into keys
    ts: list[float] = field(default_factory=list)  # per point: unix seconds
    values: list[float] = field(default_factory=list)  # per point
    errors: list[PointError] = field(default_factory=list)

    def points_of(self, keys: set[int]) -> list[int]:
        """Request indexes of the points of the given keys (for per-series errors)."""
        return [i for i, k in enumerate(self.key_of) if k in keys]


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


OUT_OF_RANGE = "timestamp is outside the accepted window (raw retention .. now + skew)"
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
    key_index: dict[SeriesKey, int] = {}
    good_names: set[str] = set()

    def bad(index: int, field_name: str | None, code: str, message: str) -> None:
        errors.append(PointError(index, field_name, code, message))

    for i, point in enumerate(items):
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
        ts = 0.0
        if raw_ts is None:
            bad(i, "timestamp", "required", "timestamp is required")
        else:
            parsed_ts = _parse_timestamp(raw_ts)
            if isinstance(parsed_ts, str):
                bad(i, "timestamp", parsed_ts, _TS_MESSAGES[parsed_ts])
            elif not min_ts <= parsed_ts <= max_ts:
                bad(i, "timestamp", "out_of_range", OUT_OF_RANGE)
            else:
                ts = parsed_ts

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
        batch.key_of.append(k)
        batch.ts.append(ts)
        batch.values.append(value)  # type: ignore[arg-type]  # a float by now: checked above
    return batch


# --- the fast path ------------------------------------------------------------------------
# Types and bounds are checked by msgspec in C; name patterns once per distinct series below.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


# gc=False: a batch's 10,000 points hold only strings, numbers and a dict of strings, so they
# cannot form reference cycles; untracked, they no longer trigger and slow down collections.
class _Point(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    cluster: _Name
    node: _Name
    metric: _Name
    timestamp: float | str  # msgspec refuses NaN/Infinity literals and out-of-range numbers
    value: float  # a JSON number (integers too); never bool, string or null
    labels: Annotated[
        dict[str, Annotated[str, msgspec.Meta(max_length=MAX_LABEL_VALUE)]], msgspec.Meta(max_length=MAX_LABELS)
    ] = {}
    unit: Annotated[str, msgspec.Meta(max_length=MAX_UNIT)] = ""


class _Body(msgspec.Struct, gc=False):
    points: list[_Point]


_decoder = msgspec.json.Decoder(_Body)


def decode_points(raw: bytes, *, min_ts: float, max_ts: float, max_points: int) -> ParsedBatch | None:
    """Decode and validate a JSON body `{"points": [...]}` of at most `max_points` valid points.

    Returns None whenever anything is off (malformed JSON, a bad point, too many points, an
    unusual shape): the caller then takes the exact path, which says precisely what.
    """
    try:
        points = _decoder.decode(raw).points
    except msgspec.MsgspecError:
        return None
    if len(points) > max_points:
        return None
    batch = ParsedBatch()
    key_of, ts, values = batch.key_of, batch.ts, batch.values
    # Address as sent (labels in the client's order) -> index into `sent_units`; canonicalised
    # (and name-checked) once per distinct address after the loop. Methods are bound to
    # locals: this loop runs 10,000 times a request.
    sent_index: dict[tuple[str, str, str, tuple[tuple[str, str], ...]], int] = {}
    sent_units: list[str] = []
    find, add_key, add_ts, add_value = sent_index.get, key_of.append, ts.append, values.append
    for point in points:
        labels = point.labels
        address = (point.cluster, point.node, point.metric, tuple(labels.items()) if labels else ())
        k = find(address)
        if k is None:
            k = sent_index[address] = len(sent_units)
            sent_units.append(point.unit)
        add_key(k)
        stamp = point.timestamp
        if type(stamp) is str:
            stamp = _parse_timestamp(stamp)
            if type(stamp) is str:
                return None
        add_ts(stamp)  # type: ignore[arg-type]
        add_value(point.value)
    if ts and not (min_ts <= min(ts) and max(ts) <= max_ts):
        return None

    canonical: dict[SeriesKey, int] = {}
    remap = []
    for (cluster, node, metric, label_pairs), unit in zip(sent_index, sent_units, strict=True):
        if not (NAME_RE.match(cluster) and NAME_RE.match(node) and NAME_RE.match(metric)):
            return None
        if not all(LABEL_NAME_RE.match(name) for name, _ in label_pairs):
            return None
        key: SeriesKey = (cluster, node, metric, tuple(sorted(label_pairs)))
        k = canonical.get(key)
        if k is None:
            k = canonical[key] = len(batch.keys)
            batch.keys.append(key)
            batch.units.append(unit)
        remap.append(k)
    if len(remap) != len(batch.keys):  # the same labels sent in different orders
        batch.key_of = [remap[k] for k in key_of]
    return batch
