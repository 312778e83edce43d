"""Writes for metric series, points and ingest batches."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, OuterRef, Subquery
from django.utils import timezone as dj_timezone

from analytics import partitions
from analytics.ingest import ParsedBatch, PointError, parse_points
from analytics.models import IngestBatch, MetricSeries, Point, series_identity
from config.errors import Rejected
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    batch_id: UUID | None
    accepted: int
    series_created: int


def points_ingest(*, tenant: Tenant, points: Any) -> IngestResult:
    """Store a batch of points atomically: all of them, or none and a `Rejected` listing every bad one.

    Creates unknown series (within the tenant's `max_series`), upserts points keyed by
    (series, timestamp) so a re-sent point never duplicates (the value received last wins,
    within a batch and across batches), records an IngestBatch and, after commit, hands the
    batch id to the pipeline task. If publishing fails the batch stays pending and the
    sweeper re-publishes it.
    """
    if type(points) is not list:
        raise Rejected("invalid_body", "The body must be an object with a 'points' array.")
    if len(points) > tenant.max_points_per_request:
        raise Rejected(
            "too_many_points",
            f"{len(points)} points exceed this tenant's limit of {tenant.max_points_per_request} per request.",
            status_code=413,
        )
    if not points:
        return IngestResult(batch_id=None, accepted=0, series_created=0)

    now = dj_timezone.now().timestamp()
    batch = parse_points(
        points,
        min_ts=now - tenant.retention_raw_days * 86400,
        max_ts=now + settings.VIGIL_INGEST_MAX_FUTURE_SECONDS,
    )
    if batch.errors:
        _reject(batch.errors, len(points))

    first_ts = min(row[1] for row in batch.rows)
    last_ts = max(row[1] for row in batch.rows)
    partitions.partitions_ensure(partitions.days_between(first_ts, last_ts))

    with transaction.atomic():
        series_ids, created = _series_resolve(tenant=tenant, batch=batch)
        _points_write(batch, series_ids)
        ingest_batch = IngestBatch.objects.create(
            tenant=tenant,
            points=len(batch.rows),
            series_ids=sorted(set(series_ids)),
            first_ts=datetime.fromtimestamp(first_ts, tz=timezone.utc),
            last_ts=datetime.fromtimestamp(last_ts, tz=timezone.utc),
        )
        transaction.on_commit(lambda: ingest_batch_publish(batch_id=ingest_batch.id))
    return IngestResult(batch_id=ingest_batch.id, accepted=len(batch.rows), series_created=created)


def _reject(errors: list[PointError], total: int) -> None:
    bad_points = len({e.index for e in errors})
    raise Rejected(
        "invalid_points",
        f"{bad_points} of {total} points are invalid; nothing was written.",
        [e.as_dict() for e in errors],
    )


def _series_resolve(*, tenant: Tenant, batch: ParsedBatch) -> tuple[list[int], int]:
    """Ids of the batch's series (by key index), creating the missing ones within quota."""
    identities = [series_identity(c, n, m, dict(labels)) for c, n, m, labels in batch.keys]
    found = dict(MetricSeries.objects.filter(tenant=tenant, identity__in=identities).values_list("identity", "id"))
    created = 0
    if len(found) < len(identities):
        # Serialise series creation per tenant so the quota holds under concurrent requests.
        Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
        found = dict(MetricSeries.objects.filter(tenant=tenant, identity__in=identities).values_list("identity", "id"))
        missing = [k for k, identity in enumerate(identities) if identity not in found]
        if missing:
            room = tenant.max_series - MetricSeries.objects.filter(tenant=tenant).count()
            if len(missing) > room:
                over = missing[max(room, 0) :]
                message = f"the tenant's limit of {tenant.max_series} series would be exceeded"
                errors = [
                    PointError(i, None, "series_quota_exceeded", message) for k in over for i in batch.key_points[k]
                ]
                _reject(sorted(errors, key=lambda e: e.index), sum(len(p) for p in batch.key_points))
            MetricSeries.objects.bulk_create(
                [
                    MetricSeries(
                        tenant=tenant,
                        cluster=batch.keys[k][0],
                        node=batch.keys[k][1],
                        metric=batch.keys[k][2],
                        labels=dict(batch.keys[k][3]),
                        unit=batch.units[k],
                        identity=identities[k],
                    )
                    for k in missing
                ],
                ignore_conflicts=True,
            )
            created = len(missing)
            found = dict(
                MetricSeries.objects.filter(tenant=tenant, identity__in=identities).values_list("identity", "id")
            )
    return [found[identity] for identity in identities], created


def _points_write(batch: ParsedBatch, series_ids: list[int]) -> None:
    # Later points of the same (series, timestamp) in one batch replace earlier ones.
    latest = {(series_ids[k], ts): value for k, ts, value in batch.rows}
    if connection.vendor == "postgresql":
        _points_copy(latest)
    else:
        _points_upsert(latest)


def _points_copy(latest: dict[tuple[int, float], float]) -> None:
    """COPY into a per-connection staging table, then one set-based upsert.

    COPY is the fastest way into PostgreSQL; the staging table lets ON CONFLICT apply the
    'later value wins' rule, which COPY into the partitioned table itself could not.
    """
    buffer = io.StringIO()
    buffer.writelines(f"{sid}\t{ts!r}\t{value!r}\n" for (sid, ts), value in latest.items())
    buffer.seek(0)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS ingest_staging "
            "(series_id bigint, ts double precision, value double precision) ON COMMIT DELETE ROWS"
        )
        cursor.cursor.copy_expert("COPY ingest_staging (series_id, ts, value) FROM STDIN", buffer)
        cursor.execute(
            f"INSERT INTO {Point._meta.db_table} (series_id, ts, value) "
            "SELECT series_id, to_timestamp(ts), value FROM ingest_staging "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value "
            f"WHERE {Point._meta.db_table}.value IS DISTINCT FROM EXCLUDED.value"
        )


