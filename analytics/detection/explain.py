"""Anomalies in words: the sentence an operator reads, and the same facts as JSON.

Pure (no Django, no I/O): the detection services pass an `AnomalyWindow` (or, for a node,
its metrics' contributions) and the series' metadata, and store both results on the
anomaly. The sentence is for people, the dict is for programs (the API, alert templates,
webhooks) and holds every number of the sentence unrounded, so nothing is parsed back out
of text.

Example::

    latency_p99 on web-1 was 912 ms at 2025-01-01 14:03 UTC, expected 240 ms (normal range
    180-310 ms): 7.4 robust standard deviations above normal. Level shift from 14:01 to
    14:09, detected by level_shift, robust_zscore; daily seasonality used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

# Periods with a name, in seconds; a period within 5 % of one takes its name.
SEASONALITIES: tuple[tuple[float, str], ...] = ((3600.0, "hourly"), (86_400.0, "daily"), (604_800.0, "weekly"))
_PERCENT_UNITS = {"%", "percent", "pct"}
_DASH = "\N{EN DASH}"


class WindowLike(Protocol):
    """What `explain` reads of a window: `analytics.detection.windows.AnomalyWindow` has it."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def peak_ts(self) -> float: ...
    @property
    def peak_score(self) -> float: ...
    @property
    def label(self) -> str: ...
    @property
    def observed(self) -> float: ...
    @property
    def expected(self) -> float: ...
    @property
    def lower(self) -> float: ...
    @property
    def upper(self) -> float: ...
    @property
    def deviation(self) -> float: ...
    @property
    def detectors(self) -> tuple[str, ...]: ...
    @property
    def points(self) -> int: ...


def explain(
    window: WindowLike,
    *,
    metric: str,
    unit: str,
    period: float | None,
    detectors: Sequence[str] | None = None,
    node: str = "",
) -> tuple[str, dict[str, Any]]:
    """The sentence and the facts of one anomaly window of one series.

    `period` is the seasonality the detector used, in seconds (None: none); `detectors`
    the detectors that fired (default: the window's). Non-finite numbers (a detector that
    has no expected value) are left out of the sentence and are None in the dict.
    """
    fired = tuple(detectors) if detectors is not None else tuple(window.detectors)
    observed, expected = _finite(window.observed), _finite(window.expected)
    lower, upper, deviation = _finite(window.lower), _finite(window.upper), _finite(window.deviation)
    season = seasonality_name(period)

    subject = f"{metric} on {node}" if node else metric
    parts = [f"{subject} was {format_value(observed, unit)} at {_when(window.peak_ts)}"]
    if expected is not None:
        parts.append(f", expected {format_value(expected, unit)}")
    if lower is not None and upper is not None:
        parts.append(f" (normal range {format_range(lower, upper, unit)})")
    if deviation is not None:
        parts.append(
            f": {abs(deviation):.1f} robust standard deviations {'above' if deviation >= 0 else 'below'} normal"
        )
    sentence = "".join(parts) + "."
    tail = label_text(window.label)
    if window.end > window.start:
        tail += f" from {_clock(window.start, window.peak_ts)} to {_clock(window.end, window.peak_ts)},"
    if fired:
        tail += f" detected by {', '.join(fired)}"
    tail = tail.rstrip(",")
    tail += f"; {season} seasonality used." if period else "; no seasonality."
    facts: dict[str, Any] = {
        "kind": "series",
        "metric": metric,
        "node": node,
        "unit": unit,
        "observed": observed,
        "expected": expected,
        "lower": lower,
        "upper": upper,
        "band": [lower, upper],
        "deviation": deviation,
        "direction": None if deviation is None else ("above" if deviation >= 0 else "below"),
        "label": window.label,
        "detectors": list(fired),
        "score": _finite(window.peak_score),
        "peak_ts": _iso(window.peak_ts),
        "start": _iso(window.start),
        "end": _iso(window.end),
        "points": window.points,
        "seasonality": season,
        "seasonality_seconds": _finite(period) if period else None,
    }
    return f"{sentence} {tail}", facts


