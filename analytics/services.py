"""Writes for metric series, points and ingest batches."""

from __future__ import annotations

import functools
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Max, OuterRef, Subquery
from django.utils import timezone as dj_timezone

from alerts.evaluation import KINDS_AFTER_INGEST, KINDS_AFTER_ROLLUP, series_rules_evaluate_publish
from analytics import anomalies, partitions, rollups
from analytics.ingest import ParsedBatch, PointError, SeriesKey, decode_points, parse_points
from analytics.models import IngestBatch, MetricSeries, Point, Rollup, series_identity
from config.errors import Rejected
from tenants.models import Tenant

logger = logging.getLogger(__name__)

UNIQUE_VIOLATION = "23505"  # SQLSTATE


@dataclass(frozen=True)
class IngestResult:
    batch_id: UUID | None
    accepted: int
    series_created: int


def points_ingest(*, tenant: Tenant, points: Any) -> IngestResult:
    """Store a batch of already-decoded points atomically: all of them, or none and a
    `Rejected` listing every bad one by index and reason.

    Creates unknown series (within the tenant's `max_series`), writes points keyed by
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
    min_ts, max_ts = _window(tenant)
    batch = parse_points(points, min_ts=min_ts, max_ts=max_ts)
    if batch.errors:
        _reject(batch.errors, len(points))
    return _store(tenant=tenant, batch=batch)


def points_ingest_json(*, tenant: Tenant, body: bytes) -> IngestResult:
    """`points_ingest` for a raw JSON body `{"points": [...]}`, as the API receives it.

    Well-formed batches take the fast decoder; anything it declines is decoded with the
    standard library (which reads NaN and Infinity, so they are refused per point) and goes
    through the exact validator, so the client gets the full error report either way.
    """
    min_ts, max_ts = _window(tenant)
    batch = decode_points(body, min_ts=min_ts, max_ts=max_ts, max_points=tenant.max_points_per_request)
    if batch is not None:
        return _store(tenant=tenant, batch=batch)
    try:
        decoded = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise Rejected("parse_error", f"The body is not valid JSON: {exc}") from None
    if type(decoded) is not dict or "points" not in decoded:
        raise Rejected("invalid_body", "The body must be an object with a 'points' array.")
    return points_ingest(tenant=tenant, points=decoded["points"])


def _window(tenant: Tenant) -> tuple[float, float]:
    """Accepted timestamps, unix seconds: [now - raw retention, now + allowed clock skew]."""
    now = dj_timezone.now().timestamp()
    return now - tenant.retention_raw_days * 86400, now + settings.VIGIL_INGEST_MAX_FUTURE_SECONDS


def _store(*, tenant: Tenant, batch: ParsedBatch) -> IngestResult:
    if not batch.ts:
        return IngestResult(batch_id=None, accepted=0, series_created=0)
    # The batch as columns, built once for the checks and the write below.
    ts = np.asarray(batch.ts, dtype=np.float64)
    values = np.asarray(batch.values, dtype=np.float64)
    first_ts, last_ts = float(ts.min()), float(ts.max())
    partitions.partitions_ensure(partitions.days_between(first_ts, last_ts))
    with transaction.atomic():
        series_ids, created = _series_resolve(tenant=tenant, batch=batch)
        point_series = np.asarray(series_ids, dtype=np.int64)[np.asarray(batch.key_of, dtype=np.intp)]
        _refuse_too_late(point_series, ts)
        _points_write(point_series, ts, values)
        ingest_batch = IngestBatch.objects.create(
            tenant=tenant,
            points=len(batch.ts),
            series_ids=sorted(set(series_ids)),
            first_ts=datetime.fromtimestamp(first_ts, tz=UTC),
            last_ts=datetime.fromtimestamp(last_ts, tz=UTC),
        )
        transaction.on_commit(lambda: ingest_batch_publish(batch_id=ingest_batch.id))
    return IngestResult(batch_id=ingest_batch.id, accepted=len(batch.ts), series_created=created)


def _reject(errors: list[PointError], total: int) -> None:
    bad_points = len({e.index for e in errors})
    raise Rejected(
        "invalid_points",
        f"{bad_points} of {total} points are invalid; nothing was written.",
        [e.as_dict() for e in errors],
    )


def _refuse_too_late(point_series: np.ndarray, ts: np.ndarray) -> None:
    """Refuse points older than the lateness window whose hour is already rolled up.

    Within the window a late point revises its buckets (rollups are refreshed from raw
    points). Beyond it, like samples outside Prometheus' out-of-order window, it is refused:
    storing it without re-aggregating would leave rollups that disagree with the raw data.
    A point for an hour with no rollup yet (a backfill) is accepted whatever its age.
    Vectorised, with one query: a backfill of 10,000 old points is the common late case.
    """
    window = settings.VIGIL_ROLLUP_LATENESS_SECONDS
    late = np.flatnonzero(ts < dj_timezone.now().timestamp() - window)
    if not late.size:
        return
    sids = point_series[late]
    hours = (ts[late] // 3600).astype(np.int64) * 3600
    rolled_up = _hours_rolled_up(np.unique(sids).tolist(), int(hours.min()), int(hours.max()))
    if not rolled_up:  # the common case: a backfill, or late points of hours still open
        return
    message = f"this hour is already rolled up and the point is older than the {window} s lateness window"
    errors = [
        PointError(i, "timestamp", "too_late", message)
        for i, sid, hour in zip(late.tolist(), sids.tolist(), hours.tolist(), strict=True)
        if (sid, hour) in rolled_up
    ]
    if errors:
        _reject(errors, len(ts))


def _hours_rolled_up(series_ids: list[int], first_hour: int, last_hour: int) -> set[tuple[int, int]]:
    """(series id, hour as unix seconds) of the hourly rollups among `series_ids` in the range."""
    start, end = datetime.fromtimestamp(first_hour, tz=UTC), datetime.fromtimestamp(last_hour, tz=UTC)
    if connection.vendor == "postgresql":  # one array parameter, as in _series_ids
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT series_id, extract(epoch FROM bucket)::bigint FROM {Rollup._meta.db_table} "
                "WHERE series_id = ANY(%s) AND resolution = %s AND bucket BETWEEN %s AND %s",
                [series_ids, Rollup.Resolution.HOUR, start, end],
            )
            return {(sid, hour) for sid, hour in cursor.fetchall()}
    rows = Rollup.objects.filter(
        series_id__in=series_ids, resolution=Rollup.Resolution.HOUR, bucket__range=(start, end)
    ).values_list("series_id", "bucket")
    return {(sid, int(bucket.timestamp())) for sid, bucket in rows}


def _series_resolve(*, tenant: Tenant, batch: ParsedBatch) -> tuple[list[int], int]:
    """Ids of the batch's series (by key index), creating the missing ones within quota."""
    identities = [_identity(key) for key in batch.keys]
    found = _series_ids(tenant, identities)
    created = 0
    if len(found) < len(identities):
        # Serialise series creation per tenant so the quota holds under concurrent requests.
        # NO KEY UPDATE, not UPDATE: a concurrent request inserting its IngestBatch takes
        # KEY SHARE on this row (the foreign key) while holding point rows this one may
        # need; FOR UPDATE would deadlock the two (tests/analytics/test_ingest_concurrency.py).
        Tenant.objects.select_for_update(no_key=True).filter(pk=tenant.pk).first()
        found = _series_ids(tenant, identities)
        missing = [k for k, identity in enumerate(identities) if identity not in found]
        if missing:
            room = tenant.max_series - MetricSeries.objects.filter(tenant=tenant).count()
            if len(missing) > room:
                over = missing[max(room, 0) :]
                message = f"the tenant's limit of {tenant.max_series} series would be exceeded"
                errors = [PointError(i, None, "series_quota_exceeded", message) for i in batch.points_of(set(over))]
                _reject(errors, len(batch.ts))
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
            found = _series_ids(tenant, identities)
    return [found[identity] for identity in identities], created


