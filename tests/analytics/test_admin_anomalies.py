"""The anomaly admin: operators see every tenant's anomalies, filter and search them, read the
explanation, and give verdicts through the actions."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client

from analytics.models import AnomalyResult
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory, MetricSeriesFactory
from tests.mlops.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/analytics/anomalyresult/"


@pytest.fixture
def operator(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def spike(tenant: Tenant) -> AnomalyResult:
    series = MetricSeriesFactory(tenant=tenant, cluster="eu-west", node="web-1", metric="latency.p99")
    return AnomalyResultFactory(
        series=series,
        explanation="latency.p99 on web-1 was 912 at 12:05.\nExpected 240 <normal 180-310>.",
        details={"median": 240.0, "window": {"points": 7}},
    )


@pytest.fixture
def dip(other_tenant: Tenant) -> AnomalyResult:
    series = MetricSeriesFactory(tenant=other_tenant, cluster="us-east", node="db-2", metric="qps")
    return AnomalyResultFactory(series=series, label="dip", detector="seasonal", status="open")


def listed(response: object) -> str:
    assert response.status_code == 200  # type: ignore[attr-defined]
    return response.content.decode()  # type: ignore[attr-defined]


def test_the_list_shows_every_tenant(operator: Client, spike: AnomalyResult, dip: AnomalyResult) -> None:
    page = listed(operator.get(CHANGELIST))
    assert "web-1" in page and "db-2" in page
    assert str(spike.tenant) in page and str(dip.tenant) in page


@pytest.mark.parametrize(
    "query, shown, hidden",
    [
        ("label__exact=dip", "db-2", "web-1"),
        ("status__exact=open", "db-2", "web-1"),
        ("detector__exact=seasonal", "db-2", "web-1"),
        ("cluster=eu-west", "web-1", "db-2"),
        ("q=latency", "web-1", "db-2"),
        ("q=us-east", "db-2", "web-1"),
        ("q=db-2", "db-2", "web-1"),
    ],
)
def test_filters_and_search(
    operator: Client, spike: AnomalyResult, dip: AnomalyResult, query: str, shown: str, hidden: str
) -> None:
    page = listed(operator.get(f"{CHANGELIST}?{query}"))
    assert f">{shown}<" in page
    assert f">{hidden}<" not in page


def test_feedback_filter(operator: Client, spike: AnomalyResult, dip: AnomalyResult) -> None:
    AnomalyResult.objects.filter(pk=spike.pk).update(feedback="expected")
    page = listed(operator.get(f"{CHANGELIST}?feedback__exact=expected"))
    assert ">web-1<" in page and ">db-2<" not in page


def test_the_detail_page_renders_the_explanation_and_details_readably(operator: Client, spike: AnomalyResult) -> None:
    page = listed(operator.get(f"{CHANGELIST}{spike.pk}/change/"))
    # Line breaks kept, markup escaped.
    assert "latency.p99 on web-1 was 912 at 12:05.<br>Expected 240 &lt;normal 180-310&gt;." in page
    assert (
        "<pre>{\n  &quot;median&quot;: 240.0,\n  &quot;window&quot;: {\n    &quot;points&quot;: 7\n  }\n}</pre>" in page
    )
    assert str(spike.tenant) in page
    # Read-only: no form field to edit the verdict behind the service's back.
    assert 'name="feedback"' not in page and 'name="explanation"' not in page


def test_a_node_level_anomaly_renders(operator: Client, tenant: Tenant) -> None:
    node_level = AnomalyResultFactory(series=None, tenant=tenant, cluster="eu", node="db-1", detector="mv")
    assert operator.get(f"{CHANGELIST}{node_level.pk}/change/").status_code == 200
    assert ">db-1<" in listed(operator.get(CHANGELIST))


def test_anomalies_cannot_be_added_or_edited_in_the_admin(operator: Client, spike: AnomalyResult) -> None:
    assert operator.get(f"{CHANGELIST}add/").status_code == 403
    operator.post(f"{CHANGELIST}{spike.pk}/change/", {"feedback": "true_positive", "explanation": "edited"})
    spike.refresh_from_db()
    assert (spike.feedback, spike.explanation) != ("true_positive", "edited")
    assert spike.feedback == ""


@pytest.mark.parametrize(
    "action, verdict",
    [
        ("mark_true_positive", "true_positive"),
        ("mark_false_positive", "false_positive"),
        ("mark_expected", "expected"),
    ],
)
def test_verdict_actions_set_the_feedback_through_the_service(
    operator: Client, spike: AnomalyResult, dip: AnomalyResult, action: str, verdict: str
) -> None:
    response = operator.post(CHANGELIST, {"action": action, "_selected_action": [spike.pk, dip.pk]})
    assert response.status_code == 302
    for anomaly in (spike, dip):
        anomaly.refresh_from_db()
        assert anomaly.feedback == verdict
        assert anomaly.feedback_at is not None
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert messages == [f"Marked 2 anomalies as {verdict.replace('_', ' ')} (0 already were)."]


def test_repeating_a_verdict_changes_nothing_and_a_new_one_drops_the_old_comment(
    operator: Client, spike: AnomalyResult
) -> None:
    from analytics.anomalies import anomaly_feedback_set

    anomaly_feedback_set(anomaly=spike, feedback="true_positive", comment="real outage")
    judged_at = spike.feedback_at
    response = operator.post(CHANGELIST, {"action": "mark_true_positive", "_selected_action": [spike.pk]})
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Marked 0 anomalies as true positive (1 already were)."
    ]
    spike.refresh_from_db()
    assert (spike.feedback, spike.feedback_comment, spike.feedback_at) == ("true_positive", "real outage", judged_at)

    operator.post(CHANGELIST, {"action": "mark_false_positive", "_selected_action": [spike.pk]})
    spike.refresh_from_db()
    assert (spike.feedback, spike.feedback_comment) == ("false_positive", "")


def test_staff_without_the_change_permission_get_no_verdict_actions(client: Client, spike: AnomalyResult) -> None:
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_anomalyresult"))
    client.force_login(user)
    page = listed(client.get(CHANGELIST))
    assert "mark_true_positive" not in page
    client.post(CHANGELIST, {"action": "mark_true_positive", "_selected_action": [spike.pk]})
    spike.refresh_from_db()
    assert spike.feedback == ""


def test_the_detail_page_links_to_the_version_that_scored_it_with_its_window(operator: Client, tenant: Tenant) -> None:
    version = ModelVersionFactory(series=MetricSeriesFactory(tenant=tenant))
    anomaly = AnomalyResultFactory(series=version.series, model_version=version)
    page = listed(operator.get(f"{CHANGELIST}{anomaly.pk}/change/"))
    assert f'<a href="/admin/mlops/modelversion/{version.pk}/change/">{version}</a>' in page
    assert "2026-03-01 00:00 to 2026-03-22 00:00 UTC" in page


def test_an_anomaly_scored_before_the_registry_has_no_version(operator: Client, spike: AnomalyResult) -> None:
    page = listed(operator.get(f"{CHANGELIST}{spike.pk}/change/"))
    assert "Model version" in page and not re.search(r"/admin/mlops/modelversion/\d+/change/", page)
