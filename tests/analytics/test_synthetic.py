"""The labelled synthetic suite and labelled CSVs (analytics/synthetic.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from analytics.detection import LABELS
from analytics.synthetic import (
    DAY,
    WARMUP_DAYS,
    WEEKLY_WARMUP_DAYS,
    CsvFormatError,
    LabelledSeries,
    load_labelled_csv,
    load_labelled_folder,
    synthetic_suite,
)


@pytest.fixture(scope="module")
def suite() -> list[LabelledSeries]:
    return synthetic_suite(seed=0)


def by_name(suite: list[LabelledSeries], part: str) -> list[LabelledSeries]:
    return [series for series in suite if part in series.name]


def test_the_same_seed_gives_the_same_arrays(suite: list[LabelledSeries]) -> None:
    again = synthetic_suite(seed=0)
    assert [s.name for s in again] == [s.name for s in suite]
    for a, b in zip(suite, again, strict=True):
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
        np.testing.assert_array_equal(a.values, b.values)
        assert a.truth == b.truth


def test_another_seed_gives_other_values(suite: list[LabelledSeries]) -> None:
    other = synthetic_suite(seed=1)
    assert not np.array_equal(other[0].values, suite[0].values)


def test_every_label_is_injected_at_least_six_times(suite: list[LabelledSeries]) -> None:
    counts = Counter(window.label for series in suite for window in series.truth)
    assert set(counts) == set(LABELS)
    assert min(counts.values()) >= 6, counts


def test_about_forty_series_of_which_about_fifteen_are_clean(suite: list[LabelledSeries]) -> None:
    assert 35 <= len(suite) <= 45
    assert 12 <= sum(1 for series in suite if not series.truth) <= 18
    assert all(2 <= len(series.truth) <= 4 for series in suite if series.truth)
    assert len({series.name for series in suite}) == len(suite)


def test_sampling_rates_and_irregular_series_are_represented(suite: list[LabelledSeries]) -> None:
    assert {series.interval for series in suite} == {10.0, 60.0, 300.0}
    irregular = by_name(suite, "irregular")
    assert len(irregular) >= 3
    for series in irregular:
        gaps = np.diff(series.timestamps)
        assert gaps.max() > 5 * series.interval  # missing data
        assert np.any(series.timestamps % series.interval != 0)  # jitter off the grid


def test_series_span_fourteen_days_and_weekly_ones_twenty_eight(suite: list[LabelledSeries]) -> None:
    for series in suite:
        expected = 28 if "weekly" in series.name else 14
        assert series.days == pytest.approx(expected, abs=0.01), series.name


def test_timestamps_strictly_increase_and_values_are_finite(suite: list[LabelledSeries]) -> None:
    for series in suite:
        assert np.all(np.diff(series.timestamps) > 0), series.name
        assert np.all(np.isfinite(series.values)), series.name
        assert len(series.timestamps) == len(series.values)


def test_truth_windows_lie_on_samples_inside_the_series_after_warm_up(suite: list[LabelledSeries]) -> None:
    for series in suite:
        warmup = WEEKLY_WARMUP_DAYS if "weekly" in series.name else WARMUP_DAYS
        ts = set(series.timestamps.tolist())
        previous_end = -np.inf
        for window in series.truth:
            assert window.start in ts and window.end in ts, series.name
            assert series.timestamps[0] + warmup * DAY <= window.start <= window.end <= series.timestamps[-1]
            assert window.start > previous_end, f"{series.name}: overlapping windows"
            previous_end = window.end


def test_bounded_and_positive_metrics_stay_in_their_range(suite: list[LabelledSeries]) -> None:
    for series in by_name(suite, "cpu"):
        assert series.values.min() >= 0 and series.values.max() <= 100, series.name
    for kind in ("web", "latency", "queue", "counter"):
        for series in by_name(suite, kind):
            assert series.values.min() >= 0, series.name
    for series in by_name(suite, "queue"):
        assert np.array_equal(series.values, np.round(series.values)), series.name
    for series in by_name(suite, "counter"):
        assert np.all(np.diff(series.values) >= 0), series.name


def test_a_clean_web_series_is_about_four_times_busier_by_day_than_by_night(suite: list[LabelledSeries]) -> None:
    series = next(s for s in suite if "web_daily" in s.name and not s.truth)
    hours = (series.timestamps % DAY) // 3600
    night = np.median(series.values[(hours >= 2) & (hours < 4)])
    day = np.median(series.values[(hours >= 14) & (hours < 16)])
    assert 3.0 < day / night < 4.5


def local_deviation(series: LabelledSeries, start: float) -> float:
    """How far the value at `start` is from the hour before it, in robust sd of that hour's steps."""
    i = int(np.searchsorted(series.timestamps, start))
    before = series.values[max(0, i - 60) : i]
    steps = np.diff(before)
    sd = 1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2)
    return abs(series.values[i] - np.median(before)) / sd


