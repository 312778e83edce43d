"""Reading metrics over time: Prometheus-style range queries and SLO reports. Reads only.

A range query answers one value per step-aligned window (windows aligned to the Unix epoch,
floor(t / step) * step, like rollup buckets) from the coarsest stored rollup resolution that
divides the step, or from the raw points when none does. Combining buckets into a longer
window is exact for count, sum, min, max, mean, first, last and the sample standard
deviation. Percentiles cannot be combined exactly from bucket summaries: a window spanning
several buckets gets a guaranteed upper bound instead (see `percentile_upper_bound`) and the
answer says so (`approximate`).

Layout: parsing and planning (plain values); the maths (pandas frames in, frames out, no
ORM; tested on plain data in tests/analytics/test_query.py); at the bottom the only functions
that touch the ORM (`range_values`, `range_query`, `range_query_across`, `slo_report`), which
read rows and hand them to the maths.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from analytics.models import Point, Rollup
from analytics.rollups import STAT_FIELDS
from config.errors import Rejected

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)

# Every statistic a bucket stores is an aggregation the API serves.
AGGREGATIONS: tuple[str, ...] = STAT_FIELDS
PERCENTILES: dict[str, float] = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
ACROSS: tuple[str, ...] = ("sum", "mean", "min", "max", "p95")

# Stored rollup resolutions, coarsest first.
RESOLUTIONS: tuple[int, ...] = tuple(sorted(Rollup.Resolution.values, reverse=True))

# Prometheus refuses query_range answers of more than 11,000 points per series; so do we.
MAX_POINTS_PER_SERIES = 11_000
# A multi-series query reads and answers series x windows values; bounded as ten series' worth.
MAX_POINTS_PER_QUERY = 110_000
MAX_SERIES = 500
# The default step keeps a chart at about this many points.
DEFAULT_POINTS = 300
# Any duration parameter (step, SLO window) above this is refused: no retention is longer.
MAX_DURATION = 3650 * 86400

# Default steps are "nice" (and, from a minute up, multiples of a stored resolution, so a
# default query of more than a few hours reads rollups, never raw points).
NICE_STEPS: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)
_DAY = 86400

_UNITS = {"w": 7 * _DAY, "d": _DAY, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:\d+[wdhms])+")
_DURATION_PART_RE = re.compile(r"(\d+)([wdhms])")
_OBJECTIVE_RE = re.compile(r"\s*(<=|>=|<|>)\s*(\S+)\s*")


# --- Parsing -----------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """`30s`, `5m`, `1h30m`, `1d`, `2w` or plain whole seconds (`90`) -> seconds (> 0)."""
    text = text.strip()
    if text.isdigit():
        seconds = int(text[:20])  # 20 digits already far beyond MAX_DURATION
    elif _DURATION_RE.fullmatch(text):
        seconds = sum(int(n[:20]) * _UNITS[unit] for n, unit in _DURATION_PART_RE.findall(text))
    else:
        raise ValueError(f"expected a duration such as 30s, 5m, 1h, 1d or whole seconds, got {text!r}")
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be at most {format_duration(MAX_DURATION)}")
    return seconds


def format_duration(seconds: int) -> str:
    """The largest of d, h, m, s that divides `seconds`: 2592000 -> '30d', 90 -> '90s'."""
    for unit in ("d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def parse_agg(text: str, choices: Sequence[str] = AGGREGATIONS) -> str:
    if text not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
    return text


def parse_resolution(text: str) -> int:
    """A stored rollup resolution: `1m`, `5m`, `1h` (or 60, 300, 3600)."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0
    if seconds not in RESOLUTIONS:
        raise ValueError(f"expected one of 1m, 5m, 1h, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Objective:
    """`value <op> threshold`, the condition a good bucket meets."""

    op: str
    threshold: float

    def holds(self, values: np.ndarray) -> np.ndarray:
        return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[self.op](
            values, self.threshold
        )

    def describe(self, agg: str) -> str:
        return f"{agg} {self.op} {_format_number(self.threshold)}"


def parse_objective(text: str) -> Objective:
    """`<500`, `<=500`, `>0.99`, `>=1e3` -> Objective."""
    match = _OBJECTIVE_RE.fullmatch(text)
    threshold = math.nan
    if match:
        with contextlib.suppress(ValueError):
            threshold = float(match.group(2))
    if not match or not math.isfinite(threshold):
        raise ValueError(f"expected <, <=, > or >= and a finite number, e.g. '<500', got {text!r}")
    return Objective(op=match.group(1), threshold=threshold)


def parse_target(text: str) -> Fraction:
    """A decimal strictly between 0 and 1, kept exact: 0.9 is 9/10, not 0.9000000000000000222."""
    try:
        value = float(text)
        exact = Fraction(text.strip())
    except ValueError:
        raise ValueError(f"expected a number between 0 and 1, e.g. 0.99, got {text!r}") from None
    if not (math.isfinite(value) and 0 < exact < 1):
        raise ValueError(f"must lie strictly between 0 and 1, got {text!r}")
    return exact


def _format_number(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


# --- Planning ------------------------------------------------------------------------------


def step_at_least(seconds: float) -> int:
    """The smallest nice step (NICE_STEPS, then whole days) of at least `seconds`."""
    for step in NICE_STEPS:
        if step >= seconds:
            return step
    return math.ceil(seconds / _DAY) * _DAY


def resolution_for(step: int) -> int | None:
    """The coarsest stored resolution r with r <= step and step % r == 0; None: raw points."""
    for resolution in RESOLUTIONS:
        if resolution <= step and step % resolution == 0:
            return resolution
    return None


@dataclass(frozen=True)
class RangePlan:
    """What a range query reads: [start, end) widened to whole windows of `step` seconds."""

    start: datetime
    end: datetime
    step: int
    agg: str
    resolution: int | None  # None: raw points
    windows: int  # per series

    @property
    def resolution_label(self) -> str:
        return "raw" if self.resolution is None else format_duration(self.resolution)

    @property
    def approximate(self) -> bool:
        """Percentiles of windows longer than the stored bucket are upper bounds, not exact."""
        return self.agg in PERCENTILES and self.resolution is not None and self.step > self.resolution


def range_plan(*, start: datetime, end: datetime, step: int | None, agg: str, series_count: int = 1) -> RangePlan:
    """Plan a query of `series_count` series over [start, end) (start < end).

    The range is widened to whole windows (start floored, end ceiled to the step), so every
    window is computed from all its data, whatever the source. Without a step, the nice step
    that keeps the answer at about DEFAULT_POINTS windows (fewer when many series would
    exceed MAX_POINTS_PER_QUERY). Raises Rejected `too_many_points` (400) when the answer
    would exceed MAX_POINTS_PER_SERIES windows, or MAX_POINTS_PER_QUERY series x windows.
    Raises OverflowError when widening leaves the datetime range.
    """
    span = (end - start).total_seconds()
    series_count = max(series_count, 1)
    limit = min(MAX_POINTS_PER_SERIES, MAX_POINTS_PER_QUERY // series_count)
    if step is None:
        # windows - 1 as target: widening to whole windows adds at most one.
        step = step_at_least(span / (max(min(DEFAULT_POINTS, limit), 2) - 1))
    step_us = step * 1_000_000
    lo = (start - EPOCH) // _US // step_us * step_us
    hi = -(-((end - EPOCH) // _US) // step_us) * step_us
    windows = (hi - lo) // step_us
    if windows > limit:
        suggestion = format_duration(step_at_least(span / max(limit - 1, 1)))
        if windows <= MAX_POINTS_PER_SERIES:
            what = (
                f"{series_count} series x {windows} windows = {series_count * windows} points, "
                f"more than {MAX_POINTS_PER_QUERY}"
            )
        else:
            what = f"{windows} windows per series, more than {MAX_POINTS_PER_SERIES}"
        raise Rejected(
            "too_many_points",
            f"This query would answer {what}. Use a larger step (at least {suggestion} for this range), "
            "a shorter range" + (" or fewer series." if series_count > 1 else "."),
        )
    return RangePlan(
        start=EPOCH + lo * _US,
        end=EPOCH + hi * _US,
        step=step,
        agg=agg,
        resolution=resolution_for(step),
        windows=windows,
    )


# --- The maths: frames in, frames out ------------------------------------------------------
#
# A "values" frame has columns series_id, window (epoch seconds of the window start), value,
# sorted by series_id then window, one row per window with data.


def _values_frame(keys: pd.DataFrame, values: Any) -> pd.DataFrame:
    frame = keys.copy()
    frame["value"] = np.asarray(values, dtype=float)
    return frame.reset_index(drop=True)


def aggregate_points(points: pd.DataFrame, *, step: int, agg: str) -> pd.DataFrame:
    """Exact aggregation of raw points per window.

    `points`: columns series_id, ts_us (epoch microseconds), value; sorted by series then
    time. Percentiles interpolate linearly between the closest ranks (numpy's default, as
    the rollups), stddev is the sample one (NaN for a window of one point).
    """
    if points.empty:
        return _empty_values()
    frame = points.assign(window=points["ts_us"] // (step * 1_000_000) * step)
    grouped = frame.groupby(["series_id", "window"], sort=True)["value"]
    if agg == "count":
        result = grouped.size()
    elif agg == "stddev":
        result = grouped.std(ddof=1)
    elif agg in PERCENTILES:
        result = grouped.quantile(PERCENTILES[agg], interpolation="linear")
    else:  # sum, min, max, mean, first, last: pandas' own group reductions of these names
        result = getattr(grouped, agg)()
    return result.rename("value").reset_index()


# Rollup columns each aggregation needs when it combines buckets.
COMBINE_COLUMNS: dict[str, tuple[str, ...]] = {
    "count": ("count",),
    "sum": ("sum",),
    "min": ("min",),
    "max": ("max",),
    "mean": ("count", "sum"),
    "stddev": ("count", "mean", "stddev"),
    "first": ("first",),
    "last": ("last",),
    **{p: ("count", "min", "p50", "p90", "p95", "p99", "max") for p in PERCENTILES},
}


def combine_buckets(buckets: pd.DataFrame, *, step: int, resolution: int, agg: str) -> pd.DataFrame:
    """Windows of `step` seconds from rollup buckets of `resolution` seconds (step % resolution == 0).

    `buckets`: columns series_id, bucket (epoch seconds), and COMBINE_COLUMNS[agg] (when
    step == resolution, just the `agg` column); sorted by series then bucket.
    When step == resolution each window is one bucket: its stored value. Otherwise count, sum,
    min, max, first and last combine directly, mean is total sum / total count, stddev pools
    the parts' sample variances (exact), and percentiles are `percentile_upper_bound`.
    """
    if buckets.empty:
        return _empty_values()
    frame = buckets.assign(window=buckets["bucket"] // step * step)
    if step == resolution:
        return _values_frame(frame[["series_id", "window"]], frame[agg])
    grouped = frame.groupby(["series_id", "window"], sort=True)
    if agg in ("count", "sum"):
        result = grouped[agg].sum()
    elif agg in ("min", "max", "first", "last"):
        result = getattr(grouped[agg], agg)()
    elif agg == "mean":
        result = grouped["sum"].sum() / grouped["count"].sum()
    elif agg == "stddev":
        result = _pooled_stddev(frame, grouped)
    else:
        return percentile_upper_bound(frame, p=PERCENTILES[agg], column=agg)
    return result.rename("value").reset_index()


def _pooled_stddev(frame: pd.DataFrame, grouped: Any) -> pd.Series:
    """Sample stddev of the union of the parts, from each part's count, mean and sample stddev:
    M2 = sum((n_i - 1) s_i^2 + n_i (mean_i - mean)^2), s = sqrt(M2 / (N - 1)). A part of one
    point has no stddev (NULL) and contributes no spread of its own."""
    n = grouped["count"].transform("sum")
    mean = (frame["count"] * frame["mean"]).groupby([frame["series_id"], frame["window"]]).transform("sum") / n
    spread = (frame["count"] - 1) * frame["stddev"].fillna(0.0) ** 2 + frame["count"] * (frame["mean"] - mean) ** 2
    m2 = spread.groupby([frame["series_id"], frame["window"]]).sum()
    total = grouped["count"].sum()
    return np.sqrt(m2 / (total - 1)).where(total > 1)


# The stored levels of a bucket, lowest first: at or below each lies at least
# floor(level * (n - 1)) + 1 of its n points (n for the max).
_LEVELS: tuple[tuple[str, float], ...] = (
    ("min", 0.0),
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("max", 1.0),
)


def percentile_upper_bound(frame: pd.DataFrame, *, p: float, column: str) -> pd.DataFrame:
    """Per window, the smallest stored bucket statistic M that the exact p-percentile of the
    window's points provably does not exceed. Exact (the bucket's own value) for a window of
    a single bucket.

    Why not simply the largest bucket percentile: with linearly interpolated percentiles it
    is not a bound (buckets [0, 2, 5] and [0, 1, 4, 5] have p95 4.7 and 4.85; together,
    4.9 - their p95 is 5). What holds: a bucket's level-l percentile has at least
    floor(l (n - 1)) + 1 of its n points at or below it (the lower of the two ranks it
    interpolates between), and the window's p-percentile is at most its point of rank
    ceil(p (N - 1)) + 1. So M bounds it as soon as, counting for each bucket the highest
    stored level (min, p50, p90, p95, p99, max) at or below M, at least that many points lie
    at or below M. The max of every bucket always qualifies, so M exists.

    `frame`: columns series_id, window, count, min, p50, p90, p95, p99, max; sorted by
    series then window. Costs one sort of six values per bucket (about 1.5 s for the largest
    query allowed, 110,000 windows of five buckets; a single series' chart, milliseconds).
    """
    sids = frame["series_id"].to_numpy()
    wins = frame["window"].to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], (sids[1:] != sids[:-1]) | (wins[1:] != wins[:-1]))))
    sizes = np.diff(np.append(starts, len(frame)))
    group = np.repeat(np.arange(len(starts)), sizes)
    counts = frame["count"].to_numpy(dtype=float)
    needed = np.ceil(p * (np.add.reduceat(counts, starts) - 1)) + 1
    # The ladder: per bucket and stored level, its value and the points it guarantees beyond
    # the level below; sorted by window then value, the running total within a window is how
    # many points provably lie at or below each value.
    at_or_below = np.column_stack(
        [counts if level == 1.0 else np.floor(level * (counts - 1)) + 1 for _, level in _LEVELS]
    )
    gains = np.diff(at_or_below, axis=1, prepend=0.0).ravel()
    values = frame[[name for name, _ in _LEVELS]].to_numpy(dtype=float).ravel()
    events = np.repeat(group, len(_LEVELS))
    order = np.lexsort((values, events))
    events, values, covered = events[order], values[order], np.cumsum(gains[order])
    before = np.concatenate(([0.0], covered))[starts * len(_LEVELS)]  # running total before each window
    enough = covered - before[events] >= needed[events]
    windows_met, first = np.unique(events[enough], return_index=True)
    bound = np.empty(len(starts))
    bound[windows_met] = values[enough][first]  # every window is met, at the latest by its largest max
    single = sizes == 1
    bound[single] = frame[column].to_numpy(dtype=float)[starts[single]]
    return pd.DataFrame({"series_id": sids[starts], "window": wins[starts], "value": bound})


def across_series(values: pd.DataFrame, *, how: str) -> pd.DataFrame:
    """One value per window over the series that have one (columns window, value):
    their sum, mean, min, max or p95 (linear interpolation). Undefined values (a stddev of
    one point) are skipped; a window where every value is undefined is NaN."""
    if values.empty:
        return pd.DataFrame({"window": pd.Series(dtype="int64"), "value": pd.Series(dtype=float)})
    grouped = values.groupby("window", sort=True)["value"]
    if how == "sum":
        result = grouped.sum(min_count=1)
    elif how == "p95":
        result = grouped.quantile(0.95, interpolation="linear")
    else:
        result = getattr(grouped, how)()
    return result.reset_index()


def _empty_values() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series_id": pd.Series(dtype="int64"),
            "window": pd.Series(dtype="int64"),
            "value": pd.Series(dtype=float),
        }
    )


@dataclass(frozen=True)
class SloResult:
    buckets_total: int
    buckets_good: int
    good_ratio: float | None
    target: float
    error_budget: float
    error_budget_remaining: float | None
    status: str  # ok, burning, exhausted, no_data


BURNING_BELOW = Fraction(1, 4)


def slo_evaluate(values: Iterable[float], *, objective: Objective, target: Fraction) -> SloResult:
    """Good buckets are those whose value meets the objective. In exact rational arithmetic
    (a ratio of counts against a decimal target), so 9 good of 10 against 0.9 is exactly 0:
    error_budget = 1 - target; remaining = 1 - (1 - good_ratio) / error_budget, negative when
    overspent. Status: exhausted when remaining <= 0, burning below 1/4, ok otherwise, and
    no_data without buckets."""
    array = np.fromiter(values, dtype=float)
    total = len(array)
    good = int(objective.holds(array).sum())
    budget = 1 - target
    if total == 0:
        return SloResult(0, 0, None, float(target), float(budget), None, "no_data")
    ratio = Fraction(good, total)
    remaining = 1 - (1 - ratio) / budget
    status = "exhausted" if remaining <= 0 else "burning" if remaining < BURNING_BELOW else "ok"
    return SloResult(total, good, float(ratio), float(target), float(budget), float(remaining), status)


# --- Reads: the ORM edge --------------------------------------------------------------------


def _epoch_us(ts: datetime) -> int:
    return (ts - EPOCH) // _US


def _epoch_s(ts: datetime) -> int:
    return (ts - EPOCH) // _SECOND


def range_values(*, series_ids: Sequence[int], plan: RangePlan) -> pd.DataFrame:
    """The values frame (series_id, window, value) of `series_ids` under `plan`, from rollups
    at the plan's resolution or from raw points."""
    if not series_ids:
        return _empty_values()
    if plan.resolution is None:
        rows = (
            Point.objects.filter(series_id__in=series_ids, ts__gte=plan.start, ts__lt=plan.end)
            .order_by("series_id", "ts")
            .values_list("series_id", "ts", "value")
        )
        sids: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        for sid, ts, value in rows.iterator(chunk_size=10_000):
            sids.append(sid)
            stamps.append(_epoch_us(ts))
            values.append(value)
        points = pd.DataFrame(
            {
                "series_id": np.asarray(sids, dtype=np.int64),
                "ts_us": np.asarray(stamps, dtype=np.int64),
                "value": np.asarray(values, dtype=float),
            }
        )
        return aggregate_points(points, step=plan.step, agg=plan.agg)
    columns = (plan.agg,) if plan.step == plan.resolution else COMBINE_COLUMNS[plan.agg]
    bucket_rows = list(
        Rollup.objects.filter(
            series_id__in=series_ids, resolution=plan.resolution, bucket__gte=plan.start, bucket__lt=plan.end
        )
        .order_by("series_id", "bucket")
        .values_list("series_id", "bucket", *columns)
    )
    buckets = pd.DataFrame(bucket_rows, columns=["series_id", "bucket", *columns])
    if not buckets.empty:
        buckets["bucket"] = [_epoch_s(b) for b in buckets["bucket"]]
        for column in columns:  # NULL stddevs arrive as None
            buckets[column] = buckets[column].astype(float)
    return combine_buckets(buckets, step=plan.step, resolution=plan.resolution, agg=plan.agg)


Sample = tuple[datetime, float | int | None]


def _samples(windows: np.ndarray, values: np.ndarray, *, integral: bool) -> list[Sample]:
    out: list[Sample] = []
    for window, value in zip(windows.tolist(), values.tolist(), strict=True):
        number: float | int | None = value if math.isfinite(value) else None  # JSON has no NaN/Infinity
        if integral and number is not None:
            number = int(number)
        out.append((EPOCH + timedelta(seconds=window), number))
    return out


def range_query(*, series_ids: Sequence[int], plan: RangePlan) -> dict[int, list[Sample]]:
    """Per series (every id of `series_ids`, in order), its (window start, value) samples, oldest
    first, only windows with data. Values are None where undefined (stddev of one point)."""
    frame = range_values(series_ids=series_ids, plan=plan)
    result: dict[int, list[Sample]] = {sid: [] for sid in series_ids}
    for sid, group in frame.groupby("series_id", sort=True):
        result[int(sid)] = _samples(group["window"].to_numpy(), group["value"].to_numpy(), integral=plan.agg == "count")
    return result


def range_query_across(*, series_ids: Sequence[int], plan: RangePlan, how: str) -> list[Sample]:
    """One series: per window, `how` (ACROSS) of the series' values under `plan`."""
    combined = across_series(range_values(series_ids=series_ids, plan=plan), how=how)
    integral = plan.agg == "count" and how in ("sum", "min", "max")
    return _samples(combined["window"].to_numpy(), combined["value"].to_numpy(dtype=float), integral=integral)


def slo_report(
    *, series_id: int, agg: str, objective: Objective, target: Fraction, resolution: int, start: datetime, end: datetime
) -> SloResult:
    """Evaluate every stored bucket of `resolution` starting in [start, end) against the
    objective on its `agg` column (buckets where it is NULL, a stddev of one point, are skipped)."""
    values = (
        Rollup.objects.filter(series_id=series_id, resolution=resolution, bucket__gte=start, bucket__lt=end)
        .exclude(**{f"{agg}__isnull": True})
        .values_list(agg, flat=True)
    )
    return slo_evaluate(values.iterator(chunk_size=10_000), objective=objective, target=target)
