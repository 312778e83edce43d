"""Retention: every tenant keeps raw points, and 1m, 5m and 1h rollups, for its own number of days
(`Tenant.retention_raw_days`, `retention_1m_days`, `retention_5m_days`, `retention_1h_days`).

The rules (tests/analytics/test_retention.py):

- A rollup bucket is deleted once all of it is older than its resolution's retention.
- A raw point is deleted once its whole UTC hour is older than the raw retention, and the rollups
  over it are complete: no ingest batch of its tenant that is not rolled up yet
  (`IngestBatch.rolled_up_at` NULL) starts in or before that hour. That batch's refresh reads
  every point of the hours it touches, and rollups outlive raw points and are never recomputed
  once the points are gone, so a bucket computed from part of its points would stay wrong for
  good. Whole hours for the same reason: the 1h bucket of a half-deleted hour could be
  recomputed by late data. So a stuck rollup stage holds that tenant's raw points back (logged).
- PostgreSQL: a day partition is dropped (DROP TABLE: no row-by-row delete, no bloat) once its
  whole day is before the raw cutoff of every tenant that has series (one without any has no
  points to keep). Partitions are shared by all tenants, so a tenant with a longer raw
  retention (or one whose rollups lag) keeps a day for everyone, and the other tenants'
  expired points in it are deleted in batches. Today's and future partitions are never
  dropped, and those of the next VIGIL_PARTITIONS_AHEAD_DAYS days are created.
- Other databases (SQLite): batched deletes for everything.
- Anomaly scores (`AnomalyScore`, one per series per minute) are kept as long as the 1m
  rollups they sit beside (`retention_1m_days`). Closed anomalies (`AnomalyResult`) are kept
  as long as the 1h rollups (`retention_1h_days`, by the end of their window): the incident
  history outlives the fine-grained data, as the coarse charts do. Open anomalies are never
  deleted.

Batched deletes remove at most `batch_size` rows per statement, one transaction each, so no
statement holds locks or bloats the WAL for long, and stop starting new ones when the time
budget is spent (the report says so; the next run continues where this one stopped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Exists, Min, OuterRef
from django.utils import timezone

from analytics import partitions
from analytics.models import AnomalyResult, AnomalyScore, IngestBatch, MetricSeries, Point, Rollup
from analytics.rollups import bucket_start, chunked
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Rows per DELETE statement (and transaction).
DELETE_BATCH = 50_000
# Series ids per statement on PostgreSQL (`series_id = ANY(%s)`, index probes on the primary key).
SERIES_CHUNK = 10_000
# Stop starting batches after this: well under the task's soft time limit (240 s).
TIME_BUDGET = timedelta(minutes=3)

_HOUR = 3600
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE: lock_timeout expired

_POINTS = Point._meta.db_table
_ROLLUPS = Rollup._meta.db_table
_SERIES = MetricSeries._meta.db_table
_BATCHES = IngestBatch._meta.db_table
_SCORES = AnomalyScore._meta.db_table
_ANOMALIES = AnomalyResult._meta.db_table


@dataclass(frozen=True)
class RawCutoff:
    """Where a tenant's raw points may be deleted: everything before `effective`."""

    retention: datetime  # now - retention_raw_days, floored to the UTC hour
    effective: datetime  # earlier, when batches not rolled up yet start before `retention`

    @property
    def held_back(self) -> bool:
        return self.effective < self.retention


@dataclass(frozen=True)
class TenantRetention:
    tenant_id: int
    raw_cutoff: RawCutoff
    points_deleted: int  # row by row; points in dropped partitions are not counted
    rollups_deleted: Mapping[int, int]  # resolution (seconds) -> rows
    scores_deleted: int = 0  # AnomalyScore rows
    anomalies_deleted: int = 0  # closed AnomalyResult rows


@dataclass(frozen=True)
class RetentionReport:
    now: datetime
    partitions_created: tuple[str, ...]
    partitions_dropped: tuple[str, ...]
    tenants: tuple[TenantRetention, ...]  # the tenants handled before the time budget ran out
    complete: bool  # False: the budget ran out, the next run continues

    @property
    def points_deleted(self) -> int:
        return sum(t.points_deleted for t in self.tenants)

    @property
    def rollups_deleted(self) -> int:
        return sum(sum(t.rollups_deleted.values()) for t in self.tenants)

    @property
    def scores_deleted(self) -> int:
        return sum(t.scores_deleted for t in self.tenants)

    @property
    def anomalies_deleted(self) -> int:
        return sum(t.anomalies_deleted for t in self.tenants)


