"""Feedback that changes behaviour: suppression rules learned from a scope's judged anomalies.

People mark anomalies true_positive, false_positive or expected. Training turns the negatives
(false positive, expected) into rules, like the custom rules of Elastic's detectors ("skip the
result when the actual value is below X"), that the trained version carries and streaming
applies (`rules_apply`):

- Negatives are grouped by direction (above or below what was expected). A group needs
  MIN_EXAMPLES anomalies before it is a pattern: one mistaken report is not.
- If at least MIN_EXAMPLES of a group peaked within CLUSTER_SECONDS of each other by time of
  day (UTC; circular, so 23:50 and 00:10 are close), the rule covers that time of day (their
  span widened by TIME_MARGIN_SECONDS on each side): the nightly backup spike. The rest of the
  group, if still MIN_EXAMPLES, makes a rule for any time of day.
- A rule holds back anomalous points in its direction whose deviation (robust standard
  deviations from expected) is at most MARGIN times the largest deviation among its examples:
  the same pattern, a little larger, is still the pattern; a much larger one is news.
- True positives win: a rule never covers a true positive. Its bound drops below the smallest
  deviation of a true positive it would otherwise cover, and a rule left with nothing is dropped.

A held-back point is scored as normal: not anomalous, no label, its score capped below the
sensitivity's threshold, so no anomaly is opened and no anomaly alert fires.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from analytics.detection import Scores

MIN_EXAMPLES = 3
MARGIN = 1.5
CLUSTER_SECONDS = 2 * 3600.0
TIME_MARGIN_SECONDS = 1800.0
DAY = 86400.0
NEGATIVE = ("false_positive", "expected")


@dataclass(frozen=True)
class Judged:
    """The facts of one judged anomaly that rules learn from."""

    id: int
    feedback: str
    deviation: float | None  # at the peak, signed, in robust standard deviations
    peak_ts: float  # Unix seconds


Rule = dict[str, Any]  # {"direction", "max_deviation", "time_of_day": [from, to] | None, "anomalies": [ids]}


def rules_learn(judged: Iterable[Judged], *, min_examples: int = MIN_EXAMPLES, margin: float = MARGIN) -> list[Rule]:
    """The suppression rules that `judged` (a scope's anomalies with feedback) call for."""
    items = [j for j in judged if j.deviation is not None and math.isfinite(j.deviation)]
    negatives = [j for j in items if j.feedback in NEGATIVE]
    positives = [j for j in items if j.feedback == "true_positive"]
    rules: list[Rule] = []
    for direction in (1, -1):
        group = sorted((j for j in negatives if _sign(j.deviation) == direction), key=lambda j: j.id)
        if len(group) < min_examples:
            continue
        cluster, span = _time_cluster(group, min_examples)
        rest = [j for j in group if j not in cluster]
        for members, time_of_day in ((cluster, span), (rest, None)):
            if len(members) >= min_examples:
                rule = _rule(direction, members, time_of_day, positives, margin)
                if rule is not None:
                    rules.append(rule)
    return rules


def _sign(value: float | None) -> int:
    return 1 if (value or 0.0) >= 0 else -1


def _time_cluster(group: list[Judged], min_examples: int) -> tuple[list[Judged], list[float] | None]:
    """The largest set of `group` whose peaks lie within CLUSTER_SECONDS of each other by time of
    day, with its [from, to] (seconds after midnight UTC, widened; `from > to` wraps midnight),
    if it has `min_examples`; else ([], None)."""
    tods = sorted(((j.peak_ts % DAY), j.id) for j in group)
    n = len(tods)
    best: list[int] = []
    for i in range(n):
        members = [k for k in range(n) if (tods[k][0] - tods[i][0]) % DAY <= CLUSTER_SECONDS]
        if len(members) > len(best):
            best = members
    if len(best) < min_examples:
        return [], None
    first = tods[best[0]][0]
    width = max((tods[k][0] - first) % DAY for k in best)
    ids = {tods[k][1] for k in best}
    span = [(first - TIME_MARGIN_SECONDS) % DAY, (first + width + TIME_MARGIN_SECONDS) % DAY]
    return [j for j in group if j.id in ids], span


def _rule(
    direction: int, members: list[Judged], time_of_day: list[float] | None, positives: list[Judged], margin: float
) -> Rule | None:
    bound = margin * max(abs(j.deviation or 0.0) for j in members)
    covered = [
        abs(p.deviation or 0.0)
        for p in positives
        if _sign(p.deviation) == direction and _in_time(p.peak_ts, time_of_day)
    ]
    if covered:
        bound = min(bound, 0.9 * min(covered))
    if bound <= 0:
        return None
    return {
        "direction": direction,
        "max_deviation": round(bound, 6),
        "time_of_day": None if time_of_day is None else [round(t, 3) for t in time_of_day],
        "anomalies": sorted(j.id for j in members),
    }


def _in_time(ts: float, time_of_day: list[float] | None) -> bool:
    if time_of_day is None:
        return True
    start, end = time_of_day
    tod = ts % DAY
    return start <= tod <= end if start <= end else (tod >= start or tod <= end)


def rules_match(rules: list[Rule], timestamps: np.ndarray, deviation: np.ndarray) -> np.ndarray:
    """Which points (by their time and signed deviation) some rule covers."""
    ts = np.asarray(timestamps, dtype=np.float64)
    dev = np.nan_to_num(np.asarray(deviation, dtype=np.float64), nan=0.0)
    matched = np.zeros(len(ts), dtype=bool)
    tod = ts % DAY
    for rule in rules:
        hit = (np.where(dev >= 0, 1, -1) == rule["direction"]) & (np.abs(dev) <= rule["max_deviation"])
        if rule["time_of_day"] is not None:
            start, end = rule["time_of_day"]
            hit &= ((tod >= start) & (tod <= end)) if start <= end else ((tod >= start) | (tod <= end))
        matched |= hit
    return matched


def rules_apply(rules: list[Rule], scores: Scores, threshold: float) -> tuple[Scores, int]:
    """`scores` with the anomalous points the rules cover scored as normal (see the module),
    and how many there were."""
    if not rules or not scores.anomalous.any():
        return scores, 0
    held = scores.anomalous & rules_match(rules, scores.timestamps, scores.deviation)
    if not held.any():
        return scores, 0
    below = np.nextafter(threshold, 0.0)
    return (
        dataclasses.replace(
            scores,
            score=np.where(held, np.minimum(scores.score, below), scores.score),
            anomalous=scores.anomalous & ~held,
            label=np.where(held, "", scores.label).astype(object),
            detector=np.where(held, "", scores.detector).astype(object),
        ),
        int(held.sum()),
    )


def judged_rules_hold(rules: list[Rule], judged: Iterable[Judged]) -> list[int]:
    """The ids of `judged` anomalies that `rules` would hold back (at their peak)."""
    items = [j for j in judged if j.deviation is not None and math.isfinite(j.deviation)]
    if not items or not rules:
        return []
    matched = rules_match(rules, np.array([j.peak_ts for j in items]), np.array([j.deviation for j in items]))
    return [j.id for j, hit in zip(items, matched.tolist(), strict=True) if hit]