def test_spikes_and_dips_stand_well_out_of_the_local_noise(suite: list[LabelledSeries]) -> None:
    for series in suite:
        for window in series.truth:
            if window.label in ("spike", "dip"):
                assert local_deviation(series, window.start) > 5, (series.name, window)


def test_a_flatline_repeats_the_value_before_it_exactly(suite: list[LabelledSeries]) -> None:
    for series in suite:
        for window in series.truth:
            if window.label == "flatline":
                i, j = np.searchsorted(series.timestamps, [window.start, window.end])
                assert 60 <= j - i + 1 <= 180
                assert np.all(series.values[i : j + 1] == series.values[i - 1]), series.name
                assert series.values[j + 1] != series.values[j], series.name


def test_a_level_shift_persists_to_the_end_of_the_series(suite: list[LabelledSeries]) -> None:
    for series in by_name(suite, "constantish"):
        for window in series.truth:
            if window.label == "level_shift":
                i = int(np.searchsorted(series.timestamps, window.start))
                before = np.median(series.values[i - 600 : i])
                sd = 1.4826 * np.median(np.abs(series.values[i - 600 : i] - before))
                assert abs(np.median(series.values[-600:]) - before) >= 5 * sd * 0.9


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_labelled_csv_runs_of_ones_become_anomaly_windows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cpu.csv",
        "timestamp,value,label\n"
        "2024-01-01T00:00:00Z,1.0,0\n"
        "2024-01-01 00:01:00,2.0,1\n"
        "2024-01-01T00:02:00+00:00,3.0,1\n"
        "1704067380,4.0,0\n"
        "1704067440,5.0,1\n",
    )
    series = load_labelled_csv(path)
    assert series.name == "cpu"
    assert series.interval == 60.0
    np.testing.assert_array_equal(series.timestamps, 1_704_067_200.0 + 60 * np.arange(5))
    np.testing.assert_array_equal(series.values, [1, 2, 3, 4, 5])
    assert [(w.start, w.end, w.label) for w in series.truth] == [
        (1_704_067_260.0, 1_704_067_320.0, "anomaly"),
        (1_704_067_440.0, 1_704_067_440.0, "anomaly"),
    ]


def test_a_csv_without_label_column_has_no_truth_windows(tmp_path: Path) -> None:
    series = load_labelled_csv(write(tmp_path / "a.csv", "timestamp,value\n0,1\n10,2\n"))
    assert series.truth == ()
    assert series.interval == 10.0


def test_a_labelled_folder_reads_every_csv_sorted_by_name(tmp_path: Path) -> None:
    write(tmp_path / "b.csv", "timestamp,value\n0,1\n60,2\n")
    write(tmp_path / "a.csv", "timestamp,value\n0,1\n60,2\n")
    write(tmp_path / "notes.txt", "not a series")
    assert [series.name for series in load_labelled_folder(tmp_path)] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,value\n0,1\n", "line 1: expected a header"),
        ("timestamp,value\n0,1\n60,abc\n", "line 3: unparseable value"),
        ("timestamp,value\n0,1\nyesterday,2\n", "line 3: unparseable timestamp"),
        ("timestamp,value,label\n0,1,2\n", "line 2: label must be 0 or 1"),
    ],
)
def test_a_malformed_csv_is_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CsvFormatError, match=message):
        load_labelled_csv(write(tmp_path / "bad.csv", text))
