"""Webhook delivery, service level: real PostgreSQL, a real HTTP receiver on loopback, the
services called directly (no worker). Signatures are checked with the standardwebhooks verifier."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from alerts import delivery as service
from alerts import outbound
from alerts.models import Delivery, DeliveryAttempt, Notification, WebhookEndpoint
from config.celery_app import app as celery_app
from config.errors import Rejected
from tenants.models import Membership, Tenant
from tests.alerts.factories import DeliveryFactory, NotificationFactory, WebhookEndpointFactory
from tests.alerts.receiver import Answer, Receiver
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.django_db

SCHEDULE = [10.0, 20.0, 30.0]


@pytest.fixture(autouse=True)
def _webhook_settings(settings: Any) -> None:
    settings.VIGIL_WEBHOOK_RETRY_SCHEDULE = SCHEDULE
    settings.VIGIL_WEBHOOK_ALLOW_PRIVATE = True
    settings.VIGIL_WEBHOOK_TIMEOUT = 5.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def endpoint(tenant: Tenant, receiver: Receiver) -> WebhookEndpoint:
    return WebhookEndpointFactory(tenant=tenant, url=receiver.url)


@pytest.fixture
def eager() -> Iterator[None]:
    """Published tasks run in this process at once (Celery's eager mode), so what the sweeper
    publishes is visibly attempted."""
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = False, False


def _dispatch(endpoint: WebhookEndpoint) -> Delivery:
    notification = NotificationFactory(tenant=endpoint.tenant)
    [created] = service.notification_dispatch(notification=notification, endpoints=[endpoint])
    return created


def _attempt(target: Delivery, now: Any = None) -> str | None:
    outcome = service.delivery_attempt(delivery_id=target.pk, now=now)
    target.refresh_from_db()
    return outcome


def _outcomes(target: Delivery) -> list[str]:
    return list(DeliveryAttempt.objects.filter(delivery=target).values_list("outcome", flat=True))


def _resolving(monkeypatch: pytest.MonkeyPatch, name: str, address: str) -> None:
    """`name` resolves to `address` (the one outbound door resolves through socket.getaddrinfo)."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real(address if host == name else host, port, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", fake)


# --- signing and the request -------------------------------------------------------------------


