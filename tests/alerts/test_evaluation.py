"""Rule evaluation on real data: alert states, incidents and their activity, versions, and the
notification outbox written in the same transaction."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from alerts import services
from alerts.evaluation import rule_evaluate, rule_preview, tenant_rules_evaluate
from alerts.models import Alert, AlertRule, Incident, IncidentActivity, Notification, NotificationGroup
from analytics import rollups
from analytics import services as analytics_services
from analytics.models import IngestBatch, MetricSeries
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory
from tests.concurrency import run_concurrently
from tests.tenants.factories import TenantFactory

pytestmark = pytest.mark.django_db


def push(
    tenant: Tenant,
    node: str,
    values: list[float],
    end: datetime,
    *,
    metric: str = "latency",
    step: int = 10,
    cluster: str = "eu",
) -> MetricSeries:
    """Ingest `values` for one series, the last at `end`, one every `step` seconds, and run the
    pipeline's first stage (last_point_at)."""
    points = [
        {
            "cluster": cluster,
            "node": node,
            "metric": metric,
            "timestamp": (end - timedelta(seconds=step * i)).timestamp(),
            "value": value,
        }
        for i, value in enumerate(reversed(values))
    ]
    analytics_services.points_ingest(tenant=tenant, points=points)
    for batch in IngestBatch.objects.filter(tenant=tenant, status=IngestBatch.Status.PENDING):
        analytics_services.ingest_batch_process(batch=batch)
    return MetricSeries.objects.get(tenant=tenant, cluster=cluster, node=node, metric=metric)


def latency_rule(tenant: Tenant, **overrides: Any) -> AlertRule:
    values: dict[str, Any] = {
        "name": "p99 latency",
        "kind": "threshold",
        "selector": [{"label": "metric", "op": "=", "value": "latency"}],
        "condition": {"aggregate": "p99", "window_seconds": 60, "operator": ">", "warning": 500, "critical": 1000},
        "annotations": {"summary": "p99 {{ $value }} ms on {{ $labels.node }}"},
    }
    return services.rule_create(tenant=tenant, **{**values, **overrides})


@pytest.fixture(autouse=True)
def _notify_at_once(settings: Any) -> None:
    """No group_wait / group_interval: every change is notified in its evaluation's transaction
    (grouping is tests/alerts/test_notifications.py's subject)."""
    settings.VIGIL_ALERTS_GROUP_WAIT_SECONDS = 0
    settings.VIGIL_ALERTS_GROUP_INTERVAL_SECONDS = 0


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


def test_a_critical_breach_fires_an_alert_opens_an_incident_and_writes_a_notification(
    tenant: Tenant, now: datetime
) -> None:
    push(tenant, "web-1", [100, 120, 1500, 1400, 1600, 1300], now)
    rule = latency_rule(tenant)

    [change] = rule_evaluate(rule_id=rule.pk, now=now)

    alert = change.alert
    assert (alert.state, alert.severity, alert.fired_at) == ("firing", "critical", now)
    assert alert.labels == {
        "alertname": "p99 latency",
        "cluster": "eu",
        "node": "web-1",
        "metric": "latency",
        "severity": "critical",
    }
    assert alert.annotations == {"summary": f"p99 {alert.value:.4g} ms on web-1"}
    incident = Incident.objects.get(rule=rule)
    assert (incident.status, incident.severity, incident.rule_version.version) == ("firing", "critical", 1)
    assert list(incident.activity.values_list("kind", "previous", "current")) == [
        ("created", "", ""),
        ("state_change", "inactive", "firing"),
    ]
    notification = Notification.objects.get(tenant=tenant)
    body = json.loads(notification.body)
    assert body["status"] == "firing" and body["version"] == "4"
    assert body["alerts"][0]["labels"]["node"] == "web-1"
    assert body["vigil"]["incident_id"] == incident.pk


def test_evaluating_again_at_the_same_time_changes_nothing(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now)

    assert rule_evaluate(rule_id=rule.pk, now=now) == []
    assert Notification.objects.count() == 1
    assert IncidentActivity.objects.count() == 2


def test_a_point_stamped_a_little_ahead_of_now_is_evaluated_at_once(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500], now + timedelta(seconds=5))  # the client's clock runs 5 s ahead
    rule = latency_rule(tenant)
    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert change.alert.state == "firing"


