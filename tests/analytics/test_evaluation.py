"""Window-level evaluation and the NAB-like score (analytics/evaluation.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from analytics.detection.windows import AnomalyWindow
from analytics.evaluation import (
    SeriesOutcome,
    evaluation_report,
    scaled_sigmoid,
    series_evaluate,
)
from analytics.synthetic import LabelledSeries, TruthWindow

MINUTE = 60.0


def detection(start: float, end: float | None = None, label: str = "spike") -> AnomalyWindow:
    end = start if end is None else end
    return AnomalyWindow(
        start=start,
        end=end,
        peak_ts=start,
        peak_score=0.99,
        label=label,
        observed=10.0,
        expected=1.0,
        lower=0.0,
        upper=2.0,
        deviation=9.0,
        detectors=("robust_zscore",),
        points=1,
    )


def outcome(truth: list[TruthWindow], detections: list[AnomalyWindow], days: float = 14.0) -> SeriesOutcome:
    return SeriesOutcome(detections=tuple(detections), name="s", interval=MINUTE, days=days, truth=tuple(truth))


# Two series, three truth windows of 10 samples each (start and end inclusive).
SHIFT = TruthWindow(10_000.0, 10_000.0 + 9 * MINUTE, "level_shift")
SPIKE = TruthWindow(50_000.0, 50_000.0 + 9 * MINUTE, "spike")
DIP = TruthWindow(90_000.0, 90_000.0 + 9 * MINUTE, "dip")


def test_scaled_sigmoid_has_nabs_reference_values() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.5) == -1.0


def test_a_perfect_detector_scores_100() -> None:
    report = evaluation_report(
        [
            outcome([SHIFT, SPIKE], [detection(SHIFT.start, SHIFT.end, "level_shift"), detection(SPIKE.start)]),
            outcome([DIP], [detection(DIP.start, label="dip")]),
        ]
    )
    assert report.nab_like == pytest.approx(100.0)
    assert (report.overall.precision, report.overall.recall, report.overall.f1) == (1.0, 1.0, 1.0)
    assert report.overall.label_accuracy == 1.0
    assert report.label("level_shift").mttd_samples == 0.0


def test_a_detector_that_never_fires_scores_0() -> None:
    report = evaluation_report([outcome([SHIFT, SPIKE], []), outcome([DIP], []), outcome([], [])])
    assert report.nab_like == 0.0
    assert (report.overall.precision, report.overall.recall, report.overall.f1) == (0.0, 0.0, 0.0)
    assert math.isnan(report.label("level_shift").mttd_samples)
    assert report.fp_per_series_day == 0.0


def test_a_false_positive_lowers_the_perfect_score_by_its_nab_cost() -> None:
    # Before any truth window: the full A_FP = -0.11 on a raw scale from -2 (silent) to 2 (perfect).
    report = evaluation_report(
        [outcome([SHIFT, SPIKE], [detection(1_000.0), detection(SHIFT.start), detection(SPIKE.start)])]
    )
    assert report.nab_like == pytest.approx(100 * (2 - 0.11 + 2) / 4)
    assert report.overall.precision == pytest.approx(2 / 3)
    assert report.overall.recall == 1.0


def test_a_false_positive_right_after_a_window_costs_less_than_one_far_after() -> None:
    just_after = SHIFT.end + 0.9 * MINUTE  # 0.1 of the window's length past its end
    near = evaluation_report([outcome([SHIFT], [detection(SHIFT.start), detection(just_after)])])
    far = evaluation_report([outcome([SHIFT], [detection(SHIFT.start), detection(SHIFT.end + 40 * MINUTE)])])
    assert near.nab_raw == pytest.approx(1 + 0.11 * scaled_sigmoid(0.1))
    assert far.nab_raw == pytest.approx(1 - 0.11)
    assert near.nab_like > far.nab_like


def test_a_late_detection_earns_the_sigmoid_of_its_position_in_the_window() -> None:
    late = detection(SHIFT.start + 5 * MINUTE, label="level_shift")  # 6th of 10 samples
    report = evaluation_report([outcome([SHIFT], [late])])
    earned = scaled_sigmoid(-0.5) / scaled_sigmoid(-1.0)
    assert report.nab_raw == pytest.approx(earned)
    assert report.nab_like == pytest.approx(100 * (earned + 1) / 2)
    assert report.label("level_shift").mttd_samples == 5.0


def test_precision_recall_f1_label_accuracy_and_mttd_on_hand_made_windows() -> None:
    report = evaluation_report(
        [
            outcome(
                [SHIFT, SPIKE, DIP],
                [
                    detection(SHIFT.start + 4 * MINUTE, SHIFT.end + 60 * MINUTE, "level_shift"),  # 4 samples late
                    detection(SPIKE.start - 2 * MINUTE, SPIKE.start + MINUTE, "dip"),  # early start, wrong label
                    detection(200_000.0),  # false positive
                ],
            ),  # the dip is missed
        ]
    )
    overall = report.overall
    assert (overall.truth, overall.detected, overall.detections, overall.true_positives) == (3, 2, 3, 2)
    assert overall.precision == pytest.approx(2 / 3)
    assert overall.recall == pytest.approx(2 / 3)
    assert overall.f1 == pytest.approx(2 / 3)
    assert overall.label_accuracy == 0.5
    assert report.label("level_shift").mttd_samples == 4.0
    assert report.label("spike").mttd_samples == 0.0  # a detection already open counts from the start
    assert report.label("dip").recall == 0.0
    assert report.label("dip").precision == 1.0  # the one "dip" detection overlapped a window
    assert report.label("spike").detections == 1 and report.label("spike").precision == 0.0


def test_a_detection_touching_the_window_end_counts_and_one_a_second_later_does_not() -> None:
    touching = evaluation_report([outcome([SPIKE], [detection(SPIKE.end)])])
    after = evaluation_report([outcome([SPIKE], [detection(SPIKE.end + 1.0)])])
    assert touching.overall.recall == 1.0
    assert after.overall.recall == 0.0
    assert after.overall.true_positives == 0


def test_false_positives_per_series_day_count_only_series_without_truth() -> None:
    report = evaluation_report(
        [
            outcome([], [detection(100.0), detection(5_000.0)], days=10.0),
            outcome([], [], days=10.0),
            outcome([SHIFT], [detection(500_000.0)]),  # a false positive, but on a labelled series
        ]
    )
    assert report.clean_series == 2
    assert report.fp_per_series_day == pytest.approx(2 / 20)


def test_the_result_line_has_the_exact_format() -> None:
    report = evaluation_report(
        [outcome([SHIFT], [detection(SHIFT.start + 2 * MINUTE, label="level_shift")]), outcome([], [], days=4.0)]
    )
    line = report.result_line()
    assert line == (
        "RESULT f1=1.000 precision=1.000 recall=1.000 fp_per_series_day=0.000 "
        f"mttd_level_shift=2.00 nab_like={report.nab_like:.2f}"
    )
    assert re.fullmatch(
        r"RESULT f1=\d\.\d{3} precision=\d\.\d{3} recall=\d\.\d{3} fp_per_series_day=\d+\.\d{3} "
        r"mttd_level_shift=\d+\.\d{2} nab_like=-?\d+\.\d{2}",
        line,
    )


def test_the_table_lists_every_label_and_the_overall_row() -> None:
    table = evaluation_report([outcome([SHIFT, SPIKE, DIP], [detection(SPIKE.start)])]).table()
    for name in ("level_shift", "spike", "dip", "all", "nab_like"):
        assert name in table


def test_series_evaluate_streams_a_detector_and_finds_an_obvious_spike() -> None:
    rng = np.random.default_rng(3)
    ts = 1_700_000_000.0 + MINUTE * np.arange(1500)
    values = 50.0 + rng.standard_normal(1500)
    values[1200] += 20.0
    truth = (TruthWindow(float(ts[1200]), float(ts[1200]), "spike"),)
    series = LabelledSeries(name="one", timestamps=ts, values=values, truth=truth, interval=MINUTE)
    result = series_evaluate(series, "robust_zscore", "medium", chunk=60, gap_samples=10)
    assert (result.name, result.interval, result.truth) == ("one", MINUTE, truth)
    assert result.days == pytest.approx(1500 / 1440)
    assert any(d.start <= ts[1200] <= d.end and d.label == "spike" for d in result.detections)
