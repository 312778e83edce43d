"""Grouping, routing and suppression of alerts into notifications (Alertmanager's pipeline).

- Routing: a tenant's routes are tried by position; the first whose matchers and severities
  take an alert gets it (and the next ones too while routes say `continue_matching`). An alert
  no route takes goes to the default route: every enabled endpoint, grouped by the settings.
- Grouping: a route's alerts that share the values of its `group_by` labels form one
  NotificationGroup. The first notification of a group waits `group_wait` (to collect the
  alerts that fire together), later changes are batched every `group_interval`, and a group
  whose alerts still fire is re-sent every `repeat_interval`.
- Suppression, decided at each flush: silences (matchers and a time range), mute windows
  (recurring times of the week) and inhibition along the hierarchy (while a cluster-level alert
  of a rule with `inhibits_nodes` fires, node alerts of the same cluster and metric are held
  back). A suppressed alert keeps its state; it is simply not sent. When the suppression ends
  it is sent at the group's next flush.

The outbox: the alert change marks its groups due (`flush_at`) in the evaluation's transaction;
a group due now is flushed in that same transaction, one due later by a task with a countdown,
and the sweeper (`groups_flush_due`) flushes whatever is due and was not (lost message,
restarted worker). A flush writes the Notification and its Deliveries in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from alerts import delivery
from alerts.matchers import Matcher, matchers_parse, matches_all
from alerts.models import (
    SEVERITY_RANK,
    Alert,
    MuteWindow,
    Notification,
    NotificationGroup,
    Route,
    Silence,
    WebhookEndpoint,
)
from alerts.payload import PayloadAlert, payload_build
from tenants.models import Tenant

logger = logging.getLogger(__name__)

SWEEP_LIMIT = 500
# A sweep stops starting flushes after this long: it runs every 15 s and must not overlap itself.
SWEEP_BUDGET_SECONDS = 10.0


@dataclass(frozen=True)
class RouteSpec:
    route_id: int | None  # None: the default route
    name: str
    matchers: tuple[Matcher, ...]
    severities: frozenset[str]
    group_by: tuple[str, ...]
    group_wait: int
    group_interval: int
    repeat_interval: int
    continue_matching: bool

    def takes(self, labels: dict[str, str], severity: str) -> bool:
        return (not self.severities or severity in self.severities) and matches_all(self.matchers, labels)


def routes_of(tenant: Tenant) -> list[RouteSpec]:
    """The tenant's routes in order, the default route last."""
    specs = [
        RouteSpec(
            route.pk,
            route.name,
            matchers_parse(route.matchers),
            frozenset(route.severities),
            tuple(route.group_by),
            route.group_wait_seconds,
            route.group_interval_seconds,
            route.repeat_interval_seconds,
            route.continue_matching,
        )
        for route in Route.objects.filter(tenant=tenant).order_by("position", "pk")
    ]
    default = RouteSpec(
        None,
        "default",
        (),
        frozenset(),
        tuple(settings.VIGIL_ALERTS_GROUP_BY),
        settings.VIGIL_ALERTS_GROUP_WAIT_SECONDS,
        settings.VIGIL_ALERTS_GROUP_INTERVAL_SECONDS,
        settings.VIGIL_ALERTS_REPEAT_INTERVAL_SECONDS,
        False,
    )
    return [*specs, default]


def routes_matching(routes: list[RouteSpec], labels: dict[str, str], severity: str) -> list[RouteSpec]:
    """The routes that take an alert: the first match, and the next while `continue_matching`;
    the default route when no other takes it."""
    taken = []
    for route in routes[:-1]:
        if route.takes(labels, severity):
            taken.append(route)
            if not route.continue_matching:
                break
    return taken or [routes[-1]]


