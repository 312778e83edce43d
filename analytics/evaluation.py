"""Window-level evaluation of a detector against labelled series.

Operators act on incidents, not points, so everything here compares windows: the truth
windows of a `LabelledSeries` with the `AnomalyWindow`s a detector's anomalous points merge
into (analytics/detection/windows.py).

Matching (per series, all windows inclusive at both ends):
- a detection overlaps a truth window if `det.start <= truth.end and det.end >= truth.start`
  (no tolerance: a detection that starts after the window's end is a false positive);
- a truth window is detected if any detection overlaps it; its time to detect is
  `max(first overlapping detection's start, truth.start) - truth.start`, in samples;
- a detection is a true positive if it overlaps any truth window, else a false positive.

Recall counts truth windows per truth label, precision counts detections per detection
label; label accuracy is the share of detected truth windows whose first overlapping
detection (the alert an operator sees first) carries the truth label.

NAB-like score (Lavin & Ahmad 2015; Numenta NAB `nab/sweeper.py`, standard profile
A_TP = 1, A_FP = -0.11, A_FN = -1), computed on windows rather than on points:
- a detected truth window earns `A_TP * sigma(p) / sigma(-1)` where p is the relative
  position of its first detection, `-(width - k) / width` with width the window's length in
  samples and k the samples from its start to the detection (p = -1 at the start, earns 1),
  and `sigma(p) = 2 / (1 + exp(5 p)) - 1` (-1 beyond p > 3), NAB's `scaledSigmoid`;
- a missed truth window costs `A_FN`;
- a false-positive detection costs `0.11 * sigma(p)` with p its distance past the end of the
  closest preceding truth window relative to that window's length (so one right after a
  window costs almost nothing, one far after costs 0.11), and 0.11 when no window precedes.
The total over all series is normalised as NAB does, `100 * (raw - null) / (perfect - null)`,
with `perfect` = every window detected at its start and nothing else (A_TP per window) and
`null` = a detector that never fires (A_FN per window): perfect scores 100, silence 0.
Unlike NAB, a false positive is a window (one alert), not each of its points, and there is
no probationary period beyond the detector's own warm-up: Vigil alerts once per window,
and alerts after warm-up are what users see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from analytics.detection import LABELS, Scores, detector_create
from analytics.detection.windows import AnomalyWindow, anomaly_windows
from analytics.synthetic import LabelledSeries, TruthWindow

# NAB's standard profile.
A_TP = 1.0
A_FP = -0.11
A_FN = -1.0


def scaled_sigmoid(position: float) -> float:
    """NAB's `scaledSigmoid`: 2 * sigmoid(-5 * position) - 1, and -1 beyond position 3.

    0.98661 at -1 (a window's left edge), 0 at 0 (its right edge), -0.98661 at 1.
    """
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


@dataclass(frozen=True)
class SeriesOutcome:
    """A detector's windows on one labelled series, with what evaluating them needs."""

    detections: tuple[AnomalyWindow, ...]
    name: str
    interval: float
    days: float
    truth: tuple[TruthWindow, ...]


def series_evaluate(
    series: LabelledSeries, detector_name: str, sensitivity: str, *, chunk: int, gap_samples: float
) -> SeriesOutcome:
    """Run a fresh detector over `series` as the workers do and merge its anomalous points.

    `update` is called on consecutive chunks of `chunk` points with the state carried over
    (streaming), so causality and chunking effects are what production sees. Windows merge
    anomalous points up to `gap_samples` nominal intervals apart. Pure: no side effects.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    detector = detector_create(detector_name, sensitivity=sensitivity)
    state = detector.initial_state()
    parts: list[Scores] = []
    for start in range(0, len(series.timestamps), chunk):
        scores, state = detector.update(
            state, series.timestamps[start : start + chunk], series.values[start : start + chunk]
        )
        if len(scores):
            parts.append(scores)
    windows = anomaly_windows(Scores.concatenate(parts), gap_seconds=gap_samples * series.interval)
    return SeriesOutcome(
        detections=tuple(windows),
        name=series.name,
        interval=series.interval,
        days=series.days,
        truth=series.truth,
    )


def _overlaps(detection: AnomalyWindow, truth: TruthWindow) -> bool:
    return detection.start <= truth.end and detection.end >= truth.start


@dataclass(frozen=True)
class _Match:
    """One series matched: per truth window its first overlapping detection (or None), and
    per detection whether it overlaps any truth window."""

    first_detection: tuple[AnomalyWindow | None, ...]
    detection_hits: tuple[bool, ...]


def _match(outcome: SeriesOutcome) -> _Match:
    first: list[AnomalyWindow | None] = []
    for truth in outcome.truth:
        overlapping = [d for d in outcome.detections if _overlaps(d, truth)]
        first.append(min(overlapping, key=lambda d: d.start) if overlapping else None)
    hits = tuple(any(_overlaps(d, t) for t in outcome.truth) for d in outcome.detections)
    return _Match(first_detection=tuple(first), detection_hits=hits)


def _delay_samples(detection: AnomalyWindow, truth: TruthWindow, interval: float) -> float:
    return max(detection.start - truth.start, 0.0) / interval


def _nab_raw(outcome: SeriesOutcome, match: _Match) -> float:
    """The series' NAB-like raw score (see the module docstring)."""
    total = 0.0
    for truth, detection in zip(outcome.truth, match.first_detection, strict=True):
        if detection is None:
            total += A_FN
            continue
        width = (truth.end - truth.start) / outcome.interval + 1.0
        k = min(_delay_samples(detection, truth, outcome.interval), width - 1.0)
        total += A_TP * scaled_sigmoid(-(width - k) / width) / MAX_TP
    ends = sorted(outcome.truth, key=lambda t: t.end)
    for detection, hit in zip(outcome.detections, match.detection_hits, strict=True):
        if hit:
            continue
        preceding = [t for t in ends if t.end < detection.start]
        if not preceding:
            total += A_FP
            continue
        window = preceding[-1]
        length = window.end - window.start
        position = (detection.start - window.end) / length if length > 0 else math.inf
        total += -A_FP * scaled_sigmoid(position)
    return total


@dataclass(frozen=True)
class LabelStats:
    """Counts for one label (or "all"): truth windows for recall, detections for precision."""

    label: str
    truth: int = 0  # truth windows with this label
    detected: int = 0  # of which some detection overlaps
    label_correct: int = 0  # of which the first overlapping detection has the truth label
    detections: int = 0  # detections with this label
    true_positives: int = 0  # of which overlap some truth window
    delays: tuple[float, ...] = field(default=(), repr=False)  # samples to detect, detected windows

    @property
    def recall(self) -> float:
        return self.detected / self.truth if self.truth else math.nan

    @property
    def precision(self) -> float:
        """Share of detections that are true; 0 when there are none (nothing was found)."""
        return self.true_positives / self.detections if self.detections else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if (p + r) > 0 else 0.0

    @property
    def label_accuracy(self) -> float:
        return self.label_correct / self.detected if self.detected else math.nan

    @property
    def mttd_samples(self) -> float:
        """Mean time to detect in samples, over the detected truth windows."""
        return float(np.mean(self.delays)) if self.delays else math.nan


def _fmt(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Report:
    """The evaluation of one detector over a set of series."""

    overall: LabelStats
    labels: tuple[LabelStats, ...]
    series: int
    clean_series: int
    clean_days: float
    clean_false_positives: int
    nab_raw: float
    nab_perfect: float
    nab_null: float

    @property
    def fp_per_series_day(self) -> float:
        """False-positive windows per series-day, on the series without any truth window."""
        return self.clean_false_positives / self.clean_days if self.clean_days > 0 else math.nan

    @property
    def nab_like(self) -> float:
        """100 for a perfect detector, 0 for one that never fires (negative: worse)."""
        span = self.nab_perfect - self.nab_null
        return 100.0 * (self.nab_raw - self.nab_null) / span if span > 0 else math.nan

    def label(self, name: str) -> LabelStats:
        for stats in self.labels:
            if stats.label == name:
                return stats
        return LabelStats(label=name)

    def result_line(self) -> str:
        o = self.overall
        return (
            f"RESULT f1={_fmt(o.f1, 3)} precision={_fmt(o.precision, 3)} recall={_fmt(o.recall, 3)} "
            f"fp_per_series_day={_fmt(self.fp_per_series_day, 3)} "
            f"mttd_level_shift={_fmt(self.label('level_shift').mttd_samples, 2)} nab_like={_fmt(self.nab_like, 2)}"
        )

    def table(self) -> str:
        """A fixed-width table per label, then the overall row and the corpus figures."""
        head = (
            f"{'label':<16} {'truth':>5} {'found':>5} {'recall':>6} {'alerts':>6} {'tp':>5} "
            f"{'prec':>6} {'f1':>6} {'lbl_acc':>7} {'mttd':>8}"
        )
        lines = [head, "-" * len(head)]
        for stats in (*self.labels, self.overall):
            if stats is self.overall:
                lines.append("-" * len(head))
            lines.append(
                f"{stats.label:<16} {stats.truth:>5} {stats.detected:>5} {_fmt(stats.recall, 3):>6} "
                f"{stats.detections:>6} {stats.true_positives:>5} {_fmt(stats.precision, 3):>6} "
                f"{_fmt(stats.f1, 3):>6} {_fmt(stats.label_accuracy, 3):>7} {_fmt(stats.mttd_samples, 2):>8}"
            )
        lines.append(
            f"series={self.series} clean_series={self.clean_series} clean_days={self.clean_days:.1f} "
            f"clean_false_positives={self.clean_false_positives} "
            f"fp_per_series_day={_fmt(self.fp_per_series_day, 3)} nab_like={_fmt(self.nab_like, 2)}"
        )
        return "\n".join(lines)


def _label_order(names: Iterable[str]) -> list[str]:
    known = [label for label in LABELS if label in names]
    return known + sorted(set(names) - set(LABELS))


# A truth window, its first overlapping detection (None: missed) and the delay in samples.
_Judged = tuple[TruthWindow, AnomalyWindow | None, float]


def _stats(label: str, truths: list[_Judged], hits: list[bool]) -> LabelStats:
    found = [(truth, detection, delay) for truth, detection, delay in truths if detection is not None]
    return LabelStats(
        label=label,
        truth=len(truths),
        detected=len(found),
        label_correct=sum(
            1 for truth, detection, _ in found if detection is not None and detection.label == truth.label
        ),
        detections=len(hits),
        true_positives=sum(hits),
        delays=tuple(delay for _, _, delay in found),
    )


def evaluation_report(outcomes: Sequence[SeriesOutcome]) -> Report:
    """Aggregate per-series outcomes (micro-averaged: every window counts once)."""
    truth_by: dict[str, list[_Judged]] = {}
    det_by: dict[str, list[bool]] = {}
    raw = perfect = null = 0.0
    clean_series, clean_days, clean_fp = 0, 0.0, 0
    for outcome in outcomes:
        match = _match(outcome)
        for truth, detection in zip(outcome.truth, match.first_detection, strict=True):
            delay = _delay_samples(detection, truth, outcome.interval) if detection is not None else math.nan
            truth_by.setdefault(truth.label, []).append((truth, detection, delay))
        for detection, hit in zip(outcome.detections, match.detection_hits, strict=True):
            det_by.setdefault(detection.label, []).append(hit)
        raw += _nab_raw(outcome, match)
        perfect += A_TP * len(outcome.truth)
        null += A_FN * len(outcome.truth)
        if not outcome.truth:
            clean_series += 1
            clean_days += outcome.days
            clean_fp += len(outcome.detections)

    names = _label_order(set(truth_by) | set(det_by))
    per_label = tuple(_stats(name, truth_by.get(name, []), det_by.get(name, [])) for name in names)
    overall = _stats(
        "all",
        [item for name in names for item in truth_by.get(name, [])],
        [hit for name in names for hit in det_by.get(name, [])],
    )
    return Report(
        overall=overall,
        labels=per_label,
        series=len(outcomes),
        clean_series=clean_series,
        clean_days=clean_days,
        clean_false_positives=clean_fp,
        nab_raw=raw,
        nab_perfect=perfect,
        nab_null=null,
    )
