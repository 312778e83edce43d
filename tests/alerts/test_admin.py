"""The alerting admin: every page renders; rules saved there get their versions; the preview,
incident, silence, endpoint and delivery actions act through the services; secrets show once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.db.models import Model
from django.test import Client
from django.utils import timezone

from alerts.models import (
    Alert,
    AlertRule,
    AlertRuleVersion,
    Delivery,
    Incident,
    MuteWindow,
    Notification,
    Route,
    Silence,
    WebhookEndpoint,
)
from tenants.models import Tenant
from tests.alerts.factories import (
    AlertFactory,
    AlertRuleFactory,
    DeliveryFactory,
    IncidentFactory,
    NotificationFactory,
    WebhookEndpointFactory,
)
from tests.alerts.test_api_rules import seed_cpu

pytestmark = pytest.mark.django_db

CONDITION = {"aggregate": "mean", "window_seconds": 300, "operator": ">", "warning": 80, "critical": 95}


@pytest.fixture
def operator(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


def shown(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def url(model: type[Model], suffix: str = "") -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/{suffix}"


def rule_form(tenant: Tenant | None = None, **changes: Any) -> dict[str, Any]:
    """The POST of the rule add/change form (JSON fields as the textareas send them)."""
    values: dict[str, Any] = {
        "name": "CPU high",
        "enabled": "on",
        "kind": "threshold",
        "selector": json.dumps([{"label": "metric", "op": "=", "value": "cpu"}]),
        "condition": json.dumps(CONDITION),
        "for_seconds": 0,
        "keep_firing_for_seconds": 0,
        "repeat_interval_seconds": "",
        "no_data_state": "no_data",
        "labels": "{}",
        "annotations": json.dumps({"summary": "CPU {{ $value }}"}),
        "inhibits_nodes": "on",
        **({"tenant": tenant.pk} if tenant else {}),
    }
    return {**values, **changes}


def act(operator: Client, model: type[Model], action: str, *objects: Model) -> Any:
    return operator.post(url(model), {"action": action, "_selected_action": [o.pk for o in objects]}, follow=True)


# --- every page renders ----------------------------------------------------------------------------


@pytest.fixture
def one_of_each(tenant: Tenant) -> dict[type[Model], Model]:
    rule = AlertRuleFactory(tenant=tenant)
    incident = IncidentFactory(rule=rule)
    incident.activity.create(kind="created", value=97.0)
    endpoint = WebhookEndpointFactory(tenant=tenant)
    route = Route.objects.create(tenant=tenant, name="r")
    route.endpoints.set([endpoint])
    now = timezone.now()
    sent = DeliveryFactory(notification=NotificationFactory(tenant=tenant), endpoint=endpoint)
    sent.attempt_log.create(number=1, started_at=now, duration_ms=5.0, status_code=500, outcome="retry")
    return {
        AlertRule: rule,
        AlertRuleVersion: rule.versions.get(),
        Alert: AlertFactory(rule=rule, incident=incident),
        Incident: incident,
        Silence: Silence.objects.create(tenant=tenant, matchers=[], starts_at=now, ends_at=now + timedelta(hours=1)),
        MuteWindow: MuteWindow.objects.create(tenant=tenant, name="w", start_time="01:00", end_time="02:00"),
        Route: route,
        WebhookEndpoint: endpoint,
        Delivery: sent,
        Notification: sent.notification,
    }


ADDABLE = {AlertRule, Silence, MuteWindow, Route, WebhookEndpoint}


@pytest.mark.parametrize(
    "model",
    [AlertRule, AlertRuleVersion, Alert, Incident, Silence, MuteWindow, Route, WebhookEndpoint, Delivery, Notification],
)
def test_changelist_add_and_change_pages_render(
    operator: Client, one_of_each: dict[type[Model], Model], model: type[Model]
) -> None:
    assert operator.get(url(model)).status_code == 200
    assert operator.get(url(model, "add/")).status_code == (200 if model in ADDABLE else 403)
    assert operator.get(url(model, f"{one_of_each[model].pk}/change/")).status_code == 200


def test_the_detail_pages_show_the_logs(operator: Client, one_of_each: dict[type[Model], Model]) -> None:
    incident = operator.get(url(Incident, f"{one_of_each[Incident].pk}/change/")).content.decode()
    assert "incident activities" in incident.lower() and "97.0" in incident
    sent = one_of_each[Delivery]
    delivery = operator.get(url(Delivery, f"{sent.pk}/change/")).content.decode()
    assert "delivery attempt" in delivery.lower() and "500" in delivery
    notification = operator.get(url(Notification, f"{sent.notification.pk}/change/")).content.decode()
    assert "HighLatency" in notification and "&quot;version&quot;: &quot;4&quot;" in notification
    version = operator.get(url(AlertRuleVersion, f"{one_of_each[AlertRuleVersion].pk}/change/")).content.decode()
    assert "window_seconds" in version


# --- rules -----------------------------------------------------------------------------------------


def test_a_rule_added_in_the_admin_gets_version_1_by_the_operator(operator: Client, tenant: Tenant) -> None:
    response = operator.post(url(AlertRule, "add/"), rule_form(tenant))
    assert response.status_code == 302, response.content.decode()[-3000:]
    rule = AlertRule.objects.get(name="CPU high")
    assert (rule.tenant, rule.version, rule.condition) == (tenant, 1, CONDITION)
    assert list(rule.versions.values_list("version", "created_by")) == [(1, "op")]


def test_editing_the_condition_in_the_admin_writes_version_2_renaming_does_not(
    operator: Client, tenant: Tenant
) -> None:
    rule = AlertRuleFactory(tenant=tenant, name="CPU high", annotations={"summary": "CPU {{ $value }}"})
    path = url(AlertRule, f"{rule.pk}/change/")
    assert operator.post(path, rule_form(name="Renamed")).status_code == 302
    rule.refresh_from_db()
    assert (rule.name, rule.version) == ("Renamed", 1)
    changed = rule_form(name="Renamed", condition=json.dumps({**CONDITION, "critical": 90}))
    assert operator.post(path, changed).status_code == 302
    rule.refresh_from_db()
    assert (rule.version, rule.condition["critical"]) == (2, 90)
    assert list(rule.versions.values_list("version", "created_by")) == [(2, "op"), (1, "")]
    page = operator.get(path).content.decode()
    assert "Versions" in page and "&quot;critical&quot;: 90" in page and "&quot;critical&quot;: 95" in page


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"condition": json.dumps({"aggregate": "mean", "window_seconds": 300, "operator": ">"})}, "warning threshold"),
        ({"selector": json.dumps([{"label": "node", "op": "=~", "value": "web-("}])}, "Bad regex"),
        ({"annotations": json.dumps({"summary": "{{ $nope }}"})}, "Unknown placeholder"),
    ],
)
def test_a_bad_rule_in_the_admin_is_shown_on_the_form_and_nothing_is_written(
    operator: Client, tenant: Tenant, changes: dict[str, str], message: str
) -> None:
    response = operator.post(url(AlertRule, "add/"), rule_form(tenant, **changes))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not AlertRule.objects.exists() and not AlertRuleVersion.objects.exists()


def test_preview_action_says_how_often_and_when_a_rule_would_have_fired(operator: Client, tenant: Tenant) -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    seed_cpu(tenant, now, (timedelta(hours=3), timedelta(hours=2)))
    cpu = AlertRuleFactory(tenant=tenant, name="cpu high")
    quiet = AlertRuleFactory(
        tenant=tenant, name="cpu extreme", condition={**CONDITION, "warning": 99.5, "critical": None}
    )
    silent = AlertRuleFactory(tenant=tenant, name="silent", kind="no_data", condition={"seconds": 600})
    messages = shown(act(operator, AlertRule, "preview", cpu, quiet, silent))
    fired = next(m for m in messages if m.startswith("cpu high:"))
    assert "would have fired 1 time(s) in the last 24 h (UTC): web-1 critical " in fired
    began = datetime.strptime(fired.split(" critical ")[1][:16], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert now - timedelta(hours=3) <= began <= now - timedelta(hours=2, minutes=50)
    assert any(m.startswith("cpu extreme: would not have fired in the last 24 h (289 evaluations)") for m in messages)
    assert "silent: cannot be previewed (no-data rules cannot be previewed)." in messages
    assert not Alert.objects.exists()


# --- incidents -------------------------------------------------------------------------------------


def test_acknowledge_and_resolve_actions_write_activity_by_the_operator(operator: Client, tenant: Tenant) -> None:
    rule = AlertRuleFactory(tenant=tenant)
    incident = IncidentFactory(rule=rule)
    alert = AlertFactory(rule=rule, incident=incident)
    assert "Acknowledged 1 incident(s)" in shown(act(operator, Incident, "acknowledge", incident))[0]
    act(operator, Incident, "resolve", incident)
    incident.refresh_from_db()
    alert.refresh_from_db()
    assert (incident.status, incident.acknowledged_by, alert.state) == ("resolved", "op", "resolved")
    assert list(incident.activity.values_list("kind", "actor")) == [
        ("acknowledged", "op"),
        ("state_change", "op"),
        ("resolved", "op"),
    ]
    assert "1 resolved ones left alone" in shown(act(operator, Incident, "acknowledge", incident))[0]


# --- silences, mute windows, routes ----------------------------------------------------------------


def test_a_silence_added_in_the_admin_is_by_the_operator_and_can_be_expired(operator: Client, tenant: Tenant) -> None:
    now = timezone.now()
    form = {
        "tenant": tenant.pk,
        "matchers": json.dumps([{"label": "cluster", "op": "=", "value": "eu"}]),
        "starts_at_0": f"{now:%Y-%m-%d}",
        "starts_at_1": f"{now:%H:%M:%S}",
        "ends_at_0": f"{now + timedelta(days=1):%Y-%m-%d}",
        "ends_at_1": f"{now:%H:%M:%S}",
        "comment": "maintenance",
    }
    assert operator.post(url(Silence, "add/"), form).status_code == 302
    silence = Silence.objects.get()
    assert (silence.created_by, silence.comment) == ("op", "maintenance")
    act(operator, Silence, "expire", silence)
    silence.refresh_from_db()
    assert silence.ends_at <= timezone.now()


def test_a_silence_of_everything_is_refused_in_the_admin(operator: Client, tenant: Tenant) -> None:
    now = timezone.now()
    form = {
        "tenant": tenant.pk,
        "matchers": "[]",
        "starts_at_0": f"{now:%Y-%m-%d}",
        "starts_at_1": "00:00:00",
        "ends_at_0": f"{now + timedelta(days=1):%Y-%m-%d}",
        "ends_at_1": "00:00:00",
    }
    response = operator.post(url(Silence, "add/"), form)
    assert response.status_code == 200 and "This field is required." in response.content.decode()
    assert not Silence.objects.exists()


def test_mute_windows_are_saved_through_the_service(operator: Client, tenant: Tenant) -> None:
    form = {
        "tenant": tenant.pk,
        "name": "nightly",
        "matchers": "[]",
        "weekdays": "[0, 1]",
        "start_time": "23:00",
        "end_time": "01:00",
        "timezone": "Mars/Olympus",
        "enabled": "on",
    }
    refused = operator.post(url(MuteWindow, "add/"), form)
    assert refused.status_code == 200 and "Unknown time zone" in refused.content.decode()
    assert operator.post(url(MuteWindow, "add/"), {**form, "timezone": "Europe/Paris"}).status_code == 302
    assert MuteWindow.objects.get().weekdays == [0, 1]


def test_a_route_to_another_tenants_endpoint_is_refused_in_the_admin(
    operator: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    mine, theirs = WebhookEndpointFactory(tenant=tenant), WebhookEndpointFactory(tenant=other_tenant)
    form = {
        "tenant": tenant.pk,
        "name": "critical",
        "position": 0,
        "matchers": "[]",
        "severities": '["critical"]',
        "group_by": '["alertname"]',
        "group_wait_seconds": 30,
        "group_interval_seconds": 300,
        "repeat_interval_seconds": 3600,
    }
    refused = operator.post(url(Route, "add/"), {**form, "endpoints": [mine.pk, theirs.pk]})
    assert refused.status_code == 200 and "No such endpoint." in refused.content.decode()
    assert not Route.objects.exists()
    assert operator.post(url(Route, "add/"), {**form, "endpoints": [mine.pk]}).status_code == 302
    assert list(Route.objects.get().endpoints.all()) == [mine]


# --- endpoints and deliveries ----------------------------------------------------------------------


def test_an_endpoint_added_in_the_admin_shows_its_secret_once(operator: Client, tenant: Tenant) -> None:
    form = {"tenant": tenant.pk, "name": "pager", "url": "http://127.0.0.1:9/hook", "enabled": "on"}
    form |= {"severities": "[]", "matchers": "[]", "event_types": "[]", "headers": "{}"}
    response = operator.post(url(WebhookEndpoint, "add/"), form)
    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    [message] = [m for m in shown(response) if "secret" in m]
    assert endpoint.secret in message
    assert endpoint.secret in operator.get(response["Location"]).content.decode()  # the page after the redirect
    assert endpoint.secret not in operator.get(url(WebhookEndpoint, f"{endpoint.pk}/change/")).content.decode()
    assert endpoint.secret not in operator.get(url(WebhookEndpoint)).content.decode()


def test_rotate_secret_action_shows_the_new_secret_once(operator: Client, tenant: Tenant) -> None:
    endpoint = WebhookEndpointFactory(tenant=tenant)
    old = endpoint.secret
    messages = shown(act(operator, WebhookEndpoint, "rotate_secret", endpoint))
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.previous_secret == old
    assert any(endpoint.secret in m and "copy it now" in m for m in messages)
    assert endpoint.secret not in operator.get(url(WebhookEndpoint, f"{endpoint.pk}/change/")).content.decode()


def test_send_test_action_queues_a_test_delivery(operator: Client, tenant: Tenant) -> None:
    endpoint = WebhookEndpointFactory(tenant=tenant, name="pager")
    disabled = WebhookEndpointFactory(tenant=tenant, name="off", enabled=False)
    messages = shown(act(operator, WebhookEndpoint, "send_test", endpoint, disabled))
    sent = Delivery.objects.get()
    assert (sent.endpoint, sent.notification.event) == (endpoint, "test")
    assert f"pager: test queued as {sent.webhook_id}." in messages
    assert "off: The endpoint is disabled; enable it first." in messages


def test_replay_action_sends_a_failed_delivery_again(operator: Client, tenant: Tenant) -> None:
    endpoint = WebhookEndpointFactory(tenant=tenant)
    failed = DeliveryFactory(notification=NotificationFactory(tenant=tenant), endpoint=endpoint, status="failed")
    pending = DeliveryFactory(notification=NotificationFactory(tenant=tenant), endpoint=endpoint)
    messages = shown(act(operator, Delivery, "replay", failed, pending))
    failed.refresh_from_db()
    assert (failed.status, failed.next_attempt_at is not None) == ("pending", True)
    assert "Replayed 1 delivery(ies)." in messages
    assert any(pending.webhook_id in m and "wait for it to finish" in m for m in messages)


def test_deliveries_filter_by_status_and_tenant(operator: Client, tenant: Tenant, other_tenant: Tenant) -> None:
    mine = DeliveryFactory(notification=NotificationFactory(tenant=tenant), status="failed")
    theirs = DeliveryFactory(notification=NotificationFactory(tenant=other_tenant))
    page = operator.get(url(Delivery), {"status__exact": "failed"}).content.decode()
    assert mine.webhook_id in page and theirs.webhook_id not in page
    page = operator.get(url(Delivery), {"tenant__id__exact": other_tenant.pk}).content.decode()
    assert theirs.webhook_id in page and mine.webhook_id not in page
