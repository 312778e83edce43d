from __future__ import annotations

from datetime import UTC, datetime

import factory
from django.utils import timezone

from alerts import delivery, payload
from alerts.models import Delivery, Notification, WebhookEndpoint
from tests.tenants.factories import TenantFactory


class WebhookEndpointFactory(factory.django.DjangoModelFactory):
    """An enabled endpoint with a real Standard Webhooks secret. Saved as is: the URL is not
    checked (use delivery.endpoint_create for that)."""

    class Meta:
        model = WebhookEndpoint

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"endpoint-{n}")
    url = "http://127.0.0.1:9/hook"
    secret = factory.LazyFunction(delivery.secret_generate)


def _firing_body() -> str:
    labels = {"alertname": "HighLatency", "cluster": "eu-west", "severity": "critical"}
    alert = payload.PayloadAlert(
        status="firing",
        labels=labels,
        annotations={"summary": "p99 latency above 500 ms"},
        starts_at=datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
        ends_at=None,
        generator_url="http://vigil.test/api/v1/rules/1",
        fingerprint=payload.labels_fingerprint(labels),
        vigil={"rule_id": 1, "rule_version": 1, "incident_id": None, "severity": "critical", "value": 731.5},
    )
    return payload.payload_build(
        receiver="default",
        status="firing",
        group_key='{}/default:{alertname="HighLatency"}',
        group_labels={"alertname": "HighLatency"},
        alerts=[alert],
        external_url="http://vigil.test",
        vigil={"event": "alert.firing"},
    )


class NotificationFactory(factory.django.DjangoModelFactory):
    """A firing notification with an Alertmanager-shaped body."""

    class Meta:
        model = Notification

    tenant = factory.SubFactory(TenantFactory)
    event = Notification.Event.FIRING
    body = factory.LazyFunction(_firing_body)


class DeliveryFactory(factory.django.DjangoModelFactory):
    """A pending delivery, due now, of a notification to an endpoint of the same tenant."""

    class Meta:
        model = Delivery

    notification = factory.SubFactory(NotificationFactory)
    endpoint = factory.SubFactory(WebhookEndpointFactory, tenant=factory.SelfAttribute("..notification.tenant"))
    tenant = factory.SelfAttribute("notification.tenant")
    webhook_id = factory.LazyFunction(delivery.webhook_id_generate)
    status = Delivery.Status.PENDING
    next_attempt_at = factory.LazyFunction(timezone.now)


# --- rules, incidents, alerts (the API and admin tests) --------------------------------------------
# Appended to a file another suite owns: models by label and a local import keep its header as is.


class AlertRuleFactory(factory.django.DjangoModelFactory):
    """A threshold rule on `cpu` (warning > 80, critical > 95), made by services.rule_create so it
    has its version 1. Pass any rule field to change it."""

    class Meta:
        model = "alerts.AlertRule"

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"rule-{n}")
    kind = "threshold"
    selector = factory.LazyFunction(lambda: [{"label": "metric", "op": "=", "value": "cpu"}])
    condition = factory.LazyFunction(
        lambda: {"aggregate": "mean", "window_seconds": 300, "operator": ">", "warning": 80, "critical": 95}
    )

    @classmethod
    def _create(cls, model_class: type, *args: object, **kwargs: object) -> object:
        from alerts import services

        return services.rule_create(**kwargs)


def _current_version(o: object) -> object:
    return o.rule.versions.get(version=o.rule.version)


class IncidentFactory(factory.django.DjangoModelFactory):
    """A firing critical incident of a rule, at the rule's current version."""

    class Meta:
        model = "alerts.Incident"

    rule = factory.SubFactory(AlertRuleFactory)
    tenant = factory.SelfAttribute("rule.tenant")
    rule_version = factory.LazyAttribute(_current_version)
    title = factory.LazyAttribute(lambda o: f"{o.rule.name} firing")
    severity = "critical"
    status = "firing"


class AlertFactory(factory.django.DjangoModelFactory):
    """A critical alert of a rule, firing since now (pass `incident` to attach it)."""

    class Meta:
        model = "alerts.Alert"

    rule = factory.SubFactory(AlertRuleFactory)
    tenant = factory.SelfAttribute("rule.tenant")
    rule_version = factory.LazyAttribute(_current_version)
    fingerprint = factory.Sequence(lambda n: f"{n:016x}")
    labels = factory.LazyAttribute(
        lambda o: {"alertname": o.rule.name, "cluster": "eu-west", "node": "web-1", "severity": "critical"}
    )
    severity = "critical"
    state = "firing"
    value = 97.0
    active_at = factory.LazyFunction(timezone.now)
    fired_at = factory.LazyFunction(timezone.now)
    evaluated_at = factory.LazyFunction(timezone.now)
