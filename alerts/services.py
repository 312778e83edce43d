"""Writes for rules (with versions and templates), incidents, silences, mute windows and routes.

Every service validates with the one parser of what it writes (alerts.conditions,
alerts.matchers) and refuses bad input with config.errors.Rejected, writing nothing.
Webhook endpoints and deliveries live in alerts.delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from alerts.conditions import ConditionError, condition_parse, template_check
from alerts.matchers import MatcherError, matchers_parse
from alerts.models import (
    SEVERITY_RANK,
    Alert,
    AlertRule,
    AlertRuleVersion,
    Incident,
    IncidentActivity,
    MuteWindow,
    NotificationGroup,
    Route,
    Severity,
    Silence,
    WebhookEndpoint,
)
from config.errors import Rejected
from tenants.models import Tenant

ANNOTATIONS = ("summary", "description", "runbook_url")
RULE_FIELDS = ("name", "enabled", *AlertRule.VERSIONED_FIELDS)


def _duplicate(what: str, name: object) -> Rejected:
    message = f"A {what} named {name!r} exists."
    return Rejected("duplicate_name", message, [{"field": "name", "code": "unique", "message": message}], 409)


# --- rules ------------------------------------------------------------------------------------


def _rule_validate(values: Mapping[str, Any]) -> None:
    details: list[dict[str, Any]] = []
    try:
        matchers_parse(values.get("selector", []), "selector")
    except MatcherError as exc:
        details += exc.details
    try:
        condition_parse(values.get("kind", ""), values.get("condition", {}))
    except ConditionError as exc:
        details += exc.details
    for name in ("labels", "annotations"):
        mapping = values.get(name, {})
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            details.append({"field": name, "code": "invalid", "message": f"{name} must map strings to strings."})
            continue
        if name == "labels" and {"alertname", "severity"} & set(mapping):
            details.append({"field": name, "code": "reserved", "message": "alertname and severity are set by Vigil."})
        for key, text in mapping.items() if name == "annotations" else ():
            details += template_check(text, f"annotations.{key}")
    if values.get("kind") == AlertRule.Kind.NO_DATA and values.get("no_data_state", "no_data") != "no_data":
        details.append({"field": "no_data_state", "code": "invalid", "message": "A no-data rule has no no_data_state."})
    if details:
        raise Rejected("invalid", "The rule is invalid; see details.", details)


def rule_create(*, tenant: Tenant, created_by: str = "", **values: Any) -> AlertRule:
    """Create a rule and its version 1. Raises Rejected (nothing written) on invalid input or a
    name already taken."""
    unknown = set(values) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown rule fields {sorted(unknown)}")
    _rule_validate(values)
    try:
        with transaction.atomic():
            rule = AlertRule.objects.create(tenant=tenant, version=1, **values)
            AlertRuleVersion.objects.create(rule=rule, version=1, spec=rule.spec(), created_by=created_by)
    except IntegrityError:
        raise _duplicate("rule", values.get("name")) from None
    return rule


def rule_update(*, rule: AlertRule, updated_by: str = "", **changes: Any) -> AlertRule:
    """Edit a rule. A change to a versioned field writes version N+1 (the old one is kept, and
    alerts and incidents keep pointing at the version that moved them); renaming or enabling
    does not. Disabling resolves its alerts (notified as usual). Does nothing when nothing
    changes."""
    unknown = set(changes) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown rule fields {sorted(unknown)}")
    merged = {field: changes.get(field, getattr(rule, field)) for field in RULE_FIELDS}
    _rule_validate(merged)
    changed = [field for field in RULE_FIELDS if merged[field] != getattr(rule, field)]
    if not changed:
        return rule
    try:
        with transaction.atomic():
            locked = AlertRule.objects.select_for_update(no_key=True).get(pk=rule.pk)
            for field in changed:
                setattr(locked, field, merged[field])
            if set(changed) & set(AlertRule.VERSIONED_FIELDS):
                locked.version += 1
                AlertRuleVersion.objects.create(
                    rule=locked, version=locked.version, spec=locked.spec(), created_by=updated_by
                )
            locked.save()
            if "enabled" in changed and not locked.enabled:
                # A disabled rule is no longer evaluated: its alerts end now rather than fire on.
                _alerts_resolve(alerts=locked.alerts.all(), actor=updated_by)
    except IntegrityError:
        raise _duplicate("rule", merged["name"]) from None
    return locked


@dataclass(frozen=True)
class RuleTemplate:
    name: str
    title: str
    description: str
    params: tuple[str, ...]  # what the caller must give: the metric(s)
    build: Any  # (**params) -> rule values


def _error_rate(metric: str, **_: Any) -> dict[str, Any]:
    return {
        "kind": "threshold",
        "selector": [{"label": "metric", "op": "=", "value": metric}],
        "condition": {"aggregate": "mean", "window_seconds": 300, "operator": ">", "warning": 5, "critical": 20},
        "for_seconds": 120,
        "keep_firing_for_seconds": 300,
        "annotations": {
            "summary": "Error rate {{ $value }}% on {{ $labels.node }} ({{ $severity }})",
            "description": "{{ $labels.metric }} averaged {{ $value }}% over 5 minutes, above {{ $threshold }}%.",
        },
    }


def _latency(metric: str, **_: Any) -> dict[str, Any]:
    return {
        "kind": "threshold",
        "selector": [{"label": "metric", "op": "=", "value": metric}],
        "condition": {
            "aggregate": "p99",
            "window_seconds": 300,
            "operator": ">",
            "warning": 500,
            "critical": 1000,
            "resolve": 450,
        },
        "for_seconds": 120,
        "keep_firing_for_seconds": 300,
        "annotations": {
            "summary": "p99 latency {{ $value }} ms on {{ $labels.node }}",
            "description": "p99 of {{ $labels.metric }} over 5 minutes is {{ $value }} ms, above {{ $threshold }} ms.",
        },
    }


def _error_spike(metric: str, **_: Any) -> dict[str, Any]:
    return {
        "kind": "anomaly",
        "selector": [{"label": "metric", "op": "=", "value": metric}],
        "condition": {"window_seconds": 300, "labels": ["spike", "level_shift"], "warning": 0.9, "critical": 0.99},
        "keep_firing_for_seconds": 300,
        "annotations": {
            "summary": "Error spike on {{ $labels.node }} (score {{ $value }})",
            "description": "The detector scored {{ $labels.metric }} at {{ $value }}: an unusual rise.",
        },
    }


def _low_throughput(metric: str, **_: Any) -> dict[str, Any]:
    return {
        "kind": "change",
        "selector": [{"label": "metric", "op": "=", "value": metric}],
        "condition": {
            "aggregate": "sum",
            "window_seconds": 900,
            "offset_seconds": 604_800,
            "operator": "<",
            "warning": -30,
            "critical": -60,
        },
        "for_seconds": 300,
        "annotations": {
            "summary": "Throughput on {{ $labels.node }} {{ $value }}% against last week",
            "description": "{{ $labels.metric }} over 15 minutes changed {{ $value }}% from the same time a week ago.",
        },
    }


RULE_TEMPLATES: dict[str, RuleTemplate] = {
    t.name: t
    for t in (
        RuleTemplate(
            "high_error_rate",
            "High error rate",
            "Mean of an error-rate metric (percent) over 5 min: warning above 5, critical above 20.",
            ("metric",),
            _error_rate,
        ),
        RuleTemplate(
            "p99_latency",
            "p99 latency",
            "p99 of a latency metric (ms) over 5 min: warning above 500, critical above 1000; resolves under 450.",
            ("metric",),
            _latency,
        ),
        RuleTemplate(
            "error_spike",
            "Error spike",
            "The anomaly detector sees a spike or level shift in an error metric: warning at 0.9, critical at 0.99.",
            ("metric",),
            _error_spike,
        ),
        RuleTemplate(
            "low_throughput",
            "Low throughput",
            "Sum of a throughput metric over 15 min against the same 15 min a week ago: warning 30 % lower, "
            "critical 60 % lower.",
            ("metric",),
            _low_throughput,
        ),
    )
}


def rule_template_apply(
    *, tenant: Tenant, template: str, metric: str, name: str = "", created_by: str = "", **overrides: Any
) -> AlertRule:
    """Create a rule from a template in one call; `overrides` replace template fields."""
    found = RULE_TEMPLATES.get(template)
    if found is None:
        raise Rejected("unknown_template", f"No template {template!r}; known: {sorted(RULE_TEMPLATES)}.")
    if not metric:
        raise Rejected(
            "invalid", "A metric is required.", [{"field": "metric", "code": "required", "message": "Required."}]
        )
    values = {**found.build(metric=metric), **overrides}
    return rule_create(tenant=tenant, name=name or f"{found.title}: {metric}", created_by=created_by, **values)


# --- incidents --------------------------------------------------------------------------------


def _incident_locked(incident: Incident) -> Incident:
    return Incident.objects.select_for_update(no_key=True).get(pk=incident.pk)


def incident_acknowledge(*, incident: Incident, actor: str) -> Incident:
    """Acknowledge a firing incident (someone is on it). Does nothing if already acknowledged;
    refuses a resolved one (409)."""
    with transaction.atomic():
        locked = _incident_locked(incident)
        if locked.status == Incident.Status.RESOLVED:
            raise Rejected("incident_resolved", "A resolved incident cannot be acknowledged.", status_code=409)
        if locked.status == Incident.Status.ACKNOWLEDGED:
            return locked
        locked.status, locked.acknowledged_at, locked.acknowledged_by = (
            Incident.Status.ACKNOWLEDGED,
            timezone.now(),
            actor,
        )
        locked.save(update_fields=["status", "acknowledged_at", "acknowledged_by"])
        IncidentActivity.objects.create(incident=locked, kind=IncidentActivity.Kind.ACKNOWLEDGED, actor=actor)
    return locked


def incident_assign(*, incident: Incident, assignee: str, actor: str) -> Incident:
    """Assign (or, with "", unassign) an incident. Does nothing when unchanged."""
    with transaction.atomic():
        locked = _incident_locked(incident)
        if locked.assignee == assignee:
            return locked
        previous, locked.assignee = locked.assignee, assignee
        locked.save(update_fields=["assignee"])
        IncidentActivity.objects.create(
            incident=locked,
            kind=IncidentActivity.Kind.ASSIGNED,
            previous=previous[:32],
            current=assignee[:32],
            actor=actor,
        )
    return locked


def incident_comment(*, incident: Incident, comment: str, actor: str) -> IncidentActivity:
    """Add a comment to the incident's activity log."""
    if not comment.strip():
        raise Rejected("invalid", "A comment needs text.", [{"field": "comment", "code": "blank", "message": "Blank."}])
    return IncidentActivity.objects.create(
        incident=incident, kind=IncidentActivity.Kind.COMMENTED, comment=comment, actor=actor
    )