def retention_enforce(
    *, now: datetime | None = None, batch_size: int = DELETE_BATCH, budget: timedelta = TIME_BUDGET
) -> RetentionReport:
    """Apply every tenant's retention as of `now` (default: the current time); see the module.

    Side effects, in order: creates the partitions of today and the next
    VIGIL_PARTITIONS_AHEAD_DAYS days; drops the day partitions before every tenant's raw cutoff
    (briefly locking ingest out, see `partitions.partitions_drop`; skipped for this run if the
    lock is not granted within 5 s); then, tenant by tenant, deletes expired raw points, rollup
    buckets, anomaly scores and closed anomalies in batches of `batch_size` rows, each in its own transaction, until
    `budget` is spent. Call it outside any transaction.

    Idempotent, and safe to overlap with itself and with ingest: every decision is re-read
    from data. A point ingested while this runs is never deleted before its rollups: the
    partition drop re-checks under a lock that excludes ingest, and each DELETE re-checks, in
    the same snapshot as the rows it deletes, that no batch of the tenant reaching into the
    deleted range is still to roll up.
    """
    now = now or timezone.now()
    deadline = time.monotonic() + budget.total_seconds()
    today = now.astimezone(UTC).date()
    created = partitions.partitions_ensure(
        today + timedelta(days=n) for n in range(settings.VIGIL_PARTITIONS_AHEAD_DAYS + 1)
    )
    dropped = _partitions_drop_expired(now=now, today=today)

    cutoffs = raw_cutoffs(now=now)
    days = sorted(partitions.partitions_existing())
    handled: list[TenantRetention] = []
    complete = True
    tenants = Tenant.objects.order_by("pk").values_list(
        "pk", "retention_1m_days", "retention_5m_days", "retention_1h_days"
    )
    for tenant_id, days_1m, days_5m, days_1h in tenants:
        if time.monotonic() > deadline:
            complete = False
            break
        cutoff = cutoffs.get(tenant_id)
        if cutoff is None:  # created since the cutoffs were read: nothing of it has expired
            continue
        if cutoff.held_back:
            # Late points at the edge of retention hold it back for minutes; more than an
            # hour means a batch is stuck before its rollup stage (and holds every tenant's
            # partitions too).
            stuck = cutoff.retention - cutoff.effective > timedelta(hours=1)
            logger.log(
                logging.WARNING if stuck else logging.INFO,
                "retention: tenant %s keeps raw points from %s (retention cutoff %s): batches not rolled up yet",
                tenant_id,
                cutoff.effective,
                cutoff.retention,
            )
        series_ids = list(MetricSeries.objects.filter(tenant_id=tenant_id).order_by("pk").values_list("pk", flat=True))
        points_deleted, done = _points_delete(
            tenant_id=tenant_id,
            series_ids=series_ids,
            cutoff=cutoff.effective,
            days=days,
            batch_size=batch_size,
            deadline=deadline,
        )
        rollups_deleted: dict[int, int] = {}
        for resolution, keep_days in ((60, days_1m), (300, days_5m), (3600, days_1h)):
            if not done:
                break
            rollups_deleted[resolution], done = _rollups_delete(
                tenant_id=tenant_id,
                series_ids=series_ids,
                resolution=resolution,
                cutoff=bucket_start(now - timedelta(days=keep_days), resolution),
                batch_size=batch_size,
                deadline=deadline,
            )
        scores_deleted = anomalies_deleted = 0
        if done:
            scores_deleted, done = _scores_delete(
                tenant_id=tenant_id,
                series_ids=series_ids,
                cutoff=bucket_start(now - timedelta(days=days_1m), 60),
                batch_size=batch_size,
                deadline=deadline,
            )
        if done:
            anomalies_deleted, done = _anomalies_delete(
                tenant_id=tenant_id, cutoff=now - timedelta(days=days_1h), batch_size=batch_size, deadline=deadline
            )
        handled.append(
            TenantRetention(tenant_id, cutoff, points_deleted, rollups_deleted, scores_deleted, anomalies_deleted)
        )
        if not done:
            complete = False
            break

    report = RetentionReport(now, tuple(created), tuple(dropped), tuple(handled), complete)
    logger.info(
        "retention as of %s: %d partitions created, %d dropped, %d points, %d rollups, %d anomaly scores "
        "and %d anomalies deleted%s",
        now,
        len(created),
        len(dropped),
        report.points_deleted,
        report.rollups_deleted,
        report.scores_deleted,
        report.anomalies_deleted,
        "" if complete else "; time budget spent, the next run continues",
    )
    return report


