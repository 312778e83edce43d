"""Grouping, routing, silences, mute windows and inhibition: what gets notified, when, to whom."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from django.utils import timezone

from alerts import services
from alerts.evaluation import rule_evaluate
from alerts.models import Alert, AlertRule, Delivery, Incident, MuteWindow, Notification, NotificationGroup
from alerts.notifications import groups_flush_due, mute_window_active
from tenants.models import Tenant
from tests.alerts.factories import WebhookEndpointFactory
from tests.alerts.test_evaluation import push

pytestmark = pytest.mark.django_db


def rule(tenant: Tenant, name: str = "latency", **overrides: Any) -> AlertRule:
    values: dict[str, Any] = {
        "kind": "threshold",
        "selector": [{"label": "metric", "op": "=", "value": "latency"}],
        "condition": {"aggregate": "last", "window_seconds": 60, "operator": ">", "warning": 500, "critical": 1000},
    }
    return services.rule_create(tenant=tenant, name=name, **{**values, **overrides})


def bodies(**filters: Any) -> list[dict[str, Any]]:
    return [json.loads(n.body) for n in Notification.objects.filter(**filters).order_by("pk")]


def firing_nodes(body: dict[str, Any]) -> list[str]:
    return sorted(a["labels"]["node"] for a in body["alerts"] if a["status"] == "firing")


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def grouping(settings: Any) -> Any:
    settings.VIGIL_ALERTS_GROUP_BY = ["alertname"]
    settings.VIGIL_ALERTS_GROUP_WAIT_SECONDS = 30
    settings.VIGIL_ALERTS_GROUP_INTERVAL_SECONDS = 300
    settings.VIGIL_ALERTS_REPEAT_INTERVAL_SECONDS = 3600
    return settings


def test_group_wait_collects_alerts_that_fire_together_into_one_notification(
    tenant: Tenant, now: datetime, grouping: Any
) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    push(tenant, "web-2", [1500], now + timedelta(seconds=10))
    rule_evaluate(rule_id=latency.pk, now=now + timedelta(seconds=10))
    assert not Notification.objects.exists()  # waiting for group_wait
    group = NotificationGroup.objects.get()
    assert group.flush_at == now + timedelta(seconds=30)

    assert groups_flush_due(now=now + timedelta(seconds=29)) == 0
    assert groups_flush_due(now=now + timedelta(seconds=30)) == 1
    [body] = bodies()
    assert firing_nodes(body) == ["web-1", "web-2"]
    assert body["groupLabels"] == {"alertname": "latency"}
    assert body["commonLabels"]["alertname"] == "latency" and "node" not in body["commonLabels"]


def test_later_changes_wait_for_the_group_interval_and_are_sent_together(
    tenant: Tenant, now: datetime, grouping: Any
) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    groups_flush_due(now=now + timedelta(seconds=30))

    later = now + timedelta(seconds=60)
    push(tenant, "web-2", [1500], later)
    rule_evaluate(rule_id=latency.pk, now=later)
    assert NotificationGroup.objects.get().flush_at == now + timedelta(seconds=330)
    assert groups_flush_due(now=later) == 0
    assert groups_flush_due(now=now + timedelta(seconds=330)) == 1
    assert [firing_nodes(b) for b in bodies()] == [["web-1"], ["web-1", "web-2"]]


def test_a_group_that_still_fires_is_repeated_after_the_repeat_interval_only(
    tenant: Tenant, now: datetime, grouping: Any
) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    groups_flush_due(now=now + timedelta(seconds=30))
    for minutes in range(5, 60, 5):  # every group_interval: nothing new, no repeat yet
        groups_flush_due(now=now + timedelta(seconds=30, minutes=minutes))
    assert len(bodies()) == 1
    groups_flush_due(now=now + timedelta(seconds=30, minutes=60))
    assert len(bodies()) == 2


def test_the_rules_repeat_interval_overrides_the_routes(tenant: Tenant, now: datetime, grouping: Any) -> None:
    latency = rule(tenant, repeat_interval_seconds=600)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    groups_flush_due(now=now + timedelta(seconds=30))
    groups_flush_due(now=now + timedelta(seconds=30, minutes=5))
    groups_flush_due(now=now + timedelta(seconds=30, minutes=10))
    assert len(bodies()) == 2


def test_a_notified_alert_that_resolves_is_sent_as_resolved_once(tenant: Tenant, now: datetime, grouping: Any) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    groups_flush_due(now=now + timedelta(seconds=30))
    push(tenant, "web-1", [10], now + timedelta(seconds=40))
    rule_evaluate(rule_id=latency.pk, now=now + timedelta(seconds=40))
    groups_flush_due(now=now + timedelta(seconds=330))
    groups_flush_due(now=now + timedelta(seconds=630))

    first, resolved = bodies()
    assert resolved["status"] == "resolved"
    [alert] = resolved["alerts"]
    assert alert["status"] == "resolved"
    assert alert["startsAt"] == first["alerts"][0]["startsAt"]
    assert alert["endsAt"] == (now + timedelta(seconds=40)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert NotificationGroup.objects.get().flush_at is None  # nothing left to watch


def test_an_alert_that_resolves_before_it_was_ever_sent_is_never_sent(
    tenant: Tenant, now: datetime, grouping: Any
) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    push(tenant, "web-1", [10], now + timedelta(seconds=10))
    rule_evaluate(rule_id=latency.pk, now=now + timedelta(seconds=10))
    groups_flush_due(now=now + timedelta(seconds=30))
    assert not Notification.objects.exists()


@pytest.fixture
def at_once(settings: Any) -> Any:
    settings.VIGIL_ALERTS_GROUP_BY = ["alertname", "node"]
    settings.VIGIL_ALERTS_GROUP_WAIT_SECONDS = 0
    settings.VIGIL_ALERTS_GROUP_INTERVAL_SECONDS = 60
    return settings


def test_a_silence_holds_back_exactly_the_alerts_it_matches_until_it_expires(
    tenant: Tenant, now: datetime, at_once: Any
) -> None:
    silence = services.silence_create(
        tenant=tenant,
        matchers=[{"label": "node", "op": "=~", "value": "web-1|web-3"}],
        starts_at=now - timedelta(minutes=1),
        ends_at=now + timedelta(minutes=10),
    )
    latency = rule(tenant)
    for node in ("web-1", "web-2"):
        push(tenant, node, [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    assert [firing_nodes(b) for b in bodies()] == [["web-2"]]

    groups_flush_due(now=now + timedelta(minutes=5))  # still silenced
    assert len(bodies()) == 1
    groups_flush_due(now=now + timedelta(minutes=11))  # expired on its own
    assert [firing_nodes(b) for b in bodies()] == [["web-2"], ["web-1"]]
    assert silence.ends_at == now + timedelta(minutes=10)


def test_an_expired_silence_stops_silencing_at_once(tenant: Tenant, now: datetime, at_once: Any) -> None:
    silence = services.silence_create(
        tenant=tenant, matchers=[{"label": "node", "op": "=", "value": "web-1"}], ends_at=now + timedelta(hours=1)
    )
    services.silence_expire(silence=silence)
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now + timedelta(seconds=1))
    rule_evaluate(rule_id=latency.pk, now=now + timedelta(seconds=1))
    assert [firing_nodes(b) for b in bodies()] == [["web-1"]]


def test_a_mute_window_holds_back_notifications_during_its_hours(tenant: Tenant, now: datetime, at_once: Any) -> None:
    opens, closes = now - timedelta(minutes=10), now + timedelta(minutes=10)
    services.mute_window_save(
        tenant=tenant,
        name="deploys",
        matchers=[{"label": "cluster", "op": "=", "value": "eu"}],
        weekdays=[opens.weekday()],  # the day it opens on, should it cross midnight
        start_time=opens.time(),
        end_time=closes.time(),
        timezone="UTC",
    )
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    assert not Notification.objects.exists()
    groups_flush_due(now=closes + timedelta(minutes=1))
    assert len(bodies()) == 1


@pytest.mark.parametrize(
    ("moment", "active"),
    [
        (datetime(2026, 11, 23, 22, 59, tzinfo=UTC), False),
        (datetime(2026, 11, 23, 23, 0, tzinfo=UTC), True),
        (datetime(2026, 11, 24, 0, 30, tzinfo=UTC), True),  # Tuesday, but the window began on Monday
        (datetime(2026, 11, 24, 1, 0, tzinfo=UTC), False),
        (datetime(2026, 11, 24, 23, 30, tzinfo=UTC), False),  # a Tuesday night
        (datetime(2026, 11, 30, 23, 30, tzinfo=UTC), True),
    ],
)
def test_a_mute_window_crossing_midnight_belongs_to_the_day_it_starts(moment: datetime, active: bool) -> None:
    window = MuteWindow(weekdays=[0], start_time=time(23, 0), end_time=time(1, 0), timezone="UTC")
    assert mute_window_active(window, moment) is active


def test_a_mute_window_is_read_in_its_time_zone() -> None:
    window = MuteWindow(weekdays=[], start_time=time(9, 0), end_time=time(10, 0), timezone="America/New_York")
    assert mute_window_active(window, datetime(2026, 11, 23, 14, 30, tzinfo=UTC))  # 09:30 in New York
    assert not mute_window_active(window, datetime(2026, 11, 23, 9, 30, tzinfo=UTC))


def test_a_firing_cluster_alert_holds_back_node_alerts_of_its_cluster_and_metric(
    tenant: Tenant, now: datetime, at_once: Any
) -> None:
    cluster_rule = rule(
        tenant,
        "cluster latency",
        condition={"aggregate": "mean", "window_seconds": 60, "operator": ">", "critical": 1000, "by": "cluster"},
    )
    node_rule = rule(tenant, "node latency")
    cpu_rule = rule(tenant, "node cpu", selector=[{"label": "metric", "op": "=", "value": "cpu"}])
    for node in ("web-1", "web-2"):
        push(tenant, node, [1500], now)
    push(tenant, "web-1", [1500], now, metric="cpu")
    for r in (cluster_rule, node_rule, cpu_rule):
        rule_evaluate(rule_id=r.pk, now=now)

    sent = [b["groupLabels"]["alertname"] for b in bodies()]
    assert sorted(sent) == ["cluster latency", "node cpu"]  # node latency held back

    services.rule_update(rule=cluster_rule, inhibits_nodes=False)
    groups_flush_due(now=now + timedelta(minutes=2))
    assert sorted(b["groupLabels"]["alertname"] for b in bodies()) == [
        "cluster latency",
        "node cpu",
        "node latency",
        "node latency",
    ]


def test_routes_send_by_severity_and_labels_and_the_rest_goes_to_every_endpoint(
    tenant: Tenant, now: datetime, at_once: Any
) -> None:
    pager = WebhookEndpointFactory(tenant=tenant, name="pager")
    chat = WebhookEndpointFactory(tenant=tenant, name="chat")
    services.route_save(
        tenant=tenant,
        name="critical to pager",
        position=0,
        severities=["critical"],
        group_by=["node"],
        group_wait_seconds=0,
        endpoints=[pager],
    )
    services.route_save(
        tenant=tenant,
        name="web-3 to chat",
        position=1,
        matchers=[{"label": "node", "op": "=", "value": "web-3"}],
        group_wait_seconds=0,
        endpoints=[chat],
    )
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)  # critical
    push(tenant, "web-2", [700], now)  # warning, no route takes it: the default route
    push(tenant, "web-3", [700], now)  # warning, labels route
    rule_evaluate(rule_id=latency.pk, now=now)

    sent = {
        (d.endpoint.name, tuple(firing_nodes(json.loads(d.notification.body))))
        for d in Delivery.objects.select_related("endpoint", "notification")
    }
    assert sent == {("pager", ("web-1",)), ("chat", ("web-3",)), ("pager", ("web-2",)), ("chat", ("web-2",))}
    receivers = {json.loads(n.body)["receiver"] for n in Notification.objects.all()}
    assert receivers == {"critical to pager", "web-3 to chat", "default"}


def test_continue_matching_sends_an_alert_down_several_routes(tenant: Tenant, now: datetime, at_once: Any) -> None:
    pager = WebhookEndpointFactory(tenant=tenant, name="pager")
    chat = WebhookEndpointFactory(tenant=tenant, name="chat")
    services.route_save(
        tenant=tenant, name="all to chat", position=0, continue_matching=True, group_wait_seconds=0, endpoints=[chat]
    )
    services.route_save(tenant=tenant, name="all to pager", position=1, group_wait_seconds=0, endpoints=[pager])
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    assert sorted(Delivery.objects.values_list("endpoint__name", flat=True)) == ["chat", "pager"]


def test_endpoint_filters_leave_out_what_they_do_not_want(tenant: Tenant, now: datetime, at_once: Any) -> None:
    WebhookEndpointFactory(tenant=tenant, name="critical only", severities=["critical"])
    WebhookEndpointFactory(tenant=tenant, name="resolved only", event_types=["alert.resolved"])
    WebhookEndpointFactory(tenant=tenant, name="disabled", enabled=False)
    everything = WebhookEndpointFactory(tenant=tenant, name="everything")
    latency = rule(tenant)
    push(tenant, "web-1", [700], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    assert list(Delivery.objects.values_list("endpoint", flat=True)) == [everything.pk]


def test_the_sweeper_flushes_a_group_whose_flush_message_was_lost(tenant: Tenant, now: datetime, grouping: Any) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)  # its flush task was scheduled; pretend it was lost
    assert groups_flush_due(now=now + timedelta(minutes=3)) == 1
    assert groups_flush_due(now=now + timedelta(minutes=3)) == 0  # a second sweep sends nothing more
    assert len(bodies()) == 1


def test_deleting_a_rule_notifies_its_firing_alerts_as_resolved_first(
    tenant: Tenant, now: datetime, grouping: Any
) -> None:
    latency = rule(tenant)
    push(tenant, "web-1", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)
    groups_flush_due(now=now + timedelta(seconds=30))

    services.rule_delete(rule=latency, actor="key:ops")

    first, last = bodies()
    assert (first["status"], last["status"]) == ("firing", "resolved")
    assert last["alerts"][0]["labels"]["node"] == "web-1"
    assert not AlertRule.objects.exists()


def test_disabling_a_rule_resolves_its_alerts_and_incident(tenant: Tenant, now: datetime, at_once: Any) -> None:
    latency = rule(tenant, for_seconds=0)
    push(tenant, "web-1", [1500], now)
    push(tenant, "web-2", [1500], now)
    rule_evaluate(rule_id=latency.pk, now=now)

    services.rule_update(rule=latency, enabled=False, updated_by="key:ops")

    assert set(Alert.objects.values_list("state", flat=True)) == {"resolved"}
    incident = Incident.objects.get()
    assert incident.status == "resolved"
    assert incident.activity.last().actor == "key:ops"
    groups_flush_due(now=timezone.now() + timedelta(minutes=2))
    assert sorted(b["status"] for b in bodies()) == ["firing", "firing", "resolved", "resolved"]
