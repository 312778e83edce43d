"""Rule conditions and the alert life cycle, without Django: parse a rule's JSON, judge a value,
step an alert's state. alerts.evaluation reads the data and applies these.

Condition JSON by rule kind (thresholds: at least one of `warning` / `critical`):

    threshold  {"aggregate": "p99", "window_seconds": 300, "by": "series",
                "operator": ">", "warning": 500, "critical": 1000, "resolve": 450}
    anomaly    {"window_seconds": 300, "labels": ["spike", "level_shift"], "warning": 0.9, "critical": 0.99,
                "level": "series"}
    no_data    {"seconds": 600, "severity": "critical"}
    change     {"aggregate": "count", "window_seconds": 3600, "offset_seconds": 604800, "by": "series",
                "operator": "<", "warning": -30, "critical": -60}
    drift      {"window_seconds": 7200, "signals": ["residual", "anomaly_rate"], "severity": "warning"}

- threshold: the aggregate of the raw points in the trailing window, per series (or per node or
  cluster, `by`), compared with the thresholds. `resolve` adds hysteresis: a firing alert stays
  breached until the value is no longer past `resolve` (e.g. > 500 fires, back under 450 resolves).
- anomaly: the highest peak score of the scope's anomalies whose window reaches into the trailing
  window (only `labels`, when given); the operator is `>=`. `level: node` reads the node-level
  (multivariate) anomalies of the nodes that have a series in scope instead: one alert per node.
- no_data: no point for `seconds`. It is its own rule: a threshold rule never reads a missing
  window as 0 (see AlertRule.no_data_state).
- change: the percent change of the aggregate over the trailing window against the same window
  `offset_seconds` earlier (86400: a day ago; 604800: a week ago), from 1-minute rollups, so only
  aggregates that combine exactly across minutes are offered.
- drift: per model scope (a series' or a node's model), the newest drift report (mlops.DriftReport)
  whose window ends within the trailing `window_seconds` (default 2 h: reports are hourly). The
  value is the number of its drifted signals counted: all of them, or only those in `signals`
  (a series' `value` and `residual`, a node's metric names, `anomaly_rate`,
  `feedback_precision`; empty or omitted: any). A `drift` verdict counting at least one signal
  breaches at `severity` (default warning: a drifting model detects worse, nothing is down); an
  `ok` verdict, or a drift of other signals only, is 0 and clears. `insufficient_data` is no
  data, and so is a checked model's scope with no report in the window (a late or failed run):
  like a threshold rule's empty window, the alert keeps its state (AlertRule.no_data_state).
  Alerts are per model version (label `model_version`): a retrained model's report starts its
  own alert and the previous version's clears.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from alerts.matchers import MatcherError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
RAW_AGGREGATES = ("count", "sum", "min", "max", "mean", "last", "p50", "p90", "p95", "p99")
ROLLUP_AGGREGATES = ("count", "sum", "min", "max", "mean")
BY = ("series", "node", "cluster")
SEVERITIES = ("info", "warning", "critical")
ANOMALY_LABELS = (
    "spike",
    "dip",
    "level_shift",
    "trend_change",
    "variance_change",
    "seasonal_break",
    "flatline",
)
# An anomaly rule reads the anomalies of each series, or the multivariate ones of each node
# (one alert per node, labelled cluster and node).
ANOMALY_LEVELS = ("series", "node")
MAX_WINDOW_SECONDS = 86_400
# Drift reports are written hourly (VIGIL_DRIFT_EVERY_SECONDS): a report counts for two periods, so
# a run that finishes late does not leave a gap.
DRIFT_WINDOW_SECONDS = 7200
# Signal names are features (a metric name, at most 200 characters) or the concept signals.
MAX_SIGNALS = 100
MAX_SIGNAL_LENGTH = 200
MAX_OFFSET_SECONDS = 28 * 86_400


class ConditionError(MatcherError):
    """A condition that cannot be evaluated; `details` lists every problem (field, code, message)."""


@dataclass(frozen=True)
class Thresholds:
    operator: str
    warning: float | None
    critical: float | None
    resolve: float | None = None

    def judge(self, value: float, firing: str | None = None) -> str | None:
        """The severity `value` breaches, or None. `firing` is the severity of an alert that is
        firing now: with a resolve threshold it stays breached (at its severity) until the value
        is no longer past `resolve`."""
        compare = OPERATORS[self.operator]
        if self.critical is not None and compare(value, self.critical):
            return "critical"
        if self.warning is not None and compare(value, self.warning):
            return "warning"
        if firing is not None and self.resolve is not None and compare(value, self.resolve):
            return firing
        return None

    def threshold_for(self, severity: str) -> float | None:
        return self.critical if severity == "critical" else self.warning


@dataclass(frozen=True)
class Condition:
    kind: str
    window_seconds: int = 0
    aggregate: str = ""
    by: str = "series"
    thresholds: Thresholds | None = None
    labels: frozenset[str] = frozenset()
    offset_seconds: int = 0
    severity: str = "critical"  # no_data, drift
    signals: frozenset[str] = frozenset()  # drift: the signals that count (empty: any)


def condition_parse(kind: str, raw: Any) -> Condition:
    """Validate a rule's condition JSON for its kind; raises ConditionError listing every problem."""
    errors: list[dict[str, Any]] = []
    if not isinstance(raw, Mapping):
        raise ConditionError([_error("condition", "Expected an object.")])
    allowed = {
        "threshold": {"aggregate", "window_seconds", "by", "operator", "warning", "critical", "resolve"},
        "anomaly": {"window_seconds", "labels", "warning", "critical", "level"},
        "no_data": {"seconds", "severity"},
        "change": {"aggregate", "window_seconds", "offset_seconds", "by", "operator", "warning", "critical"},
        "drift": {"window_seconds", "signals", "severity"},
    }
    if kind not in allowed:
        raise ConditionError([_error("kind", f"kind must be one of {sorted(allowed)}.")])
    errors += [_error(f"condition.{key}", "Unknown field.") for key in sorted(set(raw) - allowed[kind])]

    def seconds(name: str, low: int, high: int, default: int | None = None) -> int:
        value = raw.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            errors.append(_error(f"condition.{name}", f"{name} must be an integer in [{low}, {high}]."))
            return low
        return value

    def choice(name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = raw.get(name, default)
        if value not in options:
            errors.append(_error(f"condition.{name}", f"{name} must be one of {list(options)}."))
            return options[0]
        return str(value)

    if kind == "no_data":
        condition = Condition(
            kind, window_seconds=seconds("seconds", 60, 7 * 86_400), severity=choice("severity", SEVERITIES, "critical")
        )
    elif kind == "drift":
        signals = raw.get("signals", [])
        if (
            not isinstance(signals, list)
            or len(signals) > MAX_SIGNALS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_SIGNAL_LENGTH for s in signals)
        ):
            message = f"signals must be a list of at most {MAX_SIGNALS} signal names (a feature such as value, "
            message += "residual or a metric, or anomaly_rate, feedback_precision)."
            errors.append(_error("condition.signals", message))
            signals = []
        condition = Condition(
            kind,
            window_seconds=seconds("window_seconds", 60, MAX_WINDOW_SECONDS, DRIFT_WINDOW_SECONDS),
            severity=choice("severity", SEVERITIES, "warning"),
            signals=frozenset(signals),
        )
    elif kind == "anomaly":
        labels = raw.get("labels", [])
        if not isinstance(labels, list) or not set(labels) <= set(ANOMALY_LABELS):
            errors.append(_error("condition.labels", f"labels must be a list of {list(ANOMALY_LABELS)}."))
            labels = []
        thresholds = _thresholds(raw, ">=", errors, allow_resolve=False)
        for name in ("warning", "critical"):
            value = raw.get(name)
            if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
                errors.append(_error(f"condition.{name}", "Anomaly scores lie in [0, 1]."))
        condition = Condition(
            kind,
            window_seconds=seconds("window_seconds", 60, MAX_WINDOW_SECONDS, 300),
            thresholds=thresholds,
            labels=frozenset(labels),
            by=choice("level", ANOMALY_LEVELS, "series"),
        )
    else:
        aggregates = RAW_AGGREGATES if kind == "threshold" else ROLLUP_AGGREGATES
        window = seconds("window_seconds", 60 if kind == "change" else 10, MAX_WINDOW_SECONDS, 300)
        operator_ = choice("operator", tuple(OPERATORS))
        condition = Condition(
            kind,
            window_seconds=window,
            aggregate=choice("aggregate", aggregates),
            by=choice("by", BY, "series"),
            thresholds=_thresholds(raw, operator_, errors, allow_resolve=kind == "threshold"),
            offset_seconds=seconds("offset_seconds", window, MAX_OFFSET_SECONDS) if kind == "change" else 0,
        )
    if errors:
        raise ConditionError(errors)
    return condition