def test_a_window_without_points_is_no_data_not_zero(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now - timedelta(minutes=10))
    rule = latency_rule(tenant, condition={"aggregate": "max", "window_seconds": 60, "operator": "<", "critical": 1})
    assert rule_evaluate(rule_id=rule.pk, now=now) == []
    assert not Alert.objects.exists()  # "no points" did not read as 0 < 1


def test_no_data_keeps_a_firing_alert_firing_and_says_so(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now)

    assert rule_evaluate(rule_id=rule.pk, now=now + timedelta(minutes=5)) == []
    alert = Alert.objects.get()
    assert (alert.state, alert.health, alert.value) == ("firing", "no_data", None)


def test_no_data_state_ok_resolves_and_alerting_fires(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant, no_data_state="ok")
    rule_evaluate(rule_id=rule.pk, now=now)
    [change] = rule_evaluate(rule_id=rule.pk, now=now + timedelta(minutes=5))
    assert change.alert.state == "resolved"

    other = latency_rule(
        tenant,
        name="silent",
        no_data_state="alerting",
        condition={"aggregate": "max", "window_seconds": 60, "operator": ">", "warning": 1e9},
    )
    [change] = rule_evaluate(rule_id=other.pk, now=now + timedelta(minutes=5))
    assert (change.alert.state, change.alert.severity) == ("firing", "warning")


def test_for_holds_the_alert_pending_and_flapping_inside_it_notifies_nothing(tenant: Tenant, now: datetime) -> None:
    series = push(tenant, "web-1", [100] * 6, now - timedelta(minutes=5))
    rule = latency_rule(
        tenant,
        for_seconds=120,
        condition={"aggregate": "last", "window_seconds": 60, "operator": ">", "critical": 1000},
    )
    moment = now - timedelta(minutes=4)
    for i in range(8):  # breached, clear, breached, clear ... every 30 s: never 120 s in a row
        moment += timedelta(seconds=30)
        push(tenant, "web-1", [5000 if i % 2 == 0 else 10], moment)
        rule_evaluate(rule_id=rule.pk, now=moment)
    assert Alert.objects.get(series=series).state in ("pending", "inactive")
    assert not Notification.objects.exists()
    assert not Incident.objects.exists()

    for _ in range(5):  # now breached for 150 s
        moment += timedelta(seconds=30)
        push(tenant, "web-1", [5000], moment)
        rule_evaluate(rule_id=rule.pk, now=moment)
    alert = Alert.objects.get(series=series)
    assert alert.state == "firing"
    assert alert.fired_at - alert.active_at >= timedelta(seconds=120)
    assert Notification.objects.count() == 1


def test_keep_firing_for_rides_out_a_short_recovery_without_notifying(tenant: Tenant, now: datetime) -> None:
    rule = latency_rule(
        tenant,
        keep_firing_for_seconds=120,
        condition={"aggregate": "last", "window_seconds": 60, "operator": ">", "critical": 1000},
    )
    moment = now - timedelta(minutes=5)
    for value in [5000, 10, 10, 5000, 10, 10, 10]:  # recoveries of 60 s, then 90 s: both inside 120 s
        moment += timedelta(seconds=30)
        push(tenant, "web-1", [value], moment)
        rule_evaluate(rule_id=rule.pk, now=moment)
    assert Alert.objects.get().state == "firing"
    assert Notification.objects.count() == 1  # the firing one only

    for _ in range(2):
        moment += timedelta(seconds=30)
        push(tenant, "web-1", [10], moment)
        rule_evaluate(rule_id=rule.pk, now=moment)
    alert = Alert.objects.get()
    assert alert.state == "resolved"
    assert Notification.objects.filter(event="alert.resolved").count() == 1
    assert Incident.objects.get().status == "resolved"


def test_the_resolve_threshold_adds_hysteresis(tenant: Tenant, now: datetime) -> None:
    rule = latency_rule(
        tenant, condition={"aggregate": "last", "window_seconds": 60, "operator": ">", "critical": 500, "resolve": 450}
    )
    moment = now - timedelta(minutes=3)
    states = []
    for value in [600, 480, 470, 440]:
        moment += timedelta(seconds=30)
        push(tenant, "web-1", [value], moment)
        rule_evaluate(rule_id=rule.pk, now=moment)
        states.append(Alert.objects.get().state)
    assert states == ["firing", "firing", "firing", "resolved"]


