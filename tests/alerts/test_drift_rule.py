"""`drift` alert rules: a tenant is alerted when one of its models drifts (mlops.DriftReport),
through the same evaluation, incidents and notifications as every rule; and their API."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from alerts import services
from alerts.conditions import condition_judge, condition_parse
from alerts.evaluation import (
    KINDS_AFTER_DRIFT,
    rule_evaluate,
    rule_preview,
    tenant_rules_evaluate,
    tenant_rules_evaluate_publish,
)
from alerts.models import Alert, AlertRule, AlertRuleVersion, Incident, Notification
from analytics.models import MetricSeries
from config.celery_app import app as celery_app
from mlops.models import DriftReport, ModelVersion
from mlops.services import model_version_promote, model_version_register
from tenants.models import Tenant
from tests.analytics.factories import MetricSeriesFactory
from tests.tenants.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _notify_at_once(settings: Any) -> None:
    """No group_wait / group_interval: every change is notified in its evaluation's transaction."""
    settings.VIGIL_ALERTS_GROUP_WAIT_SECONDS = 0
    settings.VIGIL_ALERTS_GROUP_INTERVAL_SECONDS = 0


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def eager_celery() -> Any:
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def series_of(tenant: Tenant, node: str = "web-1", metric: str = "latency", cluster: str = "eu") -> MetricSeries:
    return MetricSeriesFactory(tenant=tenant, cluster=cluster, node=node, metric=metric)


def series_model(series: MetricSeries, detector: str = "ensemble") -> ModelVersion:
    """A trained model of the series, registered and made its active version."""
    version = model_version_register(
        tenant=series.tenant, kind="series", series=series, detector=detector, state={"last_ts": None}, trigger="manual"
    )
    return model_version_promote(version=version)


def node_model(tenant: Tenant, cluster: str = "eu", node: str = "db-1") -> ModelVersion:
    version = model_version_register(
        tenant=tenant,
        kind="node",
        cluster=cluster,
        node=node,
        detector="isolation_forest",
        state={"last_ts": None},
        trigger="manual",
    )
    return model_version_promote(version=version)


def report(
    version: ModelVersion, window_to: datetime, verdict: str = "drift", drifted: list[str] | None = None
) -> DriftReport:
    if drifted is None:
        drifted = ["residual"] if verdict == "drift" else []
    return DriftReport.objects.create(
        tenant=version.tenant,
        model_version=version,
        scope_key=version.scope_key,
        window_from=window_to - timedelta(days=1),
        window_to=window_to,
        points=1440,
        statistics={},
        verdict=verdict,
        drifted=drifted,
        action="notify" if verdict == "drift" else "none",
    )


def drift_rule(tenant: Tenant, **overrides: Any) -> AlertRule:
    values: dict[str, Any] = {
        "name": "model drift",
        "kind": "drift",
        "selector": [],
        "condition": {},
        "annotations": {"summary": "{{ $labels.scope }} v{{ $labels.model_version }}: {{ $value }} signals drifted"},
    }
    return services.rule_create(tenant=tenant, **{**values, **overrides})


def alert_of(rule: AlertRule) -> Alert:
    return Alert.objects.get(rule=rule)


# --- the condition -----------------------------------------------------------------------------


def test_a_drift_condition_defaults_to_any_signal_over_two_hours_at_warning() -> None:
    condition = condition_parse("drift", {})
    assert (condition.window_seconds, condition.signals, condition.severity) == (7200, frozenset(), "warning")
    assert condition_judge(condition, 1.0) == "warning"
    assert condition_judge(condition, 0.0) is None


# --- firing and resolving ----------------------------------------------------------------------


def test_a_drift_report_fires_an_alert_labelled_with_the_model(tenant: Tenant, now: datetime) -> None:
    series = series_of(tenant)
    version = series_model(series)
    report(version, now - timedelta(minutes=10), drifted=["residual", "anomaly_rate"])
    rule = drift_rule(tenant)

    [change] = rule_evaluate(rule_id=rule.pk, now=now)

    alert = change.alert
    assert (alert.state, alert.severity, alert.value, alert.fired_at) == ("firing", "warning", 2.0, now)
    assert alert.labels == {
        "alertname": "model drift",
        "cluster": "eu",
        "node": "web-1",
        "metric": "latency",
        "scope": f"series:{series.pk}",
        "model_version": "1",
        "detector": "ensemble",
        "severity": "warning",
    }
    assert alert.series_id == series.pk
    assert alert.annotations == {"summary": f"series:{series.pk} v1: 2 signals drifted"}
    assert Incident.objects.get(rule=rule).status == "firing"
    body = json.loads(Notification.objects.get(tenant=tenant).body)
    assert body["status"] == "firing"
    assert body["alerts"][0]["labels"]["scope"] == f"series:{series.pk}"


