"""Seasonal baseline: the period found in the data, the expected value and spread per phase.

The model of a point is  value = level + profile(phase) + noise:
- the period is detected from the series itself, on hourly means kept in the state (three
  weeks): daily or weekly when the autocorrelation at that lag is strong, else the strongest
  other autocorrelation peak, else none (then the profile is 0 and the baseline is a plain
  robust rolling median, as in robust_zscore);
- the profile (expected value per phase bin, linearly interpolated between bins) starts from
  the hourly means averaged over cycles and is refined point by point; the spread per phase
  bin is learned from the residuals, so quiet nights and busy days each get their own band;
- the level is the rolling median of the deseasonalised values (adapts within a window);
  a confirmed level shift moves it at once (`Baseline.rebase`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.signal import lfilter

from analytics.detection.calibration import pack, unpack
from analytics.detection.robust import rolling_reference

HOUR = 3600.0
HISTORY_HOURS = 21 * 24
DAY_HOURS, WEEK_HOURS = 24, 168
MIN_AUTOCORRELATION = 0.3
KEEP_AUTOCORRELATION = 0.15
# Profile resolution: 5-minute bins for a daily period, 30-minute bins for a weekly one.
MAX_BINS = {DAY_HOURS: 288, WEEK_HOURS: 336}
PROFILE_RATE = 0.2  # share of a bin's expected value renewed per cycle
CLIP = 3.0  # residuals learned by the profile and spread are clipped at this many sds


def period_detect(hours: np.ndarray, current: float | None = None) -> float | None:
    """The seasonality of hourly means (oldest first, NaN where missing), in seconds, or None.

    Daily needs two days of data, weekly two weeks; weekly wins over daily only when its
    autocorrelation is clearly higher (a weekly profile also holds the daily shape).
    """
    known = np.flatnonzero(np.isfinite(hours))
    if len(known) < 2 * DAY_HOURS:
        return None
    y = hours[known[0] :]
    missing = ~np.isfinite(y)
    if missing.mean() > 0.3:
        return None
    x = np.arange(len(y))
    y = np.interp(x, x[~missing], y[~missing])
    y = y - np.polyval(np.polyfit(x, y, 1), x)
    if y.std() == 0:
        return None

    def acf(lag: int) -> float:
        if lag >= len(y) // 2 + 1:
            return -1.0
        a, b = y[:-lag], y[lag:]
        denominator = a.std() * b.std()
        return float(((a - a.mean()) * (b - b.mean())).mean() / denominator) if denominator > 0 else -1.0

    def significant(lag: int) -> float:
        """The autocorrelation noise alone reaches rarely (3 sds of it) on this many pairs."""
        return max(MIN_AUTOCORRELATION, 3.0 / np.sqrt(max(len(y) - lag, 1)))

    if current is not None and acf(round(current / HOUR)) >= KEEP_AUTOCORRELATION:
        return current  # hysteresis: a period once found is kept while it is still there
    daily, weekly = acf(DAY_HOURS), acf(WEEK_HOURS) if len(y) >= 2 * WEEK_HOURS else -1.0
    if weekly >= significant(WEEK_HOURS) and weekly > daily + 0.1:
        return WEEK_HOURS * HOUR
    if daily >= significant(DAY_HOURS):
        return DAY_HOURS * HOUR
    lags = np.arange(3, len(y) // 2)
    if not len(lags):
        return None
    values = np.array([acf(int(lag)) for lag in lags])
    strong = np.array([max(0.5, significant(int(lag))) for lag in lags[1:-1]])
    peaks = (values[1:-1] > values[:-2]) & (values[1:-1] >= values[2:]) & (values[1:-1] >= strong)
    if not peaks.any():
        return None
    best = lags[1:-1][peaks][np.argmax(values[1:-1][peaks])]
    return float(best) * HOUR


@dataclass(frozen=True)
class Reference:
    """The baseline's view of a chunk of points: what was expected and how far each point is."""

    expected: np.ndarray
    scale: np.ndarray
    z: np.ndarray
    deseasonalised: np.ndarray
    level: np.ndarray  # the fast level of the deseasonalised values, per point
    anchor: np.ndarray | None  # their slow level before each point
    slope: np.ndarray  # of the level, per point
    period: float | None
    typical_low: float
    typical_high: float