def condition_judge(condition: Condition, value: float, firing: str | None = None) -> str | None:
    """The severity `value` breaches under the condition, or None. `firing` is the severity of an
    alert firing now (for a threshold rule's resolve hysteresis)."""
    if condition.kind == "no_data":  # seconds since the newest point
        return condition.severity if value >= condition.window_seconds else None
    if condition.kind == "drift":  # drifted signals counted
        return condition.severity if value >= 1 else None
    assert condition.thresholds is not None
    return condition.thresholds.judge(value, firing)


def _thresholds(
    raw: Mapping[str, Any], operator_: str, errors: list[dict[str, Any]], allow_resolve: bool
) -> Thresholds:
    values: dict[str, float | None] = {}
    for name in ("warning", "critical", "resolve"):
        value = raw.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            errors.append(_error(f"condition.{name}", f"{name} must be a finite number."))
            value = None
        values[name] = None if value is None else float(value)
    if values["warning"] is None and values["critical"] is None:
        errors.append(_error("condition", "Give a warning threshold, a critical one, or both."))
    if values["resolve"] is not None:
        if not allow_resolve:
            errors.append(_error("condition.resolve", "Only threshold rules take a resolve threshold."))
        elif operator_ not in (">", ">=", "<", "<="):
            errors.append(_error("condition.resolve", "A resolve threshold needs an ordering operator."))
        else:
            # The resolve threshold must lie on the calm side of every firing threshold.
            firing = [v for v in (values["warning"], values["critical"]) if v is not None]
            calm = min(firing) if operator_ in (">", ">=") else max(firing) if firing else None
            if calm is not None and OPERATORS[operator_](values["resolve"], calm):
                errors.append(_error("condition.resolve", "resolve must not itself breach the firing thresholds."))
    return Thresholds(operator_, values["warning"], values["critical"], values["resolve"])