def test_a_node_models_drift_is_labelled_with_its_node_and_no_metric(tenant: Tenant, now: datetime) -> None:
    version = node_model(tenant)
    report(version, now - timedelta(minutes=10), drifted=["cpu", "memory"])
    rule = drift_rule(tenant, condition={"severity": "critical"})

    [change] = rule_evaluate(rule_id=rule.pk, now=now)

    assert change.alert.labels == {
        "alertname": "model drift",
        "cluster": "eu",
        "node": "db-1",
        "metric": "",
        "scope": "node:eu/db-1",
        "model_version": "1",
        "detector": "isolation_forest",
        "severity": "critical",
    }
    assert change.alert.series_id is None


def test_for_holds_the_drift_alert_pending_until_it_has_lasted(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(minutes=10))
    rule = drift_rule(tenant, for_seconds=600)

    rule_evaluate(rule_id=rule.pk, now=now)
    assert alert_of(rule).state == "pending"
    rule_evaluate(rule_id=rule.pk, now=now + timedelta(minutes=5))
    assert alert_of(rule).state == "pending"
    assert not Notification.objects.exists()

    [change] = rule_evaluate(rule_id=rule.pk, now=now + timedelta(minutes=10))
    assert (change.alert.state, change.events) == ("firing", ["firing"])
    assert Notification.objects.count() == 1


def test_a_newer_ok_report_resolves_the_alert_and_its_incident(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=1))
    rule = drift_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(minutes=50))
    assert alert_of(rule).state == "firing"

    report(version, now - timedelta(minutes=5), verdict="ok")
    [change] = rule_evaluate(rule_id=rule.pk, now=now)

    assert (change.alert.state, change.alert.value, change.events) == ("resolved", 0.0, ["resolved"])
    assert Incident.objects.get(rule=rule).status == "resolved"
    assert Notification.objects.filter(event="alert.resolved").count() == 1


def test_insufficient_data_neither_fires_nor_resolves(tenant: Tenant, now: datetime) -> None:
    quiet = series_model(series_of(tenant, node="web-1"))
    drifting = series_model(series_of(tenant, node="web-2"))
    report(quiet, now - timedelta(hours=1), verdict="insufficient_data")
    report(drifting, now - timedelta(hours=1))
    rule = drift_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(minutes=50))
    assert list(Alert.objects.values_list("labels__node", "state")) == [("web-2", "firing")]  # web-1 did not fire

    report(drifting, now - timedelta(minutes=5), verdict="insufficient_data")
    assert rule_evaluate(rule_id=rule.pk, now=now) == []

    alert = alert_of(rule)
    assert (alert.state, alert.health, alert.value) == ("firing", "no_data", None)
    assert not Notification.objects.filter(event="alert.resolved").exists()


def test_no_report_in_the_window_keeps_the_alert_as_it_was(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=1))
    rule = drift_rule(tenant, condition={"window_seconds": 7200})
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(minutes=50))

    # The drift checks stopped: three hours later the last report is out of the window.
    assert rule_evaluate(rule_id=rule.pk, now=now + timedelta(hours=2)) == []
    alert = alert_of(rule)
    assert (alert.state, alert.health) == ("firing", "no_data")


def test_no_data_state_ok_resolves_on_insufficient_data(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=1))
    rule = drift_rule(tenant, no_data_state="ok")
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(minutes=50))
    report(version, now - timedelta(minutes=5), verdict="insufficient_data")

    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert change.alert.state == "resolved"


def test_a_report_older_than_the_window_does_not_fire(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=3))
    rule = drift_rule(tenant, condition={"window_seconds": 7200})
    assert rule_evaluate(rule_id=rule.pk, now=now) == []
    assert not Alert.objects.exists()


def test_a_retrained_models_report_takes_over_and_the_old_versions_alert_resolves(
    tenant: Tenant, now: datetime
) -> None:
    series = series_of(tenant)
    first = series_model(series)
    report(first, now - timedelta(hours=1))
    rule = drift_rule(tenant)
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(minutes=50))

    second = series_model(series)
    report(second, now - timedelta(minutes=5), drifted=["value"])
    rule_evaluate(rule_id=rule.pk, now=now)

    states = dict(Alert.objects.filter(rule=rule).values_list("labels__model_version", "state"))
    assert states == {"1": "resolved", "2": "firing"}
    assert (first.scope_key, second.version) == (second.scope_key, 2)


# --- what a rule sees --------------------------------------------------------------------------