def raw_cutoffs(*, now: datetime) -> dict[int, RawCutoff]:
    """Every tenant's raw cutoff as of `now` (see the module): its retention floored to the
    UTC hour, pulled back to the hour of the oldest first point of its batches not rolled up."""
    unrolled: dict[int, datetime] = dict(
        IngestBatch.objects.filter(rolled_up_at__isnull=True)
        .order_by()
        .values("tenant_id")
        .annotate(oldest=Min("first_ts"))
        .values_list("tenant_id", "oldest")
    )
    cutoffs = {}
    for tenant_id, keep_days in Tenant.objects.values_list("pk", "retention_raw_days"):
        retention = bucket_start(now - timedelta(days=keep_days), _HOUR)
        oldest = unrolled.get(tenant_id)
        effective = min(retention, bucket_start(oldest, _HOUR)) if oldest is not None else retention
        cutoffs[tenant_id] = RawCutoff(retention=retention, effective=effective)
    return cutoffs


# --- Partitions (PostgreSQL) --------------------------------------------------------------


def _partitions_drop_expired(*, now: datetime, today: date) -> list[str]:
    """Drop the day partitions before every tenant's raw cutoff; [] if the lock was not granted."""

    def droppable(days: list[date]) -> list[date]:
        # Re-read each time: under the lock it must see what committed meanwhile.
        horizon = _drop_horizon(now=now, today=today)
        return [day for day in days if horizon is not None and _day_start(day + timedelta(days=1)) <= horizon]

    candidates = droppable(sorted(partitions.partitions_existing()))
    if not candidates:
        return []
    try:
        return partitions.partitions_drop(candidates, still_droppable=droppable)
    except OperationalError as exc:
        if getattr(exc.__cause__, "pgcode", None) != _LOCK_NOT_AVAILABLE:
            raise
        logger.warning("retention: point table busy, no partition dropped this run (%s)", exc)
        return []


def _drop_horizon(*, now: datetime, today: date) -> datetime | None:
    """Day partitions ending at or before this hold no point any tenant keeps: the earliest raw
    cutoff of the tenants that have series (one without any has no points, so it keeps no
    day), and never later than the start of today. None when no tenant has a series."""
    cutoffs = raw_cutoffs(now=now)
    has_series = Exists(MetricSeries.objects.filter(tenant=OuterRef("pk")))
    writers = Tenant.objects.filter(has_series).values_list("pk", flat=True)
    effective = [cutoffs[tenant_id].effective for tenant_id in writers if tenant_id in cutoffs]
    return min(*effective, _day_start(today)) if effective else None


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# --- Batched deletes ----------------------------------------------------------------------


def _points_delete(
    *, tenant_id: int, series_ids: list[int], cutoff: datetime, days: list[date], batch_size: int, deadline: float
) -> tuple[int, bool]:
    """Delete the tenant's points before `cutoff`; returns (rows, finished before the deadline).

    Every statement re-checks that no batch of the tenant starting before the upper end of the
    range it deletes from is still to roll up (one that committed after the cutoffs were read);
    if one is, the statement deletes nothing and leaves that range to the next run.
    """
    if not series_ids:
        return 0, True
    unrolled = f"NOT EXISTS (SELECT 1 FROM {_BATCHES} WHERE tenant_id = %s AND rolled_up_at IS NULL AND first_ts < %s)"
    total = 0
    if connection.vendor == "postgresql":
        # One day partition per statement: the ts bounds prune the plan to it, and its ctids
        # identify rows (they are only unique within one partition).
        for day in days:
            start, end = _day_start(day), min(_day_start(day + timedelta(days=1)), cutoff)
            if start >= cutoff:
                break
            for chunk in chunked(series_ids, SERIES_CHUNK):
                where = f"series_id = ANY(%s) AND ts >= %s AND ts < %s AND {unrolled}"
                deleted, done = _delete_batched(
                    _POINTS, "series_id, ts", where, [chunk, start, end, tenant_id, end], batch_size, deadline
                )
                total += deleted
                if not done:
                    return total, False
        return total, True
    where = f"series_id IN (SELECT id FROM {_SERIES} WHERE tenant_id = %s) AND ts < %s AND {unrolled}"
    at = connection.ops.adapt_datetimefield_value(cutoff)
    return _delete_batched(_POINTS, "series_id, ts", where, [tenant_id, at, tenant_id, at], batch_size, deadline)