def test_a_delivery_is_signed_so_the_standard_webhooks_verifier_accepts_it(
    endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    endpoint.headers = {"X-Team": "payments", "Authorization": "Bearer abc"}
    endpoint.save()
    target = _dispatch(endpoint)

    assert _attempt(target) == "delivered"

    [request] = receiver.received()
    assert request.body == target.notification.body.encode()
    assert request.headers["webhook-id"] == target.webhook_id
    assert abs(int(request.headers["webhook-timestamp"]) - timezone.now().timestamp()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "Vigil-Webhooks/1"
    assert request.headers["x-team"] == "payments" and request.headers["authorization"] == "Bearer abc"
    parsed = Webhook(endpoint.secret).verify(request.body, request.headers)
    assert parsed["version"] == "4" and parsed["alerts"][0]["labels"]["alertname"] == "HighLatency"
    with pytest.raises(WebhookVerificationError):
        Webhook(service.secret_generate()).verify(request.body, request.headers)

    assert target.status == Delivery.Status.DELIVERED and target.attempts == 1
    assert target.delivered_at is not None and target.last_status_code == 200
    [attempt] = DeliveryAttempt.objects.filter(delivery=target)
    assert (attempt.number, attempt.status_code, attempt.outcome, attempt.response_excerpt) == (
        1,
        200,
        "delivered",
        "ok",
    )


def test_dispatching_twice_creates_one_delivery_per_endpoint(tenant: Tenant) -> None:
    endpoints = WebhookEndpointFactory.create_batch(2, tenant=tenant)
    notification = NotificationFactory(tenant=tenant)

    first = service.notification_dispatch(notification=notification, endpoints=endpoints)
    again = service.notification_dispatch(notification=notification, endpoints=endpoints)

    assert len(first) == 2 and again == []
    assert Delivery.objects.filter(notification=notification).count() == 2
    for created in first:
        assert created.status == Delivery.Status.PENDING and created.next_attempt_at is not None
        assert created.webhook_id.startswith("msg_") and len(created.webhook_id) == 30
    assert first[0].webhook_id != first[1].webhook_id


def test_a_delivery_not_yet_due_or_already_done_is_not_attempted(endpoint: WebhookEndpoint, receiver: Receiver) -> None:
    target = _dispatch(endpoint)

    due = target.next_attempt_at
    assert _attempt(target, now=due - timedelta(seconds=1)) is None
    # A little early is due: the countdown may come from a host whose clock is ahead.
    assert _attempt(target, now=due - service.CLOCK_SKEW) == "delivered"
    assert _attempt(target) is None
    assert len(receiver.received()) == 1 and target.attempts == 1


# --- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_a_transient_answer_is_retried_on_the_schedule_with_the_same_webhook_id(
    status: int, endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    receiver.answer(status, status, 200)
    target = _dispatch(endpoint)

    now = timezone.now()
    for step, delay in enumerate(SCHEDULE[:2]):
        assert _attempt(target, now=now) == "retry"
        assert target.status == Delivery.Status.PENDING and target.last_status_code == status
        assert target.attempts == step + 1
        # +-20 % jitter around the step, counted from the end of the attempt.
        attempt = DeliveryAttempt.objects.get(delivery=target, number=step + 1)
        finished = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
        waited = (target.next_attempt_at - finished).total_seconds()
        assert 0.8 * delay - 0.001 <= waited <= 1.2 * delay + 0.001
        assert _attempt(target, now=target.next_attempt_at - timedelta(seconds=1)) is None  # not due yet
        now = target.next_attempt_at

    assert _attempt(target, now=now) == "delivered"
    requests = receiver.received()
    assert len(requests) == 3
    assert {request.headers["webhook-id"] for request in requests} == {target.webhook_id}
    assert _outcomes(target) == ["retry", "retry", "delivered"]


def test_a_refused_connection_is_retried(endpoint: WebhookEndpoint) -> None:
    closed = Receiver(listening=False)
    endpoint.url = closed.url
    endpoint.save()
    target = _dispatch(endpoint)

    assert _attempt(target) == "retry"

    assert target.status == Delivery.Status.PENDING and target.last_status_code is None
    assert target.last_error.startswith("connect:")


def test_a_receiver_that_does_not_answer_in_time_is_retried(
    settings: Any, endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    settings.VIGIL_WEBHOOK_TIMEOUT = 0.3
    receiver.answer(Answer(200, delay=10))
    target = _dispatch(endpoint)

    assert _attempt(target) == "retry"

    assert target.last_error.startswith("timeout:")
    assert len(receiver.received()) == 1


@pytest.mark.parametrize(
    ("status", "retry_after", "cap", "expected"),
    [
        (429, "100", 3600.0, 100.0),
        (503, "http-date in 200 s", 3600.0, 200.0),
        (429, "100000", 50.0, 50.0),
        (503, "3", 3600.0, None),  # shorter than the schedule's step: the step wins
        (503, "soon", 3600.0, None),  # unusable: the step
    ],
)
def test_retry_after_is_honoured_up_to_the_cap(
    settings: Any,
    endpoint: WebhookEndpoint,
    receiver: Receiver,
    status: int,
    retry_after: str,
    cap: float,
    expected: float | None,
) -> None:
    settings.VIGIL_WEBHOOK_RETRY_AFTER_MAX = cap
    if retry_after.startswith("http-date"):
        retry_after = email.utils.format_datetime(timezone.now() + timedelta(seconds=200), usegmt=True)
    receiver.answer(Answer(status, headers={"Retry-After": retry_after}))
    target = _dispatch(endpoint)

    before = timezone.now()
    assert _attempt(target) == "retry"
    after = timezone.now()

    if expected is None:
        low, high = 0.8 * SCHEDULE[0], 1.2 * SCHEDULE[0]
    else:
        low, high = expected - 1.5, expected + 1.5  # an HTTP-date has whole seconds
    assert before + timedelta(seconds=low) <= target.next_attempt_at <= after + timedelta(seconds=high)


@pytest.mark.parametrize("status", [400, 401, 404, 422, 301, 302, 307])
def test_a_client_error_or_a_redirect_is_final_and_the_redirect_is_not_followed(
    status: int, endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    receiver.answer(Answer(status, headers={"Location": receiver.url + "/elsewhere"}))
    target = _dispatch(endpoint)

    assert _attempt(target) == "failed"

    assert target.status == Delivery.Status.FAILED and target.next_attempt_at is None
    assert target.last_status_code == status
    assert [request.path for request in receiver.received()] == ["/hook"]
    if 300 <= status < 400:
        assert "redirects are not followed" in target.last_error and "/elsewhere" in target.last_error
    endpoint.refresh_from_db()
    assert endpoint.enabled


def test_a_delivery_fails_when_its_retry_budget_is_spent(endpoint: WebhookEndpoint, receiver: Receiver) -> None:
    receiver.answer(*[500] * 4)
    target = _dispatch(endpoint)

    now = timezone.now()
    for _ in SCHEDULE:
        assert _attempt(target, now=now) == "retry"
        now = target.next_attempt_at
    assert _attempt(target, now=now) == "failed"

    assert target.status == Delivery.Status.FAILED and target.attempts == len(SCHEDULE) + 1
    assert target.next_attempt_at is None and target.last_error == "HTTP 500"
    assert _outcomes(target) == ["retry", "retry", "retry", "failed"]


def test_attempts_record_status_latency_and_a_capped_excerpt(
    settings: Any, endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    settings.VIGIL_WEBHOOK_EXCERPT_BYTES = 100
    receiver.answer(Answer(500, body=b"\x00" + b"e" * 5000, delay=0.05))
    target = _dispatch(endpoint)

    _attempt(target)

    [attempt] = DeliveryAttempt.objects.filter(delivery=target)
    assert attempt.status_code == 500 and attempt.outcome == "retry" and attempt.number == 1
    assert attempt.duration_ms >= 50
    assert attempt.response_excerpt == "\ufffd" + "e" * 99  # PostgreSQL text holds no NUL
    assert attempt.error == "HTTP 500"


# --- disabling ---------------------------------------------------------------------------------


def _member(tenant: Tenant, role: str, email: str) -> None:
    user = get_user_model().objects.create_user(username=f"{role}-{email or 'none'}-{tenant.pk}", email=email)
    Membership.objects.create(tenant=tenant, user=user, role=role)


def test_410_disables_the_endpoint_and_tells_the_tenant(
    tenant: Tenant,
    other_tenant: Tenant,
    endpoint: WebhookEndpoint,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    _member(tenant, "owner", "owner@example.com")
    _member(tenant, "admin", "admin@example.com")
    _member(tenant, "owner", "")
    _member(tenant, "member", "member@example.com")
    _member(other_tenant, "owner", "stranger@example.com")
    listening = WebhookEndpointFactory(tenant=tenant, event_types=["endpoint.disabled"], severities=["critical"])
    alerts_only = WebhookEndpointFactory(tenant=tenant, event_types=["alert.firing"])
    WebhookEndpointFactory(tenant=tenant, enabled=False)
    WebhookEndpointFactory(tenant=other_tenant)
    waiting = DeliveryFactory(
        notification__tenant=tenant, endpoint=endpoint, next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    receiver.answer(410)
    target = _dispatch(endpoint)

    with django_capture_on_commit_callbacks(execute=True):
        assert _attempt(target) == "failed"

    endpoint.refresh_from_db()
    assert not endpoint.enabled and endpoint.disabled_reason == "the receiver answered 410 Gone"
    assert target.status == Delivery.Status.FAILED and "410" in target.last_error
    waiting.refresh_from_db()
    assert waiting.status == Delivery.Status.FAILED and "410 Gone" in waiting.last_error

    [message] = mail.outbox
    assert sorted(message.to) == ["admin@example.com", "owner@example.com"]
    assert endpoint.name in message.subject and "410 Gone" in message.body

    [notice] = Notification.objects.filter(event=Notification.Event.ENDPOINT_DISABLED)
    assert notice.tenant == tenant
    assert [d.endpoint for d in Delivery.objects.filter(notification=notice)] == [listening]
    assert alerts_only.deliveries.count() == 0
    assert json.loads(notice.body)["vigil"]["endpoint"]["name"] == endpoint.name

    # Already disabled: nothing more happens.
    assert service.endpoint_disable(endpoint=endpoint, reason="again") is False


def test_an_endpoint_failing_longer_than_the_setting_is_disabled(
    settings: Any, endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    settings.VIGIL_WEBHOOK_DISABLE_AFTER_SECONDS = 3600
    receiver.answer(500, 500)
    first = _dispatch(endpoint)

    assert _attempt(first) == "retry"
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None and endpoint.enabled

    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now() - timedelta(seconds=3601))
    assert _attempt(first, now=first.next_attempt_at) == "failed"

    endpoint.refresh_from_db()
    assert not endpoint.enabled and endpoint.disabled_reason.startswith("no successful delivery for 1.0 hours")
    assert first.status == Delivery.Status.FAILED and "the endpoint is disabled" in first.last_error


def test_a_success_ends_the_failure_run(endpoint: WebhookEndpoint, receiver: Receiver) -> None:
    receiver.answer(500, 200)
    target = _dispatch(endpoint)

    _attempt(target)
    endpoint.refresh_from_db()
    assert endpoint.failing_since is not None
    _attempt(target, now=target.next_attempt_at)

    endpoint.refresh_from_db()
    assert endpoint.failing_since is None and target.status == Delivery.Status.DELIVERED


def test_a_delivery_waiting_for_a_disabled_endpoint_fails_without_being_sent(
    endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    target = _dispatch(endpoint)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False, disabled_reason="gone for lunch")

    assert _attempt(target) == "failed"

    assert receiver.received() == []
    [attempt] = DeliveryAttempt.objects.filter(delivery=target)
    assert attempt.error == "not sent: the endpoint is disabled (gone for lunch)"


# --- replay and test sends ---------------------------------------------------------------------


def test_a_replay_gets_a_fresh_budget_and_keeps_the_webhook_id(endpoint: WebhookEndpoint, receiver: Receiver) -> None:
    receiver.answer(*[500] * 5, 200)
    target = _dispatch(endpoint)
    now = timezone.now()
    while _attempt(target, now=now) == "retry":
        now = target.next_attempt_at
    assert target.status == Delivery.Status.FAILED and target.attempts == 4

    replayed = service.delivery_replay(delivery=target)

    assert replayed.status == Delivery.Status.PENDING and replayed.webhook_id == target.webhook_id
    assert _attempt(target) == "retry"  # not "failed": the budget is this run's
    assert _attempt(target, now=target.next_attempt_at) == "delivered"
    requests = receiver.received()
    assert len(requests) == 6 and {r.headers["webhook-id"] for r in requests} == {target.webhook_id}
    assert Delivery.objects.filter(notification=target.notification).count() == 1


def test_replaying_a_pending_delivery_is_refused(endpoint: WebhookEndpoint) -> None:
    target = _dispatch(endpoint)

    with pytest.raises(Rejected) as refused:
        service.delivery_replay(delivery=target)

    assert (refused.value.code, refused.value.status_code) == ("not_replayable", 409)


def test_replaying_to_a_disabled_endpoint_is_refused(endpoint: WebhookEndpoint, receiver: Receiver) -> None:
    receiver.answer(404)
    target = _dispatch(endpoint)
    _attempt(target)
    service.endpoint_disable(endpoint=endpoint, reason="by hand")

    with pytest.raises(Rejected) as refused:
        service.delivery_replay(delivery=target)

    assert (refused.value.code, refused.value.status_code) == ("endpoint_disabled", 409)


def test_send_test_reaches_the_receiver_whatever_the_filters(endpoint: WebhookEndpoint, receiver: Receiver) -> None:
    service.endpoint_update(
        endpoint=endpoint,
        event_types=["alert.firing"],
        severities=["critical"],
        matchers=[{"label": "cluster", "op": "=", "value": "eu"}],
    )

    sent = service.endpoint_send_test(endpoint=endpoint)
    assert _attempt(sent) == "delivered"

    [request] = receiver.received()
    body = Webhook(endpoint.secret).verify(request.body, request.headers)
    assert body["vigil"] == {"event": "test"}
    assert body["alerts"][0]["labels"] == {"alertname": "VigilTestAlert", "severity": "info"}
    assert sent.notification.event == Notification.Event.TEST


def test_send_test_to_a_disabled_endpoint_is_refused(endpoint: WebhookEndpoint) -> None:
    service.endpoint_update(endpoint=endpoint, enabled=False)

    with pytest.raises(Rejected) as refused:
        service.endpoint_send_test(endpoint=endpoint)

    assert (refused.value.code, refused.value.status_code) == ("endpoint_disabled", 409)


# --- secrets -----------------------------------------------------------------------------------


def test_during_a_rotation_both_secrets_verify_and_after_it_only_the_new_one(
    endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    old = endpoint.secret
    new = service.endpoint_secret_rotate(endpoint=endpoint)
    assert new != old and new.startswith("whsec_")

    _attempt(_dispatch(endpoint))
    during = receiver.received()[-1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(during.body, during.headers)
    Webhook(old).verify(during.body, during.headers)

    newer = service.endpoint_secret_rotate(
        endpoint=endpoint, now=timezone.now() - timedelta(seconds=86400 + 1)
    )  # a grace period that is over
    _attempt(_dispatch(endpoint))
    after = receiver.received()[-1]
    Webhook(newer).verify(after.body, after.headers)
    for stale in (new, old):
        with pytest.raises(WebhookVerificationError):
            Webhook(stale).verify(after.body, after.headers)


def test_secrets_are_standard_webhooks_secrets_of_32_random_bytes() -> None:
    secret = service.secret_generate()

    assert secret.startswith("whsec_") and secret != service.secret_generate()
    assert len(Webhook(secret)._whsecret) == 32


# --- endpoints: validation ---------------------------------------------------------------------


def test_endpoint_create_returns_the_secret_once_and_stores_clean_filters(tenant: Tenant, receiver: Receiver) -> None:
    endpoint, secret = service.endpoint_create(
        tenant=tenant,
        name=" pager ",
        url=receiver.url,
        severities=["critical", "critical"],
        matchers=[{"label": "cluster", "value": "eu"}],
        event_types=["alert.firing", "endpoint.disabled"],
        headers={"X-Team": "ops"},
    )

    assert endpoint.secret == secret and secret.startswith("whsec_")
    assert endpoint.name == "pager" and endpoint.severities == ["critical"]
    assert endpoint.matchers == [{"label": "cluster", "op": "=", "value": "eu"}]
    assert endpoint.enabled and endpoint.headers == {"X-Team": "ops"}


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"severities": ["urgent"]}, "severities", "invalid_choice"),
        ({"event_types": ["alert.exploded"]}, "event_types", "invalid_choice"),
        ({"matchers": [{"label": "a", "op": "=~", "value": "("}]}, "matchers[0].value", "invalid_regex"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers.Content-Type", "reserved"),
        ({"headers": {"webhook-signature": "v1,forged"}}, "headers.webhook-signature", "reserved"),
        ({"headers": {"User-Agent": "curl"}}, "headers.User-Agent", "reserved"),
        ({"headers": {"X-Evil": "a\r\nHost: elsewhere"}}, "headers.X-Evil", "invalid"),
        ({"headers": {"Bad Name": "x"}}, "headers.Bad Name", "invalid"),
        ({"name": ""}, "name", "invalid"),
    ],
)
def test_endpoint_create_refuses_bad_fields(
    tenant: Tenant, receiver: Receiver, fields: dict[str, Any], field: str, code: str
) -> None:
    arguments: dict[str, Any] = {"tenant": tenant, "name": "pager", "url": receiver.url} | fields

    with pytest.raises(Rejected) as refused:
        service.endpoint_create(**arguments)

    assert refused.value.code == "invalid"
    assert [(d["field"], d["code"]) for d in refused.value.details] == [(field, code)]
    assert not WebhookEndpoint.objects.exists()


def test_a_duplicate_name_is_refused_on_create_and_update(tenant: Tenant, receiver: Receiver) -> None:
    first, _ = service.endpoint_create(tenant=tenant, name="pager", url=receiver.url)
    second, _ = service.endpoint_create(tenant=tenant, name="chat", url=receiver.url)

    for attempt in (
        lambda: service.endpoint_create(tenant=tenant, name="pager", url=receiver.url),
        lambda: service.endpoint_update(endpoint=second, name="pager"),
    ):
        with pytest.raises(Rejected) as refused:
            attempt()
        assert (refused.value.code, refused.value.status_code) == ("duplicate_name", 409)
    assert service.endpoint_update(endpoint=first, name="pager") == first  # its own name is fine


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://intranet.example.test/",
    ],
)
def test_a_private_url_is_refused_at_save(
    settings: Any, monkeypatch: pytest.MonkeyPatch, tenant: Tenant, url: str
) -> None:
    settings.VIGIL_WEBHOOK_ALLOW_PRIVATE = False
    _resolving(monkeypatch, "intranet.example.test", "10.0.0.1")

    with pytest.raises(Rejected) as refused:
        service.endpoint_create(tenant=tenant, name="pager", url=url)

    assert refused.value.code == "unsafe_url"
    assert [(d["field"], d["code"]) for d in refused.value.details] == [("url", "private_address")]
    assert not WebhookEndpoint.objects.exists()


def test_a_name_that_now_resolves_to_a_private_address_is_not_sent_to(
    settings: Any, monkeypatch: pytest.MonkeyPatch, endpoint: WebhookEndpoint, receiver: Receiver
) -> None:
    # Saved while hooks.example.test was public; it now answers 127.0.0.1 (DNS rebinding).
    endpoint.url = f"http://hooks.example.test:{receiver.port}/hook"
    endpoint.save()
    settings.VIGIL_WEBHOOK_ALLOW_PRIVATE = False
    _resolving(monkeypatch, "hooks.example.test", "127.0.0.1")
    target = _dispatch(endpoint)

    assert _attempt(target) == "failed"

    assert target.status == Delivery.Status.FAILED and target.last_error.startswith("unsafe:")
    assert receiver.received() == []


def test_enabling_a_disabled_endpoint_clears_why_it_was_disabled(endpoint: WebhookEndpoint) -> None:
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=timezone.now())
    endpoint.refresh_from_db()
    service.endpoint_disable(endpoint=endpoint, reason="the receiver answered 410 Gone")

    service.endpoint_update(endpoint=endpoint, enabled=True)

    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.disabled_at is None
    assert endpoint.disabled_reason == "" and endpoint.failing_since is None


def test_disabling_by_hand_fails_the_pending_deliveries(endpoint: WebhookEndpoint) -> None:
    target = _dispatch(endpoint)

    service.endpoint_update(endpoint=endpoint, enabled=False)

    target.refresh_from_db()
    assert target.status == Delivery.Status.FAILED and "disabled by a user" in target.last_error
    assert len(mail.outbox) == 0


@pytest.mark.parametrize(
    ("filters", "event", "severity", "labels", "accepted"),
    [
        ({}, "alert.firing", "info", {}, True),
        ({"severities": ["critical"]}, "alert.firing", "warning", {}, False),
        ({"severities": ["critical"]}, "alert.firing", "critical", {}, True),
        ({"event_types": ["alert.resolved"]}, "alert.firing", "critical", {}, False),
        (
            {"matchers": [{"label": "cluster", "op": "=~", "value": "eu-.*"}]},
            "alert.firing",
            "info",
            {"cluster": "eu-1"},
            True,
        ),
        (
            {"matchers": [{"label": "cluster", "op": "=~", "value": "eu-.*"}]},
            "alert.firing",
            "info",
            {"cluster": "us"},
            False,
        ),
        ({"severities": ["critical"], "event_types": ["alert.firing"]}, "test", "info", {}, True),
        ({"severities": ["critical"]}, "endpoint.disabled", None, {}, True),
        ({"event_types": ["alert.firing"]}, "endpoint.disabled", None, {}, False),
        ({"enabled": False}, "test", "info", {}, False),
    ],
)
def test_endpoint_accepts_what_its_filters_select(
    filters: dict[str, Any], event: str, severity: str | None, labels: dict[str, str], accepted: bool
) -> None:
    endpoint = WebhookEndpointFactory.build(**filters)

    assert service.endpoint_accepts(endpoint, event=event, severity=severity, labels=labels) is accepted


# --- the sweeper and concurrent claims ---------------------------------------------------------


def test_the_sweeper_republishes_a_delivery_whose_message_was_lost(
    settings: Any, receiver: Receiver, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    settings.VIGIL_WEBHOOK_SWEEP_AFTER_SECONDS = 30
    lost = DeliveryFactory(endpoint__url=receiver.url, next_attempt_at=timezone.now() - timedelta(seconds=60))
    DeliveryFactory(endpoint__url=receiver.url, next_attempt_at=timezone.now() - timedelta(seconds=5))  # on its way
    DeliveryFactory(endpoint__url=receiver.url, next_attempt_at=timezone.now() + timedelta(seconds=60))

    with django_capture_on_commit_callbacks(execute=True):
        assert service.deliveries_sweep() == 1

    lost.refresh_from_db()
    assert lost.status == Delivery.Status.DELIVERED
    assert [r.headers["webhook-id"] for r in receiver.received()] == [lost.webhook_id]


def test_the_sweeper_reclaims_an_expired_lease_with_a_worker_lost_attempt(
    receiver: Receiver, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    now = timezone.now()
    stuck = DeliveryFactory(
        endpoint__url=receiver.url,
        status=Delivery.Status.SENDING,
        attempts=1,
        claimed_at=now - timedelta(seconds=40),
        claimed_until=now - timedelta(seconds=1),
    )
    in_flight = DeliveryFactory(
        endpoint__url=receiver.url,
        status=Delivery.Status.SENDING,
        attempts=1,
        claimed_until=now + timedelta(seconds=30),
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert service.deliveries_sweep() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert service.deliveries_sweep() == 0  # idempotent

    stuck.refresh_from_db()
    assert stuck.status == Delivery.Status.DELIVERED and stuck.attempts == 2
    lost, delivered = DeliveryAttempt.objects.filter(delivery=stuck)
    assert (lost.number, lost.outcome, lost.error) == (1, "retry", "no result: the worker was lost mid-attempt")
    assert lost.duration_ms >= 40_000
    assert (delivered.number, delivered.outcome) == (2, "delivered")
    in_flight.refresh_from_db()
    assert in_flight.status == Delivery.Status.SENDING


def test_a_lost_last_attempt_fails_the_delivery(django_capture_on_commit_callbacks: Any) -> None:
    stuck = DeliveryFactory(
        status=Delivery.Status.SENDING,
        attempts=len(SCHEDULE) + 1,
        claimed_until=timezone.now() - timedelta(seconds=1),
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert service.deliveries_sweep() == 0

    stuck.refresh_from_db()
    assert stuck.status == Delivery.Status.FAILED and _outcomes(stuck) == ["failed"]


@pytest.mark.django_db(transaction=True)
def test_a_result_arriving_after_its_lease_was_reclaimed_is_dropped(receiver: Receiver) -> None:
    target = DeliveryFactory(endpoint__url=receiver.url)
    receiver.answer(Answer(200, delay=10))
    outcomes: list[str | None] = []

    def work() -> None:
        try:
            outcomes.append(service.delivery_attempt(delivery_id=target.pk))
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    receiver.wait_for_requests(1)
    # The attempt is slower than its lease: the sweeper takes the delivery back meanwhile.
    later = timezone.now() + timedelta(seconds=5 + 20 + 1)
    assert service.deliveries_sweep(now=later) == 1
    receiver.release()
    worker.join()

    assert outcomes == [None]
    target.refresh_from_db()
    assert target.status == Delivery.Status.PENDING and target.attempts == 1
    assert _outcomes(target) == ["retry"]  # the sweeper's "worker lost" row only


@pytest.mark.django_db(transaction=True)
def test_two_workers_claiming_the_same_delivery_send_it_once(receiver: Receiver) -> None:
    target = DeliveryFactory(endpoint__url=receiver.url)
    receiver.answer(Answer(200, delay=0.2))
    outcomes: list[str | None] = []
    assert run_concurrently([lambda: outcomes.append(service.delivery_attempt(delivery_id=target.pk))] * 2) == []

    assert sorted(outcomes, key=str) == [None, "delivered"]  # one claimed it, the other found nothing due
    assert len(receiver.received()) == 1
    assert DeliveryAttempt.objects.filter(delivery=target).count() == 1
