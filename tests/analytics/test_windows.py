"""anomaly_windows: anomalous points merged into incidents (analytics/detection/windows.py)."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.detection import Scores
from analytics.detection.windows import LABEL_PRIORITY, AnomalyWindow, anomaly_spans, anomaly_windows


def make_scores(
    timestamps: list[float] | np.ndarray,
    anomalous: list[bool] | np.ndarray,
    *,
    score: list[float] | np.ndarray | None = None,
    labels: list[str] | None = None,
    detectors: list[str] | None = None,
) -> Scores:
    ts = np.asarray(timestamps, dtype=np.float64)
    flags = np.asarray(anomalous, dtype=bool)
    n = len(ts)
    score_array = np.asarray(score, dtype=np.float64) if score is not None else np.where(flags, 0.95, 0.1)
    label = np.array(labels if labels is not None else ["spike" if f else "" for f in flags], dtype=object)
    detector = np.array(
        detectors if detectors is not None else ["robust_zscore" if f else "" for f in flags], dtype=object
    )
    values = 100.0 + np.arange(n, dtype=np.float64)
    return Scores(
        timestamps=ts,
        values=values,
        score=score_array,
        expected=np.full(n, 100.0),
        lower=np.full(n, 95.0),
        upper=np.full(n, 105.0),
        deviation=values - 100.0,
        warming=np.zeros(n, dtype=bool),
        anomalous=flags,
        label=label,
        detector=detector,
    )


def test_no_anomalous_point_gives_no_window() -> None:
    assert anomaly_windows(make_scores([0, 60, 120], [False, False, False]), gap_seconds=600) == []
    assert anomaly_windows(Scores.empty(), gap_seconds=600) == []


def test_anomalous_points_within_the_gap_are_one_window_even_across_normal_points() -> None:
    ts = np.arange(10) * 60.0
    flags = [False, True, False, False, True, True, False, False, False, False]
    [window] = anomaly_windows(make_scores(ts, flags), gap_seconds=180)
    assert (window.start, window.end, window.points) == (60.0, 300.0, 3)


def test_a_gap_exactly_at_the_limit_merges_and_one_beyond_it_splits() -> None:
    scores = make_scores([0.0, 60.0, 120.0, 181.0], [True, False, True, True])
    windows = anomaly_windows(scores, gap_seconds=61)  # 0 -> 120 is 120 s apart, 120 -> 181 is 61 s
    assert [(w.start, w.end, w.points) for w in windows] == [(0.0, 0.0, 1), (120.0, 181.0, 2)]
    windows = anomaly_windows(scores, gap_seconds=120)
    assert [(w.start, w.end, w.points) for w in windows] == [(0.0, 181.0, 3)]


def test_the_peak_is_the_highest_score_and_carries_the_facts_of_that_point() -> None:
    ts = np.arange(5) * 60.0
    scores = make_scores(ts, [True] * 5, score=[0.91, 0.97, 0.99, 0.93, 0.95])
    [window] = anomaly_windows(scores, gap_seconds=60)
    assert window.peak_ts == 120.0
    assert window.peak_score == 0.99
    assert (window.observed, window.expected, window.lower, window.upper, window.deviation) == (
        102.0,
        100.0,
        95.0,
        105.0,
        2.0,
    )


def test_equal_peak_scores_pick_the_earliest_point() -> None:
    scores = make_scores([0.0, 60.0, 120.0], [True] * 3, score=[0.95, 0.99, 0.99])
    assert anomaly_windows(scores, gap_seconds=60)[0].peak_ts == 60.0


def test_a_level_shift_that_starts_as_a_spike_is_labelled_level_shift() -> None:
    labels = ["spike", "spike", "level_shift", "level_shift", "dip"]
    scores = make_scores(np.arange(5) * 60.0, [True] * 5, labels=labels)
    assert anomaly_windows(scores, gap_seconds=60)[0].label == "level_shift"


def test_label_priority_puts_structural_changes_before_point_anomalies() -> None:
    assert LABEL_PRIORITY == (
        "level_shift",
        "trend_change",
        "variance_change",
        "flatline",
        "seasonal_break",
        "spike",
        "dip",
    )


def test_a_label_unknown_to_the_priority_is_kept_but_never_beats_a_known_one() -> None:
    alone = make_scores([0.0], [True], labels=["novelty"])
    assert anomaly_windows(alone, gap_seconds=60)[0].label == "novelty"
    mixed = make_scores([0.0, 60.0], [True, True], labels=["novelty", "dip"])
    assert anomaly_windows(mixed, gap_seconds=60)[0].label == "dip"


def test_detectors_are_the_sorted_unique_names_that_fired_in_the_window() -> None:
    detectors = ["seasonal", "", "robust_zscore", "seasonal", "level_shift"]
    flags = [True, False, True, True, False]
    scores = make_scores(np.arange(5) * 60.0, flags, detectors=detectors)
    [window] = anomaly_windows(scores, gap_seconds=120)
    assert window.detectors == ("robust_zscore", "seasonal")


def test_a_negative_gap_is_refused() -> None:
    with pytest.raises(ValueError, match="gap_seconds"):
        anomaly_windows(make_scores([0.0], [True]), gap_seconds=-1)


def reference_windows(scores: Scores, gap: float) -> list[AnomalyWindow]:
    """A plain loop over points: what the vectorised version must agree with."""
    groups: list[list[int]] = []
    for i in np.flatnonzero(scores.anomalous):
        if groups and scores.timestamps[i] - scores.timestamps[groups[-1][-1]] <= gap:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    windows = []
    for group in groups:
        peak = max(group, key=lambda i: (scores.score[i], -i))
        labels = {scores.label[i] for i in group}
        label = next(name for name in LABEL_PRIORITY if name in labels)
        windows.append(
            AnomalyWindow(
                start=float(scores.timestamps[group[0]]),
                end=float(scores.timestamps[group[-1]]),
                peak_ts=float(scores.timestamps[peak]),
                peak_score=float(scores.score[peak]),
                label=label,
                observed=float(scores.values[peak]),
                expected=float(scores.expected[peak]),
                lower=float(scores.lower[peak]),
                upper=float(scores.upper[peak]),
                deviation=float(scores.deviation[peak]),
                detectors=tuple(sorted({scores.detector[i] for i in group})),
                points=len(group),
            )
        )
    return windows


@pytest.mark.parametrize("seed", range(5))
def test_random_scores_give_the_same_windows_as_a_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    ts = np.cumsum(rng.uniform(30, 90, n))
    flags = rng.random(n) < 0.08
    scores = make_scores(
        ts,
        flags,
        score=np.round(rng.uniform(0.9, 1.0, n), 2),  # rounded: ties happen
        labels=[str(rng.choice(LABEL_PRIORITY)) if f else "" for f in flags],
        detectors=[str(rng.choice(["a", "b", "c"])) if f else "" for f in flags],
    )
    assert anomaly_windows(scores, gap_seconds=300) == reference_windows(scores, 300)


def test_spans_are_the_windows_without_their_facts() -> None:
    rng = np.random.default_rng(3)
    ts = np.cumsum(rng.integers(10, 200, 500)).astype(float)
    flags = rng.random(500) < 0.1
    for gap in (0.0, 60.0, 300.0):
        windows = anomaly_windows(make_scores(ts, flags), gap_seconds=gap)
        assert anomaly_spans(ts, flags, gap_seconds=gap) == [(w.start, w.end) for w in windows]
    assert anomaly_spans(ts, np.zeros(500, dtype=bool), gap_seconds=60) == []
