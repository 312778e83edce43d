"""/api/v1/rules (CRUD, versions, preview) and /api/v1/rule-templates, as the owner, as another
tenant, anonymously and with a read-only key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from alerts.evaluation import rule_evaluate
from alerts.models import Alert, AlertRule, AlertRuleVersion, Incident
from alerts.services import RULE_TEMPLATES
from analytics import partitions
from analytics.models import MetricSeries, Point
from tenants.models import Tenant
from tests.alerts.factories import AlertFactory, AlertRuleFactory, IncidentFactory
from tests.analytics.factories import MetricSeriesFactory

pytestmark = pytest.mark.django_db

THRESHOLD = {
    "name": "CPU high",
    "kind": "threshold",
    "selector": [{"label": "metric", "op": "=", "value": "cpu"}],
    "condition": {"aggregate": "mean", "window_seconds": 300, "operator": ">", "warning": 80, "critical": 95},
    "annotations": {"summary": "CPU {{ $value }} on {{ $labels.node }}"},
}


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def detail_codes(response: Any) -> list[tuple[str | None, str]]:
    return [(d["field"], d["code"]) for d in response.json()["error"]["details"]]


@pytest.fixture
def rule(tenant: Tenant) -> AlertRule:
    return AlertRuleFactory(tenant=tenant, name="mine")


@pytest.fixture
def theirs(other_tenant: Tenant) -> AlertRule:
    return AlertRuleFactory(tenant=other_tenant, name="theirs")


# --- create, read ----------------------------------------------------------------------------------


def test_owner_creates_a_rule_at_version_1_with_its_author(owner: APIClient) -> None:
    response = owner.post("/api/v1/rules", THRESHOLD, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["kind"], body["version"], body["enabled"]) == ("CPU high", "threshold", 1, True)
    assert body["condition"] == THRESHOLD["condition"]
    assert body["selector"] == THRESHOLD["selector"]
    assert (body["created_by"], body["updated_by"]) == ("key:test", "key:test")
    assert (body["for_seconds"], body["no_data_state"], body["inhibits_nodes"]) == (0, "no_data", True)
    stored = AlertRule.objects.get(pk=body["id"])
    assert list(stored.versions.values_list("version", "created_by")) == [(1, "key:test")]


def test_the_tenant_comes_from_the_key_never_from_the_body(
    owner: APIClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    response = owner.post("/api/v1/rules", {**THRESHOLD, "tenant": other_tenant.pk}, format="json")
    assert response.status_code == 201
    assert AlertRule.objects.get(pk=response.json()["id"]).tenant == tenant


def test_owner_lists_and_reads_only_their_rules(owner: APIClient, rule: AlertRule, theirs: AlertRule) -> None:
    assert [r["id"] for r in owner.get("/api/v1/rules").json()["results"]] == [rule.pk]
    body = owner.get(f"/api/v1/rules/{rule.pk}").json()
    assert (body["id"], body["name"], body["version"]) == (rule.pk, "mine", 1)


def test_rules_filter_by_kind_and_enabled(owner: APIClient, tenant: Tenant) -> None:
    cpu = AlertRuleFactory(tenant=tenant)
    off = AlertRuleFactory(tenant=tenant, enabled=False)
    anomaly = AlertRuleFactory(
        tenant=tenant, kind="anomaly", condition={"window_seconds": 300, "warning": 0.9, "critical": 0.99}
    )
    ids = lambda params: {r["id"] for r in owner.get("/api/v1/rules", params).json()["results"]}  # noqa: E731
    assert ids({"kind": "anomaly"}) == {anomaly.pk}
    assert ids({"enabled": "false"}) == {off.pk}
    assert ids({"kind": "threshold", "enabled": "true"}) == {cpu.pk}
    assert error(owner.get("/api/v1/rules", {"kind": "bogus"})) == (400, "invalid")


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"condition": {"aggregate": "mean", "window_seconds": 300, "operator": ">"}}, [("condition", "invalid")]),
        (
            {"selector": [{"label": "node", "op": "=~", "value": "web-(1"}]},
            [("selector[0].value", "invalid_regex")],
        ),
        (
            {"annotations": {"summary": "CPU {{ $labels.node }} at {{ $vale }}"}},
            [("annotations.summary", "invalid")],
        ),
        ({"labels": {"severity": "page"}}, [("labels", "reserved")]),
        ({"kind": "bogus"}, [("kind", "invalid_choice")]),
        ({"kind": None}, [("kind", "null")]),
        ({"selector": [{"label": "node", "op": "~", "value": "x"}]}, [("selector.0.op", "invalid_choice")]),
        ({"for_seconds": -1}, [("for_seconds", "min_value")]),
        ({"condition": "p99 > 500"}, [("condition", "not_a_dict")]),
    ],
)
def test_a_bad_rule_is_400_with_a_code_and_nothing_is_written(
    owner: APIClient, change: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = owner.post("/api/v1/rules", {**THRESHOLD, **change}, format="json")
    assert error(response) == (400, "invalid")
    assert detail_codes(response) == expected
    assert not AlertRule.objects.exists() and not AlertRuleVersion.objects.exists()


def test_a_taken_name_is_409(owner: APIClient, rule: AlertRule) -> None:
    response = owner.post("/api/v1/rules", {**THRESHOLD, "name": "mine"}, format="json")
    assert error(response) == (409, "duplicate_name")
    assert AlertRule.objects.count() == 1


def test_another_tenants_rule_name_is_free(owner: APIClient, theirs: AlertRule) -> None:
    assert owner.post("/api/v1/rules", {**THRESHOLD, "name": "theirs"}, format="json").status_code == 201


# --- edit, versions --------------------------------------------------------------------------------


def test_editing_the_condition_writes_version_2_and_versions_lists_both(
    owner: APIClient, make_client: Callable[..., APIClient], tenant: Tenant
) -> None:
    created = owner.post("/api/v1/rules", THRESHOLD, format="json").json()
    editor = make_client(tenant)
    editor.api_key.name = "oncall"
    editor.api_key.save()
    condition = {**THRESHOLD["condition"], "critical": 90}
    response = editor.patch(f"/api/v1/rules/{created['id']}", {"condition": condition}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["version"], body["condition"]["critical"]) == (2, 90)
    assert (body["created_by"], body["updated_by"]) == ("key:test", "key:oncall")

    versions = owner.get(f"/api/v1/rules/{created['id']}/versions").json()
    assert [(v["version"], v["created_by"]) for v in versions] == [(2, "key:oncall"), (1, "key:test")]
    assert versions[0]["spec"]["condition"]["critical"] == 90
    assert versions[1]["spec"]["condition"]["critical"] == 95
    assert set(versions[0]["spec"]) == set(AlertRule.VERSIONED_FIELDS)


def test_renaming_or_disabling_does_not_write_a_version(owner: APIClient, rule: AlertRule) -> None:
    response = owner.patch(f"/api/v1/rules/{rule.pk}", {"name": "renamed", "enabled": False}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["name"], response.json()["enabled"], response.json()["version"]) == ("renamed", False, 1)
    assert [v["version"] for v in owner.get(f"/api/v1/rules/{rule.pk}/versions").json()] == [1]


def test_sending_the_same_values_again_changes_nothing(owner: APIClient) -> None:
    created = owner.post("/api/v1/rules", THRESHOLD, format="json").json()
    again = owner.put(f"/api/v1/rules/{created['id']}", THRESHOLD, format="json")
    assert again.status_code == 200
    assert (again.json()["version"], again.json()["updated_at"]) == (1, created["updated_at"])


def test_put_replaces_the_rule(owner: APIClient, rule: AlertRule) -> None:
    replacement = {**THRESHOLD, "name": "replaced", "for_seconds": 60, "labels": {"team": "db"}}
    body = owner.put(f"/api/v1/rules/{rule.pk}", replacement, format="json").json()
    assert (body["name"], body["for_seconds"], body["labels"], body["version"]) == ("replaced", 60, {"team": "db"}, 2)


def test_a_bad_edit_is_400_and_keeps_the_rule(owner: APIClient, rule: AlertRule) -> None:
    response = owner.patch(f"/api/v1/rules/{rule.pk}", {"condition": {"aggregate": "mean"}}, format="json")
    assert error(response) == (400, "invalid")
    rule.refresh_from_db()
    assert (rule.version, rule.condition["warning"]) == (1, 80)
    assert rule.versions.count() == 1


def test_owner_deletes_a_rule_with_its_alerts_and_incidents(owner: APIClient, rule: AlertRule) -> None:
    AlertFactory(rule=rule, incident=IncidentFactory(rule=rule))
    assert owner.delete(f"/api/v1/rules/{rule.pk}").status_code == 204
    assert not AlertRule.objects.exists() and not Incident.objects.exists() and not Alert.objects.exists()


# --- tenancy, authentication, scopes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("get", "", None),
        ("put", "", THRESHOLD),
        ("patch", "", {"name": "stolen"}),
        ("delete", "", None),
        ("get", "/versions", None),
        ("post", "/preview", {}),
    ],
)
def test_another_tenants_rule_is_404_and_unchanged(
    owner: APIClient, theirs: AlertRule, method: str, suffix: str, body: Any
) -> None:
    response = getattr(owner, method)(f"/api/v1/rules/{theirs.pk}{suffix}", body, format="json")
    assert error(response) == (404, "not_found")
    theirs.refresh_from_db()
    assert (theirs.name, theirs.version) == ("theirs", 1)


def test_another_tenants_rules_are_never_listed(owner: APIClient, theirs: AlertRule) -> None:
    assert owner.get("/api/v1/rules").json()["results"] == []


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/rules"),
        ("post", "/api/v1/rules"),
        ("get", "/api/v1/rules/1"),
        ("put", "/api/v1/rules/1"),
        ("patch", "/api/v1/rules/1"),
        ("delete", "/api/v1/rules/1"),
        ("get", "/api/v1/rules/1/versions"),
        ("post", "/api/v1/rules/1/preview"),
        ("get", "/api/v1/rule-templates"),
        ("post", "/api/v1/rule-templates/high_error_rate/apply"),
    ],
)
def test_anonymous_is_401(anonymous: APIClient, method: str, path: str) -> None:
    assert error(getattr(anonymous, method)(path)) == (401, "not_authenticated")


def test_a_read_only_key_reads_but_cannot_write(
    make_client: Callable[..., APIClient], tenant: Tenant, rule: AlertRule
) -> None:
    reader = make_client(tenant, scopes=("read",))
    for path in [
        "/api/v1/rules",
        f"/api/v1/rules/{rule.pk}",
        f"/api/v1/rules/{rule.pk}/versions",
        "/api/v1/rule-templates",
    ]:
        assert reader.get(path).status_code == 200, path
    writes = [
        ("post", "/api/v1/rules", THRESHOLD),
        ("put", f"/api/v1/rules/{rule.pk}", THRESHOLD),
        ("patch", f"/api/v1/rules/{rule.pk}", {"name": "x"}),
        ("delete", f"/api/v1/rules/{rule.pk}", None),
        ("post", f"/api/v1/rules/{rule.pk}/preview", {}),
        ("post", "/api/v1/rule-templates/p99_latency/apply", {"metric": "latency"}),
    ]
    for method, path, body in writes:
        assert error(getattr(reader, method)(path, body, format="json")) == (403, "missing_scope"), (method, path)
    rule.refresh_from_db()
    assert (rule.name, AlertRule.objects.count()) == ("mine", 1)


# --- templates -------------------------------------------------------------------------------------


def test_templates_are_listed(owner: APIClient) -> None:
    body = owner.get("/api/v1/rule-templates").json()
    assert [t["name"] for t in body] == list(RULE_TEMPLATES)
    assert len(body) == 4
    assert body[0] == {
        "name": "high_error_rate",
        "title": "High error rate",
        "description": RULE_TEMPLATES["high_error_rate"].description,
        "params": ["metric"],
    }


@pytest.mark.parametrize(
    "template, kind",
    [
        ("high_error_rate", "threshold"),
        ("p99_latency", "threshold"),
        ("error_spike", "anomaly"),
        ("low_throughput", "change"),
    ],
)
def test_each_template_creates_a_working_rule(owner: APIClient, tenant: Tenant, template: str, kind: str) -> None:
    MetricSeriesFactory(tenant=tenant, metric="api.metric")
    response = owner.post(f"/api/v1/rule-templates/{template}/apply", {"metric": "api.metric"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["kind"], body["version"], body["created_by"]) == (kind, 1, "key:test")
    assert body["name"] == f"{RULE_TEMPLATES[template].title}: api.metric"
    assert body["selector"] == [{"label": "metric", "op": "=", "value": "api.metric"}]
    # It evaluates: the series is in scope (no data yet, so nothing fires) and nothing fails.
    assert rule_evaluate(rule_id=body["id"]) == []
    assert owner.get(f"/api/v1/rules/{body['id']}").status_code == 200


def test_a_template_takes_a_name_and_overrides(owner: APIClient) -> None:
    response = owner.post(
        "/api/v1/rule-templates/p99_latency/apply",
        {"metric": "latency", "name": "Checkout latency", "for_seconds": 0, "labels": {"team": "checkout"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["for_seconds"], body["labels"]) == ("Checkout latency", 0, {"team": "checkout"})
    assert body["condition"]["resolve"] == 450  # the rest is the template's
    assert body["keep_firing_for_seconds"] == 300


@pytest.mark.parametrize(
    "template, body, expected",
    [
        ("bogus", {"metric": "m"}, (400, "unknown_template")),
        ("high_error_rate", {}, (400, "invalid")),
        ("high_error_rate", {"metric": "m", "condition": {"aggregate": "mean"}}, (400, "invalid")),
        ("high_error_rate", {"metric": "m", "kind": "sometimes"}, (400, "invalid")),
    ],
)
def test_bad_template_applications_are_400_and_write_nothing(
    owner: APIClient, template: str, body: dict[str, Any], expected: tuple[int, str]
) -> None:
    assert error(owner.post(f"/api/v1/rule-templates/{template}/apply", body, format="json")) == expected
    assert not AlertRule.objects.exists()


def test_applying_a_template_twice_is_409(owner: APIClient) -> None:
    path = "/api/v1/rule-templates/error_spike/apply"
    assert owner.post(path, {"metric": "errors"}, format="json").status_code == 201
    assert error(owner.post(path, {"metric": "errors"}, format="json")) == (409, "duplicate_name")


# --- preview ---------------------------------------------------------------------------------------


def seed_cpu(tenant: Tenant, now: datetime, breach: tuple[timedelta, timedelta]) -> MetricSeries:
    """One point a minute for the last 24 h: 50, and 99 between now - breach[0] and now - breach[1]."""
    series = MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="cpu", last_point_at=now)
    start = now - timedelta(hours=24)
    partitions.partitions_ensure(partitions.days_between(start.timestamp(), now.timestamp()))
    points = []
    for minute in range(24 * 60 + 1):
        ts = start + timedelta(minutes=minute)
        value = 99.0 if now - breach[0] <= ts < now - breach[1] else 50.0
        points.append(Point(series=series, ts=ts, value=value))
    Point.objects.bulk_create(points)
    return series


def test_preview_returns_when_the_rule_would_have_fired(owner: APIClient, tenant: Tenant, rule: AlertRule) -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    seed_cpu(tenant, now, (timedelta(hours=6), timedelta(hours=5)))
    response = owner.post(f"/api/v1/rules/{rule.pk}/preview", {}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["rule"], body["version"], body["step_seconds"], body["evaluations"]) == (rule.pk, 1, 300, 289)
    [alert] = body["alerts"]
    assert (alert["labels"]["node"], alert["labels"]["alertname"], alert["max_value"]) == ("web-1", "mine", 99.0)
    [fired] = alert["fired"]
    starts, ends = datetime.fromisoformat(fired["starts_at"]), datetime.fromisoformat(fired["ends_at"])
    assert fired["severity"] == "critical"
    assert now - timedelta(hours=6) < starts < now - timedelta(hours=5, minutes=50)
    assert now - timedelta(hours=5) < ends <= now - timedelta(hours=4, minutes=50)
    assert not Alert.objects.exists()  # a preview writes nothing


def test_preview_parameters_in_the_query_or_the_body(owner: APIClient, tenant: Tenant, rule: AlertRule) -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    seed_cpu(tenant, now, (timedelta(hours=6), timedelta(hours=5)))
    recent = owner.post(f"/api/v1/rules/{rule.pk}/preview?hours=2&step_seconds=60", {}, format="json").json()
    assert (recent["step_seconds"], recent["evaluations"], recent["alerts"]) == (60, 121, [])
    wider = owner.post(f"/api/v1/rules/{rule.pk}/preview", {"hours": 7, "step_seconds": 600}, format="json").json()
    assert (wider["evaluations"], len(wider["alerts"])) == (43, 1)


@pytest.mark.parametrize(
    "params, field, code",
    [
        ({"hours": 0}, "hours", "min_value"),
        ({"hours": 73}, "hours", "max_value"),
        ({"step_seconds": 59}, "step_seconds", "min_value"),
        ({"hours": "a day"}, "hours", "invalid"),
    ],
)
def test_bad_preview_parameters_are_400(
    owner: APIClient, rule: AlertRule, params: dict[str, Any], field: str, code: str
) -> None:
    response = owner.post(f"/api/v1/rules/{rule.pk}/preview", params, format="json")
    assert error(response) == (400, "invalid")
    assert detail_codes(response) == [(field, code)]


def test_a_no_data_rule_cannot_be_previewed(owner: APIClient, tenant: Tenant) -> None:
    rule = AlertRuleFactory(tenant=tenant, kind="no_data", condition={"seconds": 600})
    assert error(owner.post(f"/api/v1/rules/{rule.pk}/preview", {}, format="json")) == (400, "not_previewable")
