"""Celery wrappers around analytics services: ids in, re-fetch, one service call."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import shared_task

from analytics import retention, rollups, services
from analytics.models import IngestBatch, MetricSeries


@shared_task(acks_late=True)
def ingest_batch_process(batch_id: str) -> None:
    """Pipeline entry for one accepted ingest batch. Idempotent (see the service), so acks_late."""
    batch = IngestBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        return
    services.ingest_batch_process(batch=batch)


@shared_task(acks_late=True)
def ingest_batch_roll_up(batch_id: str) -> None:
    """Rollup stage for one processed ingest batch. Idempotent (see the service), so acks_late."""
    batch = IngestBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        return
    services.ingest_batch_roll_up(batch=batch)


@shared_task(acks_late=True)
def ingest_batches_sweep() -> int:
    """Periodic: re-publish ingest batches whose pipeline message was lost."""
    return services.ingest_batches_sweep()


@shared_task(acks_late=True)
def rollups_refresh(series_ids: list[int], start_iso: str, end_iso: str) -> int:
    """Recompute the rollups of `series_ids` over [start, end] (ISO 8601; naive means UTC).

    Idempotent (recomputed from raw points, rows rewritten only when a value differs), so
    acks_late. Series deleted since the message was sent are dropped; none left, nothing done.
    """
    existing = list(MetricSeries.objects.filter(pk__in=series_ids).values_list("pk", flat=True))
    if not existing:
        return 0
    return rollups.rollups_refresh(series_ids=existing, start=_aware(start_iso), end=_aware(end_iso))


@shared_task(acks_late=True)
def rollups_catch_up() -> int:
    """Periodic: enqueue refreshes, in shards, for series whose newest points have no rollup
    (a lost refresh message). Enqueues duplicates at worst, which the refresh absorbs."""
    return rollups.rollups_catch_up()


@shared_task(acks_late=True)
def retention_enforce() -> dict[str, object]:
    """Periodic: apply every tenant's raw and rollup retention (analytics.retention): create
    partitions ahead, drop expired ones, delete the rest in batches within a time budget.

    Idempotent (every decision is re-read from data; what is gone stays gone), so acks_late;
    a run cut short by its budget or a redelivery just leaves work for the next one.
    """
    report = retention.retention_enforce()
    return {
        "partitions_created": list(report.partitions_created),
        "partitions_dropped": list(report.partitions_dropped),
        "points_deleted": report.points_deleted,
        "rollups_deleted": report.rollups_deleted,
        "complete": report.complete,
    }


def _aware(iso: str) -> datetime:
    parsed = datetime.fromisoformat(iso)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