def test_a_severity_change_is_logged_and_notified(tenant: Tenant, now: datetime) -> None:
    rule = latency_rule(
        tenant, condition={"aggregate": "last", "window_seconds": 60, "operator": ">", "warning": 500, "critical": 1000}
    )
    push(tenant, "web-1", [700], now - timedelta(seconds=30))
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(seconds=30))
    push(tenant, "web-1", [1700], now)
    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert change.events == ["severity"]
    incident = Incident.objects.get()
    assert incident.severity == "critical"
    assert incident.activity.last().previous == "warning"
    assert incident.activity.last().current == "critical"


def test_by_cluster_aggregates_every_node_into_one_alert(tenant: Tenant, now: datetime) -> None:
    for node in ("web-1", "web-2", "web-3"):
        push(tenant, node, [400, 450, 700], now)
    rule = latency_rule(
        tenant, condition={"aggregate": "mean", "window_seconds": 60, "operator": ">", "critical": 500, "by": "cluster"}
    )
    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert change.alert.labels == {
        "alertname": "p99 latency",
        "cluster": "eu",
        "metric": "latency",
        "severity": "critical",
    }
    assert change.alert.value == pytest.approx(516.67, abs=0.01)
    assert change.alert.series_id is None


def test_a_no_data_rule_fires_for_a_silent_series_only(tenant: Tenant, now: datetime) -> None:
    push(tenant, "quiet", [1.0], now - timedelta(minutes=20))
    push(tenant, "busy", [1.0], now)
    rule = services.rule_create(
        tenant=tenant,
        name="silent",
        kind="no_data",
        selector=[{"label": "metric", "op": "=", "value": "latency"}],
        condition={"seconds": 600, "severity": "warning"},
    )
    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert change.alert.labels["node"] == "quiet"
    assert change.alert.value == pytest.approx(1200)
    assert change.alert.severity == "warning"


def test_an_anomaly_rule_fires_on_a_recent_high_score_and_carries_the_anomaly(tenant: Tenant, now: datetime) -> None:
    series = push(tenant, "web-1", [1.0], now)
    calm = push(tenant, "web-2", [1.0], now)
    anomaly = AnomalyResultFactory(
        series=series, window_start=now - timedelta(minutes=2), window_end=now, peak_score=0.995, label="spike"
    )
    AnomalyResultFactory(series=calm, window_start=now - timedelta(minutes=2), window_end=now, peak_score=0.5)
    rule = services.rule_create(
        tenant=tenant,
        name="spikes",
        kind="anomaly",
        selector=[{"label": "metric", "op": "=", "value": "latency"}],
        condition={"labels": ["spike"], "warning": 0.9, "critical": 0.99},
    )
    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert (change.alert.series_id, change.alert.anomaly_id, change.alert.severity) == (
        series.pk,
        anomaly.pk,
        "critical",
    )
    alert = json.loads(Notification.objects.get().body)["alerts"][0]
    assert alert["vigil"]["anomaly_score"] == 0.995
    assert alert["vigil"]["explanation"] == anomaly.explanation


def test_a_node_level_anomaly_rule_fires_once_per_node_on_multivariate_anomalies(tenant: Tenant, now: datetime) -> None:
    series = push(tenant, "db-1", [1.0], now)
    push(tenant, "db-1", [1.0], now, metric="cpu")
    push(tenant, "web-1", [1.0], now)
    AnomalyResultFactory(series=series, window_start=now - timedelta(minutes=2), window_end=now, peak_score=0.999)
    node_anomaly = AnomalyResultFactory(
        series=None,
        tenant=tenant,
        cluster="eu",
        node="db-1",
        metric="",
        detector="isolation_forest",
        window_start=now - timedelta(minutes=3),
        window_end=now,
        peak_score=0.97,
    )
    rule = services.rule_create(
        tenant=tenant,
        name="nodes",
        kind="anomaly",
        selector=[],
        condition={"level": "node", "warning": 0.9, "critical": 0.99},
    )
    [change] = rule_evaluate(rule_id=rule.pk, now=now)  # not the series anomaly, not web-1
    assert change.alert.labels == {"alertname": "nodes", "cluster": "eu", "node": "db-1", "severity": "warning"}
    assert (change.alert.anomaly_id, change.alert.value) == (node_anomaly.pk, 0.97)