class Baseline:
    """Expected value and scale per point (see the module docstring). State in a plain dict."""

    def __init__(self, *, window: int = 60, stride: int = 10) -> None:
        self.window, self.stride = window, stride

    def initial_state(self) -> dict[str, Any]:
        return {
            "period": None,
            "profile": pack(np.empty(0)),
            "spread": pack(np.empty(0)),
            "visits": pack(np.empty(0)),
            "recent": pack(np.empty(0)),
            "anchor": None,  # the slow level of the deseasonalised values (about a day)
            "hours": pack(np.full(HISTORY_HOURS, np.nan)),
            "hour_end": None,  # ts // 3600 of the newest slot of `hours`, the hour in progress
            "hour_count": 0,  # points in that hour so far
            "typical": None,  # [low, high]: the usual range, once a day of history exists
            "checked_hour": None,
        }

    def reference(self, state: dict[str, Any], ts: np.ndarray, vs: np.ndarray, interval: float) -> Reference:
        period = state["period"]
        profile, spread, visits = unpack(state["profile"]), unpack(state["spread"]), unpack(state["visits"])
        seasonal = np.zeros(len(vs))
        phase_scale = None
        if period and len(profile):
            b0, b1, frac = _bins(ts, period, len(profile))
            seasonal = _profile_at(ts, profile, period)
            learned = (visits[b0] >= 3) & (visits[b1] >= 3)
            phase_scale = np.where(learned, spread[b0] * (1 - frac) + spread[b1] * frac, 0.0)
        deseasonalised = vs - seasonal
        level, window_scale, slope = rolling_reference(
            unpack(state["recent"]), deseasonalised, window=self.window, stride=self.stride, trend=True
        )
        scale = window_scale if phase_scale is None else np.maximum(window_scale, phase_scale)
        expected = level + seasonal
        low, high = state["typical"] or (np.inf, -np.inf)
        return Reference(
            expected=expected,
            scale=scale,
            z=(vs - expected) / scale,
            deseasonalised=deseasonalised,
            level=level,
            anchor=self._slow_level(state["anchor"], deseasonalised, scale, interval),
            slope=slope,
            period=period,
            typical_low=float(low),
            typical_high=float(high),
        )

    def learn(
        self, state: dict[str, Any], ts: np.ndarray, vs: np.ndarray, ref: Reference, normal: np.ndarray, interval: float
    ) -> dict[str, Any]:
        """The state after the chunk: window, profile and spread (from normal points), hourly
        history, and the period re-checked once a day of data."""
        state = dict(state)
        # Anomalous points stay out of the level: a spike, a flatline or a burst of noise must
        # not drag the baseline after it. A lasting change is followed through `rebase`.
        recent = np.concatenate([unpack(state["recent"]), ref.deseasonalised[normal]])[-self.window :]
        state["recent"] = pack(recent)
        period = state["period"]
        profile, spread, visits = unpack(state["profile"]), unpack(state["spread"]), unpack(state["visits"])
        if not normal.any():
            return self._history(state, ts, vs, interval)
        limit = CLIP * ref.scale[normal]
        # The profile learns the shape around the slow level (the anchor), not around the fast
        # one: the fast level would absorb any slowly varying error of the profile and leave it
        # uncorrected, and it is frozen during an anomaly. The slow level learns from normal
        # points only.
        if state["anchor"] is None:
            state["anchor"] = float(np.median(ref.deseasonalised[normal]))
            anchor = np.full(int(normal.sum()), state["anchor"])
        else:
            known = ref.anchor
            anchor = known[normal] if known is not None else np.full(int(normal.sum()), state["anchor"])
            slow = self._slow_level(
                state["anchor"], ref.deseasonalised[normal], ref.scale[normal], interval, after=True
            )
            state["anchor"] = float(slow[-1]) if slow is not None else state["anchor"]
        shape = np.clip(ref.deseasonalised[normal] - anchor, -limit, limit)
        if period and len(profile):
            b0, _, _ = _bins(ts[normal], period, len(profile))
            residual = np.clip(vs[normal] - ref.expected[normal], -limit, limit)
            per_cycle = max(1.0, period / len(profile) / interval)  # points a bin gets per cycle
            rate = PROFILE_RATE / per_cycle
            count = np.bincount(b0, minlength=len(profile))
            profile = profile + rate * np.bincount(b0, weights=shape, minlength=len(profile))
            seen = count > 0
            mean_abs = np.bincount(b0, weights=np.abs(residual), minlength=len(profile))[seen] / count[seen]
            fresh = visits[seen] == 0
            step = np.where(fresh, 1.0, np.minimum(1.0, rate * count[seen]))
            spread[seen] = spread[seen] + step * (mean_abs * 1.2533 - spread[seen])
            visits = visits + count / per_cycle
            state.update(profile=pack(profile), spread=pack(spread), visits=pack(visits))
        return self._history(state, ts, vs, interval)

    @staticmethod
    def _slow_level(
        anchor: float | None, deseasonalised: np.ndarray, scale: np.ndarray, interval: float, *, after: bool = False
    ) -> np.ndarray | None:
        """The slow level before each point (or, with `after`, including it): an exponential
        average over about a day of the deseasonalised values, each clipped to CLIP sds of it."""
        if anchor is None:
            return None
        alpha = 1.0 - np.exp(-interval / 86_400.0)
        moves = np.clip(deseasonalised - anchor, -CLIP * scale, CLIP * scale)
        level = anchor + lfilter([alpha], [1.0, alpha - 1.0], moves)
        return level if after else np.concatenate([[anchor], level[:-1]])

    def rebase(self, state: dict[str, Any], delta: float, anchor: float | None) -> dict[str, Any]:
        """Move the fast level by `delta` and the slow one to `anchor`, at once (a confirmed
        level shift or trend, or its undoing)."""
        return {**state, "recent": pack(unpack(state["recent"]) + delta), "anchor": anchor}

    def _history(self, state: dict[str, Any], ts: np.ndarray, vs: np.ndarray, interval: float) -> dict[str, Any]:
        """Fold the chunk into the hourly means (the newest slot is the hour in progress)."""
        hours = unpack(state["hours"])
        slot = np.floor(ts / HOUR).astype(np.int64)
        end = int(slot[0]) if state["hour_end"] is None else state["hour_end"]
        newest = max(end, int(slot[-1]))
        counts = np.zeros(HISTORY_HOURS)
        shift = newest - end
        if shift:
            hours = np.concatenate([hours[min(shift, HISTORY_HOURS) :], np.full(min(shift, HISTORY_HOURS), np.nan)])
        if shift < HISTORY_HOURS:
            counts[HISTORY_HOURS - 1 - shift] = state["hour_count"]
        index = HISTORY_HOURS - 1 - (newest - slot)
        valid = index >= 0
        added = np.bincount(index[valid], minlength=HISTORY_HOURS)
        sums = np.bincount(index[valid], weights=vs[valid], minlength=HISTORY_HOURS)
        total = counts + added
        hours = np.where(added > 0, (np.nan_to_num(hours) * counts + sums) / np.maximum(total, 1), hours)
        state.update(hours=pack(hours), hour_end=newest, hour_count=int(total[-1]))
        if shift:
            # The series' usual range: the 2nd to 98th percentile of the last week's hourly means.
            week = hours[-7 * DAY_HOURS :]
            week = week[np.isfinite(week)]
            if len(week) >= DAY_HOURS:
                state["typical"] = [float(x) for x in np.percentile(week, [2, 98])]
        checked = state["checked_hour"]
        if checked is None or newest - checked >= DAY_HOURS:
            state["checked_hour"] = newest
            state = self._seasonality(state, hours, float(ts[-1]), interval)
        return state

    def _seasonality(self, state: dict[str, Any], hours: np.ndarray, last_ts: float, interval: float) -> dict[str, Any]:
        period = period_detect(hours, state["period"])
        if period == state["period"]:
            return state
        recent = unpack(state["recent"])
        back = ts_back(last_ts, interval, len(recent))
        old = _profile_at(back, unpack(state["profile"]), state["period"])
        if period is None:
            # Without the profile the deseasonalised values are the values: re-express the
            # level's window and the slow level accordingly.
            mean_profile = float(unpack(state["profile"]).mean()) if state["period"] else 0.0
            anchor = state["anchor"] + mean_profile if state["anchor"] is not None else None
            return {
                **state,
                "period": None,
                "profile": pack(np.empty(0)),
                "spread": pack(np.empty(0)),
                "visits": pack(np.empty(0)),
                "recent": pack(recent + old),
                "anchor": anchor,
            }
        cycle_hours = round(period / HOUR)
        bins = int(min(MAX_BINS.get(cycle_hours, 288), max(1, round(period / max(interval, 1.0)))))
        # Phase-average the hourly means over the cycles held, then interpolate to the bins.
        end_hour = state["hour_end"]
        slots = np.arange(end_hour - HISTORY_HOURS + 1, end_hour + 1)
        phase = (slots % cycle_hours).astype(np.int64)
        known = np.isfinite(hours)
        sums = np.bincount(phase[known], weights=hours[known], minlength=cycle_hours)
        counts = np.bincount(phase[known], minlength=cycle_hours)
        hourly = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        filled = np.isfinite(hourly)
        hourly = np.interp(np.arange(cycle_hours), np.flatnonzero(filled), hourly[filled], period=cycle_hours)
        centres = (np.arange(bins) + 0.5) * cycle_hours / bins - 0.5  # in hours, on the hourly grid
        profile = np.interp(centres, np.arange(cycle_hours), hourly, period=cycle_hours)
        # The window of the level held deseasonalised values under the old profile: re-express
        # it under the new one (its points were about one interval apart, ending at last_ts).
        recent = recent + old - _profile_at(back, profile, period)
        return {
            **state,
            "period": period,
            "profile": pack(profile),
            "spread": pack(np.zeros(bins)),
            "visits": pack(np.zeros(bins)),
            "recent": pack(recent),
            "anchor": float(np.median(recent)) if len(recent) else None,
        }


def _bins(ts: np.ndarray, period: float, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation between the two nearest bin centres: (left bin, right bin, weight of right)."""
    position = (ts % period) / period * bins - 0.5
    left = np.floor(position)
    frac = position - left
    b0 = left.astype(np.int64) % bins
    return b0, (b0 + 1) % bins, frac


def ts_back(last_ts: float, interval: float, n: int) -> np.ndarray:
    return last_ts - interval * np.arange(n - 1, -1, -1)


def _profile_at(ts: np.ndarray, profile: np.ndarray, period: float | None) -> np.ndarray:
    if not period or not len(profile):
        return np.zeros(len(ts))
    b0, b1, frac = _bins(ts, period, len(profile))
    return profile[b0] * (1 - frac) + profile[b1] * frac
