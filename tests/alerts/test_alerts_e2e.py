"""Alerting end to end: points posted over HTTP -> a real worker (ingest, evaluation, grouping,
delivery) -> a real HTTP receiver, which verifies the signature with standardwebhooks."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from django.db.models import Q
from standardwebhooks import Webhook

from alerts import delivery, services
from alerts.models import Alert, Delivery, Incident, Notification
from analytics.models import IngestBatch
from tenants import services as tenant_services
from tenants.models import Tenant
from tests.alerts.receiver import Receiver
from tests.tenants.factories import TenantFactory
from tests.waiting import wait_for
from tests.worker import workers_idle

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _settled(transactional_db: None) -> Iterator[None]:
    """Wait for the worker to finish what a test set off (scheduled group flushes included)
    before the database is flushed: a task still writing would deadlock the flush."""
    yield

    def settled() -> bool:
        busy = IngestBatch.objects.filter(Q(status=IngestBatch.Status.PENDING) | Q(rolled_up_at__isnull=True))
        sending = Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING])
        return not busy.exists() and not sending.exists() and workers_idle()

    wait_for(settled, timeout=60, what="the worker to settle")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def stack(live_server: Any, celery_worker: Any, receiver: Receiver) -> dict[str, Any]:
    """A tenant with an ingest key, an endpoint at the receiver, a route that notifies at once,
    and a critical latency rule with no `for`."""
    tenant = TenantFactory()
    key = tenant_services.api_key_create(tenant=tenant, name="e2e", scopes=["ingest", "read"]).raw_key
    endpoint, secret = delivery.endpoint_create(tenant=tenant, name="receiver", url=receiver.url)
    services.route_save(
        tenant=tenant,
        name="now",
        group_by=["alertname", "node"],
        group_wait_seconds=0,
        group_interval_seconds=1,
        endpoints=[endpoint],
    )
    return {"tenant": tenant, "key": key, "secret": secret, "url": live_server.url}


def post(stack: dict[str, Any], value: float, ts: float, node: str = "web-1") -> None:
    body = {"points": [{"cluster": "eu", "node": node, "metric": "latency", "timestamp": ts, "value": value}]}
    request = urllib.request.Request(
        f"{stack['url']}/api/v1/points",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {stack['key']}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def latency_rule(tenant: Tenant, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "name": "latency",
        "kind": "threshold",
        "selector": [{"label": "metric", "op": "=", "value": "latency"}],
        "condition": {"aggregate": "last", "window_seconds": 120, "operator": ">", "critical": 1000},
        "annotations": {"summary": "latency {{ $value }} ms on {{ $labels.node }}"},
    }
    return services.rule_create(tenant=tenant, **{**values, **overrides})


def parsed(rfc3339: str) -> datetime:
    """Alertmanager's times are RFC 3339 in UTC ("Z"), fractions with trailing zeros trimmed."""
    assert rfc3339.endswith("Z")
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))


def test_a_critical_breach_is_notified_once_signed_and_its_recovery_once(
    stack: dict[str, Any], receiver: Receiver
) -> None:
    latency_rule(stack["tenant"])
    post(stack, 5000, time.time())

    [firing] = receiver.wait_for_requests(1, timeout=30)
    body = Webhook(stack["secret"]).verify(firing.body, firing.headers)
    alert = Alert.objects.get()
    assert body["status"] == "firing"
    [sent] = body["alerts"]
    assert sent["labels"] == {
        "alertname": "latency",
        "cluster": "eu",
        "node": "web-1",
        "metric": "latency",
        "severity": "critical",
    }
    assert sent["annotations"] == {"summary": "latency 5000 ms on web-1"}
    assert parsed(sent["startsAt"]) == alert.fired_at
    assert sent["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["vigil"]["incident_id"] == Incident.objects.get().pk

    post(stack, 10, time.time())
    requests = receiver.wait_for_requests(2, timeout=30)
    resolved = Webhook(stack["secret"]).verify(requests[1].body, requests[1].headers)
    alert.refresh_from_db()
    assert resolved["status"] == "resolved"
    [sent_again] = resolved["alerts"]
    assert sent_again["startsAt"] == sent["startsAt"]
    assert parsed(sent_again["endsAt"]) == alert.resolved_at
    assert Incident.objects.get().status == "resolved"

    wait_for(lambda: not Delivery.objects.exclude(status=Delivery.Status.DELIVERED).exists(), 30, "deliveries")
    assert Notification.objects.count() == 2
    assert len(receiver.received()) == 2
    assert len({r.headers["webhook-id"] for r in receiver.received()}) == 2


def test_flapping_inside_for_and_keep_firing_for_notifies_nothing(stack: dict[str, Any], receiver: Receiver) -> None:
    latency_rule(stack["tenant"], for_seconds=120)
    latency_rule(
        stack["tenant"],
        name="sticky",
        selector=[{"label": "node", "op": "=", "value": "web-2"}],
        keep_firing_for_seconds=300,
    )
    start = time.time() - 30  # in the past: every evaluation sees every point posted so far
    for i in range(6):  # web-1 never stays breached for 120 s
        post(stack, 5000 if i % 2 == 0 else 10, start + i)
    for i in range(7):  # web-2 fires, flaps, ends breached: keep_firing_for rides out every recovery
        post(stack, 5000 if i % 2 == 0 else 10, start + i, node="web-2")

    wait_for(
        lambda: (
            Alert.objects.filter(rule__name="sticky", state="firing").exists()
            and not IngestBatch.objects.filter(rolled_up_at__isnull=True).exists()
        ),
        30,
        "the batches to be evaluated",
    )
    wait_for(lambda: not Delivery.objects.exclude(status=Delivery.Status.DELIVERED).exists(), 30, "deliveries")
    assert not Alert.objects.filter(series__node="web-1", state="firing").exists()
    firing = [json.loads(r.body) for r in receiver.received()]
    # One notification: web-2 fired once; no resolution, no second firing, nothing from web-1.
    assert [(b["status"], b["alerts"][0]["labels"]["node"]) for b in firing] == [("firing", "web-2")]