def test_a_change_rule_compares_with_the_same_window_a_day_ago(tenant: Tenant, now: datetime) -> None:
    minute = now.replace(second=0)
    series = push(tenant, "web-1", [100.0] * 30, minute - timedelta(days=1), step=60, metric="requests")
    push(tenant, "web-1", [30.0] * 30, minute, step=60, metric="requests")
    rollups.rollups_refresh(series_ids=[series.pk], start=minute - timedelta(days=1, hours=1), end=minute)
    rule = services.rule_create(
        tenant=tenant,
        name="throughput",
        kind="change",
        selector=[{"label": "metric", "op": "=", "value": "requests"}],
        condition={
            "aggregate": "sum",
            "window_seconds": 1200,
            "offset_seconds": 86400,
            "operator": "<",
            "warning": -30,
            "critical": -60,
        },
    )
    [change] = rule_evaluate(rule_id=rule.pk, now=minute + timedelta(seconds=1))
    assert change.alert.value == pytest.approx(-70)
    assert change.alert.severity == "critical"


def test_editing_a_rule_keeps_the_version_that_fired_the_incident(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now)

    rule = services.rule_update(rule=rule, condition={**rule.condition, "critical": 2000})
    assert rule.version == 2
    [change] = rule_evaluate(rule_id=rule.pk, now=now + timedelta(seconds=1))
    assert change.alert.severity == "warning"
    assert change.alert.rule_version.version == 2
    incident = Incident.objects.get()
    assert incident.rule_version.version == 1
    assert list(rule.versions.values_list("version", flat=True)) == [2, 1]
    assert rule.versions.get(version=1).spec["condition"]["critical"] == 1000


def test_an_alert_whose_series_left_the_scope_resolves(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now)
    rule = services.rule_update(rule=rule, selector=[{"label": "node", "op": "=", "value": "web-9"}])
    [change] = rule_evaluate(rule_id=rule.pk, now=now + timedelta(seconds=1))
    assert change.alert.state == "resolved"
    assert Incident.objects.get().status == "resolved"


def test_evaluating_for_some_series_leaves_the_other_alerts_alone(tenant: Tenant, now: datetime) -> None:
    one = push(tenant, "web-1", [1500] * 6, now)
    two = push(tenant, "web-2", [1500] * 6, now)
    rule = latency_rule(tenant)
    tenant_rules_evaluate(tenant=tenant, series_ids=[one.pk], now=now)
    assert list(Alert.objects.values_list("series_id", flat=True)) == [one.pk]
    tenant_rules_evaluate(tenant=tenant, series_ids=[two.pk], kinds=["anomaly"], now=now)
    assert Alert.objects.count() == 1  # the kind filter: threshold rules were not evaluated
    tenant_rules_evaluate(tenant=tenant, now=now)
    assert set(Alert.objects.values_list("series_id", flat=True)) == {one.pk, two.pk}
    assert Incident.objects.get(rule=rule).alerts.count() == 2


def test_another_tenants_series_never_reach_a_rule(tenant: Tenant, now: datetime) -> None:
    stranger = TenantFactory()
    push(stranger, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant)
    assert rule_evaluate(rule_id=rule.pk, now=now) == []


def test_a_disabled_rule_is_not_evaluated(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant, enabled=False)
    assert rule_evaluate(rule_id=rule.pk, now=now) == []


@pytest.mark.django_db(transaction=True)
def test_two_evaluations_at_once_give_one_alert_one_incident_one_notification(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [1500] * 6, now)
    rule = latency_rule(tenant)
    errors = run_concurrently([lambda: rule_evaluate(rule_id=rule.pk, now=now)] * 2)
    assert not errors
    assert (Alert.objects.count(), Incident.objects.count(), Notification.objects.count()) == (1, 1, 1)
    assert NotificationGroup.objects.count() == 1


def test_the_preview_replays_the_last_day_without_writing(tenant: Tenant, now: datetime) -> None:
    push(tenant, "web-1", [100.0] * 120, now - timedelta(hours=3), step=60)
    push(tenant, "web-1", [1500.0] * 20, now - timedelta(hours=5), step=60)
    rule = latency_rule(
        tenant, condition={"aggregate": "max", "window_seconds": 300, "operator": ">", "critical": 1000}
    )
    preview = rule_preview(rule=rule, hours=24, step_seconds=300, now=now)
    [alert] = preview.alerts
    assert alert.labels["node"] == "web-1"
    [(start, end, severity)] = alert.fired
    assert severity == "critical"
    assert now - timedelta(hours=6) <= start <= now - timedelta(hours=5, minutes=15)
    assert end is not None and end <= now - timedelta(hours=4, minutes=50)
    assert not Alert.objects.exists() and not Notification.objects.exists()