def _points_upsert(latest: dict[tuple[int, float], float]) -> None:
    """Portable path (SQLite): one multi-row upsert statement per chunk."""
    adapt = connection.ops.adapt_datetimefield_value
    rows = [
        (sid, adapt(datetime.fromtimestamp(ts, tz=timezone.utc)), value) for (sid, ts), value in latest.items()
    ]
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {Point._meta.db_table} (series_id, ts, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value",
            rows,
        )


def ingest_batch_publish(*, batch_id: UUID) -> None:
    """Hand a committed batch to the pipeline. Never raises: a lost publish is swept later."""
    from analytics.tasks import ingest_batch_process

    try:
        ingest_batch_process.delay(str(batch_id))
    except Exception:  # the broker is down or unreachable; the batch stays pending
        logger.warning("could not publish ingest batch %s; the sweeper will retry", batch_id, exc_info=True)


def ingest_batch_process(*, batch: IngestBatch) -> bool:
    """Run the pipeline for one ingest batch; returns False when it was already processed.

    Today: refreshes `last_point_at` of the touched series from the stored points (so it is
    correct whatever order batches arrive in). Rollups, detection and alert evaluation hang
    here. Idempotent: recomputed from data, and the PENDING -> PROCESSED claim is a
    conditional update, so a redelivered message does nothing.
    """
    if batch.status == IngestBatch.Status.PROCESSED:
        return False
    with transaction.atomic():
        newest = Point.objects.filter(series=OuterRef("pk")).order_by().values("series").annotate(m=Max("ts")).values("m")
        MetricSeries.objects.filter(pk__in=batch.series_ids).update(last_point_at=Subquery(newest))
        claimed = IngestBatch.objects.filter(pk=batch.pk, status=IngestBatch.Status.PENDING).update(
            status=IngestBatch.Status.PROCESSED, processed_at=dj_timezone.now()
        )
    return bool(claimed)


def ingest_batches_sweep(*, older_than: timedelta | None = None, limit: int = 1000) -> int:
    """Re-publish batches still pending after `older_than` (a lost message, a killed worker).

    Returns how many were re-published. Safe to overlap with a slow first delivery: the
    processing is idempotent.
    """
    older_than = older_than or timedelta(seconds=settings.VIGIL_INGEST_SWEEP_AFTER_SECONDS)
    cutoff = dj_timezone.now() - older_than
    stale = list(
        IngestBatch.objects.filter(status=IngestBatch.Status.PENDING, received_at__lt=cutoff)
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )
    if not stale:
        return 0
    IngestBatch.objects.filter(pk__in=stale).update(attempts=F("attempts") + 1)
    for batch_id in stale:
        ingest_batch_publish(batch_id=batch_id)
    return len(stale)
