"""Celery wrappers around alerting services: ids in, re-fetch, one service call.

Queues: evaluation and grouping on `alerts`, HTTP delivery on `webhooks` (CELERY_TASK_ROUTES),
so a slow receiver never delays evaluation. Every body is idempotent (rule state under a row
lock, conditional-update claims on groups and deliveries), so acks_late. Transient database and
broker errors are retried by VigilTask's defaults (config/celery_app.py). Nobody reads results.
"""

from __future__ import annotations

from celery import shared_task

from alerts import delivery, evaluation, notifications
from alerts.models import NotificationGroup
from tenants.models import Tenant


@shared_task(acks_late=True, ignore_result=True, retry_backoff_max=30, max_retries=3, soft_time_limit=25, time_limit=30)
def rules_evaluate() -> None:
    """Periodic: publish `tenant_rules_evaluate` for every tenant with an enabled rule."""
    evaluation.rules_evaluate_publish()


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=120, time_limit=150)
def tenant_rules_evaluate(tenant_id: int, kinds: list[str] | None = None) -> None:
    """Evaluate every enabled rule of a tenant (only `kinds`, when given); nothing if the tenant is gone."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is not None:
        evaluation.tenant_rules_evaluate(tenant=tenant, kinds=kinds)


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=60, time_limit=90)
def series_rules_evaluate(tenant_id: int, series_ids: list[int], kinds: list[str]) -> None:
    """Evaluate the tenant's rules of `kinds` for the series a pipeline stage just touched."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is not None:
        evaluation.tenant_rules_evaluate(tenant=tenant, series_ids=series_ids, kinds=kinds)


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=60, time_limit=90)
def group_flush(group_id: int) -> None:
    """Flush one notification group if it is due; nothing if it is gone or not due."""
    group = NotificationGroup.objects.filter(pk=group_id).first()
    if group is not None:
        notifications.group_flush(group_id=group.pk)


@shared_task(acks_late=True, ignore_result=True, retry_backoff_max=30, max_retries=3, soft_time_limit=25, time_limit=30)
def notifications_sweep() -> None:
    """Periodic: flush the notification groups that are due (lost or delayed flush messages)."""
    notifications.groups_flush_due()


@shared_task(acks_late=True, ignore_result=True, soft_time_limit=120, time_limit=150)
def delivery_attempt(delivery_id: int) -> None:
    """One HTTP attempt of one delivery, if it is still due (claimed by a conditional update)."""
    delivery.delivery_attempt(delivery_id=delivery_id)


@shared_task(acks_late=True, ignore_result=True, retry_backoff_max=30, max_retries=3, soft_time_limit=25, time_limit=30)
def deliveries_sweep() -> None:
    """Periodic: re-enqueue deliveries whose message was lost and reclaim expired attempt leases."""
    delivery.deliveries_sweep()