def _rollups_delete(
    *, tenant_id: int, series_ids: list[int], resolution: int, cutoff: datetime, batch_size: int, deadline: float
) -> tuple[int, bool]:
    """Delete the tenant's buckets at `resolution` starting before `cutoff` (a bucket start)."""
    if not series_ids:
        return 0, True
    key = "series_id, resolution, bucket"
    if connection.vendor == "postgresql":
        total = 0
        for chunk in chunked(series_ids, SERIES_CHUNK):
            where = "series_id = ANY(%s) AND resolution = %s AND bucket < %s"
            deleted, done = _delete_batched(_ROLLUPS, key, where, [chunk, resolution, cutoff], batch_size, deadline)
            total += deleted
            if not done:
                return total, False
        return total, True
    where = f"series_id IN (SELECT id FROM {_SERIES} WHERE tenant_id = %s) AND resolution = %s AND bucket < %s"
    at = connection.ops.adapt_datetimefield_value(cutoff)
    return _delete_batched(_ROLLUPS, key, where, [tenant_id, resolution, at], batch_size, deadline)


def _scores_delete(
    *, tenant_id: int, series_ids: list[int], cutoff: datetime, batch_size: int, deadline: float
) -> tuple[int, bool]:
    """Delete the tenant's anomaly scores of minutes starting before `cutoff`."""
    if not series_ids:
        return 0, True
    if connection.vendor == "postgresql":
        total = 0
        for chunk in chunked(series_ids, SERIES_CHUNK):
            where = "series_id = ANY(%s) AND bucket < %s"
            deleted, done = _delete_batched(_SCORES, "series_id, bucket", where, [chunk, cutoff], batch_size, deadline)
            total += deleted
            if not done:
                return total, False
        return total, True
    where = f"series_id IN (SELECT id FROM {_SERIES} WHERE tenant_id = %s) AND bucket < %s"
    at = connection.ops.adapt_datetimefield_value(cutoff)
    return _delete_batched(_SCORES, "series_id, bucket", where, [tenant_id, at], batch_size, deadline)


def _anomalies_delete(*, tenant_id: int, cutoff: datetime, batch_size: int, deadline: float) -> tuple[int, bool]:
    """Delete the tenant's closed anomalies whose window ended before `cutoff`."""
    where = "tenant_id = %s AND status = %s AND window_end < %s"
    at = connection.ops.adapt_datetimefield_value(cutoff) if connection.vendor != "postgresql" else cutoff
    params = [tenant_id, AnomalyResult.Status.CLOSED.value, at]
    return _delete_batched(_ANOMALIES, "id", where, params, batch_size, deadline)


def _delete_batched(
    table: str, key: str, where: str, params: list[Any], batch_size: int, deadline: float
) -> tuple[int, bool]:
    """DELETE rows of `table` matching `where`, `batch_size` per statement and transaction,
    until a statement deletes fewer (returns (rows, True)) or the deadline passed ((rows, False))."""
    if connection.vendor == "postgresql":
        # By ctid: a TID scan, no second probe of the primary key per row. A row updated
        # meanwhile (a re-sent point) has a new ctid and is left for the next run. The outer
        # `where` repeats the bounds so that the plan is pruned to the same partition.
        sql = (
            f"DELETE FROM {table} WHERE {where} AND ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {where} LIMIT %s))"
        )
        args = [*params, *params, batch_size]
    else:
        sql = f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {where} LIMIT %s)"
        args = [*params, batch_size]
    total = 0
    while True:
        if time.monotonic() > deadline:
            return total, False
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, args)
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch_size:
            return total, True
