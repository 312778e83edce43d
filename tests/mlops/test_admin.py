"""The registry's admin: versions with their gate, the anomalies they scored and a retrain action
(through the training service); drift reports to read; calendar events edited with the API's
checks; the tenant's drift policy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.db.models import Model
from django.test import Client

from mlops.models import CalendarEvent, DriftReport, ModelVersion
from mlops.training import training_window
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory, MetricSeriesFactory
from tests.mlops.factories import T0, CalendarEventFactory, DriftReportFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db

GATE = {
    "passed": False,
    "active": 1,
    "active_version": 1,
    "window": ["2026-03-21T00:00:00+00:00", "2026-03-22T00:00:00+00:00"],
    "candidate": {"anomalies": 9, "false_alarms": 3},
    "current": {"anomalies": 4, "false_alarms": 1},
    "checks": {"false_alarms": False, "stability": False},
    "summary": "worse than v1 on false_alarms, stability",
}


@pytest.fixture
def operator(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[ModelVersion]:
    sent: list[ModelVersion] = []
    monkeypatch.setattr("mlops.training.version_train_publish", sent.append)
    return sent


def url(model: type[Model], suffix: str = "") -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/{suffix}"


def page(response: Any) -> str:
    assert response.status_code == 200
    return str(response.content.decode())


def shown(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def version(tenant: Tenant) -> ModelVersion:
    series = MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="cpu")
    return ModelVersionFactory(series=series, metrics={"contamination": 0.002, "gate": GATE})


def test_every_page_renders(operator: Client, version: ModelVersion) -> None:
    report = DriftReportFactory(model_version=version)
    event = CalendarEventFactory(tenant=version.tenant)
    for model, obj in [(ModelVersion, version), (DriftReport, report), (CalendarEvent, event)]:
        assert operator.get(url(model)).status_code == 200, model
        assert operator.get(url(model, f"{obj.pk}/change/")).status_code == 200, model
    assert operator.get(url(CalendarEvent, "add/")).status_code == 200
    assert operator.get(url(DriftReport, "add/")).status_code == 403


def test_a_version_shows_its_gate_and_links_to_the_anomalies_it_scored(operator: Client, version: ModelVersion) -> None:
    scored = AnomalyResultFactory.create_batch(2, series=version.series, model_version=version)
    before = AnomalyResultFactory(series=version.series)
    html = page(operator.get(url(ModelVersion, f"{version.pk}/change/")))
    assert "worse than v1 on false_alarms, stability" in html
    assert "<td>false alarms</td><td>3</td><td>1</td>" in html
    assert "false alarms: worse" in html
    link = f"/admin/analytics/anomalyresult/?model_version__id__exact={version.pk}"
    assert f'<a href="{link}">2 anomalies</a>' in html
    assert "&quot;contamination&quot;: 0.002" in html and "quantiles" not in html
    listed = page(operator.get(link))
    for anomaly in scored:
        assert f"/admin/analytics/anomalyresult/{anomaly.pk}/change/" in listed
    assert f"/admin/analytics/anomalyresult/{before.pk}/change/" not in listed


def test_retrain_starts_a_manual_version_per_scope_once(
    operator: Client, version: ModelVersion, published: list[ModelVersion]
) -> None:
    older = ModelVersionFactory(series=version.series, status="retired")  # same scope: trained once
    before = training_window()
    response = operator.post(url(ModelVersion), {"action": "retrain", "_selected_action": [version.pk, older.pk]})
    assert response.status_code == 302
    trained = ModelVersion.objects.get(status="training")
    assert (trained.trigger, trained.created_by, trained.scope_key) == ("manual", "op", version.scope_key)
    assert (trained.train_from, trained.train_to) in {before, training_window()}  # an hour may turn meanwhile
    assert published == [trained]
    assert shown(response) == [f"{version.scope_key}: v{trained.version} is training."]
    operator.get(response["Location"])  # the messages are read

    again = operator.post(url(ModelVersion), {"action": "retrain", "_selected_action": [version.pk]})
    assert shown(again) == [f"{version.scope_key}: these inputs already gave v{trained.version} (training)."]
    assert published == [trained]


def test_retrain_of_an_untrainable_scope_warns_and_writes_nothing(
    operator: Client, tenant: Tenant, published: list[ModelVersion]
) -> None:
    metric = ModelVersionFactory(
        series=None, tenant=tenant, scope_kind="metric", scope_key="metric:eu/cpu", cluster="eu", node="", metric="cpu"
    )
    response = operator.post(url(ModelVersion), {"action": "retrain", "_selected_action": [metric.pk]})
    assert shown(response) == ["metric:eu/cpu: Scopes of kind 'metric' are not trained."]
    assert ModelVersion.objects.count() == 1 and published == []


def test_a_drift_report_shows_its_statistics_readably_and_links_its_versions(
    operator: Client, version: ModelVersion
) -> None:
    retrained = ModelVersionFactory(series=version.series, trigger="drift")
    report = DriftReportFactory(model_version=version, action="retrain", retrained=retrained)
    html = page(operator.get(url(DriftReport, f"{report.pk}/change/")))
    assert "<pre>{\n  &quot;concept&quot;: {},\n  &quot;features&quot;: {" in html
    assert f"/admin/mlops/modelversion/{version.pk}/change/" in html
    assert f"/admin/mlops/modelversion/{retrained.pk}/change/" in html
    assert 'name="verdict"' not in html
    listed = page(operator.get(url(DriftReport), {"verdict__exact": "drift"}))
    assert version.scope_key in listed
    assert version.scope_key not in page(operator.get(url(DriftReport), {"verdict__exact": "ok"}))


def event_form(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    return {
        "tenant": tenant.pk,
        "kind": "maintenance",
        "description": "Upgrade",
        "start_0": "2026-12-01",
        "start_1": "22:00:00",
        "end_0": "2026-12-02",
        "end_1": "02:00:00",
        "cluster": "eu",
        "node": "db-1",
        "suppress": "on",
        **changes,
    }


def test_a_calendar_event_added_in_the_admin_records_who(operator: Client, tenant: Tenant) -> None:
    response = operator.post(url(CalendarEvent, "add/"), event_form(tenant))
    assert response.status_code == 302
    event = CalendarEvent.objects.get()
    assert (event.created_by, event.node, event.end - event.start) == ("op", "db-1", timedelta(hours=4))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cluster": ""}, "A node needs its cluster."),
        ({"end_0": "2026-12-01", "end_1": "21:00:00"}, "end must be after start."),
    ],
)
def test_a_bad_calendar_event_is_refused_in_the_admin(
    operator: Client, tenant: Tenant, changes: dict[str, str], message: str
) -> None:
    html = page(operator.post(url(CalendarEvent, "add/"), event_form(tenant, **changes)))
    assert message in html
    assert not CalendarEvent.objects.exists()


def test_a_calendar_event_is_edited_and_filtered(operator: Client, tenant: Tenant) -> None:
    event = CalendarEventFactory(tenant=tenant, created_by="key:ops", start=T0, end=T0 + timedelta(hours=1))
    CalendarEventFactory(tenant=tenant, kind="holiday", description="Christmas")
    form = event_form(tenant, start_0="2026-03-01", start_1="00:00:00", end_0="2026-03-01", end_1="06:00:00")
    assert operator.post(url(CalendarEvent, f"{event.pk}/change/"), form).status_code == 302
    event.refresh_from_db()
    assert (event.end - event.start, event.created_by) == (timedelta(hours=6), "key:ops")
    listed = page(operator.get(url(CalendarEvent), {"kind__exact": "holiday"}))
    assert "Christmas" in listed and "Upgrade" not in listed


def test_the_tenant_drift_policy_is_edited_in_the_admin(operator: Client, tenant: Tenant) -> None:
    change = f"/admin/tenants/tenant/{tenant.pk}/change/"
    assert 'name="drift_policy"' in page(operator.get(change))
    form = {
        "slug": tenant.slug,
        "name": tenant.name,
        "is_active": "on",
        "max_series": tenant.max_series,
        "max_points_per_request": tenant.max_points_per_request,
        "retention_raw_days": 7,
        "retention_1m_days": 30,
        "retention_5m_days": 90,
        "retention_1h_days": 730,
        "drift_policy": "notify",
        "memberships-TOTAL_FORMS": 0,
        "memberships-INITIAL_FORMS": 0,
    }
    response = operator.post(change, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert tenant.drift_policy == "notify"
    assert "notify" in page(operator.get("/admin/tenants/tenant/", {"drift_policy__exact": "notify"}))
