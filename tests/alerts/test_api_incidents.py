"""/api/v1/alerts and /api/v1/incidents (with acknowledge, assign, comment, resolve), as the
owner, as another tenant, anonymously and with a read-only key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from alerts import services
from alerts.models import Alert, AlertRule, Incident, IncidentActivity
from tenants.models import Tenant
from tests.alerts.factories import AlertFactory, AlertRuleFactory, IncidentFactory
from tests.analytics.factories import AnomalyResultFactory, MetricSeriesFactory

pytestmark = pytest.mark.django_db

ACTIONS = [
    ("acknowledge", {}),
    ("assign", {"assignee": "alice"}),
    ("comment", {"comment": "Looking."}),
    ("resolve", {}),
]


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


@pytest.fixture
def rule(tenant: Tenant) -> AlertRule:
    return AlertRuleFactory(tenant=tenant, name="cpu high")


@pytest.fixture
def incident(rule: AlertRule) -> Incident:
    made = IncidentFactory(rule=rule, title="CPU 97 on web-1")
    AlertFactory(rule=rule, incident=made)
    return made


@pytest.fixture
def theirs(other_tenant: Tenant) -> Incident:
    rule = AlertRuleFactory(tenant=other_tenant)
    made = IncidentFactory(rule=rule)
    AlertFactory(rule=rule, incident=made)
    return made


# --- alerts ----------------------------------------------------------------------------------------


def test_an_alert_shows_its_state_labels_and_where_it_came_from(
    owner: APIClient, tenant: Tenant, rule: AlertRule
) -> None:
    series = MetricSeriesFactory(tenant=tenant, metric="cpu")
    anomaly = AnomalyResultFactory(series=series)
    incident = IncidentFactory(rule=rule)
    rule = services.rule_update(rule=rule, condition={**rule.condition, "critical": 90})  # now at version 2
    alert = AlertFactory(
        rule=rule, incident=incident, series=series, anomaly=anomaly, annotations={"summary": "CPU 97 on web-1"}
    )
    body = owner.get(f"/api/v1/alerts/{alert.pk}").json()
    assert (body["rule"], body["rule_version"], body["incident"]) == (rule.pk, 2, incident.pk)
    assert (body["series"], body["anomaly"]) == (series.pk, anomaly.pk)
    assert body["labels"] == {"alertname": "cpu high", "cluster": "eu-west", "node": "web-1", "severity": "critical"}
    assert body["annotations"] == {"summary": "CPU 97 on web-1"}
    assert (body["state"], body["health"], body["severity"], body["value"]) == ("firing", "ok", "critical", 97.0)
    assert body["fired_at"] is not None and body["active_at"] is not None and body["resolved_at"] is None


def test_alerts_are_listed_and_filtered(owner: APIClient, tenant: Tenant, rule: AlertRule) -> None:
    other_rule = AlertRuleFactory(tenant=tenant)
    firing = AlertFactory(rule=rule)
    resolved = AlertFactory(rule=rule, state="resolved", resolved_at=timezone.now())
    warning = AlertFactory(rule=other_rule, severity="warning")
    assert set(ids(owner.get("/api/v1/alerts"))) == {firing.pk, resolved.pk, warning.pk}
    assert ids(owner.get("/api/v1/alerts", {"state": "resolved"})) == [resolved.pk]
    assert ids(owner.get("/api/v1/alerts", {"severity": "warning"})) == [warning.pk]
    assert set(ids(owner.get("/api/v1/alerts", {"rule": rule.pk}))) == {firing.pk, resolved.pk}
    assert error(owner.get("/api/v1/alerts", {"state": "sleeping"})) == (400, "invalid")


def test_another_tenants_alerts_are_neither_listed_nor_readable(owner: APIClient, theirs: Incident) -> None:
    alert = theirs.alerts.get()
    assert ids(owner.get("/api/v1/alerts")) == []
    assert ids(owner.get("/api/v1/alerts", {"rule": theirs.rule_id})) == []
    assert error(owner.get(f"/api/v1/alerts/{alert.pk}")) == (404, "not_found")


def test_alerts_are_read_only(owner: APIClient, incident: Incident) -> None:
    alert = incident.alerts.get()
    assert owner.post("/api/v1/alerts", {}, format="json").status_code == 405
    assert owner.patch(f"/api/v1/alerts/{alert.pk}", {"state": "resolved"}, format="json").status_code == 405
    assert owner.delete(f"/api/v1/alerts/{alert.pk}").status_code == 405


# --- incidents: list and detail --------------------------------------------------------------------


def test_incidents_are_listed_newest_first_and_filtered(owner: APIClient, tenant: Tenant, rule: AlertRule) -> None:
    other_rule = AlertRuleFactory(tenant=tenant)
    old = IncidentFactory(rule=rule, status="resolved", resolved_at=timezone.now())
    Incident.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=1))
    new = IncidentFactory(rule=rule)
    warning = IncidentFactory(rule=other_rule, severity="warning", status="acknowledged")
    Incident.objects.filter(pk=warning.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert ids(owner.get("/api/v1/incidents")) == [new.pk, warning.pk, old.pk]
    assert ids(owner.get("/api/v1/incidents", {"status": "resolved"})) == [old.pk]
    assert ids(owner.get("/api/v1/incidents", {"severity": "warning"})) == [warning.pk]
    assert ids(owner.get("/api/v1/incidents", {"rule": rule.pk})) == [new.pk, old.pk]
    assert error(owner.get("/api/v1/incidents", {"status": "open"})) == (400, "invalid")


def test_the_list_has_no_activity_the_detail_has_it_with_the_alerts(owner: APIClient, incident: Incident) -> None:
    IncidentActivity.objects.create(incident=incident, kind="created", value=97.0)
    [listed] = owner.get("/api/v1/incidents").json()["results"]
    assert "activity" not in listed and listed["title"] == "CPU 97 on web-1"
    body = owner.get(f"/api/v1/incidents/{incident.pk}").json()
    assert (body["status"], body["severity"], body["rule_version"]) == ("firing", "critical", 1)
    assert [(a["kind"], a["value"], a["actor"]) for a in body["activity"]] == [("created", 97.0, "")]
    assert [a["id"] for a in body["alerts"]] == [incident.alerts.get().pk]


# --- incidents: actions ----------------------------------------------------------------------------


def test_each_action_writes_an_activity_row_visible_in_the_detail(owner: APIClient, incident: Incident) -> None:
    path = f"/api/v1/incidents/{incident.pk}"
    acked = owner.post(f"{path}/acknowledge", format="json").json()
    assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "key:test")
    assigned = owner.post(f"{path}/assign", {"assignee": "alice"}, format="json").json()
    assert assigned["assignee"] == "alice"
    commented = owner.post(f"{path}/comment", {"comment": "Rolling back the deploy."}, format="json")
    assert commented.status_code == 200
    resolved = owner.post(f"{path}/resolve", format="json").json()
    assert (resolved["status"], resolved["resolved_at"] is not None) == ("resolved", True)
    assert [a["state"] for a in resolved["alerts"]] == ["resolved"]

    activity = owner.get(path).json()["activity"]
    assert [(a["kind"], a["previous"], a["current"], a["comment"], a["actor"]) for a in activity] == [
        ("acknowledged", "", "", "", "key:test"),
        ("assigned", "", "alice", "", "key:test"),
        ("commented", "", "", "Rolling back the deploy.", "key:test"),
        ("state_change", "firing", "resolved", "", "key:test"),
        ("resolved", "", "", "", "key:test"),
    ]
    assert activity[3]["alert"] == incident.alerts.get().pk


def test_acknowledging_twice_or_reassigning_the_same_person_writes_nothing_more(
    owner: APIClient, incident: Incident
) -> None:
    path = f"/api/v1/incidents/{incident.pk}"
    owner.post(f"{path}/acknowledge")
    owner.post(f"{path}/acknowledge")
    owner.post(f"{path}/assign", {"assignee": "bob"}, format="json")
    owner.post(f"{path}/assign", {"assignee": "bob"}, format="json")
    assert list(incident.activity.values_list("kind", flat=True)) == ["acknowledged", "assigned"]


def test_an_empty_assignee_unassigns(owner: APIClient, incident: Incident) -> None:
    path = f"/api/v1/incidents/{incident.pk}/assign"
    owner.post(path, {"assignee": "bob"}, format="json")
    body = owner.post(path, {"assignee": ""}, format="json").json()
    assert body["assignee"] == ""
    assert [(a["previous"], a["current"]) for a in body["activity"]] == [("", "bob"), ("bob", "")]


def test_a_resolved_incident_cannot_be_acknowledged(owner: APIClient, incident: Incident) -> None:
    owner.post(f"/api/v1/incidents/{incident.pk}/resolve")
    assert error(owner.post(f"/api/v1/incidents/{incident.pk}/acknowledge")) == (409, "incident_resolved")
    incident.refresh_from_db()
    assert (incident.status, incident.acknowledged_at) == ("resolved", None)


@pytest.mark.parametrize(
    "name, body, field, code",
    [
        ("comment", {"comment": ""}, "comment", "blank"),
        ("comment", {"comment": "   "}, "comment", "blank"),
        ("comment", {}, "comment", "required"),
        ("assign", {}, "assignee", "required"),
        ("assign", {"assignee": "x" * 201}, "assignee", "max_length"),
    ],
)
def test_bad_action_bodies_are_400_and_write_nothing(
    owner: APIClient, incident: Incident, name: str, body: dict[str, Any], field: str, code: str
) -> None:
    response = owner.post(f"/api/v1/incidents/{incident.pk}/{name}", body, format="json")
    assert error(response) == (400, "invalid")
    assert [(d["field"], d["code"]) for d in response.json()["error"]["details"]] == [(field, code)]
    assert not incident.activity.exists()


# --- tenancy, authentication, scopes -----------------------------------------------------------------


@pytest.mark.parametrize("name, body", ACTIONS)
def test_another_tenants_incident_is_404_for_every_action_and_unchanged(
    owner: APIClient, theirs: Incident, name: str, body: dict[str, Any]
) -> None:
    assert error(owner.post(f"/api/v1/incidents/{theirs.pk}/{name}", body, format="json")) == (404, "not_found")
    theirs.refresh_from_db()
    assert (theirs.status, theirs.assignee) == ("firing", "")
    assert not theirs.activity.exists()
    assert theirs.alerts.get().state == Alert.State.FIRING


def test_another_tenants_incident_is_neither_listed_nor_readable(
    owner: APIClient, stranger: APIClient, theirs: Incident
) -> None:
    assert ids(owner.get("/api/v1/incidents")) == []
    assert error(owner.get(f"/api/v1/incidents/{theirs.pk}")) == (404, "not_found")
    assert stranger.get(f"/api/v1/incidents/{theirs.pk}").status_code == 200


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/alerts"),
        ("get", "/api/v1/alerts/1"),
        ("get", "/api/v1/incidents"),
        ("get", "/api/v1/incidents/1"),
        *[("post", f"/api/v1/incidents/1/{name}") for name, _ in ACTIONS],
    ],
)
def test_anonymous_is_401(anonymous: APIClient, method: str, path: str) -> None:
    assert error(getattr(anonymous, method)(path)) == (401, "not_authenticated")


def test_a_read_only_key_reads_but_cannot_act(
    make_client: Callable[..., APIClient], tenant: Tenant, incident: Incident
) -> None:
    reader = make_client(tenant, scopes=("read",))
    alert = incident.alerts.get()
    for path in [
        "/api/v1/alerts",
        f"/api/v1/alerts/{alert.pk}",
        "/api/v1/incidents",
        f"/api/v1/incidents/{incident.pk}",
    ]:
        assert reader.get(path).status_code == 200, path
    for name, body in ACTIONS:
        response = reader.post(f"/api/v1/incidents/{incident.pk}/{name}", body, format="json")
        assert error(response) == (403, "missing_scope"), name
    incident.refresh_from_db()
    assert (incident.status, incident.assignee, incident.activity.count()) == ("firing", "", 0)


def test_incidents_cannot_be_created_or_deleted(owner: APIClient, incident: Incident) -> None:
    assert owner.post("/api/v1/incidents", {"title": "x"}, format="json").status_code == 405
    assert owner.delete(f"/api/v1/incidents/{incident.pk}").status_code == 405
    assert Incident.objects.filter(pk=incident.pk).exists()