def explain_node(
    *,
    node: str,
    start: float,
    end: float,
    peak_ts: float,
    peak_score: float,
    label: str,
    detector: str,
    contributions: Mapping[str, float],
    observed: Mapping[str, float],
    expected: Mapping[str, float],
    units: Mapping[str, str] | None = None,
    top: int = 3,
    points: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The sentence and the facts of one node-level (multivariate) anomaly.

    `contributions` is each metric's share of the anomaly at the peak (they need not sum
    to 1; they are normalised here), `observed` and `expected` its values there. The
    sentence names the `top` contributing metrics, biggest first, with their share and
    their observed and expected values; the dict lists every metric with a share.
    """
    units = units or {}
    total = sum(max(share, 0.0) for share in contributions.values() if math.isfinite(share))
    shares = {
        metric: (max(share, 0.0) / total if total > 0 else 0.0)
        for metric, share in contributions.items()
        if math.isfinite(share)
    }
    ranked = sorted(shares, key=lambda metric: (-shares[metric], metric))
    metrics: list[dict[str, Any]] = []
    for metric in ranked:
        obs, exp = _finite(observed.get(metric)), _finite(expected.get(metric))
        direction = None if obs is None or exp is None else ("above" if obs >= exp else "below")
        metrics.append(
            {
                "metric": metric,
                "share": shares[metric],
                "observed": obs,
                "expected": exp,
                "direction": direction,
                "unit": units.get(metric, ""),
            }
        )
    phrases = []
    for item in metrics[:top]:
        phrase = f"{item['metric']} ({item['share']:.0%}"
        if item["observed"] is not None:
            phrase += f", {format_value(item['observed'], item['unit'])}"
            if item["expected"] is not None:
                phrase += f" vs {format_value(item['expected'], item['unit'])} expected"
        phrases.append(phrase + ")")
    sentence = f"{node} behaved unusually at {_when(peak_ts)} (score {peak_score:.2f})"
    if end > start:
        sentence += f", from {_clock(start, peak_ts)} to {_clock(end, peak_ts)}"
    sentence += "."
    if phrases:
        sentence += f" {label_text(label)} driven by {_join(phrases)}"
    else:
        sentence += f" {label_text(label)}"
    sentence += f"; detected by {detector}."
    facts: dict[str, Any] = {
        "kind": "node",
        "node": node,
        "label": label,
        "detectors": [detector],
        "score": _finite(peak_score),
        "peak_ts": _iso(peak_ts),
        "start": _iso(start),
        "end": _iso(end),
        "points": points,
        "top_metrics": [item["metric"] for item in metrics[:top]],
        "contributions": metrics,
    }
    return sentence, facts


def seasonality_name(period: float | None) -> str:
    """ "hourly", "daily", "weekly", another period as a duration ("12h"), or "none"."""
    if period is None or not math.isfinite(period) or period <= 0:
        return "none"
    for seconds, name in SEASONALITIES:
        if abs(period - seconds) <= 0.05 * seconds:
            return name
    return format_duration(period)


def format_duration(seconds: float) -> str:
    """A period as a short duration: 90 -> "90s", 1800 -> "30min", 43200 -> "12h", 172800 -> "2d"."""
    for size, suffix in ((86_400.0, "d"), (3600.0, "h"), (60.0, "min")):
        if seconds >= size:
            return f"{_number(seconds / size)}{suffix}"
    return f"{_number(seconds)}s"


def format_value(value: float | None, unit: str) -> str:
    """A value for people: a few significant digits, with its unit ("912 ms", "42.5%")."""
    if value is None:
        return "n/a"
    if unit.lower() in _PERCENT_UNITS:
        return f"{_number(value)}%"
    return f"{_number(value)} {unit}" if unit else _number(value)


def format_range(lower: float, upper: float, unit: str) -> str:
    """The band with an en dash and the unit once, after the upper bound ("180-310 ms")."""
    if unit.lower() in _PERCENT_UNITS:
        return f"{_number(lower)}{_DASH}{_number(upper)}%"
    return f"{_number(lower)}{_DASH}{_number(upper)}" + (f" {unit}" if unit else "")


def label_text(label: str) -> str:
    """ "level_shift" -> "Level shift"; "" -> "Anomaly"."""
    return label.replace("_", " ").capitalize() if label else "Anomaly"


def _number(value: float) -> str:
    """Three or four significant digits, thousands separated, no needless zeros."""
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1e9 or magnitude < 1e-3:
        return f"{value:.3g}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return _trim(f"{value:.1f}")
    return _trim(f"{value:.3g}") if magnitude < 1 else _trim(f"{value:.2f}")


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text and "e" not in text else text


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _iso(ts: float) -> str:
    return _utc(ts).isoformat()


def _when(ts: float) -> str:
    return f"{_utc(ts):%Y-%m-%d %H:%M} UTC"


def _clock(ts: float, reference: float) -> str:
    """The time of day, with the date only when it differs from the reference's."""
    moment, ref = _utc(ts), _utc(reference)
    return f"{moment:%H:%M}" if moment.date() == ref.date() else f"{moment:%Y-%m-%d %H:%M}"


def _join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"
