"""Rule evaluation: read each rule's data, judge it, step its alerts, keep incidents, mark
notification groups due. The pure half (parsing, judging, the state machine) is alerts.conditions.

When it runs:
- beat, every VIGIL_ALERTS_EVALUATE_SECONDS, every enabled rule of every tenant (one message a tenant);
- right after the data a kind reads is fresh, for the series it touched, so a critical breach
  does not wait for the next tick: threshold and no-data rules after an ingest batch is
  processed (raw points), change rules after its rollups, anomaly rules after detection,
  drift rules after a drift check wrote a tenant's reports (tenant_rules_evaluate_publish).

A rule is evaluated in one transaction under a row lock on the rule: two evaluations of the same
rule (beat and ingest at once, two workers) take turns, and alert state, incidents, their
activity and the notification outbox are written together or not at all.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from alerts import notifications
from alerts.conditions import (
    AlertState,
    Condition,
    aggregate_by,
    alert_step,
    condition_judge,
    condition_parse,
    percent_change,
    template_render,
)
from alerts.matchers import Matcher, matchers_parse, matches_all
from alerts.models import Alert, AlertRule, AlertRuleVersion, Incident, IncidentActivity
from alerts.payload import labels_fingerprint
from alerts.services import incident_settle
from analytics.models import AnomalyResult, MetricSeries, Point, Rollup
from mlops.models import DriftReport, ModelVersion
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Which kinds read which data, i.e. which pipeline stage re-evaluates them (see the module).
KINDS_AFTER_INGEST = ("threshold", "no_data")
KINDS_AFTER_ROLLUP = ("change",)
KINDS_AFTER_DETECTION = ("anomaly",)
KINDS_AFTER_DRIFT = ("drift",)
# Fields of the series address a selector may match besides the series' own labels.
ADDRESS = ("cluster", "node", "metric")


@dataclass
class Observation:
    """What one evaluation saw for one alert key (a series, a node's metric or a cluster's)."""

    labels: dict[str, str]
    series_ids: list[int]
    value: float | None = None  # None: no data
    anomaly_id: int | None = None


@dataclass
class Change:
    """One alert whose notification-relevant state changed in this evaluation."""

    alert: Alert
    previous: str
    previous_severity: str
    events: list[str] = field(default_factory=list)


# --- publishing -------------------------------------------------------------------------------


def rules_evaluate_publish() -> int:
    """Publish `tenant_rules_evaluate` for every tenant with an enabled rule (beat's fan-out).
    Messages expire after one period: a backlog is not worth evaluating twice."""
    from alerts.tasks import tenant_rules_evaluate

    tenants = AlertRule.objects.filter(enabled=True).values_list("tenant_id", flat=True).distinct()
    sent = 0
    for tenant_id in tenants:
        tenant_rules_evaluate.apply_async((tenant_id,), expires=settings.VIGIL_ALERTS_EVALUATE_SECONDS)
        sent += 1
    return sent


def series_rules_evaluate_publish(*, series_ids: Iterable[int], kinds: tuple[str, ...]) -> int:
    """After a pipeline stage: publish the evaluation of `kinds` of rules for the touched series,
    one message per tenant that has such a rule. Never raises: beat's evaluation catches up."""
    from alerts.tasks import series_rules_evaluate

    by_tenant: dict[int, list[int]] = defaultdict(list)
    for series_id, tenant_id in MetricSeries.objects.filter(pk__in=list(series_ids)).values_list("pk", "tenant_id"):
        by_tenant[tenant_id].append(series_id)
    with_rules = set(
        AlertRule.objects.filter(tenant_id__in=by_tenant, enabled=True, kind__in=kinds).values_list(
            "tenant_id", flat=True
        )
    )
    sent = 0
    for tenant_id in sorted(with_rules):
        try:
            series_rules_evaluate.apply_async((tenant_id, sorted(by_tenant[tenant_id]), list(kinds)))
            sent += 1
        except Exception:  # the broker is down; beat evaluates every rule anyway
            logger.warning("could not publish rule evaluation for tenant %s", tenant_id, exc_info=True)
    return sent


def tenant_rules_evaluate_publish(*, tenant_id: int, kinds: Iterable[str]) -> bool:
    """After a pipeline stage that is not per series (drift checks): publish the evaluation of
    the tenant's rules of `kinds`, if it has an enabled one. Returns whether a message was sent.
    The message expires after beat's period (beat will have evaluated every rule by then), so a
    backlog of them is not worked through. Never raises: beat's evaluation catches up."""
    from alerts.tasks import tenant_rules_evaluate

    kinds = sorted(set(kinds))
    if not AlertRule.objects.filter(tenant_id=tenant_id, enabled=True, kind__in=kinds).exists():
        return False
    try:
        tenant_rules_evaluate.apply_async((tenant_id, kinds), expires=settings.VIGIL_ALERTS_EVALUATE_SECONDS)
    except Exception:  # the broker is down; beat evaluates every rule anyway
        logger.warning("could not publish rule evaluation for tenant %s", tenant_id, exc_info=True)
        return False
    return True


# --- evaluation -------------------------------------------------------------------------------


def tenant_rules_evaluate(
    *,
    tenant: Tenant,
    series_ids: Iterable[int] | None = None,
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
) -> list[Change]:
    """Evaluate the tenant's enabled rules (only `kinds`, when given), each in its own
    transaction; with `series_ids`, only the alerts of those series. Returns the changes."""
    now = now or timezone.now()
    rules = AlertRule.objects.filter(tenant=tenant, enabled=True)
    if kinds is not None:
        rules = rules.filter(kind__in=list(kinds))
    wanted = None if series_ids is None else set(series_ids)
    changes: list[Change] = []
    for rule_id in rules.values_list("pk", flat=True):
        try:
            changes += rule_evaluate(rule_id=rule_id, now=now, series_ids=wanted)
        except Exception:
            # One broken rule must not stop the others; it is retried on the next tick.
            logger.exception("evaluation of rule %s failed", rule_id)
    return changes


def rule_evaluate(*, rule_id: int, now: datetime | None = None, series_ids: set[int] | None = None) -> list[Change]:
    """Evaluate one rule at `now`, in one transaction under a lock on the rule.

    Per alert key in scope (all of them, or those of `series_ids`): reads the value, judges it
    against the thresholds, steps the alert (alerts.conditions.alert_step) and saves it. Alerts
    that fire join the rule's open incident (opened if none), those that resolve leave it (the
    incident resolves with its last alert); each transition is an incident activity row. Alerts
    that fired, resolved or changed severity mark their notification groups due, in the same
    transaction (alerts.notifications). Alerts of keys no longer in scope clear.

    Idempotent in effect: evaluating again at the same `now` finds the states it wrote and
    changes nothing. A disabled or deleted rule is skipped.
    """
    now = now or timezone.now()
    with transaction.atomic():
        rule = (
            AlertRule.objects.select_for_update(of=("self",), no_key=True)
            .select_related("tenant")
            .filter(pk=rule_id, enabled=True)
            .first()
        )
        if rule is None:
            return []
        version = AlertRuleVersion.objects.get(rule=rule, version=rule.version)
        condition = condition_parse(rule.kind, rule.condition)
        observations = observe(rule=rule, condition=condition, now=now, series_ids=series_ids)
        alerts = Alert.objects.filter(rule=rule)
        if series_ids is not None:
            alerts = alerts.filter(fingerprint__in=list(observations))
        existing = {alert.fingerprint: alert for alert in alerts}
        changes = []
        for fingerprint in sorted(set(observations) | set(existing)):
            change = _alert_evaluate(
                rule, version, condition, fingerprint, observations.get(fingerprint), existing.get(fingerprint), now
            )
            if change is not None:
                changes.append(change)
        _incidents_update(rule, version, changes, now)
        notifications.alerts_changed(tenant=rule.tenant, alerts=[c.alert for c in changes if c.events], now=now)
        return changes


def _alert_evaluate(
    rule: AlertRule,
    version: AlertRuleVersion,
    condition: Condition,
    fingerprint: str,
    seen: Observation | None,
    alert: Alert | None,
    now: datetime,
) -> Change | None:
    previous = _state_of(alert)
    if seen is None:
        # Out of scope now (series deleted, selector edited): the alert clears.
        breached, health, value = None, Alert.Health.OK, None
    elif seen.value is None:
        health, value = Alert.Health.NO_DATA, None
        if rule.no_data_state == AlertRule.NoDataState.NO_DATA:
            # No data is not a value: the alert keeps its state and says why.
            if alert is not None and (alert.health != health or alert.value is not None):
                alert.health, alert.value, alert.evaluated_at = health, None, now
                alert.save(update_fields=["health", "value", "evaluated_at"])
            return None
        breached = _top_severity(condition) if rule.no_data_state == AlertRule.NoDataState.ALERTING else None
    else:
        health, value = Alert.Health.OK, seen.value
        firing = previous.severity if previous.state == "firing" else None
        breached = condition_judge(condition, value, firing)
    state = alert_step(
        previous, breached, now, for_seconds=rule.for_seconds, keep_firing_for_seconds=rule.keep_firing_for_seconds
    )
    if alert is None:
        if state.state == "inactive" or seen is None:
            return None
        alert = Alert(tenant=rule.tenant, rule=rule, fingerprint=fingerprint)
    events = _events(previous, state)
    if seen is not None:
        alert.labels = {**seen.labels, "severity": state.severity or _top_severity(condition)}
        alert.series_id = seen.series_ids[0] if len(seen.series_ids) == 1 else None
        alert.anomaly_id = seen.anomaly_id
    if events or state != previous:
        alert.rule_version = version  # the version that moved it
        threshold = condition.thresholds.threshold_for(state.severity) if condition.thresholds else None
        alert.annotations = {
            name: template_render(text, labels=alert.labels, value=value, severity=state.severity, threshold=threshold)
            for name, text in rule.annotations.items()
        }
    calm = state.state in ("inactive", "resolved")
    if calm and state == previous and alert.value == value and alert.health == health:
        return None  # nothing worth a write
    alert.severity = state.severity or _top_severity(condition)
    alert.state, alert.active_at, alert.fired_at = state.state, state.active_at, state.fired_at
    alert.resolved_at, alert.clear_since = state.resolved_at, state.clear_since
    alert.health, alert.value, alert.evaluated_at = health, value, now
    if alert._state.adding:
        alert.rule_version = version
    alert.save()
    if not events and state == previous:
        return None
    return Change(alert, previous.state, previous.severity, events)


def _state_of(alert: Alert | None) -> AlertState:
    if alert is None:
        return AlertState()
    return AlertState(
        alert.state, alert.severity, alert.active_at, alert.fired_at, alert.resolved_at, alert.clear_since
    )


def _events(previous: AlertState, state: AlertState) -> list[str]:
    """What a notification must tell: fired, resolved, or a firing alert changed severity."""
    if state.state == "firing" and previous.state != "firing":
        return ["firing"]
    if state.state == "resolved" and previous.state == "firing":
        return ["resolved"]
    if state.state == "firing" and state.severity != previous.severity:
        return ["severity"]
    return []


def _top_severity(condition: Condition) -> str:
    if condition.kind in ("no_data", "drift"):
        return condition.severity
    assert condition.thresholds is not None
    return "critical" if condition.thresholds.critical is not None else "warning"


def _incidents_update(rule: AlertRule, version: AlertRuleVersion, changes: list[Change], now: datetime) -> None:
    """Fired alerts join the rule's open incident (opened on the first); every transition is an
    activity row; the incident resolves when its last firing alert does."""
    relevant = [c for c in changes if c.events]
    if not relevant:
        return
    incident = (
        Incident.objects.select_for_update(no_key=True)
        .filter(rule=rule)
        .exclude(status=Incident.Status.RESOLVED)
        .first()
    )
    for change in relevant:
        alert = change.alert
        if change.events == ["firing"] and incident is None:
            incident = Incident.objects.create(
                tenant=rule.tenant,
                rule=rule,
                rule_version=version,
                title=_title(rule, alert),
                severity=alert.severity,
            )
            IncidentActivity.objects.create(incident=incident, kind=IncidentActivity.Kind.CREATED, value=alert.value)
        target = incident if change.events == ["firing"] else alert.incident
        if target is None:
            continue
        if change.events == ["firing"]:
            Alert.objects.filter(pk=alert.pk).update(incident=target)
            alert.incident = target
        previous, current = (
            (change.previous_severity, alert.severity)
            if change.events == ["severity"]
            else (change.previous, alert.state)
        )
        IncidentActivity.objects.create(
            incident=target,
            kind=IncidentActivity.Kind.STATE_CHANGE,
            alert=alert,
            previous=previous,
            current=current,
            value=alert.value,
        )
    for open_incident in Incident.objects.filter(rule=rule).exclude(status=Incident.Status.RESOLVED):
        incident_settle(incident=open_incident, now=now)


def _title(rule: AlertRule, alert: Alert) -> str:
    summary = alert.annotations.get("summary")
    return (summary or rule.name)[:500]


# --- reading the data -------------------------------------------------------------------------


def fingerprint_of(labels: dict[str, str]) -> str:
    """Identity of an alert within its rule: its labels, severity aside (a warning that becomes
    critical is the same alert)."""
    return labels_fingerprint({k: v for k, v in labels.items() if k != "severity"})


def scope_series(*, tenant: Tenant, selector: tuple[Matcher, ...], near: Q | None = None) -> list[MetricSeries]:
    """The tenant's series the selector matches (among `near`, when given). Exact matchers on
    the address narrow the SQL; the rest (regexes, labels) are applied here."""
    queryset = MetricSeries.objects.filter(tenant=tenant)
    if near is not None:
        queryset = queryset.filter(near)
    for matcher in selector:
        if matcher.label in ADDRESS and matcher.op == "=":
            queryset = queryset.filter(**{matcher.label: matcher.value})
    fields = ("pk", "cluster", "node", "metric", "labels", "last_point_at")
    return [s for s in queryset.only(*fields) if matches_all(selector, _series_labels(s))]


def _series_labels(series: MetricSeries) -> dict[str, str]:
    return {**{str(k): str(v) for k, v in series.labels.items()}, **{a: getattr(series, a) for a in ADDRESS}}


def _key_labels(series: MetricSeries, by: str) -> dict[str, str]:
    if by == "series":
        return _series_labels(series)
    if by == "host":
        return {"cluster": series.cluster, "node": series.node}
    if by == "node":
        return {"cluster": series.cluster, "node": series.node, "metric": series.metric}
    return {"cluster": series.cluster, "metric": series.metric}


def observe(
    *,
    rule: AlertRule,
    condition: Condition,
    now: datetime,
    series_ids: set[int] | None = None,
    replay: bool = False,
) -> dict[str, Observation]:
    """The rule's alert keys in scope with what this evaluation sees for each (value or no data).
    With `series_ids`, only the keys those series belong to (whole keys: a cluster-level key is
    read over all its series).

    A live evaluation also reads points stamped a little ahead of `now` (ingest admits clock
    skew up to VIGIL_INGEST_MAX_FUTURE_SECONDS): a client whose clock runs ahead must not wait
    for beat's next tick. A `replay` (the preview) reads up to `now` only: it is `now` in the
    past, and later points did not exist yet."""
    selector = matchers_parse(rule.selector, "selector")
    if condition.kind == "drift":  # keyed by model scope, not by series
        models = _observe_drift(rule, condition, selector, now, replay)
        if series_ids is None:
            return models
        return {fp: seen for fp, seen in models.items() if series_ids.intersection(seen.series_ids)}
    by = "series" if condition.kind == "no_data" else condition.by
    if condition.kind == "anomaly" and by == "node":
        by = "host"  # a node-level anomaly is the node's, whatever metric brought it in scope
    keys: dict[str, Observation] = {}
    last_point: dict[str, datetime] = {}
    for series in scope_series(tenant=rule.tenant, selector=selector, near=_near(rule.tenant, by, series_ids)):
        labels = {**_key_labels(series, by), **rule.labels, "alertname": rule.name}
        fingerprint = fingerprint_of(labels)
        seen = keys.setdefault(fingerprint, Observation(labels=labels, series_ids=[]))
        seen.series_ids.append(series.pk)
        if series.last_point_at is not None:
            last_point[fingerprint] = max(last_point.get(fingerprint, series.last_point_at), series.last_point_at)
    if series_ids is not None:
        keys = {fp: seen for fp, seen in keys.items() if series_ids.intersection(seen.series_ids)}
    if not keys:
        return {}
    owner = {sid: fp for fp, seen in keys.items() for sid in seen.series_ids}
    if condition.kind == "threshold":
        _observe_threshold(keys, owner, condition, now, replay)
    elif condition.kind == "change":
        _observe_change(keys, owner, condition, now)
    elif condition.kind == "anomaly":
        _observe_anomaly(keys, owner, condition, now, rule.tenant)
    else:  # no_data: seconds since the newest point; a series that never sent is not judged
        keys = {fp: seen for fp, seen in keys.items() if fp in last_point}
        for fp, seen in keys.items():
            seen.value = (now - last_point[fp]).total_seconds()
    return keys


def _near(tenant: Tenant, by: str, series_ids: set[int] | None) -> Q | None:
    """The series that share an alert key with `series_ids` (None: all): themselves, or those of
    the same node's or cluster's metric. Keeps an evaluation after ingest proportional to what
    the batch touched, not to the tenant's size."""
    if series_ids is None:
        return None
    if by == "series":
        return Q(pk__in=sorted(series_ids))
    fields = ("cluster", "node", "metric") if by == "node" else ("cluster", "metric")
    addresses = set(MetricSeries.objects.filter(tenant=tenant, pk__in=sorted(series_ids)).values_list(*fields))
    near = Q(pk__in=[])
    for address in addresses:
        near |= Q(**dict(zip(fields, address, strict=True)))
    return near


def _observe_threshold(
    keys: dict[str, Observation], owner: dict[int, str], condition: Condition, now: datetime, replay: bool
) -> None:
    since = now - timedelta(seconds=condition.window_seconds)
    points = Point.objects.filter(series_id__in=list(owner), ts__gt=since)
    if replay:
        points = points.filter(ts__lte=now)
    rows = list(points.order_by("ts").values_list("series_id", "value").iterator(chunk_size=10_000))
    found = aggregate_by([owner[sid] for sid, _ in rows], [value for _, value in rows], condition.aggregate)
    for fp, seen in keys.items():
        seen.value = found.get(fp)


def _observe_change(keys: dict[str, Observation], owner: dict[int, str], condition: Condition, now: datetime) -> None:
    window = timedelta(seconds=condition.window_seconds)
    offset = timedelta(seconds=condition.offset_seconds)
    current = _rollup_aggregates(owner, now - window, now, condition.aggregate)
    before = _rollup_aggregates(owner, now - offset - window, now - offset, condition.aggregate)
    for fp, seen in keys.items():
        if fp in current and fp in before:
            seen.value = percent_change(current[fp], before[fp])


def _rollup_aggregates(owner: dict[int, str], start: datetime, end: datetime, how: str) -> dict[str, float]:
    """`how` over the 1-minute rollups of each key's series with buckets in [start, end)."""
    parts: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    rows = Rollup.objects.filter(
        series_id__in=list(owner), resolution=Rollup.Resolution.MINUTE, bucket__gte=start, bucket__lt=end
    ).values_list("series_id", "count", "sum", "min", "max")
    for series_id, count, total, low, high in rows.iterator(chunk_size=10_000):
        parts[owner[series_id]].append((count, total, low, high))
    result = {}
    for fp, buckets in parts.items():
        counts, sums, lows, highs = (np.asarray(column, dtype=float) for column in zip(*buckets, strict=True))
        result[fp] = {
            "count": counts.sum(),
            "sum": sums.sum(),
            "min": lows.min(),
            "max": highs.max(),
            "mean": sums.sum() / counts.sum(),
        }[how]
    return result


def _observe_anomaly(
    keys: dict[str, Observation], owner: dict[int, str], condition: Condition, now: datetime, tenant: Tenant
) -> None:
    since = now - timedelta(seconds=condition.window_seconds)
    anomalies = AnomalyResult.objects.filter(Q(window_end__gte=since) | Q(status=AnomalyResult.Status.OPEN))
    if condition.labels:
        anomalies = anomalies.filter(label__in=sorted(condition.labels))
    for seen in keys.values():
        seen.value = 0.0  # no anomaly is a calm series, not a missing one
    scored: list[tuple[int, str | None, float]]
    if condition.by == "node":  # the multivariate anomalies of the nodes in scope
        node_key = {(seen.labels["cluster"], seen.labels["node"]): fp for fp, seen in keys.items()}
        nodes = anomalies.filter(tenant=tenant, series__isnull=True)
        rows = nodes.values_list("pk", "cluster", "node", "peak_score")
        scored = [(pk, node_key.get((cluster, node)), score) for pk, cluster, node, score in rows]
    else:
        found = anomalies.filter(series_id__in=list(owner)).values_list("pk", "series_id", "peak_score")
        scored = [(pk, owner[series_id], score) for pk, series_id, score in found]
    for anomaly_id, fp, score in scored:
        target = keys.get(fp) if fp else None
        if target is not None and (target.value is None or score > target.value):
            target.value, target.anomaly_id = score, anomaly_id


def _observe_drift(
    rule: AlertRule, condition: Condition, selector: tuple[Matcher, ...], now: datetime, replay: bool
) -> dict[str, Observation]:
    """One key per model scope: the newest drift report (mlops.DriftReport) whose window ends in
    the trailing window, among those of the tenant's model versions the selector matches (on the
    version's cluster, node, metric, `scope`, `detector`, `model_version` and, for a series' model,
    the series' labels).

    Value: the report's drifted signals that count (alerts.conditions), 0 for `ok`, None (no
    data) for `insufficient_data`. A scope whose active version has been checked before but has
    no report in the window is no data too: a late or failed drift run must not resolve alerts.

    The labels name the model: cluster, node and metric (empty when the scope has none, so a
    drift alert is never taken for a cluster-level alert that inhibits node alerts), `scope`
    (the scope key), `model_version` and `detector` of the report's version. A retrained model is
    a new alert: the previous version's leaves the scope and clears (resolved, if it fired).
    A replay reads only the reports that existed at `now` (written by then)."""
    since = now - timedelta(seconds=condition.window_seconds)
    reports = DriftReport.objects.filter(tenant=rule.tenant)
    if replay:
        reports = reports.filter(window_to__lte=now, created_at__lte=now)
    recent = reports.filter(window_to__gt=since)
    checked = Exists(reports.filter(model_version=OuterRef("pk")))
    versions = ModelVersion.objects.filter(tenant=rule.tenant).filter(
        Q(pk__in=recent.values("model_version_id")) | Q(checked, status=ModelVersion.Status.ACTIVE)
    )
    for matcher in selector:
        if matcher.op == "=" and matcher.label in (*ADDRESS, "detector", "scope"):
            versions = versions.filter(**{"scope_key" if matcher.label == "scope" else matcher.label: matcher.value})
    fields = ("pk", "scope_key", "series_id", "cluster", "node", "metric", "version", "detector", "status")
    labels: dict[int, dict[str, str]] = {}
    active: dict[str, int] = {}
    series_of: dict[int, int | None] = {}
    scope_of: dict[int, str] = {}
    for row in versions.values(*fields, "series__labels"):
        own = {
            "cluster": row["cluster"],
            "node": row["node"],
            "metric": row["metric"],
            "scope": row["scope_key"],
            "model_version": str(row["version"]),
            "detector": row["detector"],
        }
        series_labels = {str(k): str(v) for k, v in (row["series__labels"] or {}).items()}
        if not matches_all(selector, {**series_labels, **own}):
            continue
        labels[row["pk"]], series_of[row["pk"]], scope_of[row["pk"]] = own, row["series_id"], row["scope_key"]
        if row["status"] == ModelVersion.Status.ACTIVE:
            active[row["scope_key"]] = row["pk"]
    # Newest first, so the first report seen of a scope is its newest (a few per scope per window).
    newest: dict[str, tuple[int, str, list[str]]] = {}
    rows = recent.filter(model_version_id__in=list(labels)).order_by("-window_to", "-pk")
    for version_id, verdict, drifted in rows.values_list("model_version_id", "verdict", "drifted"):
        newest.setdefault(scope_of[version_id], (version_id, verdict, drifted))
    for scope, version_id in active.items():
        newest.setdefault(scope, (version_id, DriftReport.Verdict.INSUFFICIENT, []))
    keys: dict[str, Observation] = {}
    for version_id, verdict, drifted in newest.values():
        series_id = series_of[version_id]
        seen = Observation(
            labels={**labels[version_id], **rule.labels, "alertname": rule.name},
            series_ids=[] if series_id is None else [series_id],
        )
        if verdict == DriftReport.Verdict.DRIFT:
            seen.value = float(len([s for s in drifted if not condition.signals or s in condition.signals]))
        elif verdict == DriftReport.Verdict.OK:
            seen.value = 0.0
        keys[fingerprint_of(seen.labels)] = seen
    return keys


# --- preview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewAlert:
    labels: dict[str, str]
    fired: list[tuple[datetime, datetime | None, str]]  # (startsAt, endsAt or None if still firing, severity)
    max_value: float | None


@dataclass(frozen=True)
class RulePreview:
    start: datetime
    end: datetime
    step_seconds: int
    evaluations: int
    alerts: list[PreviewAlert]


class NotPreviewable(ValueError):
    """The rule cannot be replayed on stored data."""


# At most this many evaluations per preview (one request): a longer range takes a coarser step.
PREVIEW_MAX_EVALUATIONS = 1440


def rule_preview(
    *, rule: AlertRule, hours: int = 24, step_seconds: int = 300, now: datetime | None = None
) -> RulePreview:
    """What the rule would have done over the last `hours`: evaluated every `step_seconds` on
    the data stored now, through the same reading and state machine as the live evaluation.
    Writes nothing. No-data rules cannot be replayed (the past newest-point times are not kept):
    NotPreviewable. At most PREVIEW_MAX_EVALUATIONS evaluations: a longer range takes a coarser step."""
    if rule.kind == AlertRule.Kind.NO_DATA:
        raise NotPreviewable("no-data rules cannot be previewed")
    now = now or timezone.now()
    step_seconds = max(step_seconds, -(-hours * 3600 // PREVIEW_MAX_EVALUATIONS))
    condition = condition_parse(rule.kind, rule.condition)
    start = now - timedelta(hours=hours)
    states: dict[str, AlertState] = {}
    labels: dict[str, dict[str, str]] = {}
    fired: dict[str, list[tuple[datetime, datetime | None, str]]] = defaultdict(list)
    peak: dict[str, float] = {}
    steps = int(hours * 3600 // step_seconds)
    for i in range(steps + 1):
        moment = start + timedelta(seconds=i * step_seconds)
        for fingerprint, seen in observe(rule=rule, condition=condition, now=moment, replay=True).items():
            labels[fingerprint] = seen.labels
            previous = states.get(fingerprint, AlertState())
            if seen.value is None:
                if rule.no_data_state == AlertRule.NoDataState.NO_DATA:
                    continue
                breached = _top_severity(condition) if rule.no_data_state == AlertRule.NoDataState.ALERTING else None
            else:
                peak[fingerprint] = max(peak.get(fingerprint, seen.value), seen.value)
                firing = previous.severity if previous.state == "firing" else None
                breached = condition_judge(condition, seen.value, firing)
            state = alert_step(
                previous,
                breached,
                moment,
                for_seconds=rule.for_seconds,
                keep_firing_for_seconds=rule.keep_firing_for_seconds,
            )
            if state.state == "firing" and previous.state != "firing":
                assert state.fired_at is not None
                fired[fingerprint].append((state.fired_at, None, state.severity))
            elif state.state == "resolved" and previous.state == "firing":
                began, _, severity = fired[fingerprint][-1]
                fired[fingerprint][-1] = (began, state.resolved_at, severity)
            states[fingerprint] = state
    alerts = [PreviewAlert(labels[fp], fired[fp], peak.get(fp)) for fp in sorted(labels) if fired.get(fp)]
    return RulePreview(start, now, step_seconds, steps + 1, alerts)
