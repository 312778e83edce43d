"""The algorithms the residual detectors are made of, one class each.

Each component reads the baseline's view of a chunk (`seasonal.Reference`) and returns, per
point, the tail probability of its own statistic under what it learned, and the label it
would give. `detectors.py` combines them. States are plain JSON-safe dicts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from analytics.detection.calibration import TailModel, pack, unpack
from analytics.detection.robust import MAD_TO_SD, MEAN_AD_TO_SD, block_references
from analytics.detection.seasonal import Reference

ANOMALOUS_WEIGHT = 0.2  # see calibration.py: how much an anomalous point teaches the tail models


def learning_weights(normal: np.ndarray, warming: np.ndarray) -> np.ndarray:
    """What a point teaches: nothing while the component warms up (its statistic is not yet
    meaningful, e.g. before the seasonality is known), less when it was anomalous."""
    return np.where(warming, 0.0, np.where(normal, 1.0, ANOMALOUS_WEIGHT))


@dataclass(frozen=True)
class Chunk:
    ts: np.ndarray
    vs: np.ndarray
    ref: Reference
    interval: float
    warming: np.ndarray


@dataclass(frozen=True)
class Assessment:
    p: np.ndarray  # tail probability per point (1.0 where the component has no opinion)
    label: np.ndarray | str  # the label the component gives where it fires (one for all points, or per point)
    stat: np.ndarray  # the statistic its tail model learns
    extra: dict[str, Any] = field(default_factory=dict)


class Component(ABC):
    name: ClassVar[str]
    # Days of data before the component has a say: a statistic that moves slowly (a CUSUM, a
    # slope) needs more history than one point's deviation before its tail can be trusted.
    warmup_days: ClassVar[float] = 0.0
    # Whether the statistic seen during the warm-up is worth learning: a CUSUM's is (it only
    # makes the model more careful), the slow level's is not (it swings with the daily cycle
    # until the seasonality is known).
    learns_while_warming: ClassVar[bool] = True

    @abstractmethod
    def initial_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def assess(self, state: dict[str, Any], chunk: Chunk) -> Assessment: ...

    @abstractmethod
    def learn(
        self, state: dict[str, Any], chunk: Chunk, assessment: Assessment, weights: np.ndarray, upto: int
    ) -> dict[str, Any]:
        """The state after the first `upto` points of the chunk, learning each point with its
        weight (`learning_weights`: 1 normal, less when anomalous, 0 while still warming up)."""


class Deviation(Component):
    """Spikes, dips and seasonal breaks: |robust z| of a point against the baseline.

    A point far from its phase's expected value but inside the series' usual range (the 2nd to
    98th percentile of the last week's hourly means) is a seasonal break: normal for another
    time of day, wrong for this one.
    """

    name = "seasonal"

    def initial_state(self) -> dict[str, Any]:
        return {"tail": TailModel.prior(mean=1.0, top=16.0).to_state()}

    def assess(self, state: dict[str, Any], chunk: Chunk) -> Assessment:
        z = chunk.ref.z
        stat = np.abs(z)
        p = TailModel.from_state(state["tail"]).probability(stat)
        vs, ref = chunk.vs, chunk.ref
        within = (vs >= ref.typical_low) & (vs <= ref.typical_high) if ref.period else np.zeros(len(vs), dtype=bool)
        label = np.where(within, "seasonal_break", np.where(z > 0, "spike", "dip"))
        return Assessment(p=p, label=label, stat=stat)

    def learn(
        self, state: dict[str, Any], chunk: Chunk, assessment: Assessment, weights: np.ndarray, upto: int
    ) -> dict[str, Any]:
        tail = TailModel.from_state(state["tail"]).learn(assessment.stat[:upto], weights[:upto])
        return {"tail": tail.to_state()}

    def band(self, state: dict[str, Any], p: float) -> float:
        """|z| at which a point reaches tail probability p."""
        return TailModel.from_state(state["tail"]).quantile(p)


class LevelShift(Component):
    """Level shifts and trend changes: a two-sided CUSUM of the baseline's z, clipped so one
    spike cannot fire it. When it fires the caller moves the baseline to the new level
    (`shift_at`) and the CUSUM restarts, so a shift is reported once and then is the norm."""

    name = "level_shift"
    warmup_days = 2.0
    K = 0.5  # allowance, in sds: half the smallest shift worth finding quickly
    MIN_SHIFT = 2.5
    CLIP = 4.0

    def initial_state(self) -> dict[str, Any]:
        return {"up": 0.0, "down": 0.0, "up_n": 0, "down_n": 0, "tail": TailModel.prior(mean=1.5, top=48.0).to_state()}

    def assess(self, state: dict[str, Any], chunk: Chunk) -> Assessment:
        # Nothing accumulates while the baseline is still warming up.
        y = np.where(chunk.warming, -np.inf, np.clip(chunk.ref.z, -self.CLIP, self.CLIP))
        up = _cusum(state["up"], np.where(chunk.warming, -np.inf, y - self.K))
        down = _cusum(state["down"], np.where(chunk.warming, -np.inf, -y - self.K))
        stat = np.maximum(up, down)
        p = TailModel.from_state(state["tail"]).probability(stat)
        direction = np.where(up >= down, 1, -1)
        # A CUSUM also climbs on a long run of small same-signed residuals (noise that drifts,
        # a slightly wrong seasonal profile). Only a step as large as MIN_SHIFT sds on average
        # since the CUSUM left 0 is a level shift a person would call one.
        up_n, down_n = _run_lengths(up > 0, state.get("up_n", 0)), _run_lengths(down > 0, state.get("down_n", 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(direction > 0, up / up_n, down / down_n) + self.K
        p = np.where(mean >= self.MIN_SHIFT, p, 1.0)
        label = "level_shift"
        extra = {"up": up, "down": down, "direction": direction, "up_n": up_n, "down_n": down_n}
        return Assessment(p=p, label=label, stat=stat, extra=extra)

    def shift_at(self, chunk: Chunk, assessment: Assessment, i: int) -> float:
        """The size of the shift confirmed at point i: the mean residual since the CUSUM left 0."""
        side = assessment.extra["up"] if assessment.extra["direction"][i] > 0 else assessment.extra["down"]
        zeros = np.flatnonzero(side[: i + 1] == 0)
        start = zeros[-1] + 1 if len(zeros) else 0
        residual = chunk.vs[start : i + 1] - chunk.ref.expected[start : i + 1]
        return float(np.median(residual))

    def learn(
        self, state: dict[str, Any], chunk: Chunk, assessment: Assessment, weights: np.ndarray, upto: int
    ) -> dict[str, Any]:
        tail = TailModel.from_state(state["tail"]).learn(assessment.stat[:upto], weights[:upto])
        return {
            **state,
            "up": float(assessment.extra["up"][upto - 1]),
            "down": float(assessment.extra["down"][upto - 1]),
            "up_n": int(assessment.extra["up_n"][upto - 1]),
            "down_n": int(assessment.extra["down_n"][upto - 1]),
            "tail": tail.to_state(),
        }

    def confirmed(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state after a confirmed shift: the CUSUM starts again from 0."""
        return {**state, "up": 0.0, "down": 0.0, "up_n": 0, "down_n": 0}


class TrendChange(Component):
    """A level that moved away gradually: the fast level (the last hour or so) against the
    slow one (about a day), in sds. A sudden move is the level-shift component's, which is
    quicker; a ramp the fast level follows shows here. When it fires the slow level settles
    on the fast one, so a ramp is reported once, not for the day the slow level would take."""

    name = "trend_change"
    WINDOW = 60  # the baseline's
    MIN_MOVE = 1.5
    warmup_days = 3.0  # a day after the seasonality can be known
    learns_while_warming = False

    def initial_state(self) -> dict[str, Any]:
        return {"tail": TailModel.prior(mean=1.0, top=16.0).to_state()}

    def assess(self, state: dict[str, Any], chunk: Chunk) -> Assessment:
        ref = chunk.ref
        if ref.anchor is None:
            stat = np.zeros(len(chunk.ts))
        else:
            stat = np.where(chunk.warming, 0.0, np.abs(ref.level - ref.anchor) / ref.scale)
        p = TailModel.from_state(state["tail"]).probability(stat)
        if ref.anchor is not None:
            # A trend is a level still on its way: moving away from the slow level by at least
            # MIN_MOVE sds a window. A level that got somewhere and stays is no longer a trend
            # (and was either found on its way or was a step for the level-shift component).
            away = np.sign(ref.slope) == np.sign(ref.level - ref.anchor)
            moving = away & (np.abs(ref.slope) * self.WINDOW >= self.MIN_MOVE * ref.scale)
            p = np.where(moving, p, 1.0)
        return Assessment(p=p, label="trend_change", stat=stat)

    def learn(
        self, state: dict[str, Any], chunk: Chunk, assessment: Assessment, weights: np.ndarray, upto: int
    ) -> dict[str, Any]:
        tail = TailModel.from_state(state["tail"]).learn(assessment.stat[:upto], weights[:upto])
        return {"tail": tail.to_state()}


def _run_lengths(on: np.ndarray, carried: int) -> np.ndarray:
    """For each point, how many consecutive points up to it are `on` (plus `carried` before)."""
    count = np.cumsum(on)
    reset = np.maximum.accumulate(np.where(~on, count, 0))
    return count - reset + np.where(np.cumsum(~on) > 0, 0, carried)


def _cusum(start: float, increments: np.ndarray) -> np.ndarray:
    """S_t = max(0, S_{t-1} + x_t) for all t at once: S_t = C_t - min(0, min_{s<=t} C_s)."""
    if np.isneginf(increments).any():  # a forced reset: run the recursion piecewise
        out = np.empty(len(increments))
        s = start
        for i, x in enumerate(increments):
            s = max(0.0, s + x)
            out[i] = s
        return out
    c = start + np.cumsum(increments)
    return c - np.minimum.accumulate(np.minimum(c, 0.0))


class VarianceChange(Component):
    """Noise grown beyond its usual size: log of the recent robust spread of the residuals over
    their long-run spread (a slow average, so the change stays visible while it lasts)."""

    name = "variance_change"
    WINDOW, STRIDE = 30, 5
    MEMORY = 1440.0  # points over which the long-run spread follows a lasting change

    def initial_state(self) -> dict[str, Any]:
        return {"long": None, "recent": pack(np.empty(0)), "tail": TailModel.prior(mean=0.3, top=4.0).to_state()}

    def assess(self, state: dict[str, Any], chunk: Chunk) -> Assessment:
        residual = np.abs(chunk.vs - chunk.ref.expected)
        recent = unpack(state["recent"])
        long = state["long"]
        if long is None or len(recent) < self.WINDOW:
            ones = np.ones(len(residual))
            return Assessment(p=ones, label="variance_change", stat=np.zeros(len(residual)))
        centre, _, _ = block_references(recent, residual, window=self.WINDOW, stride=self.STRIDE, scale=False)
        stat = np.maximum(0.0, np.log(np.maximum(centre * MAD_TO_SD, 1e-12) / long))
        p = TailModel.from_state(state["tail"]).probability(stat)
        return Assessment(p=p, label="variance_change", stat=stat)

    def learn(
        self, state: dict[str, Any], chunk: Chunk, assessment: Assessment, weights: np.ndarray, upto: int
    ) -> dict[str, Any]:
        residual = np.abs(chunk.vs[:upto] - chunk.ref.expected[:upto])
        recent = np.concatenate([unpack(state["recent"]), residual])[-self.WINDOW :]
        long = state["long"]
        # The long-run spread starts once a full window of residuals exists (one residual of 0
        # would make every later one look huge), floored by the baseline's own scale. It then
        # learns from every point (clipped), so a lasting change of the noise becomes the norm
        # within about MEMORY points instead of alarming for ever.
        long = state["long"]
        if long is None:
            if len(recent) >= self.WINDOW:
                long = max(float(np.median(recent)) * MAD_TO_SD, float(np.median(chunk.ref.scale[:upto])))
        else:
            clipped = np.minimum(residual, 4 * long) * MEAN_AD_TO_SD
            weight = 1 - np.exp(-len(residual) / self.MEMORY)
            long = max(long + weight * (float(clipped.mean()) - long), 1e-12)
        tail = TailModel.from_state(state["tail"]).learn(assessment.stat[:upto], weights[:upto])
        return {"long": long, "recent": pack(recent), "tail": tail.to_state()}


class Flatline(Component):
    """A series that stopped changing: a run of exactly repeated values, scored by how unlikely
    such a run is given how often the series repeated a value before (p = rate ** run).

    Only fires for a series that varied before the run began (at least `MIN_HISTORY` changes
    seen), so a series constant from its first point is not a flatline, just constant.
    """

    name = "flatline"
    MIN_HISTORY = 100
    MEMORY = 5000.0

    def initial_state(self) -> dict[str, Any]:
        return {"last": None, "run": 0, "repeats": 1.0, "diffs": 20.0, "changes": 0}

    def assess(self, state: dict[str, Any], chunk: Chunk) -> Assessment:
        vs = chunk.vs
        previous = np.concatenate([[state["last"] if state["last"] is not None else np.nan], vs[:-1]])
        same = np.abs(vs - previous) <= 1e-12 * np.maximum(1.0, np.abs(vs))
        count = np.cumsum(same)
        reset = np.maximum.accumulate(np.where(~same, count, 0))
        changed = np.cumsum(~same) > 0
        run = count - reset + np.where(changed, 0, state["run"])
        rate = float(np.clip(state["repeats"] / state["diffs"], 0.05, 0.999))
        p = np.where(run > 0, rate ** run.astype(np.float64), 1.0)
        changes = state["changes"] + np.cumsum(~same)
        p = np.where(changes >= self.MIN_HISTORY, p, 1.0)
        return Assessment(p=p, label="flatline", stat=run.astype(np.float64), extra={"same": same})

    def learn(
        self, state: dict[str, Any], chunk: Chunk, assessment: Assessment, weights: np.ndarray, upto: int
    ) -> dict[str, Any]:
        same = assessment.extra["same"][:upto]
        learned = same[weights[:upto] == 1.0]
        decay = np.exp(-len(learned) / self.MEMORY)
        return {
            "last": float(chunk.vs[upto - 1]),
            "run": int(assessment.stat[upto - 1]),
            "repeats": state["repeats"] * decay + float(learned.sum()),
            "diffs": state["diffs"] * decay + float(len(learned)),
            "changes": state["changes"] + int((~same).sum()),
        }