def incident_resolve(*, incident: Incident, actor: str) -> Incident:
    """Resolve an incident by hand. Its firing alerts resolve with it (and are notified as
    resolved); if their condition still holds they fire again, in a new incident, at the next
    evaluation. Does nothing if already resolved."""
    with transaction.atomic():
        AlertRule.objects.select_for_update(no_key=True).filter(pk=incident.rule_id).first()  # no evaluation in between
        locked = _incident_locked(incident)
        if locked.status != Incident.Status.RESOLVED:
            _alerts_resolve(alerts=locked.alerts.all(), actor=actor)
    locked.refresh_from_db()
    return locked


def incident_settle(*, incident: Incident, now: datetime, actor: str = "") -> None:
    """An open incident follows its alerts: resolved (with an activity row) once none of them
    fires, else raised or lowered to the worst severity among those that do. Runs in the
    caller's transaction, under its lock on the rule."""
    firing = list(incident.alerts.filter(state=Alert.State.FIRING).values_list("severity", flat=True))
    if not firing:
        incident.status, incident.resolved_at = Incident.Status.RESOLVED, now
        incident.save(update_fields=["status", "resolved_at"])
        IncidentActivity.objects.create(incident=incident, kind=IncidentActivity.Kind.RESOLVED, actor=actor)
        return
    severity = max(firing, key=lambda s: SEVERITY_RANK[s])
    if severity != incident.severity:
        incident.severity = severity
        incident.save(update_fields=["severity"])