def test_signals_choose_which_drifted_signals_count(tenant: Tenant, now: datetime) -> None:
    values_only = series_model(series_of(tenant, node="web-1"))
    both = series_model(series_of(tenant, node="web-2"))
    report(values_only, now - timedelta(minutes=10), drifted=["value", "residual"])
    report(both, now - timedelta(minutes=10), drifted=["residual", "anomaly_rate", "feedback_precision"])
    rule = drift_rule(tenant, condition={"signals": ["anomaly_rate", "feedback_precision"]})

    [change] = rule_evaluate(rule_id=rule.pk, now=now)

    assert (change.alert.labels["node"], change.alert.value) == ("web-2", 2.0)
    calm = Alert.objects.filter(rule=rule, labels__node="web-1")
    assert not calm.exists()  # a drift of other signals is no breach


def test_a_drift_of_other_signals_only_resolves_a_firing_alert(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=1), drifted=["anomaly_rate"])
    rule = drift_rule(tenant, condition={"signals": ["anomaly_rate"]})
    rule_evaluate(rule_id=rule.pk, now=now - timedelta(minutes=50))

    report(version, now - timedelta(minutes=5), drifted=["residual"])
    [change] = rule_evaluate(rule_id=rule.pk, now=now)
    assert (change.alert.state, change.alert.value) == ("resolved", 0.0)


def test_the_selector_chooses_models_by_cluster_metric_and_series_labels(tenant: Tenant, now: datetime) -> None:
    wanted = series_of(tenant, cluster="eu", node="web-1", metric="latency")
    MetricSeries.objects.filter(pk=wanted.pk).update(labels={"env": "prod"})
    others = [
        series_of(tenant, cluster="us", node="web-1", metric="latency"),
        series_of(tenant, cluster="eu", node="web-1", metric="cpu"),
    ]
    for series in [wanted, *others]:
        report(series_model(series), now - timedelta(minutes=10))
    report(node_model(tenant, cluster="eu", node="web-1"), now - timedelta(minutes=10))

    by_address = drift_rule(
        tenant,
        name="eu latency",
        selector=[
            {"label": "cluster", "op": "=", "value": "eu"},
            {"label": "metric", "op": "=~", "value": "lat.*"},
        ],
    )
    by_label = drift_rule(tenant, name="prod", selector=[{"label": "env", "op": "=", "value": "prod"}])
    by_detector = drift_rule(
        tenant, name="node models", selector=[{"label": "detector", "op": "=", "value": "isolation_forest"}]
    )
    tenant_rules_evaluate(tenant=tenant, now=now)

    def scopes(rule: AlertRule) -> list[str]:
        return [labels["scope"] for labels in Alert.objects.filter(rule=rule).values_list("labels", flat=True)]

    assert scopes(by_address) == [f"series:{wanted.pk}"]
    assert scopes(by_label) == [f"series:{wanted.pk}"]
    assert scopes(by_detector) == ["node:eu/web-1"]


def test_another_tenants_reports_are_never_seen(tenant: Tenant, now: datetime) -> None:
    stranger = TenantFactory()
    report(series_model(series_of(stranger)), now - timedelta(minutes=10))
    report(node_model(stranger), now - timedelta(minutes=10))
    rule = drift_rule(tenant)
    assert rule_evaluate(rule_id=rule.pk, now=now) == []
    assert not Alert.objects.exists()


def test_the_preview_replays_past_drift_reports(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=6))
    report(version, now - timedelta(hours=5))
    report(version, now - timedelta(hours=4), verdict="ok")
    DriftReport.objects.update(created_at=now - timedelta(hours=7))  # as if written on time
    rule = drift_rule(tenant)

    preview = rule_preview(rule=rule, hours=12, step_seconds=300, now=now)

    [alert] = preview.alerts
    assert alert.labels["scope"] == version.scope_key
    [(start, end, severity)] = alert.fired
    assert severity == "warning"
    assert now - timedelta(hours=6) <= start < now - timedelta(hours=5, minutes=50)
    assert end is not None and now - timedelta(hours=4) <= end < now - timedelta(hours=3, minutes=50)
    assert alert.max_value == 1.0
    assert not Alert.objects.exists() and not Notification.objects.exists()


def test_the_preview_does_not_see_a_report_before_it_was_written(tenant: Tenant, now: datetime) -> None:
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=6))  # written now, for a window that ended 6 h ago
    preview = rule_preview(rule=drift_rule(tenant), hours=12, step_seconds=300, now=now - timedelta(minutes=1))
    assert preview.alerts == []


# --- after a drift check -----------------------------------------------------------------------


def test_publishing_after_drift_evaluates_only_the_tenants_drift_rules_now(
    tenant: Tenant, now: datetime, eager_celery: None
) -> None:
    version = series_model(series_of(tenant))
    report(version, timezone.now() - timedelta(minutes=10))
    rule = drift_rule(tenant)
    silent = services.rule_create(
        tenant=tenant,
        name="latency",
        kind="no_data",
        selector=[{"label": "metric", "op": "=", "value": "latency"}],
        condition={"seconds": 60},
    )
    MetricSeries.objects.update(last_point_at=now - timedelta(hours=1))  # would fire if evaluated

    assert tenant_rules_evaluate_publish(tenant_id=tenant.pk, kinds=KINDS_AFTER_DRIFT) is True

    assert alert_of(rule).state == "firing"
    assert not Alert.objects.filter(rule=silent).exists()


