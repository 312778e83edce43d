"""Celery wrappers around analytics services: ids in, re-fetch, one service call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import shared_task

from analytics import anomalies, retention, rollups, services
from analytics.models import IngestBatch, MetricSeries
from tenants.models import Tenant


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
    """Periodic: apply every tenant's raw, rollup and anomaly retention (analytics.retention): create
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
        "scores_deleted": report.scores_deleted,
        "anomalies_deleted": report.anomalies_deleted,
        "complete": report.complete,
    }


# Detection tasks, on the `detect` queue (CELERY_TASK_ROUTES). Every body is idempotent (state
# watermarks under row locks, joins into unique rows), so acks_late: a worker lost mid-task
# hands the message back. Transient database and broker errors (a deadlock or a serialisation
# failure is an OperationalError) are retried by VigilTask's defaults (config/celery_app.py).
# Nobody reads the results.


@shared_task(
    acks_late=True,
    ignore_result=True,
    soft_time_limit=240,
    time_limit=300,
)
def series_detect(series_ids: list[int]) -> int:
    """Streaming detection of `series_ids` (published after an ingest batch is claimed, and
    by the rescan). Series deleted since are skipped by the service."""
    return anomalies.series_detect(series_ids=series_ids)


@shared_task(
    acks_late=True,
    ignore_result=True,
    soft_time_limit=240,
    time_limit=300,
)
def series_rescore(ranges: list[list[Any]]) -> int:
    """Re-score late points: `ranges` are [series_id, start ISO 8601, end ISO 8601]."""
    return anomalies.series_rescore(ranges=[(int(sid), _aware(start), _aware(end)) for sid, start, end in ranges])


@shared_task(
    acks_late=True,
    ignore_result=True,
    retry_backoff_max=60,  # periodic: the next run is soon anyway
    max_retries=3,
    soft_time_limit=50,
    time_limit=60,
)
def anomalies_rescan() -> None:
    """Periodic (every minute): publish detection for series whose message was lost, and
    re-scores of late points behind revised rollups. Publishing only; limits below the period
    so runs do not pile up."""
    anomalies.anomalies_rescan()


@shared_task(
    acks_late=True,
    ignore_result=True,
    retry_backoff_max=60,  # periodic: the next run is soon anyway
    max_retries=3,
    soft_time_limit=120,
    time_limit=150,
)
def nodes_detect() -> None:
    """Periodic (every 5 minutes): publish `node_detect` for the active nodes, by tenant and shard."""
    anomalies.nodes_detect()


@shared_task(
    acks_late=True,
    ignore_result=True,
    soft_time_limit=240,
    time_limit=300,
)
def node_detect(tenant_id: int, nodes: list[list[str]]) -> int:
    """Multivariate detection of a tenant's nodes ([cluster, node] pairs); nothing if the
    tenant is gone."""
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is None:
        return 0
    return anomalies.node_detect(tenant=tenant, nodes=[(cluster, node) for cluster, node in nodes])


def _aware(iso: str) -> datetime:
    parsed = datetime.fromisoformat(iso)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