def _series_ids(tenant: Tenant, identities: list[str]) -> dict[str, int]:
    """identity -> id of the tenant's series among `identities`."""
    if connection.vendor == "postgresql":
        # One array parameter instead of 1,000 IN-list parameters, each of which the ORM
        # would prepare in Python (~3 ms a batch).
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT identity, id FROM {MetricSeries._meta.db_table} WHERE tenant_id = %s AND identity = ANY(%s)",
                [tenant.pk, identities],
            )
            return dict(cursor.fetchall())
    return dict(MetricSeries.objects.filter(tenant=tenant, identity__in=identities).values_list("identity", "id"))


@functools.lru_cache(maxsize=20_000)
def _identity(key: SeriesKey) -> str:
    """`series_identity` of a parsed key, memoised: clients re-send the same addresses in every
    batch, and hashing 1,000 of them costs ~4 ms a request. Bounded, so a few MB at most."""
    cluster, node, metric, labels = key
    return series_identity(cluster, node, metric, dict(labels))


def _points_write(point_series: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
    """Write the points (series id, unix seconds, value per point, in request order)."""
    if connection.vendor == "postgresql":
        _points_copy(_copy_binary(point_series, ts, values))
    else:
        # Later points of the same (series, timestamp) in one batch replace earlier ones.
        keys = zip(point_series.tolist(), ts.tolist(), strict=True)
        _points_upsert(dict(zip(keys, values.tolist(), strict=True)))


# PostgreSQL's binary COPY format: a header, one record per row, a trailer. A row of
# analytics_point is 3 fields of 8 bytes each: bigint series_id, timestamptz ts as
# microseconds since 2000-01-01 UTC, float8 value, each preceded by its length. As a numpy
# record type, a whole batch encodes in one vectorised step.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_COPY_TRAILER = b"\xff\xff"
_COPY_ROW = np.dtype(
    [("n", ">i2"), ("l1", ">i4"), ("sid", ">i8"), ("l2", ">i4"), ("us", ">i8"), ("l3", ">i4"), ("value", ">f8")]
)
_PG_EPOCH = 946_684_800.0  # 2000-01-01 in unix seconds


def _copy_binary(sid: np.ndarray, ts: np.ndarray, values: np.ndarray) -> bytes:
    """The batch as binary COPY data: deduplicated (the last point of a (series, ts) wins) and
    ordered by (series_id, ts).

    Timestamps become microseconds exactly as PostgreSQL's to_timestamp() does
    (rint((s - epoch) * 1e6), half to even), so two timestamps that PostgreSQL would store
    as one are one row here too. The order is the primary key's: index inserts walk the
    B-tree forwards, and concurrent batches take row locks in the same order, so they
    cannot deadlock on each other.
    """
    us = np.rint((ts - _PG_EPOCH) * 1e6).astype(np.int64)
    order = np.lexsort((np.arange(len(us)), us, sid))  # by series, time, then request position
    sid, us, values = sid[order], us[order], values[order]
    last = np.ones(len(us), dtype=bool)  # keep the last of each run of equal (series, time)
    last[:-1] = (sid[1:] != sid[:-1]) | (us[1:] != us[:-1])
    rows = np.empty(int(last.sum()), dtype=_COPY_ROW)
    rows["n"], rows["l1"], rows["l2"], rows["l3"] = 3, 8, 8, 8
    rows["sid"], rows["us"], rows["value"] = sid[last], us[last], values[last]
    return b"".join([_COPY_HEADER, rows.tobytes(), _COPY_TRAILER])


def _points_copy(data: bytes) -> None:
    """COPY the points straight into the point table; when some already exist, upsert instead.

    Most batches are new points, and a plain binary COPY into the partitioned table is the
    fastest way into PostgreSQL (the upsert through a staging table costs about three times
    as much in the database). Only a batch that re-sends a stored point (a retry, an
    overlapping backfill) hits the primary key: the COPY is rolled back to its savepoint
    and the batch goes through the staging table, where ON CONFLICT applies 'the later value
    wins'. Such a batch pays for the wasted COPY, usually short: rows are in key order, so
    a re-sent batch fails at its first row.
    """
    try:
        with transaction.atomic(), connection.cursor() as cursor, connection.wrap_database_errors:
            cursor.cursor.copy_expert(
                f"COPY {Point._meta.db_table} (series_id, ts, value) FROM STDIN BINARY", io.BytesIO(data)
            )
        return
    except IntegrityError as exc:
        if getattr(exc.__cause__, "pgcode", None) != UNIQUE_VIOLATION:
            raise
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE IF NOT EXISTS ingest_staging_points "
            "(series_id bigint, ts timestamptz, value double precision) ON COMMIT DELETE ROWS"
        )
        cursor.cursor.copy_expert(
            "COPY ingest_staging_points (series_id, ts, value) FROM STDIN BINARY", io.BytesIO(data)
        )
        cursor.execute(
            f"INSERT INTO {Point._meta.db_table} (series_id, ts, value) "
            "SELECT series_id, ts, value FROM ingest_staging_points ORDER BY series_id, ts "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value "
            f"WHERE {Point._meta.db_table}.value IS DISTINCT FROM EXCLUDED.value"
        )
        # ON COMMIT DELETE ROWS only empties it at commit; a second ingest in the same
        # transaction must not see this batch's rows again.
        cursor.execute("TRUNCATE ingest_staging_points")


