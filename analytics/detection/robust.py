"""Robust rolling z-score: distance from the median of the recent window in MADs.

Adapts within a window (default 60 points) and knows nothing of seasonality. The
reference (median and scale) is recomputed every `stride` points from the `window` points
strictly before the block, so the score of a point never uses the point itself or later
ones, and a batch costs one median per block rather than one per point.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from analytics.detection.base import Detector, Scores, State, register
from analytics.detection.calibration import TailModel, pack, probability_for_score, score_from_probability, unpack

MAD_TO_SD = 1.4826  # MAD of a normal distribution * this = its standard deviation
MEAN_AD_TO_SD = 1.2533  # mean absolute deviation of a normal distribution * this = its sd


def robust_scale(windows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Standard deviation estimated robustly per row of `windows`, never zero.

    The MAD, floored by the mean absolute deviation (quantised series such as queue lengths
    have a MAD of 0 while they do vary) and by a tiny absolute and relative epsilon
    (a constant series), so nothing divides by zero.
    """
    absdev = np.abs(windows - centre[:, None])
    mad = np.median(absdev, axis=1) * MAD_TO_SD
    mean_ad = absdev.mean(axis=1) * MEAN_AD_TO_SD
    floor = 1e-9 + 1e-6 * np.abs(centre)
    return np.maximum(np.maximum(mad, mean_ad), floor)


def block_references(
    history: np.ndarray, values: np.ndarray, *, window: int, stride: int, trend: bool = False, scale: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and robust scale for each new value, from the `window` values before its block.

    `history` holds at least `window` earlier values. With `trend`, the median is carried
    forward along the window's robust slope (the difference of the medians of its halves),
    so a rolling median on a steady rise or a daily curve does not lag half a window behind.
    Returns per new value (median, scale, slope per point); the slope is 0 without `trend`,
    the scale 0 without `scale`.
    """
    buffer = np.concatenate([history[-window:], values])
    starts = np.arange(0, len(values), stride)
    windows = sliding_window_view(buffer, window)[starts]
    centre = np.median(windows, axis=1)
    spread = robust_scale(windows, centre) if scale else np.zeros(len(starts))
    counts = np.diff(np.append(starts, len(values)))
    centre, spread = np.repeat(centre, counts), np.repeat(spread, counts)
    if not trend:
        return centre, spread, np.zeros(len(values))
    half = window // 2
    slope = np.repeat((np.median(windows[:, half:], axis=1) - np.median(windows[:, :half], axis=1)) / half, counts)
    ahead = (window - 1) / 2 + 1 + (np.arange(len(values)) - np.repeat(starts, counts))
    return centre + slope * ahead, spread, slope


def rolling_reference(
    recent: np.ndarray, values: np.ndarray, *, window: int, stride: int, trend: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per new value: median and scale of the `window` values before it (see block_references).

    While fewer than `window` values exist (a new series), the first values see a growing
    window, one reference each: a path taken only during warm-up.
    """
    missing = window - len(recent)
    if missing <= 0:
        return block_references(recent, values, window=window, stride=stride, trend=trend)
    centre, scale, slope = np.empty(len(values)), np.empty(len(values)), np.zeros(len(values))
    head = min(missing, len(values))
    buffer = np.concatenate([recent, values])
    for i in range(head):
        past = buffer[: len(recent) + i][-window:]
        if not len(past):
            past = values[:1]
        centre[i] = np.median(past)
        scale[i] = robust_scale(past[None, :], centre[i : i + 1])[0]
    if head < len(values):
        centre[head:], scale[head:], slope[head:] = block_references(
            buffer[: len(recent) + head], values[head:], window=window, stride=stride, trend=trend
        )
    return centre, scale, slope


def interval_update(interval: float | None, last_ts: float | None, ts: np.ndarray) -> float | None:
    """The series' sampling interval in seconds: a running median of the gaps between points."""
    gaps = np.diff(ts if last_ts is None else np.concatenate([[last_ts], ts]))
    if not len(gaps):
        return interval
    fresh = float(np.clip(np.median(gaps), 1e-3, 86_400.0))
    if interval is None:
        return fresh
    weight = min(1.0, len(gaps) / 50)
    return float(np.exp((1 - weight) * np.log(interval) + weight * np.log(fresh)))


def per_day(interval: float | None) -> float:
    return 86_400.0 / interval if interval else 1440.0


@register
class RobustZScore(Detector):
    """Spikes and dips against a rolling median, in robust standard deviations."""

    name = "robust_zscore"

    def __init__(self, *, sensitivity: str = "medium", window: int = 60, stride: int = 10, min_points: int = 30):
        super().__init__(sensitivity=sensitivity)
        self.window, self.stride, self.min_points = window, stride, min_points

    def initial_state(self) -> State:
        return {
            "last_ts": None,
            "interval": None,
            "seen": 0,
            "recent": pack(np.empty(0)),
            "tail": TailModel.prior(mean=1.0, top=16.0).to_state(),
        }

    def _score(self, state: State, ts: np.ndarray, vs: np.ndarray) -> tuple[Scores, State]:
        recent = unpack(state["recent"])
        centre, scale, _ = rolling_reference(recent, vs, window=self.window, stride=self.stride)
        tail = TailModel.from_state(state["tail"])
        # Scored with the interval known before the chunk (causal); updated from it afterwards.
        interval = state["interval"] or interval_update(None, state["last_ts"], ts[:10])
        n_day = per_day(interval)

        z = (vs - centre) / scale
        score = score_from_probability(tail.probability(np.abs(z)), n_day)
        warming = state["seen"] + np.arange(1, len(vs) + 1) <= self.min_points
        score[warming] = 0.0
        anomalous = (score >= self.threshold) & ~warming
        band = tail.quantile(probability_for_score(self.threshold, n_day)) * scale
        label = np.where(anomalous, np.where(z > 0, "spike", "dip"), "").astype(object)

        scores = Scores(
            timestamps=ts,
            values=vs,
            score=score,
            expected=centre,
            lower=centre - band,
            upper=centre + band,
            deviation=z,
            warming=warming,
            anomalous=anomalous,
            label=label,
            detector=np.where(anomalous, self.name, "").astype(object),
        )
        new_state = {
            "last_ts": float(ts[-1]),
            "interval": interval_update(interval, state["last_ts"], ts),
            "seen": state["seen"] + len(vs),
            "recent": pack(np.concatenate([recent, vs])[-self.window :]),
            "tail": tail.learn(np.abs(z[~anomalous])).to_state(),
        }
        return scores, new_state
