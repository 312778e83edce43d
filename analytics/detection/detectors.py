"""Detectors built on the seasonal baseline: one per component, and the ensemble of all.

Every point goes through the baseline (expected value and scale, seasonality included) and
then through each component, which gives the tail probability of its own statistic. The
detector's probability is the smallest one times the number of components (Bonferroni, so
combining detectors does not multiply false alarms), calibrated into the score as everywhere
(calibration.py); the label and detector of a point are those of the component that was most
sure. When the level-shift component fires, the baseline moves to the new level at once and
the rest of the chunk is scored against it: one shift, one report.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from analytics.detection.base import Detector, Scores, State, register
from analytics.detection.calibration import probability_for_score, score_from_probability
from analytics.detection.components import (
    Assessment,
    Chunk,
    Component,
    Deviation,
    Flatline,
    LevelShift,
    TrendChange,
    VarianceChange,
    learning_weights,
)
from analytics.detection.robust import interval_update, per_day
from analytics.detection.seasonal import Baseline

UNDO_SECONDS = 6 * 3600.0
SETTLE_SECONDS = 6 * 3600.0
MIN_GAPS = 10  # gaps a new series' first interval estimate uses (its first points are warming)


class ResidualDetector(Detector):
    """The engine; subclasses name their components."""

    components: ClassVar[tuple[type[Component], ...]]

    def __init__(self, *, sensitivity: str = "medium", window: int = 60, min_points: int = 60) -> None:
        super().__init__(sensitivity=sensitivity)
        self.min_points = min_points
        self.baseline = Baseline(window=window)
        self.parts = [cls() for cls in self.components]
        # The band comes from the deviation component; a detector without one keeps its own.
        own = [part for part in self.parts if isinstance(part, Deviation)]
        self.deviation = own[0] if own else Deviation()
        self.band_key = self.deviation.name if own else "band"

    def initial_state(self) -> State:
        return {
            "last_ts": None,
            "last_value": None,
            "interval": None,
            "counter": None,  # decided after min_points: a monotonic counter is scored as a rate
            "rises": 0,
            "falls": 0,
            **self._learned_state(),
        }

    def _learned_state(self) -> State:
        return {
            "seen": 0,
            "changed_at": None,  # when the last level shift or trend change was confirmed
            "undo": None,  # [until, level before, slow level before]: the last change, undone if reversed
            "baseline": self.baseline.initial_state(),
            **({"band": self.deviation.initial_state()} if self.band_key == "band" else {}),
            **{part.name: part.initial_state() for part in self.parts},
        }

    def _score(self, state: State, ts: np.ndarray, vs: np.ndarray) -> tuple[Scores, State]:
        # The chunk is scored with the sampling interval known before it (so a point's score
        # never depends on later timestamps); the chunk's own gaps update it afterwards.
        interval = state["interval"] or interval_update(None, state["last_ts"], ts[:MIN_GAPS]) or 60.0
        n_day = per_day(interval)
        p_threshold = probability_for_score(self.threshold, n_day)
        previous_ts, previous = state["last_ts"], state["last_value"]
        raw = vs
        diffs = vs - np.concatenate([[np.nan if previous is None else previous], vs[:-1]])
        if state["counter"]:
            gaps = ts - np.concatenate([[np.nan if previous_ts is None else previous_ts], ts[:-1]])
            vs = np.where(diffs >= 0, diffs, vs) / gaps  # a reset restarts from 0
            vs[~np.isfinite(vs)] = 0.0
        state = {**state, "interval": interval}
        parts: list[Scores] = []
        start = 0
        while start < len(ts):
            scores, state, start = self._segment(state, ts, vs, start, n_day, p_threshold, interval)
            parts.append(scores)
        state["last_value"] = float(raw[-1])
        state["interval"] = interval_update(state["interval"], previous_ts, ts)
        if state["counter"] is None:
            state = self._counter_decide(state, diffs)
        return Scores.concatenate(parts), state

    def _counter_decide(self, state: State, diffs: np.ndarray) -> State:
        """Counters (values that only go up, but for resets) are scored as per-second rates, as
        anyone graphs them: decided once, on the first `min_points` points; learning then starts
        afresh on the rates."""
        rises = state["rises"] + int((diffs > 0).sum())
        falls = state["falls"] + int((diffs < 0).sum())
        state = {**state, "rises": rises, "falls": falls}
        total = rises + falls
        if state["seen"] < self.min_points or total == 0:
            return state
        if falls <= 0.01 * total and rises >= 0.5 * self.min_points:
            return {**state, "counter": True, **self._learned_state()}
        return {**state, "counter": False}

    def _segment(
        self,
        state: State,
        ts: np.ndarray,
        vs: np.ndarray,
        start: int,
        n_day: float,
        p_threshold: float,
        interval: float,
    ) -> tuple[Scores, State, int]:
        """Score ts[start:] up to and including its first anomalous point, if any."""
        ts, vs = ts[start:], vs[start:]
        ref = self.baseline.reference(state["baseline"], ts, vs, interval)
        warming = state["seen"] + np.arange(1, len(ts) + 1) <= self.min_points
        chunk = Chunk(ts=ts, vs=vs, ref=ref, interval=interval, warming=warming)
        assessments = self._assess(state, chunk, p_threshold)
        seen = state["seen"] + np.arange(1, len(ts) + 1)
        pairs = zip(self.parts, assessments, strict=True)
        p_all = np.vstack([np.where(seen > part.warmup_days * n_day, a.p, 1.0) for part, a in pairs])
        if state["changed_at"] is not None:
            # After a confirmed change the slow level needs a while to settle: no trend is
            # reported off the back of a change already reported.
            settling = ts < state["changed_at"] + SETTLE_SECONDS
            for i, part in enumerate(self.parts):
                if isinstance(part, TrendChange):
                    p_all[i, settling] = 1.0
        best = np.argmin(p_all, axis=0)
        p = np.minimum(1.0, p_all[best, np.arange(len(ts))] * len(self.parts))
        score = score_from_probability(p, n_day)
        score[warming] = 0.0
        anomalous = (score >= self.threshold) & ~warming
        returned = self._returned(state, ts, vs, ref, anomalous)
        reverted = None if returned is None else returned[0]
        if reverted is not None:
            score[reverted], anomalous[reverted] = 0.0, False

        # The segment ends at the first anomalous point: what the baseline learns from the
        # points after it must not include it (a spike or a stuck value would drag the level),
        # whether the chunk is a day of backfill or one streamed point.
        fired = np.flatnonzero(anomalous)
        upto = int(fired[0]) + 1 if len(fired) else len(ts)
        if reverted is not None and reverted < upto:
            upto, fired = reverted + 1, fired[:0]
        shift, shift_part, settled = 0.0, None, None
        for i, part in enumerate(self.parts):
            confirmed = len(fired) and p_all[i, upto - 1] * len(self.parts) <= p_threshold
            if isinstance(part, LevelShift) and confirmed:
                shift, shift_part = part.shift_at(chunk, assessments[i], upto - 1), i
            elif isinstance(part, TrendChange) and confirmed and shift_part is None:
                settled = i

        labels = np.empty(upto, dtype=object)
        names = np.empty(upto, dtype=object)
        for i, (part, assessment) in enumerate(zip(self.parts, assessments, strict=True)):
            mine = best[:upto] == i
            labels[mine] = assessment.label if isinstance(assessment.label, str) else assessment.label[:upto][mine]
            names[mine] = part.name
        labels[~anomalous[:upto]] = ""
        names[~anomalous[:upto]] = ""
        for change in (settled, shift_part):  # a confirmed change labels its point, whoever was most sure
            if change is not None:
                label = assessments[change].label
                labels[upto - 1] = label if isinstance(label, str) else label[upto - 1]
                names[upto - 1] = self.parts[change].name
        band = self.deviation.band(state[self.band_key], p_threshold) * ref.scale[:upto]
        scores = Scores(
            timestamps=ts[:upto],
            values=vs[:upto],
            score=score[:upto],
            expected=ref.expected[:upto],
            lower=ref.expected[:upto] - band,
            upper=ref.expected[:upto] + band,
            deviation=ref.z[:upto],
            warming=warming[:upto],
            anomalous=anomalous[:upto],
            label=labels,
            detector=names,
            info={"period": ref.period, "rate": bool(state["counter"])},
        )
        state = self._learn(state, chunk, assessments, ~anomalous, upto, interval)
        until = float(ts[upto - 1]) + UNDO_SECONDS
        if returned is not None:
            _, move, anchor = returned
            state["baseline"] = self.baseline.rebase(state["baseline"], move, anchor)
            state = self._cusum_restart(state)
            state["undo"] = None
        elif state["undo"] is not None and ts[upto - 1] > state["undo"][0]:
            state["undo"] = None
        if shift_part is not None:
            state = self._cusum_restart(state)
            anchor, level = state["baseline"]["anchor"], float(ref.level[upto - 1])
            state["baseline"] = self.baseline.rebase(state["baseline"], shift, level + shift)
            state["undo"], state["changed_at"] = [until, level, anchor], float(ts[upto - 1])
        elif settled is not None:
            anchor, level = state["baseline"]["anchor"], float(ref.level[upto - 1])
            state["baseline"] = self.baseline.rebase(state["baseline"], 0.0, level)
            state["changed_at"] = float(ts[upto - 1])
            if anchor is not None:  # the level a trend left, to go back to if it reverses soon
                state["undo"] = [until, anchor, anchor]
        return scores, state, start + upto

    def _returned(
        self, state: State, ts: np.ndarray, vs: np.ndarray, ref: Any, anomalous: np.ndarray
    ) -> tuple[int, float, float | None] | None:
        """The first anomalous point, if it is back at the level from before the last confirmed
        change: (its index, how far to move the fast level, the slow level to restore).

        A change (a shift, a trend) that reverses within UNDO_SECONDS was temporary (a seasonal
        break, an outage): the return is the end of that anomaly, not a new one, so the
        baseline goes back to where it was and the point is not anomalous."""
        if state["undo"] is None or not anomalous.any():
            return None
        until, level_before, anchor_before = state["undo"]
        first = int(np.flatnonzero(anomalous)[0])
        change = ref.level[first] - level_before
        usual = ref.expected[first] - change  # what the point would be expected at without the change
        # Back means closer to the old level than to the new one.
        if ts[first] <= until and abs(vs[first] - usual) < 0.5 * abs(change):
            return first, -float(change), anchor_before
        return None

    def _cusum_restart(self, state: State) -> State:
        for part in self.parts:
            if isinstance(part, LevelShift):
                state = {**state, part.name: part.confirmed(state[part.name])}
        return state

    def _assess(self, state: State, chunk: Chunk, p_threshold: float) -> list[Assessment]:
        """Every component's view of the chunk. Points stuck on one value are the flatline's:
        the others see them as exactly expected, so a stuck value is not also taken for a
        level shift the baseline would then follow."""
        k = len(self.parts)
        flat = next((part for part in self.parts if isinstance(part, Flatline)), None)
        stuck_assessment = flat.assess(state[flat.name], chunk) if flat is not None else None
        view = chunk
        if stuck_assessment is not None and k > 1:
            stuck = stuck_assessment.p * k <= p_threshold
            if stuck.any():
                ref = replace(chunk.ref, z=np.where(stuck, 0.0, chunk.ref.z))
                view = replace(chunk, vs=np.where(stuck, chunk.ref.expected, chunk.vs), ref=ref)
        return [
            stuck_assessment if part is flat and stuck_assessment is not None else part.assess(state[part.name], view)
            for part in self.parts
        ]

    def _learn(
        self,
        state: State,
        chunk: Chunk,
        assessments: list[Assessment],
        normal: np.ndarray,
        upto: int,
        interval: float,
    ) -> State:
        ts, vs = chunk.ts[:upto], chunk.vs[:upto]
        head = Chunk(ts=ts, vs=vs, ref=chunk.ref, interval=interval, warming=chunk.warming)
        new = dict(state)
        seen = state["seen"] + np.arange(1, len(chunk.ts) + 1)
        n_day = per_day(interval)
        for part, assessment in zip(self.parts, assessments, strict=True):
            warming = chunk.warming if part.learns_while_warming else seen <= part.warmup_days * n_day
            weights = learning_weights(normal, warming)
            new[part.name] = part.learn(state[part.name], chunk, assessment, weights, upto)
        if self.band_key == "band":
            band = self.deviation.assess(state["band"], chunk)
            new["band"] = self.deviation.learn(
                state["band"], chunk, band, learning_weights(normal, chunk.warming), upto
            )
        new["baseline"] = self.baseline.learn(
            state["baseline"], head.ts, head.vs, _head(chunk.ref, upto), normal[:upto], interval
        )
        new["last_ts"] = float(ts[-1])
        new["seen"] = state["seen"] + upto
        return new


def _head(ref: Any, upto: int) -> Any:
    return replace(
        ref,
        expected=ref.expected[:upto],
        scale=ref.scale[:upto],
        z=ref.z[:upto],
        deseasonalised=ref.deseasonalised[:upto],
        level=ref.level[:upto],
        anchor=None if ref.anchor is None else ref.anchor[:upto],
        slope=ref.slope[:upto],
    )


@register
class Seasonal(ResidualDetector):
    """Spikes, dips and seasonal breaks against the seasonal baseline."""

    name = "seasonal"
    components = (Deviation,)


@register
class LevelShiftDetector(ResidualDetector):
    """Level shifts and trend changes (CUSUM on the baseline's residuals)."""

    name = "level_shift"
    components = (LevelShift,)


@register
class TrendChangeDetector(ResidualDetector):
    """A level that keeps moving where it usually does not."""

    name = "trend_change"
    components = (TrendChange,)


@register
class VarianceChangeDetector(ResidualDetector):
    """Noise that grew beyond its usual size."""

    name = "variance_change"
    components = (VarianceChange,)


@register
class FlatlineDetector(ResidualDetector):
    """A series stuck on one value."""

    name = "flatline"
    components = (Flatline,)


@register
class Ensemble(ResidualDetector):
    """All of the above on one baseline: Vigil's default detector."""

    name = "ensemble"
    components = (Deviation, LevelShift, TrendChange, VarianceChange, Flatline)
