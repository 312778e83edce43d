"""Celery wrappers around analytics services: ids in, re-fetch, one service call."""

from __future__ import annotations

from celery import shared_task

from analytics import partitions, services
from analytics.models import IngestBatch


@shared_task(acks_late=True)
def ingest_batch_process(batch_id: str) -> None:
    """Pipeline entry for one accepted ingest batch. Idempotent (see the service), so acks_late."""
    batch = IngestBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        return
    services.ingest_batch_process(batch=batch)


@shared_task(acks_late=True)
def ingest_batches_sweep() -> int:
    """Periodic: re-publish ingest batches whose pipeline message was lost."""
    return services.ingest_batches_sweep()


@shared_task(acks_late=True)
def point_partitions_ensure() -> list[str]:
    """Periodic: create raw-point partitions ahead of time (PostgreSQL; a no-op elsewhere)."""
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    today = timezone.now().date()
    return partitions.partitions_ensure(
        today + timedelta(days=n) for n in range(settings.VIGIL_PARTITIONS_AHEAD_DAYS + 1)
    )