def _points_upsert(latest: dict[tuple[int, float], float]) -> None:
    """Portable path (SQLite): one multi-row upsert statement per chunk."""
    adapt = connection.ops.adapt_datetimefield_value
    rows = [(sid, adapt(datetime.fromtimestamp(ts, tz=UTC)), value) for (sid, ts), value in latest.items()]
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {Point._meta.db_table} (series_id, ts, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value",
            rows,
        )


def ingest_batch_publish(*, batch_id: UUID) -> None:
    """Hand a committed batch to the pipeline. Never raises: a lost publish is swept later."""
    from analytics.tasks import ingest_batch_process

    _publish(ingest_batch_process, batch_id)


def _publish(task: Any, batch_id: UUID) -> None:
    try:
        task.delay(str(batch_id))
    except Exception:  # the broker is down or unreachable; the outbox row stays due
        logger.warning("could not publish %s for batch %s; the sweeper will retry", task.name, batch_id, exc_info=True)


def ingest_batch_process(*, batch: IngestBatch) -> bool:
    """Run the first pipeline stage for one ingest batch; returns False when it was already done.

    Refreshes `last_point_at` of the touched series from the stored points (correct whatever
    order batches arrive in), marks the batch processed and, after commit, hands it to the
    rollup stage, its series to streaming detection (`series_detect`) and to the alert rules
    that read raw points (alerts.evaluation), each on its own queue. Publishing never raises:
    a lost detection message is found by the anomaly rescan, a lost evaluation by beat's.
    Idempotent: recomputed from data, and the PENDING -> PROCESSED claim is a conditional
    update, so a redelivered message does nothing.
    """
    if batch.status == IngestBatch.Status.PROCESSED:
        return False
    with transaction.atomic():
        newest = (
            Point.objects.filter(series=OuterRef("pk")).order_by().values("series").annotate(m=Max("ts")).values("m")
        )
        MetricSeries.objects.filter(pk__in=batch.series_ids).update(last_point_at=Subquery(newest))
        claimed = IngestBatch.objects.filter(pk=batch.pk, status=IngestBatch.Status.PENDING).update(
            status=IngestBatch.Status.PROCESSED, processed_at=dj_timezone.now()
        )
        if claimed:
            transaction.on_commit(lambda: ingest_batch_roll_up_publish(batch_id=batch.pk))
            transaction.on_commit(lambda: anomalies.series_detect_publish(series_ids=batch.series_ids))
            transaction.on_commit(lambda: _rules_evaluate_publish(batch.series_ids, KINDS_AFTER_INGEST))
    return bool(claimed)