def group_of(route: RouteSpec, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(group key, group labels). `group_by: ["..."]` groups by every label (Alertmanager)."""
    if "..." in route.group_by:
        group_labels = {k: v for k, v in labels.items() if k != "severity"}
    else:
        group_labels = {name: labels[name] for name in route.group_by if name in labels}  # absent: left out
    canonical = json.dumps([route.route_id, sorted(group_labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest(), group_labels


# --- marking groups due -----------------------------------------------------------------------


def alerts_changed(*, tenant: Tenant, alerts: Iterable[Alert], now: datetime) -> list[NotificationGroup]:
    """Mark the groups of alerts that fired, resolved or changed severity as due; flush at once
    the ones due now (in the caller's transaction: the outbox), schedule the others. Returns the
    groups marked."""
    alerts = list(alerts)
    if not alerts:
        return []
    routes = routes_of(tenant)
    touched: dict[str, NotificationGroup] = {}
    for alert in alerts:
        for route in routes_matching(routes, alert.labels, alert.severity):
            key, labels = group_of(route, alert.labels)
            if key in touched:
                continue
            group, _ = NotificationGroup.objects.select_for_update(no_key=True).get_or_create(
                tenant=tenant, key=key, defaults={"route_id": route.route_id, "labels": labels}
            )
            if group.flushed_at is None:  # the first notification waits group_wait
                due = group.flush_at or now + timedelta(seconds=route.group_wait)
            else:  # later changes are batched every group_interval
                due = max(now, group.flushed_at + timedelta(seconds=route.group_interval))
                due = min(due, group.flush_at) if group.flush_at else due
            if group.flush_at != due:
                group.flush_at = due
                group.save(update_fields=["flush_at"])
            touched[key] = group
    for group in touched.values():
        assert group.flush_at is not None
        if group.flush_at <= now:
            group_flush(group_id=group.pk, now=now)
        else:
            _flush_schedule(group)
    return list(touched.values())


def _flush_schedule(group: NotificationGroup) -> None:
    from alerts.tasks import group_flush as task

    assert group.flush_at is not None
    eta, group_id = group.flush_at, group.pk

    def publish() -> None:
        try:
            task.apply_async((group_id,), eta=eta)
        except Exception:  # the broker is down; the sweeper flushes due groups
            logger.warning("could not schedule the flush of group %s", group_id, exc_info=True)

    transaction.on_commit(publish)


# --- flushing ---------------------------------------------------------------------------------


def group_flush(*, group_id: int, now: datetime | None = None, skip_locked: bool = False) -> Notification | None:
    """Flush one group if it is due: decide what to tell and, if anything, write one
    Notification and its Deliveries (alerts.delivery), in one transaction under a lock on the
    group.

    Sends when an alert fired (or changed severity) since the last notification, when a notified
    alert resolved, or when the group still fires and `repeat_interval` has passed. Suppressed
    alerts (silences, mute windows, inhibition) are left out. The group stays due every
    `group_interval` while it has firing alerts. Returns the notification, or None.
    Idempotent: a group not due (already flushed) is left alone, and with `skip_locked` (the
    sweeper) so is one another flush holds.
    """
    now = now or timezone.now()
    with transaction.atomic():
        group = (
            NotificationGroup.objects.select_for_update(of=("self",), no_key=True)
            .select_related("tenant")
            .filter(pk=group_id)
            .first()
        )
        if group is None or group.flush_at is None or group.flush_at > now:
            return None
        routes = routes_of(group.tenant)
        route = next((r for r in routes if r.route_id == group.route_id), routes[-1])
        firing, held, resolved = _group_alerts(group, routes, route, now)
        current = sorted(f"{a.pk}:{a.severity}" for a in firing)
        notified = set(group.notified)
        repeat = min(
            [a.rule.repeat_interval_seconds or route.repeat_interval for a in firing] or [route.repeat_interval]
        )
        repeat_due = group.sent_at is not None and (now - group.sent_at).total_seconds() >= repeat
        notification = None
        if set(current) - notified or resolved or (firing and repeat_due):
            notification = _notify(group, route, firing, resolved, now)
            group.notified, group.sent_at = current, now
        group.flushed_at = now
        # Watched every group_interval while anything fires (held alerts too: their silence ends).
        group.flush_at = now + timedelta(seconds=route.group_interval) if firing or held else None
        if not firing:
            group.notified = []
        group.save(update_fields=["notified", "sent_at", "flushed_at", "flush_at"])
        return notification


def _group_alerts(
    group: NotificationGroup, routes: list[RouteSpec], route: RouteSpec, now: datetime
) -> tuple[list[Alert], list[Alert], list[Alert]]:
    """(firing alerts of the group that are not suppressed, the suppressed ones, notified
    alerts that resolved).

    Membership is decided on light rows (id, labels, severity) narrowed in SQL to the alerts
    carrying the group's labels where the database can (PostgreSQL's jsonb @>), and inhibition
    reads only the firing cluster-level alerts; only the group's own alerts are loaded whole."""
    firing_alerts = Alert.objects.filter(tenant=group.tenant, state=Alert.State.FIRING)
    candidates = firing_alerts
    if connection.features.supports_json_field_contains:  # PostgreSQL: only alerts with the group's labels
        candidates = candidates.filter(labels__contains=group.labels)
    members = {
        pk: labels
        for pk, labels, severity in candidates.values_list("pk", "labels", "severity")
        if route in routes_matching(routes, labels, severity) and group_of(route, labels)[0] == group.key
    }
    cluster_level = firing_alerts.filter(rule__inhibits_nodes=True).exclude(labels__has_key="node")
    inhibitors = {
        (labels.get("cluster"), labels.get("metric")) for labels in cluster_level.values_list("labels", flat=True)
    }
    muters = _muters(group.tenant, now)

    def suppressed(labels: dict[str, str]) -> bool:
        inhibited = "node" in labels and (labels.get("cluster"), labels.get("metric")) in inhibitors
        return inhibited or any(matches_all(m, labels) for m in muters)

    held_ids = {pk for pk, labels in members.items() if suppressed(labels)}
    notified_ids = {int(entry.split(":")[0]) for entry in group.notified}
    loaded = Alert.objects.filter(pk__in=set(members) | notified_ids).select_related(
        "rule", "rule_version", "incident", "anomaly"
    )
    firing, held, resolved = [], [], []
    for alert in loaded.order_by("pk"):
        if alert.pk in held_ids:
            held.append(alert)
        elif alert.pk in members:
            firing.append(alert)
        elif alert.state == Alert.State.RESOLVED:
            resolved.append(alert)
    return firing, held, resolved


def _muters(tenant: Tenant, now: datetime) -> list[tuple[Matcher, ...]]:
    """The matchers of the silences and mute windows in force now."""
    silences = [
        matchers_parse(s.matchers) for s in Silence.objects.filter(tenant=tenant, starts_at__lte=now, ends_at__gt=now)
    ]
    windows = [
        matchers_parse(w.matchers)
        for w in MuteWindow.objects.filter(tenant=tenant, enabled=True)
        if mute_window_active(w, now)
    ]
    return silences + windows


def mute_window_active(window: MuteWindow, now: datetime) -> bool:
    """Is `now` inside the window (in its time zone)? A window whose end is before its start
    crosses midnight and belongs to the weekday it starts on."""
    local = now.astimezone(ZoneInfo(window.timezone))
    weekdays = set(window.weekdays) or set(range(7))
    moment = local.time()
    if window.start_time <= window.end_time:
        return local.weekday() in weekdays and window.start_time <= moment < window.end_time
    if moment >= window.start_time:
        return local.weekday() in weekdays
    return moment < window.end_time and (local.weekday() - 1) % 7 in weekdays


def _notify(
    group: NotificationGroup, route: RouteSpec, firing: list[Alert], resolved: list[Alert], now: datetime
) -> Notification:
    alerts = firing + resolved
    base = settings.VIGIL_EXTERNAL_URL.rstrip("/")
    incidents = {a.incident_id for a in alerts if a.incident_id}
    status = "firing" if firing else "resolved"
    body = payload_build(
        receiver=route.name,
        status=status,
        group_key=f"{{}}/{route.name}:{{{','.join(f'{k}={json.dumps(v)}' for k, v in sorted(group.labels.items()))}}}",
        group_labels=group.labels,
        alerts=[_payload_alert(alert, base) for alert in alerts],
        external_url=base,
        vigil={
            "tenant": group.tenant.slug,
            "event": "alert.firing" if firing else "alert.resolved",
            "incident_id": incidents.pop() if len(incidents) == 1 else None,
            "group_id": group.pk,
        },
    )
    event = Notification.Event.FIRING if firing else Notification.Event.RESOLVED
    notification = Notification.objects.create(
        tenant=group.tenant,
        group=group,
        incident_id=alerts[0].incident_id,
        event=event,
        body=body,
    )
    severity = max((a.severity for a in alerts), key=lambda s: SEVERITY_RANK[s])
    common = {k: v for k, v in alerts[0].labels.items() if all(a.labels.get(k) == v for a in alerts)}
    endpoints = WebhookEndpoint.objects.filter(tenant=group.tenant, enabled=True)
    if route.route_id is not None:
        endpoints = endpoints.filter(routes=route.route_id)
    chosen = [e for e in endpoints if delivery.endpoint_accepts(e, event=event, severity=severity, labels=common)]
    delivery.notification_dispatch(notification=notification, endpoints=chosen)
    return notification


def _payload_alert(alert: Alert, base: str) -> PayloadAlert:
    links = {"rule": f"{base}/api/v1/rules/{alert.rule_id}"}
    if alert.incident_id:
        links["incident"] = f"{base}/api/v1/incidents/{alert.incident_id}"
    if alert.series_id:
        links["series"] = f"{base}/api/v1/series/{alert.series_id}"
    vigil: dict[str, object] = {
        "rule_id": alert.rule_id,
        "rule_version": alert.rule_version.version,
        "incident_id": alert.incident_id,
        "severity": alert.severity,
        "value": alert.value,
    }
    if alert.anomaly is not None:
        links["anomaly"] = f"{base}/api/v1/anomalies/{alert.anomaly_id}"
        vigil["anomaly_score"] = alert.anomaly.peak_score
        vigil["explanation"] = alert.anomaly.explanation
    vigil["links"] = links
    assert alert.fired_at is not None
    return PayloadAlert(
        status="firing" if alert.state == Alert.State.FIRING else "resolved",
        labels=alert.labels,
        annotations=alert.annotations,
        starts_at=alert.fired_at,
        ends_at=alert.resolved_at if alert.state == Alert.State.RESOLVED else None,
        generator_url=links["rule"],
        fingerprint=alert.fingerprint,
        vigil=vigil,
    )


def groups_flush_due(*, now: datetime | None = None) -> int:
    """The sweeper: flush the groups due by now, oldest first, each in its own transaction,
    skipping any another flush holds, within SWEEP_BUDGET_SECONDS. Returns how
    many sent a notification."""
    now = now or timezone.now()
    started = time.monotonic()
    due = NotificationGroup.objects.filter(flush_at__lte=now).order_by("flush_at").values_list("pk", flat=True)
    sent = 0
    for group_id in list(due[:SWEEP_LIMIT]):
        if time.monotonic() - started > SWEEP_BUDGET_SECONDS:
            break  # the oldest went first; the next sweep goes on from there
        sent += group_flush(group_id=group_id, now=now, skip_locked=True) is not None
    return sent
