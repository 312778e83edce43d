"""The pure half of alerting: condition parsing, judging, the alert state machine, templates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from alerts.conditions import (
    AlertState,
    ConditionError,
    Thresholds,
    aggregate_by,
    alert_step,
    condition_parse,
    percent_change,
    template_check,
    template_render,
)
from alerts.matchers import MatcherError, matchers_parse, matches_all

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_threshold_condition_parses_with_its_defaults() -> None:
    condition = condition_parse("threshold", {"aggregate": "p99", "operator": ">", "critical": 1000})
    assert condition.window_seconds == 300
    assert condition.by == "series"
    assert condition.thresholds == Thresholds(">", None, 1000.0)


@pytest.mark.parametrize(
    ("kind", "raw", "field"),
    [
        ("threshold", {"aggregate": "p99", "operator": ">"}, "condition"),
        ("threshold", {"aggregate": "median", "operator": ">", "critical": 1}, "condition.aggregate"),
        ("threshold", {"aggregate": "max", "operator": "=>", "critical": 1}, "condition.operator"),
        (
            "threshold",
            {"aggregate": "max", "operator": ">", "critical": 1, "window_seconds": 0},
            "condition.window_seconds",
        ),
        ("threshold", {"aggregate": "max", "operator": ">", "critical": "high"}, "condition.critical"),
        ("threshold", {"aggregate": "max", "operator": ">", "critical": 10, "resolve": 12}, "condition.resolve"),
        ("threshold", {"aggregate": "max", "operator": "==", "critical": 10, "resolve": 9}, "condition.resolve"),
        ("threshold", {"aggregate": "max", "operator": ">", "critical": 1, "by": "planet"}, "condition.by"),
        ("threshold", {"aggregate": "max", "operator": ">", "critical": 1, "extra": 1}, "condition.extra"),
        ("anomaly", {"critical": 1.5}, "condition.critical"),
        ("anomaly", {"critical": 0.9, "labels": ["explosion"]}, "condition.labels"),
        ("anomaly", {"critical": 0.9, "resolve": 0.5}, "condition.resolve"),
        ("no_data", {"seconds": 5}, "condition.seconds"),
        ("no_data", {"seconds": 600, "severity": "fatal"}, "condition.severity"),
        (
            "change",
            {"aggregate": "p99", "operator": "<", "critical": -50, "offset_seconds": 86400},
            "condition.aggregate",
        ),
        (
            "change",
            {"aggregate": "sum", "operator": "<", "critical": -50, "window_seconds": 3600, "offset_seconds": 60},
            "condition.offset_seconds",
        ),
        ("weather", {}, "kind"),
    ],
)
def test_bad_conditions_are_refused_naming_the_field(kind: str, raw: dict, field: str) -> None:
    with pytest.raises(ConditionError) as caught:
        condition_parse(kind, raw)
    assert field in [d["field"] for d in caught.value.details]


def test_thresholds_report_the_worst_severity_breached() -> None:
    thresholds = Thresholds(">", warning=500, critical=1000)
    assert thresholds.judge(1200) == "critical"
    assert thresholds.judge(700) == "warning"
    assert thresholds.judge(500) is None


def test_a_resolve_threshold_keeps_a_firing_alert_breached_until_it_is_crossed() -> None:
    thresholds = Thresholds(">", warning=None, critical=500, resolve=450)
    assert thresholds.judge(480) is None  # not firing: 480 does not start anything
    assert thresholds.judge(480, firing="critical") == "critical"  # firing: 480 is still past 450
    assert thresholds.judge(440, firing="critical") is None


def test_lower_bound_thresholds_work_with_less_than() -> None:
    thresholds = Thresholds("<", warning=-30, critical=-60, resolve=-20)
    assert thresholds.judge(-70) == "critical"
    assert thresholds.judge(-40) == "warning"
    assert thresholds.judge(-25, firing="warning") == "warning"
    assert thresholds.judge(-10, firing="warning") is None


def test_aggregates_match_numpy_and_the_rollups_percentiles_per_key() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    keys = ["a", "b"] * 4  # a: 3 4 5 2, b: 1 1 9 6, in time order
    assert aggregate_by(keys, values, "count") == {"a": 4, "b": 4}
    assert aggregate_by(keys, values, "last") == {"a": 2.0, "b": 6.0}
    assert aggregate_by(keys, values, "mean") == {"a": 3.5, "b": 4.25}
    assert aggregate_by(keys, values, "min") == {"a": 2.0, "b": 1.0}
    assert aggregate_by(keys, values, "p50") == {"a": 3.5, "b": 3.5}
    assert aggregate_by(keys, values, "p99") == pytest.approx(
        {"a": np.percentile([3, 4, 5, 2], 99), "b": np.percentile([1, 1, 9, 6], 99)}
    )
    assert aggregate_by([], [], "max") == {}


def test_percent_change_has_no_answer_against_zero() -> None:
    assert percent_change(50, 100) == -50
    assert percent_change(150, 100) == 50
    assert percent_change(5, 0) is None


def step(state: AlertState, breached: str | None, seconds: float, for_s: int = 0, keep_s: int = 0) -> AlertState:
    return alert_step(state, breached, at(seconds), for_seconds=for_s, keep_firing_for_seconds=keep_s)


def test_without_for_a_breach_fires_at_once_and_a_recovery_resolves_at_once() -> None:
    firing = step(AlertState(), "critical", 0)
    assert (firing.state, firing.fired_at, firing.active_at) == ("firing", at(0), at(0))
    resolved = step(firing, None, 30)
    assert (resolved.state, resolved.fired_at, resolved.resolved_at) == ("resolved", at(0), at(30))


def test_for_holds_an_alert_pending_until_the_breach_lasted_that_long() -> None:
    state = step(AlertState(), "warning", 0, for_s=60)
    assert state.state == "pending"
    state = step(state, "warning", 30, for_s=60)
    assert state.state == "pending"
    state = step(state, "critical", 60, for_s=60)
    assert (state.state, state.severity, state.active_at, state.fired_at) == ("firing", "critical", at(0), at(60))


def test_a_pending_alert_that_clears_goes_back_to_inactive_without_firing() -> None:
    state = step(AlertState(), "critical", 0, for_s=60)
    state = step(state, None, 30, for_s=60)
    assert state == AlertState("inactive", "critical")
    again = step(state, "critical", 40, for_s=60)
    assert (again.state, again.active_at) == ("pending", at(40))  # the clock starts over


def test_keep_firing_for_rides_out_a_short_recovery() -> None:
    state = step(AlertState(), "critical", 0, keep_s=120)
    state = step(state, None, 30, keep_s=120)
    assert (state.state, state.clear_since) == ("firing", at(30))
    state = step(state, "critical", 60, keep_s=120)  # breached again: the recovery clock resets
    assert (state.state, state.clear_since) == ("firing", None)
    state = step(state, None, 90, keep_s=120)
    state = step(state, None, 180, keep_s=120)
    assert state.state == "firing"
    state = step(state, None, 210, keep_s=120)
    assert (state.state, state.resolved_at, state.fired_at) == ("resolved", at(210), at(0))


def test_a_resolved_alert_that_breaches_again_starts_a_new_cycle() -> None:
    state = step(step(AlertState(), "critical", 0), None, 10)
    again = step(state, "warning", 20)
    assert (again.state, again.fired_at, again.resolved_at, again.severity) == ("firing", at(20), None, "warning")


def test_templates_fill_labels_value_severity_and_threshold() -> None:
    text = "{{ $labels.node }} p99 {{ $value }} ms > {{$threshold}} ({{ $severity }}){{ $labels.missing }}"
    rendered = template_render(text, labels={"node": "web-1"}, value=1234.5678, severity="critical", threshold=1000)
    assert rendered == "web-1 p99 1235 ms > 1000 (critical)"


def test_template_check_names_unknown_placeholders_and_unbalanced_braces() -> None:
    assert template_check("{{ $labels.node }} {{ $value }}", "annotations.summary") == []
    problems = template_check("{{ .Labels.node }} {{ $value", "annotations.summary")
    assert [p["field"] for p in problems] == ["annotations.summary", "annotations.summary"]


def test_matchers_follow_prometheus_semantics() -> None:
    matchers = matchers_parse(
        [
            {"label": "cluster", "op": "=~", "value": "eu-.*"},
            {"label": "node", "op": "!=", "value": "canary"},
            {"label": "env", "op": "!~", "value": "dev|test"},
        ]
    )
    assert matches_all(matchers, {"cluster": "eu-west", "node": "web-1"})
    assert not matches_all(matchers, {"cluster": "us-east", "node": "web-1"})
    assert not matches_all(matchers, {"cluster": "eu-west", "node": "canary"})
    assert not matches_all(matchers, {"cluster": "eu-west", "node": "web-1", "env": "dev"})
    # Anchored: a regex must match the whole value.
    assert not matches_all(matchers_parse([{"label": "cluster", "op": "=~", "value": "eu"}]), {"cluster": "eu-west"})


def test_bad_matchers_are_refused_each_with_its_position() -> None:
    with pytest.raises(MatcherError) as caught:
        matchers_parse(
            [{"label": "cluster", "op": "=~", "value": "("}, {"label": "9x", "op": "=", "value": "a"}, "x"],
            "selector",
        )
    assert [d["field"] for d in caught.value.details] == ["selector[0].value", "selector[1].label", "selector[2]"]