def ingest_batch_roll_up_publish(*, batch_id: UUID) -> None:
    """Hand a processed batch to the rollup stage. Never raises: a lost publish is swept later."""
    from analytics.tasks import ingest_batch_roll_up

    _publish(ingest_batch_roll_up, batch_id)


def ingest_batch_roll_up(*, batch: IngestBatch) -> bool:
    """Refresh the rollups the batch touched; returns False when they already were.

    Recomputes every 1m/5m/1h bucket of the batch's series overlapping [first_ts, last_ts]
    from the raw points (late points revise their buckets), then stamps `rolled_up_at` with
    a conditional update and publishes the evaluation of the alert rules that read rollups.
    Idempotent: a second run recomputes identical rows and claims nothing.
    """
    if batch.rolled_up_at is not None:
        return False
    rollups.rollups_refresh(series_ids=batch.series_ids, start=batch.first_ts, end=batch.last_ts)
    claimed = IngestBatch.objects.filter(pk=batch.pk, rolled_up_at__isnull=True).update(rolled_up_at=dj_timezone.now())
    if claimed:
        _rules_evaluate_publish(batch.series_ids, KINDS_AFTER_ROLLUP)
    return bool(claimed)


def _rules_evaluate_publish(series_ids: list[int], kinds: tuple[str, ...]) -> None:
    """Alert rules reading what a stage just wrote are evaluated now, not at beat's next tick."""
    try:
        series_rules_evaluate_publish(series_ids=series_ids, kinds=kinds)
    except Exception:  # alerting must never fail the pipeline; beat evaluates every rule anyway
        logger.warning("could not publish rule evaluation for %d series", len(series_ids), exc_info=True)


def ingest_batches_sweep(*, older_than: timedelta | None = None, limit: int = 1000) -> int:
    """Re-publish batches stuck in a pipeline stage for longer than `older_than` (a lost
    message, a killed worker): still pending, or processed but not rolled up.

    Returns how many were re-published. Safe to overlap with a slow first delivery: every
    stage is idempotent.
    """
    older_than = older_than or timedelta(seconds=settings.VIGIL_INGEST_SWEEP_AFTER_SECONDS)
    cutoff = dj_timezone.now() - older_than
    stuck = IngestBatch.objects.filter(received_at__lt=cutoff).order_by("received_at")
    stages = [
        (stuck.filter(status=IngestBatch.Status.PENDING), ingest_batch_publish),
        (stuck.filter(status=IngestBatch.Status.PROCESSED, rolled_up_at__isnull=True), ingest_batch_roll_up_publish),
    ]
    # Both stages are read before anything is published, so a batch is swept once a run.
    due = [(list(queryset.values_list("pk", flat=True)[:limit]), publish) for queryset, publish in stages]
    for ids, publish in due:
        IngestBatch.objects.filter(pk__in=ids).update(attempts=F("attempts") + 1)
        for batch_id in ids:
            publish(batch_id=batch_id)
    return sum(len(ids) for ids, _ in due)
