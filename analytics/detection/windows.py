"""Anomalous points merged into windows: what an operator sees as one incident.

A detector flags points; people act on incidents. Consecutive anomalous points whose time
gap is at most `gap_seconds` form one window (so a level shift flagged on 40 of its first
60 points is one incident, not 40). The window carries the facts of its peak point (the
highest score) for the explanation, the detectors that fired anywhere in it, and one label.

The label is the highest-priority label among the window's points (`LABEL_PRIORITY`): a
level shift typically starts as a "spike" point and is confirmed as a level shift a few
points later, so the more structural label wins over the point-like ones.

Vectorised with numpy: the per-point work is O(n) array operations; Python only loops
over the windows, which are few (they are anomalies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analytics.detection.base import Scores

# Most structural first: a window containing any level_shift point is a level shift.
LABEL_PRIORITY: tuple[str, ...] = (
    "level_shift",
    "trend_change",
    "variance_change",
    "flatline",
    "seasonal_break",
    "spike",
    "dip",
)


@dataclass(frozen=True)
class AnomalyWindow:
    """One incident: anomalous points no more than the gap apart.

    `start` and `end` are the timestamps of the first and last anomalous point (equal for a
    single point); `peak_ts` the one of the highest score (the earliest on ties), whose
    score, observed value, expected value, band and deviation (in robust sd) follow.
    """

    start: float
    end: float
    peak_ts: float
    peak_score: float
    label: str
    observed: float
    expected: float
    lower: float
    upper: float
    deviation: float
    detectors: tuple[str, ...]
    points: int

    @property
    def duration(self) -> float:
        return self.end - self.start


def _label_ranks(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per point, the rank of its label (lower wins) and the label of each rank.

    Labels outside LABEL_PRIORITY (a future detector's) rank after the known ones, in
    alphabetical order, and "" ranks last, so an unknown label is still reported rather
    than lost, but never beats a known one.
    """
    names, inverse = np.unique(labels.astype(str), return_inverse=True)
    known = {label: i for i, label in enumerate(LABEL_PRIORITY)}
    order = sorted(names.tolist(), key=lambda n: (n == "", n not in known, known.get(n, 0), n))
    rank_of = {name: rank for rank, name in enumerate(order)}
    ranks = np.array([rank_of[name] for name in names.tolist()], dtype=np.int64)
    return ranks[inverse.reshape(-1)], order


def _split_names(names: list[str]) -> tuple[str, ...]:
    """Sorted unique detector names; a combined name ("a,b" or "a+b") counts as each part."""
    parts = {part.strip() for name in names for part in name.replace("+", ",").split(",")}
    return tuple(sorted(part for part in parts if part))


def anomaly_spans(timestamps: np.ndarray, anomalous: np.ndarray, *, gap_seconds: float) -> list[tuple[float, float]]:
    """(start, end) of each window `anomaly_windows` would make of these points, without their
    facts: for counting and comparing anomalies (the model lifecycle's gate and drift checks)."""
    ts = np.asarray(timestamps, dtype=np.float64)[np.asarray(anomalous, dtype=bool)]
    if not len(ts):
        return []
    first = np.flatnonzero(np.concatenate([[True], np.diff(ts) > gap_seconds]))
    last = np.append(first[1:] - 1, len(ts) - 1)
    return [(float(ts[a]), float(ts[b])) for a, b in zip(first.tolist(), last.tolist(), strict=True)]


def anomaly_windows(scores: Scores, *, gap_seconds: float) -> list[AnomalyWindow]:
    """The anomalous points of `scores` merged into windows, in time order.

    Two consecutive anomalous points belong to the same window when their timestamps are
    at most `gap_seconds` apart (normal points between them do not split it). Pure: the
    same scores always give the same windows.
    """
    if gap_seconds < 0:
        raise ValueError(f"gap_seconds must be >= 0, got {gap_seconds}")
    index = np.flatnonzero(np.asarray(scores.anomalous, dtype=bool))
    if not len(index):
        return []
    ts = np.asarray(scores.timestamps, dtype=np.float64)[index]
    score = np.asarray(scores.score, dtype=np.float64)[index]

    # Window boundaries: where the gap to the previous anomalous point exceeds the limit.
    new_window = np.concatenate([[True], np.diff(ts) > gap_seconds])
    first = np.flatnonzero(new_window)
    last = np.append(first[1:] - 1, len(index) - 1)
    group = np.cumsum(new_window) - 1
    n_windows = len(first)

    # Peak: sort by (window, -score); lexsort is stable, so ties keep the earliest point.
    # Windows are contiguous runs, so each window's first row in this order sits at `first`.
    peak = np.lexsort((-score, group))[first]

    ranks, rank_names = _label_ranks(np.asarray(scores.label, dtype=object)[index])
    best_rank = np.minimum.reduceat(ranks, first)

    # Detector names per window without a Python loop over points: unique (window, name)
    # pairs, sorted by window then name.
    names, name_code = np.unique(np.asarray(scores.detector, dtype=object)[index].astype(str), return_inverse=True)
    pairs = np.unique(group * len(names) + name_code.reshape(-1))
    pair_window, pair_name = np.divmod(pairs, len(names))
    split_at = np.searchsorted(pair_window, np.arange(1, n_windows))
    names_per_window = np.split(pair_name, split_at)

    observed = np.asarray(scores.values, dtype=np.float64)[index][peak]
    expected = np.asarray(scores.expected, dtype=np.float64)[index][peak]
    lower = np.asarray(scores.lower, dtype=np.float64)[index][peak]
    upper = np.asarray(scores.upper, dtype=np.float64)[index][peak]
    deviation = np.asarray(scores.deviation, dtype=np.float64)[index][peak]
    name_list = names.tolist()
    return [
        AnomalyWindow(
            start=float(ts[first[w]]),
            end=float(ts[last[w]]),
            peak_ts=float(ts[peak[w]]),
            peak_score=float(score[peak[w]]),
            label=rank_names[best_rank[w]],
            observed=float(observed[w]),
            expected=float(expected[w]),
            lower=float(lower[w]),
            upper=float(upper[w]),
            deviation=float(deviation[w]),
            detectors=_split_names([name_list[c] for c in names_per_window[w].tolist()]),
            points=int(last[w] - first[w] + 1),
        )
        for w in range(n_windows)
    ]