def test_publishing_after_drift_sends_nothing_for_a_tenant_without_drift_rules(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alerts import tasks

    sent: list[Any] = []
    monkeypatch.setattr(tasks.tenant_rules_evaluate, "apply_async", lambda *a, **k: sent.append(a))
    services.rule_create(
        tenant=tenant, name="cpu", kind="no_data", selector=[], condition={"seconds": 600}
    )  # not a drift rule
    drift_rule(TenantFactory())  # another tenant's
    drift_rule(tenant, name="off", enabled=False)

    assert tenant_rules_evaluate_publish(tenant_id=tenant.pk, kinds=KINDS_AFTER_DRIFT) is False
    assert sent == []


def test_publishing_after_drift_never_raises_when_the_broker_is_down(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alerts import tasks

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.tenant_rules_evaluate, "apply_async", down)
    drift_rule(tenant)
    assert tenant_rules_evaluate_publish(tenant_id=tenant.pk, kinds=KINDS_AFTER_DRIFT) is False


# --- the API -----------------------------------------------------------------------------------

DRIFT = {
    "name": "model drift",
    "kind": "drift",
    "selector": [{"label": "cluster", "op": "=", "value": "eu"}],
    "condition": {"window_seconds": 7200, "signals": ["residual", "anomaly_rate"], "severity": "critical"},
    "annotations": {"summary": "{{ $labels.scope }} drifted"},
}


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def detail_codes(response: Any) -> list[tuple[str | None, str]]:
    return [(d["field"], d["code"]) for d in response.json()["error"]["details"]]


def test_owner_creates_a_drift_rule(owner: APIClient) -> None:
    response = owner.post("/api/v1/rules", DRIFT, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["kind"], body["condition"], body["version"]) == ("drift", DRIFT["condition"], 1)
    assert owner.get("/api/v1/rules", {"kind": "drift"}).json()["results"][0]["id"] == body["id"]


def test_a_drift_rule_with_defaults_only(owner: APIClient) -> None:
    response = owner.post("/api/v1/rules", {**DRIFT, "condition": {}}, format="json")
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "condition, field",
    [
        ({"signals": "residual"}, "condition.signals"),
        ({"signals": ["residual", 3]}, "condition.signals"),
        ({"signals": [""]}, "condition.signals"),
        ({"window_seconds": 10}, "condition.window_seconds"),
        ({"window_seconds": 2 * 86400}, "condition.window_seconds"),
        ({"severity": "fatal"}, "condition.severity"),
        ({"critical": 1}, "condition.critical"),
    ],
)
def test_a_bad_drift_condition_is_400_naming_the_field_and_nothing_is_written(
    owner: APIClient, condition: dict[str, Any], field: str
) -> None:
    response = owner.post("/api/v1/rules", {**DRIFT, "condition": condition}, format="json")
    assert error(response) == (400, "invalid")
    assert detail_codes(response) == [(field, "invalid")]
    assert not AlertRule.objects.exists() and not AlertRuleVersion.objects.exists()


def test_drift_rules_are_created_only_with_a_key_of_the_admin_scope(
    anonymous: APIClient, make_client: Any, tenant: Tenant
) -> None:
    assert error(anonymous.post("/api/v1/rules", DRIFT, format="json")) == (401, "not_authenticated")
    reader = make_client(tenant, scopes=("read",))
    assert error(reader.post("/api/v1/rules", DRIFT, format="json")) == (403, "missing_scope")
    assert not AlertRule.objects.exists()


def test_the_owner_previews_a_drift_rule_and_another_tenant_gets_404(
    owner: APIClient, stranger: APIClient, tenant: Tenant
) -> None:
    now = timezone.now().replace(microsecond=0)
    version = series_model(series_of(tenant))
    report(version, now - timedelta(hours=2))
    DriftReport.objects.update(created_at=now - timedelta(hours=2))
    rule = drift_rule(tenant)

    response = owner.post(f"/api/v1/rules/{rule.pk}/preview", {"hours": 6}, format="json")
    assert response.status_code == 200, response.content
    [alert] = response.json()["alerts"]
    assert (alert["labels"]["scope"], alert["max_value"]) == (version.scope_key, 1.0)
    assert alert["fired"][0]["ends_at"] is None  # still drifting
    assert error(stranger.post(f"/api/v1/rules/{rule.pk}/preview", {}, format="json")) == (404, "not_found")
