"""Webhook delivery end to end: PostgreSQL -> Redis -> a real Celery worker process -> a real
HTTP receiver on loopback. Each test starts its own worker, with the settings it needs."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook

from alerts import delivery as service
from alerts.models import Delivery, DeliveryAttempt, WebhookEndpoint
from config.celery_app import app as celery_app
from tests.alerts.factories import NotificationFactory, WebhookEndpointFactory
from tests.alerts.receiver import Answer, Receiver
from tests.waiting import wait_for
from tests.worker import worker_start, worker_stop

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

FINISHED = (Delivery.Status.DELIVERED, Delivery.Status.FAILED)


@pytest.fixture(autouse=True)
def _webhooks_to_this_tests_worker() -> Iterator[None]:
    """Workers already running (the suite's shared one) stop consuming the webhooks queue
    during the test: they have other settings (retry schedule, lease) than the test's worker."""
    replies = celery_app.control.inspect(timeout=0.5).active_queues() or {}
    others = [name for name, queues in replies.items() if any(q["name"] == "webhooks" for q in queues)]
    if others:
        celery_app.control.cancel_consumer("webhooks", destination=others, reply=True, timeout=2)
    try:
        yield
    finally:
        if others:
            celery_app.control.add_consumer("webhooks", destination=others, reply=True, timeout=2)


def _dispatch(endpoint: WebhookEndpoint) -> Delivery:
    """As the notification flush does: in a transaction, so the attempt is published on commit."""
    with transaction.atomic():
        notification = NotificationFactory(tenant=endpoint.tenant)
        [created] = service.notification_dispatch(notification=notification, endpoints=[endpoint])
    return created


def _finished(target: Delivery, timeout: float) -> Delivery:
    return wait_for(
        lambda: Delivery.objects.filter(pk=target.pk, status__in=FINISHED).first(),
        timeout,
        f"delivery {target.pk} to be delivered or to fail",
    )


def test_a_receiver_down_then_failing_gets_the_delivery_exactly_once_on_the_schedule() -> None:
    schedule = [0.3, 0.6, 1.0, 1.0, 1.0, 1.0]
    receiver = Receiver(listening=False)  # connections refused
    worker = worker_start("delivery", VIGIL_WEBHOOK_RETRY_SCHEDULE=",".join(map(str, schedule)))
    try:
        endpoint = WebhookEndpointFactory(url=receiver.url)
        target = _dispatch(endpoint)
        wait_for(lambda: DeliveryAttempt.objects.filter(delivery=target).exists(), 20, "the first attempt")
        receiver.answer(500, 500, 200)
        receiver.listen()
        done = _finished(target, timeout=30)
    finally:
        worker_stop(worker)
        receiver.stop()

    assert done.status == Delivery.Status.DELIVERED
    requests = receiver.received()
    assert [r.answered for r in requests] == [500, 500, 200]  # one 2xx: delivered exactly once
    assert {r.headers["webhook-id"] for r in requests} == {target.webhook_id}
    Webhook(endpoint.secret).verify(requests[-1].body, requests[-1].headers)

    attempts = list(DeliveryAttempt.objects.filter(delivery=target).order_by("number"))
    assert [a.number for a in attempts] == list(range(1, done.attempts + 1))
    assert attempts[0].error.startswith("connect:")
    assert [a.status_code for a in attempts[-3:]] == [500, 500, 200]
    assert [a.outcome for a in attempts] == ["retry"] * (len(attempts) - 1) + ["delivered"]
    for step, (before, after) in enumerate(itertools.pairwise(attempts)):
        assert (after.started_at - before.started_at).total_seconds() >= 0.8 * schedule[step]
    assert Delivery.objects.filter(notification=target.notification).count() == 1


def test_a_worker_killed_mid_delivery_is_replaced_and_the_receiver_sees_one_webhook_id() -> None:
    # The lease (timeout + margin) is computed by the worker that claims, so both are short; it
    # runs out while the replacement starts. The timeout leaves the kill ample time to land first.
    short_lease = {"VIGIL_WEBHOOK_TIMEOUT": "4", "VIGIL_WEBHOOK_LEASE_MARGIN_SECONDS": "0.5"}
    receiver = Receiver()
    receiver.answer(Answer(200, delay=30))  # holds the first request; then 200 at once
    killed: subprocess.Popen[bytes] | None = worker_start("delivery-killed", **short_lease)
    replacement = None
    try:
        endpoint = WebhookEndpointFactory(url=receiver.url)
        target = _dispatch(endpoint)
        receiver.wait_for_requests(1, timeout=20)
        worker_stop(killed, kill=True)
        killed = None

        held = Delivery.objects.get(pk=target.pk)
        assert held.status == Delivery.Status.SENDING and held.claimed_until is not None
        replacement = worker_start("delivery-replacement", **short_lease)
        wait_for(lambda: timezone.now() > held.claimed_until, 10, "the killed worker's lease to expire")
        assert service.deliveries_sweep() == 1
        done = _finished(target, timeout=20)
    finally:
        for worker in (killed, replacement):
            if worker is not None:
                worker_stop(worker, kill=worker is killed)
        receiver.stop()

    assert done.status == Delivery.Status.DELIVERED
    requests = receiver.received()
    assert len(requests) <= 2  # at most one extra attempt
    assert {r.headers["webhook-id"] for r in requests} == {target.webhook_id}
    lost, delivered = DeliveryAttempt.objects.filter(delivery=target).order_by("number")
    assert (lost.outcome, lost.error) == ("retry", service.WORKER_LOST)
    assert (delivered.number, delivered.outcome, delivered.status_code) == (2, "delivered", 200)
    assert Delivery.objects.filter(notification=target.notification).count() == 1
