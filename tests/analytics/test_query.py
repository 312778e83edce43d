"""analytics.query on plain data: parsing, planning, and the maths against numpy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics import query
from analytics.models import Rollup
from analytics.rollups import bucket_stats
from config.errors import Rejected

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("1m", 60), ("5m", 300), ("10m", 600), ("1h", 3600), ("1d", 86400), ("90", 90), ("1h30m", 5400)],
)
def test_durations_in_units_or_plain_seconds(text: str, seconds: int) -> None:
    assert query.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "1.5", "5 m", "m", "5y", "1e3", "99999999999999999999999d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        query.parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(2592000, "30d"), (5400, "90m"), (3600, "1h"), (90, "90s"), (300, "5m")])
def test_durations_print_in_their_largest_whole_unit(seconds: int, text: str) -> None:
    assert query.format_duration(seconds) == text


def test_the_stored_resolutions_are_the_rollup_models() -> None:
    assert sorted(query.RESOLUTIONS) == sorted(Rollup.Resolution.values)


@pytest.mark.parametrize("text, seconds", [("1m", 60), ("5m", 300), ("1h", 3600), ("300", 300)])
def test_slo_buckets_are_stored_resolutions(text: str, seconds: int) -> None:
    assert query.parse_resolution(text) == seconds


@pytest.mark.parametrize("text", ["2m", "1d", "x", "0"])
def test_other_slo_buckets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        query.parse_resolution(text)


@pytest.mark.parametrize(
    "text, op, threshold, described",
    [("<500", "<", 500.0, "p99 < 500"), ("<= 500", "<=", 500.0, "p99 <= 500"), (">0.99", ">", 0.99, "p99 > 0.99")],
)
def test_objectives(text: str, op: str, threshold: float, described: str) -> None:
    objective = query.parse_objective(text)
    assert (objective.op, objective.threshold, objective.describe("p99")) == (op, threshold, described)


@pytest.mark.parametrize("text", ["500", "=500", "<", "<abc", "<nan", "<inf", "<<5", "< 5 6"])
def test_malformed_objectives_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        query.parse_objective(text)


def test_targets_stay_exact_decimals() -> None:
    assert query.parse_target("0.9") == Fraction(9, 10)


@pytest.mark.parametrize("text", ["0", "1", "1.5", "-0.1", "nan", "inf", "abc", "9/10"])
def test_targets_outside_zero_one_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        query.parse_target(text)


# --- planning --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, resolution",
    [(30, None), (60, 60), (90, None), (120, 60), (300, 300), (600, 300), (900, 300), (3600, 3600), (7200, 3600)],
)
def test_the_coarsest_dividing_resolution_is_read(step: int, resolution: int | None) -> None:
    assert query.resolution_for(step) == resolution


def test_the_range_is_widened_to_whole_windows() -> None:
    plan = query.range_plan(
        start=T0 + timedelta(seconds=130, microseconds=5), end=T0 + timedelta(seconds=601), step=300, agg="mean"
    )
    assert (plan.start, plan.end, plan.windows) == (T0, T0 + timedelta(seconds=900), 3)
    assert (plan.resolution_label, plan.approximate) == ("5m", False)


@pytest.mark.parametrize("hours", [1, 3, 24, 24 * 7, 24 * 30, 24 * 400])
def test_the_default_step_is_round_and_gives_at_most_300_windows(hours: int) -> None:
    plan = query.range_plan(start=T0 + timedelta(seconds=17), end=T0 + timedelta(hours=hours), step=None, agg="max")
    assert plan.windows <= 300
    assert plan.step in query.NICE_STEPS or plan.step % 86400 == 0
    assert plan.step < 60 or plan.resolution is not None  # a long default range reads rollups


def test_the_default_step_for_many_series_keeps_within_the_query_bound() -> None:
    plan = query.range_plan(start=T0, end=T0 + timedelta(days=30), step=None, agg="mean", series_count=500)
    assert plan.windows * 500 <= query.MAX_POINTS_PER_QUERY


def test_more_than_11000_windows_is_refused_with_a_fix() -> None:
    assert query.range_plan(start=T0, end=T0 + timedelta(seconds=11_000), step=1, agg="mean").windows == 11_000
    with pytest.raises(Rejected) as refused:
        query.range_plan(start=T0, end=T0 + timedelta(seconds=11_001), step=1, agg="mean")
    assert refused.value.code == "too_many_points"
    assert "11001 windows per series" in refused.value.message
    assert "larger step (at least 2s" in refused.value.message


def test_series_times_windows_is_bounded() -> None:
    end = T0 + timedelta(seconds=10_000)
    assert query.range_plan(start=T0, end=end, step=1, agg="mean", series_count=11).windows == 10_000
    with pytest.raises(Rejected) as refused:
        query.range_plan(start=T0, end=end, step=1, agg="mean", series_count=12)
    assert "12 series x 10000 windows = 120000 points" in refused.value.message
    assert "fewer series" in refused.value.message


@pytest.mark.parametrize(
    "agg, step, approximate", [("p95", 600, True), ("p95", 300, False), ("p95", 30, False), ("mean", 600, False)]
)
def test_only_percentiles_combined_from_buckets_are_approximate(agg: str, step: int, approximate: bool) -> None:
    assert query.range_plan(start=T0, end=T0 + timedelta(hours=1), step=step, agg=agg).approximate is approximate


# --- the maths -------------------------------------------------------------------------------


def exact(agg: str, values: list[float]) -> float | None:
    array = np.asarray(values)
    if agg in query.PERCENTILES:
        return float(np.percentile(array, query.PERCENTILES[agg] * 100, method="linear"))
    if agg == "stddev":
        return float(np.std(array, ddof=1)) if len(array) > 1 else None
    return {
        "count": len(array),
        "sum": array.sum(),
        "min": array.min(),
        "max": array.max(),
        "mean": array.mean(),
        "first": array[0],
        "last": array[-1],
    }[agg]


def bucket_rows(buckets: dict[tuple[int, int], list[float]]) -> pd.DataFrame:
    """(series_id, bucket start) -> values, as the rows rollups_refresh would store."""
    rows = []
    for (sid, start), values in sorted(buckets.items()):
        stats = bucket_stats(values)
        rows.append({"series_id": sid, "bucket": start, **{f: getattr(stats, f) for f in query.AGGREGATIONS}})
    frame = pd.DataFrame(rows)
    frame["stddev"] = frame["stddev"].astype(float)
    return frame


def values_by_key(frame: pd.DataFrame) -> dict[tuple[int, int], float]:
    return {(int(s), int(w)): float(v) for s, w, v in frame[["series_id", "window", "value"]].itertuples(index=False)}


@pytest.fixture
def minute_buckets() -> tuple[pd.DataFrame, dict[tuple[int, int], list[float]]]:
    """Two series, 1-minute buckets of 1 to 9 points over 40 minutes (some minutes empty)."""
    rng = np.random.default_rng(7)
    buckets = {
        (sid, minute * 60): rng.gamma(2.0, 50.0, size=int(rng.integers(1, 10))).round(2).tolist()
        for sid in (1, 2)
        for minute in range(40)
        if rng.random() > 0.15
    }
    return bucket_rows(buckets), buckets


@pytest.mark.parametrize("agg", ["count", "sum", "min", "max", "mean", "stddev", "first", "last"])
@pytest.mark.parametrize("step", [120, 300, 600])
def test_combined_buckets_are_exact(minute_buckets: Any, agg: str, step: int) -> None:
    frame, buckets = minute_buckets
    combined = values_by_key(query.combine_buckets(frame, step=step, resolution=60, agg=agg))
    windows: dict[tuple[int, int], list[float]] = {}
    for (sid, start), values in sorted(buckets.items()):
        windows.setdefault((sid, start // step * step), []).extend(values)
    expected = {key: exact(agg, values) for key, values in windows.items()}
    assert combined.keys() == expected.keys()
    for key, value in expected.items():
        if value is None:
            assert np.isnan(combined[key])
        else:
            assert combined[key] == pytest.approx(value, rel=1e-12, abs=1e-9), key


def test_a_stored_resolution_step_is_the_stored_column(minute_buckets: Any) -> None:
    frame, _ = minute_buckets
    got = query.combine_buckets(frame[["series_id", "bucket", "p99"]], step=60, resolution=60, agg="p99")
    assert got["value"].tolist() == frame["p99"].tolist()


def test_the_largest_bucket_percentile_is_not_an_upper_bound_but_ours_is() -> None:
    frame = bucket_rows({(1, 0): [2.0, 0.0, 5.0], (1, 60): [5.0, 0.0, 4.0, 1.0]})
    truth = exact("p95", [2.0, 0.0, 5.0, 5.0, 0.0, 4.0, 1.0])
    assert frame["p95"].max() < truth  # 4.85 < 4.9...: the naive bound fails
    bound = values_by_key(query.combine_buckets(frame, step=120, resolution=60, agg="p95"))[(1, 0)]
    assert bound >= truth


@settings(max_examples=150, deadline=None)
@given(
    buckets=st.lists(
        st.lists(st.integers(min_value=-20, max_value=20).map(float), min_size=1, max_size=12), min_size=1, max_size=8
    ),
    agg=st.sampled_from(["p50", "p90", "p95", "p99"]),
)
def test_combined_percentiles_never_fall_below_the_exact_value(buckets: list[list[float]], agg: str) -> None:
    frame = bucket_rows({(1, i * 60): values for i, values in enumerate(buckets)})
    bound = values_by_key(query.combine_buckets(frame, step=3600, resolution=60, agg=agg))[(1, 0)]
    everything = [v for values in buckets for v in values]
    # 1e-9: numpy and PostgreSQL (whose lerp the rollups replay) interpolate in different orders.
    assert exact(agg, everything) - 1e-9 <= bound <= max(everything)
    if len(buckets) == 1:
        assert bound == frame[agg].iloc[0]  # one bucket: its exact value


def test_combined_percentiles_can_be_tighter_than_the_largest_bucket_percentile() -> None:
    # A thousand calm points and one lone spike: 95% of the window is calm, whatever the spike's bucket says.
    frame = bucket_rows({(1, 0): [float(v % 100) for v in range(1000)], (1, 60): [5000.0]})
    bound = values_by_key(query.combine_buckets(frame, step=120, resolution=60, agg="p95"))[(1, 0)]
    assert exact("p95", [float(v % 100) for v in range(1000)] + [5000.0]) <= bound <= 99.0


@pytest.mark.parametrize("agg", query.AGGREGATIONS)
def test_raw_points_aggregate_exactly(agg: str) -> None:
    rng = np.random.default_rng(3)
    ts_us = np.sort(rng.integers(0, 600_000_000, size=400))
    values = rng.normal(10, 3, size=400).round(3)
    points = pd.DataFrame({"series_id": 5, "ts_us": ts_us, "value": values})
    got = values_by_key(query.aggregate_points(points, step=45, agg=agg))
    windows: dict[tuple[int, int], list[float]] = {}
    for t, v in zip(ts_us, values, strict=True):
        windows.setdefault((5, int(t // 45_000_000 * 45)), []).append(float(v))
    assert got.keys() == windows.keys()
    for key, window in windows.items():
        expected = exact(agg, window)
        if expected is None:
            assert np.isnan(got[key])
        else:
            assert got[key] == pytest.approx(expected, rel=1e-12), key


@pytest.mark.parametrize(
    "how, expected",
    [
        ("sum", {0: 6.0, 60: 10.0}),
        ("mean", {0: 2.0, 60: 10.0}),
        ("min", {0: 1.0, 60: 10.0}),
        ("max", {0: 3.0, 60: 10.0}),
        ("p95", {0: 2.9, 60: 10.0}),
    ],
)
def test_across_series_combines_each_window(how: str, expected: dict[int, float]) -> None:
    values = pd.DataFrame({"series_id": [1, 1, 2, 3], "window": [0, 60, 0, 0], "value": [1.0, 10.0, 2.0, 3.0]})
    got = query.across_series(values, how=how)
    assert dict(zip(got["window"], got["value"], strict=True)) == pytest.approx(expected)


def test_across_series_skips_undefined_values() -> None:
    values = pd.DataFrame({"series_id": [1, 2, 1], "window": [0, 0, 60], "value": [np.nan, 4.0, np.nan]})
    got = query.across_series(values, how="sum")
    assert got["value"].iloc[0] == 4.0 and np.isnan(got["value"].iloc[1])


# --- SLO -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good, total, target, remaining, status",
    [
        (8, 10, "0.9", -1.0, "exhausted"),
        (9, 10, "0.9", 0.0, "exhausted"),
        (92, 100, "0.9", 0.2, "burning"),
        (95, 100, "0.9", 0.5, "ok"),
        (10, 10, "0.9", 1.0, "ok"),
        (0, 4, "0.99", -99.0, "exhausted"),
    ],
)
def test_slo_error_budget_is_exact(good: int, total: int, target: str, remaining: float, status: str) -> None:
    values = [1.0] * good + [1000.0] * (total - good)
    result = query.slo_evaluate(values, objective=query.parse_objective("<500"), target=query.parse_target(target))
    assert (result.buckets_total, result.buckets_good) == (total, good)
    assert result.good_ratio == good / total
    assert result.error_budget == float(1 - Fraction(target))
    assert (result.error_budget_remaining, result.status) == (remaining, status)


def test_slo_without_buckets_has_no_data() -> None:
    result = query.slo_evaluate([], objective=query.parse_objective("<1"), target=Fraction(99, 100))
    assert (result.buckets_total, result.good_ratio, result.error_budget_remaining, result.status) == (
        0,
        None,
        None,
        "no_data",
    )
    assert result.error_budget == 0.01


@pytest.mark.parametrize("op, good", [("<", 1), ("<=", 2), (">", 1), (">=", 2)])
def test_objective_operators_at_the_threshold(op: str, good: int) -> None:
    result = query.slo_evaluate([1.0, 5.0, 9.0], objective=query.parse_objective(f"{op}5"), target=Fraction(1, 2))
    assert result.buckets_good == good