def _alerts_resolve(*, alerts: QuerySet[Alert], actor: str) -> list[NotificationGroup]:
    """Resolve `alerts` by hand (pending ones go back to inactive): each firing one with an
    activity row on its incident, the incidents left without a firing alert with them, and
    their notification groups marked due. Runs in the caller's transaction, under its lock on
    the rule. Returns the groups marked."""
    from alerts import notifications

    now = timezone.now()
    alerts.filter(state=Alert.State.PENDING).update(state=Alert.State.INACTIVE, active_at=None)
    firing = list(alerts.filter(state=Alert.State.FIRING).select_related("incident", "tenant"))
    for alert in firing:
        alert.state, alert.resolved_at, alert.clear_since = Alert.State.RESOLVED, now, None
        alert.save(update_fields=["state", "resolved_at", "clear_since"])
        if alert.incident is not None:
            IncidentActivity.objects.create(
                incident=alert.incident,
                kind=IncidentActivity.Kind.STATE_CHANGE,
                alert=alert,
                previous="firing",
                current="resolved",
                value=alert.value,
                actor=actor,
            )
    for incident in {alert.incident for alert in firing if alert.incident is not None}:
        incident_settle(incident=incident, now=now, actor=actor)
    if not firing:
        return []
    return notifications.alerts_changed(tenant=firing[0].tenant, alerts=firing, now=now)