def _error(field: str, message: str) -> dict[str, Any]:
    return {"field": field, "code": "invalid", "message": message}


def aggregate_by(keys: Sequence[Hashable], values: Sequence[float], how: str) -> dict[Hashable, float]:
    """`how` of the values of each key, in one vectorised pass; values come in time order (so
    `last` is the newest). Percentiles interpolate linearly, like the rollups (PostgreSQL's
    percentile_cont, numpy's default)."""
    if not len(values):
        return {}
    grouped = pd.Series(np.asarray(values, dtype=float)).groupby(np.asarray(keys), sort=False)
    if how == "count":
        result = grouped.size().astype(float)
    elif how.startswith("p"):
        result = grouped.quantile(float(how[1:]) / 100, interpolation="linear")
    else:
        result = getattr(grouped, how)()
    return {key: float(value) for key, value in result.items()}


def percent_change(current: float, previous: float) -> float | None:
    """(current - previous) / |previous| in percent; None when there is nothing to compare with."""
    if previous == 0:
        return None
    return (current - previous) / abs(previous) * 100.0


# --- alert life cycle (Prometheus' rule semantics) --------------------------------------------


@dataclass(frozen=True)
class AlertState:
    state: str = "inactive"  # inactive | pending | firing | resolved
    severity: str = ""
    active_at: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    clear_since: datetime | None = None


def alert_step(
    previous: AlertState, breached: str | None, now: datetime, *, for_seconds: int, keep_firing_for_seconds: int
) -> AlertState:
    """The next state of an alert given this evaluation's verdict (`breached` is the severity
    breached, or None).

    A breach starts the alert pending, or firing at once when `for` is 0; it fires once it has
    been breached for `for`. A pending alert that clears goes back to inactive without ever being
    notified. A firing alert that clears keeps firing for `keep_firing_for` (a breach in between
    resets that clock), then resolves.
    """
    state = previous.state
    if breached is not None:
        if state in ("inactive", "resolved"):
            start = AlertState("pending", breached, active_at=now)
            return _fire(start, now) if for_seconds == 0 else start
        if state == "pending":
            pending = AlertState("pending", breached, active_at=previous.active_at)
            assert previous.active_at is not None
            due = (now - previous.active_at).total_seconds() >= for_seconds
            return _fire(pending, now) if due else pending
        return AlertState("firing", breached, previous.active_at, previous.fired_at)
    if state == "pending":
        return AlertState("inactive", previous.severity)
    if state == "firing":
        clear_since = previous.clear_since or now
        if (now - clear_since).total_seconds() >= keep_firing_for_seconds:
            return AlertState("resolved", previous.severity, previous.active_at, previous.fired_at, resolved_at=now)
        return AlertState("firing", previous.severity, previous.active_at, previous.fired_at, clear_since=clear_since)
    return previous


def _fire(state: AlertState, now: datetime) -> AlertState:
    return AlertState("firing", state.severity, state.active_at, fired_at=now)


# --- annotation templates ---------------------------------------------------------------------

TEMPLATE = re.compile(r"\{\{\s*\$(labels\.[A-Za-z_][A-Za-z0-9_.\-]*|value|severity|threshold)\s*\}\}")
PLACEHOLDER = re.compile(r"\{\{[^}]*\}\}")


def template_render(
    text: str, *, labels: Mapping[str, str], value: float | None, severity: str, threshold: float | None
) -> str:
    """Fill `{{ $labels.name }}`, `{{ $value }}`, `{{ $severity }}` and `{{ $threshold }}` (the
    Prometheus spellings). Numbers print with 4 significant digits; a missing label is empty."""

    def number(x: float | None) -> str:
        return "" if x is None else f"{x:.4g}"

    def fill(match: Any) -> str:
        name = match.group(1)
        if name.startswith("labels."):
            return labels.get(name[len("labels.") :], "")
        return {"value": number(value), "severity": severity, "threshold": number(threshold)}[name]

    return TEMPLATE.sub(fill, text)


def template_check(text: str, field: str) -> list[dict[str, Any]]:
    """Problems with a template: an unknown `{{ $... }}` placeholder or an unclosed one."""
    problems = []
    for found in PLACEHOLDER.finditer(text):
        if not TEMPLATE.fullmatch(found.group(0)):
            problems.append(
                _error(
                    field, f"Unknown placeholder {found.group(0)}; use $labels.<name>, $value, $severity or $threshold."
                )
            )
    if text.count("{{") != text.count("}}"):
        problems.append(_error(field, "Unbalanced {{ }}."))
    return problems