def rule_delete(*, rule: AlertRule, actor: str = "") -> None:
    """Delete a rule with its versions, alerts and incidents. Its firing alerts are resolved
    first and their resolution is notified at once (the groups are flushed now, before the
    alerts they read are gone), so receivers are not left with alerts that never end."""
    from alerts import notifications

    with transaction.atomic():
        locked = AlertRule.objects.select_for_update(no_key=True).filter(pk=rule.pk).first()
        if locked is None:
            return
        now = timezone.now()
        for group in _alerts_resolve(alerts=locked.alerts.all(), actor=actor):
            NotificationGroup.objects.filter(pk=group.pk).update(flush_at=now)
            notifications.group_flush(group_id=group.pk, now=now)
        locked.delete()


# --- silences, mute windows, routes ------------------------------------------------------------


def _matchers_valid(raw: Any, field: str, *, required: bool = False) -> None:
    try:
        parsed = matchers_parse(raw, field)
    except MatcherError as exc:
        raise Rejected("invalid", "Invalid matchers; see details.", exc.details) from None
    if required and not parsed:
        raise Rejected(
            "invalid", "Give at least one matcher.", [{"field": field, "code": "required", "message": "Required."}]
        )


def silence_create(
    *,
    tenant: Tenant,
    matchers: list[dict[str, str]],
    ends_at: datetime,
    starts_at: datetime | None = None,
    comment: str = "",
    created_by: str = "",
) -> Silence:
    """Silence the alerts `matchers` select from `starts_at` (default now) to `ends_at`. A
    silence with no matcher would silence everything: refused."""
    _matchers_valid(matchers, "matchers", required=True)
    starts_at = starts_at or timezone.now()
    if ends_at <= starts_at:
        raise Rejected(
            "invalid",
            "ends_at must be after starts_at.",
            [{"field": "ends_at", "code": "invalid", "message": "Too early."}],
        )
    return Silence.objects.create(
        tenant=tenant, matchers=matchers, starts_at=starts_at, ends_at=ends_at, comment=comment, created_by=created_by
    )


def silence_expire(*, silence: Silence) -> Silence:
    """End a silence now (a future one ends before it starts). Does nothing if already over."""
    now = timezone.now()
    if silence.ends_at <= now:
        return silence
    silence.ends_at = max(now, silence.starts_at)
    silence.save(update_fields=["ends_at"])
    return silence


def mute_window_save(*, tenant: Tenant, window: MuteWindow | None = None, **values: Any) -> MuteWindow:
    """Create (window None) or edit a mute window, validated."""
    window = window or MuteWindow(tenant=tenant)
    for name, value in values.items():
        setattr(window, name, value)
    _matchers_valid(window.matchers, "matchers")
    details = []
    if not isinstance(window.weekdays, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in window.weekdays):
        details.append({"field": "weekdays", "code": "invalid", "message": "weekdays are 0 (Monday) to 6."})
    try:
        ZoneInfo(window.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        details.append({"field": "timezone", "code": "invalid", "message": f"Unknown time zone {window.timezone!r}."})
    if not isinstance(window.start_time, time) or window.start_time == window.end_time:
        details.append({"field": "end_time", "code": "invalid", "message": "end_time must differ from start_time."})
    if details:
        raise Rejected("invalid", "The mute window is invalid; see details.", details)
    try:
        with transaction.atomic():
            window.save()
    except IntegrityError:
        raise _duplicate("mute window", window.name) from None
    return window


def route_save(
    *, tenant: Tenant, route: Route | None = None, endpoints: list[WebhookEndpoint] | None = None, **values: Any
) -> Route:
    """Create (route None) or edit a route, validated; `endpoints` replaces its endpoints."""
    route = route or Route(tenant=tenant)
    for name, value in values.items():
        setattr(route, name, value)
    _matchers_valid(route.matchers, "matchers")
    details = []
    if not set(route.severities) <= set(Severity.values):
        details.append({"field": "severities", "code": "invalid", "message": f"One of {Severity.values}."})
    if not isinstance(route.group_by, list) or not all(isinstance(g, str) for g in route.group_by):
        details.append({"field": "group_by", "code": "invalid", "message": "A list of label names."})
    if any(e.tenant_id != tenant.pk for e in endpoints or []):
        details.append({"field": "endpoints", "code": "does_not_exist", "message": "No such endpoint."})
    if details:
        raise Rejected("invalid", "The route is invalid; see details.", details)
    try:
        with transaction.atomic():
            route.save()
            if endpoints is not None:
                route.endpoints.set(endpoints)
    except IntegrityError:
        raise _duplicate("route", route.name) from None
    return route
