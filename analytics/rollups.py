"""Rollups: per-series statistics over 1-minute, 5-minute and 1-hour buckets, from raw points.

Two halves. The maths (`bucket_stats`, `buckets_compute`) is plain Python on plain values: it is
the portable path (SQLite, `make test` without services) and the specification the SQL is
tested against. The services (`rollups_refresh`, `rollups_catch_up`) read points and upsert
`Rollup` rows; on PostgreSQL the whole computation is one `INSERT ... SELECT ... GROUP BY`
per resolution, so points never leave the database.

Both paths give bit-identical numbers for the same points (tests/analytics/test_rollups.py
checks it on PostgreSQL): the Python half replays PostgreSQL's own algorithms, in the same
order. That matters beyond tidiness: a bucket is rewritten (and marked revised) only when a
value differs, so a recomputation that wobbled in the last bit would look like late data.
For the same reason the SQL feeds `sum` and `stddev_samp` in timestamp order (`ORDER BY ts`
inside the aggregate): summation order changes the last bits of a float sum, and without it
the order would depend on the plan (a parallel or hash aggregate after the table grew).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.db import DataError, connection, transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from analytics.models import MetricSeries, Point, Rollup
from tenants.models import Tenant

logger = logging.getLogger(__name__)

RESOLUTIONS: tuple[int, ...] = tuple(sorted(Rollup.Resolution.values))  # seconds: 60, 300, 3600
PERCENTILES = (0.5, 0.9, 0.95, 0.99)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# Series per transaction. Bounds the advisory locks a transaction holds (one per series, in
# PostgreSQL's shared lock table) and how long it holds them.
CHUNK_SERIES = 100
# Catch-up: series ids per task, and how long after its last point a series may wait for the
# pipeline's own refresh before the catch-up steps in.
SHARD_SIZE = 500
CATCH_UP_AFTER = timedelta(minutes=2)
# A catch-up refresh still queued after this is dropped: the next run re-enqueues what is
# still stale, so a backed-up queue does not fill with duplicates.
CATCH_UP_EXPIRES = timedelta(minutes=10)

_ADVISORY_CLASS = 0x5649_4752  # pg_advisory_xact_lock(class, series) namespace ("VIGR")
_OUT_OF_RANGE = "22003"  # SQLSTATE numeric_value_out_of_range: a float8 sum overflowed


# --- The maths: plain Python, no database ----------------------------------------------


class RollupOverflow(ArithmeticError):
    """A bucket's sum or variance overflows float8 (values near 1e308); PostgreSQL refuses it."""


@dataclass(frozen=True)
class BucketStats:
    count: int
    sum: float
    min: float
    max: float
    mean: float
    stddev: float | None  # sample standard deviation; None for a single point
    p50: float
    p90: float
    p95: float
    p99: float
    first: float
    last: float


STAT_FIELDS: tuple[str, ...] = (
    "count",
    "sum",
    "min",
    "max",
    "mean",
    "stddev",
    "p50",
    "p90",
    "p95",
    "p99",
    "first",
    "last",
)


def bucket_start(ts: datetime, resolution: int) -> datetime:
    """The start of the bucket holding `ts`: floor(ts / resolution) * resolution, in UTC.

    In whole microseconds (the storage precision of both databases), so it is exact.
    """
    us = (ts - EPOCH) // _US
    return EPOCH + (us - us % (resolution * 1_000_000)) * _US


def bucket_span(start: datetime, end: datetime, resolution: int) -> tuple[datetime, datetime]:
    """[first bucket start, last bucket end) of the buckets overlapping the closed [start, end]."""
    return bucket_start(start, resolution), bucket_start(end, resolution) + timedelta(seconds=resolution)


def bucket_stats(values: Sequence[float]) -> BucketStats:
    """Statistics of one bucket's values, given oldest first.

    Replays PostgreSQL step by step so both paths agree to the bit: `sum` is float8pl in
    order, the variance is float8_accum's Youngs-Cramer recurrence then stddev_samp's
    sqrt(Sxx / (N - 1)), percentiles are percentile_cont's lerp lo + (pct * (hi - lo)).
    Raises RollupOverflow where PostgreSQL raises "value out of range: overflow".
    """
    if not values:
        raise ValueError("a bucket has at least one point")
    total = values[0]
    for value in values[1:]:
        total += value
    n = 0.0
    sx = sxx = 0.0
    for value in values:
        previous = n
        n += 1.0
        sx += value
        if previous > 0.0:
            tmp = value * n - sx
            sxx += tmp * tmp / (n * previous)
    if not (math.isfinite(total) and math.isfinite(sx) and math.isfinite(sxx)):
        raise RollupOverflow
    ordered = sorted(values)
    p50, p90, p95, p99 = (_percentile_cont(ordered, p) for p in PERCENTILES)
    count = len(values)
    return BucketStats(
        count=count,
        sum=total,
        min=ordered[0],
        max=ordered[-1],
        mean=total / count,
        stddev=math.sqrt(sxx / (n - 1.0)) if count > 1 else None,
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        first=values[0],
        last=values[-1],
    )


def _percentile_cont(ordered: Sequence[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy 'linear'), as PostgreSQL does it."""
    position = p * (len(ordered) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    if hi == lo:
        return ordered[lo]
    return ordered[lo] + ((position - lo) * (ordered[hi] - ordered[lo]))


def buckets_compute(
    points: Iterable[tuple[int, datetime, float]], *, start: datetime, end: datetime
) -> dict[tuple[int, int, datetime], BucketStats]:
    """Every bucket, at every resolution, overlapping [start, end], from (series_id, ts, value)
    sorted by series then time and covering at least the hour buckets of [start, end].

    Keys are (series_id, resolution, bucket start). Raises RollupOverflow naming nothing: the
    caller isolates the series (see `_refresh_isolated`).
    """
    rows = [(sid, (ts - EPOCH) // _US, value) for sid, ts, value in points]
    result: dict[tuple[int, int, datetime], BucketStats] = {}
    for resolution in RESOLUTIONS:
        lo, hi = ((t - EPOCH) // _US for t in bucket_span(start, end, resolution))
        step = resolution * 1_000_000
        in_span = ((sid, us - us % step, value) for sid, us, value in rows if lo <= us < hi)
        for (sid, bucket_us), group in itertools.groupby(in_span, key=lambda row: (row[0], row[1])):
            stats = bucket_stats([value for _, _, value in group])
            result[(sid, resolution, EPOCH + bucket_us * _US)] = stats
    return result


# --- Services ---------------------------------------------------------------------------


def rollups_refresh(*, series_ids: Iterable[int], start: datetime, end: datetime) -> int:
    """Recompute, from raw points, every 1m, 5m and 1h bucket of `series_ids` overlapping the
    closed interval [start, end], and upsert them. Returns how many rows were inserted or changed.

    Each resolution is widened to its own whole buckets: a point at 10:37:12 recomputes the
    10:37 minute, the 10:35 five minutes and the 10:00 hour (reading that hour's points).
    A bucket with no raw points is left alone, never deleted: rollups outlive raw retention.
    (So raw pruning must remove whole hours, as dropping day partitions does; a bucket
    recomputed from part of its points would be wrong.)

    Side effects: inserts new buckets (`revised_at` NULL); rewrites a bucket only when a value
    differs, then setting `computed_at` and `revised_at`. Idempotent: a re-run with no new
    points writes nothing. Concurrent runs over the same series serialise per series (an
    advisory lock, taken before the points are read), so the last to write has read every
    point committed before it started and a stale computation never overwrites a fresher one.
    Commits per chunk of CHUNK_SERIES series. A series whose sum overflows float8 is skipped
    and logged, without failing the others.
    """
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    if end < start:
        raise ValueError("end is before start")
    ids = sorted(set(series_ids))
    return sum(_refresh_isolated(chunk, start, end) for chunk in chunked(ids, CHUNK_SERIES))


def _refresh_isolated(series_ids: list[int], start: datetime, end: datetime) -> int:
    """`_refresh` of a chunk; when one of its series overflows, series by series without it."""
    try:
        return _refresh(series_ids, start, end)
    except RollupOverflow:
        if len(series_ids) == 1:
            logger.error("rollups of series %s overflow float8 in [%s, %s]; skipped", series_ids[0], start, end)
            return 0
        return sum(_refresh_isolated([sid], start, end) for sid in series_ids)


def _refresh(series_ids: list[int], start: datetime, end: datetime) -> int:
    with transaction.atomic():
        if connection.vendor == "postgresql":
            return _refresh_postgresql(series_ids, start, end)
        return _refresh_portable(series_ids, start, end)


def _refresh_postgresql(series_ids: list[int], start: datetime, end: datetime) -> int:
    written = 0
    with connection.cursor() as cursor:
        # In id order, so two refreshes of overlapping sets cannot deadlock. The statements
        # below run after the wait, so (READ COMMITTED) they see what the previous holder saw
        # and everything committed since.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, mod(id, 2147483647)::int) FROM unnest(%s::bigint[]) AS id",
            [_ADVISORY_CLASS, series_ids],
        )
        computed_at = timezone.now()
        for resolution in RESOLUTIONS:
            lo, hi = bucket_span(start, end, resolution)
            params: dict[str, Any] = {
                "resolution": resolution,
                "stride": timedelta(seconds=resolution),
                "series_ids": series_ids,
                "lo": lo,
                "hi": hi,
                "computed_at": computed_at,
            }
            try:
                cursor.execute(_POSTGRESQL_UPSERT, params)
            except DataError as exc:
                if getattr(exc.__cause__, "pgcode", None) == _OUT_OF_RANGE:
                    raise RollupOverflow from exc
                raise
            written += cursor.rowcount
    return written


def _refresh_portable(series_ids: list[int], start: datetime, end: datetime) -> int:
    """Any other database (SQLite): compute in Python, upsert with the same conflict clause."""
    buckets = rollups_compute(series_ids=series_ids, start=start, end=end)
    if not buckets:
        return 0
    adapt = connection.ops.adapt_datetimefield_value
    computed_at = adapt(timezone.now())
    rows = [
        (sid, resolution, adapt(bucket), *(getattr(stats, f) for f in STAT_FIELDS), computed_at, None)
        for (sid, resolution, bucket), stats in sorted(buckets.items())
    ]
    placeholders = ", ".join(["%s"] * len(rows[0]))
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES ({placeholders}) {_upsert_clause('IS NOT')}", rows
        )
        return cursor.rowcount


def rollups_compute(
    *, series_ids: list[int], start: datetime, end: datetime
) -> dict[tuple[int, int, datetime], BucketStats]:
    """What `rollups_refresh` would write, computed in Python from the stored points. No writes."""
    lo, hi = bucket_span(start, end, max(RESOLUTIONS))
    points = (
        Point.objects.filter(series_id__in=series_ids, ts__gte=lo, ts__lt=hi)
        .order_by("series", "ts")
        .values_list("series_id", "ts", "value")
    )
    return buckets_compute(points.iterator(chunk_size=10_000), start=start, end=end)


def rollups_refresh_publish(
    *, series_ids: Sequence[int], start: datetime, end: datetime, expires: timedelta | None = None
) -> None:
    """Enqueue `analytics.tasks.rollups_refresh` on the rollup queue. Never raises: a lost
    message is found by the catch-up (when it concerns a series' newest points)."""
    from analytics.tasks import rollups_refresh as task

    options: dict[str, Any] = {"expires": expires.total_seconds()} if expires is not None else {}
    try:
        task.apply_async(args=(list(series_ids), start.isoformat(), end.isoformat()), **options)
    except Exception:  # broker down or unreachable; the next catch-up run re-enqueues
        logger.warning("could not publish a rollup refresh of %d series", len(series_ids), exc_info=True)


@dataclass(frozen=True)
class RefreshShard:
    tenant_id: int
    series_ids: tuple[int, ...]
    start: datetime
    end: datetime


def rollups_stale_shards(
    *, shard_size: int = SHARD_SIZE, older_than: timedelta = CATCH_UP_AFTER, now: datetime | None = None
) -> list[RefreshShard]:
    """Series whose newest rollup misses their newest point, as refreshes to enqueue.

    A series is stale when its last point is older than `older_than` (the pipeline's own
    refresh had its chance) yet no minute rollup holds it: its newest minute bucket ends at
    or before `last_point_at`, or it has none. Its refresh starts at that newest bucket (or
    at its oldest point) and ends at its last point. Series of one tenant whose refreshes
    start and end in the same hours share a shard of at most `shard_size` ids (so one
    refresh never reads days of points for a series that lags by a minute); shards are
    ordered round-robin across tenants, so a tenant with 100k stale series queues behind
    every other tenant's first shard, not in front of it.

    Only the tail is detected: if a refresh for older points was lost but a later one ran,
    the newest bucket is current and the gap stays until that data is re-sent.
    """
    now = now or timezone.now()
    newest = Rollup.objects.filter(series=OuterRef("pk"), resolution=Rollup.Resolution.MINUTE).order_by("-bucket")
    oldest = Point.objects.filter(series=OuterRef("pk")).order_by("ts")
    per_tenant: list[list[RefreshShard]] = []
    for tenant_id, raw_days in Tenant.objects.order_by("pk").values_list("pk", "retention_raw_days"):
        stale = (
            MetricSeries.objects.filter(
                tenant_id=tenant_id,
                last_point_at__lt=now - older_than,
                # Older points are past raw retention: nothing left to roll up.
                last_point_at__gte=now - timedelta(days=raw_days),
            )
            .annotate(newest=Subquery(newest.values("bucket")[:1]))
            .filter(Q(newest__isnull=True) | Q(newest__lte=F("last_point_at") - timedelta(seconds=60)))
            # COALESCE evaluates the point probe only for series that have no rollup at all.
            .annotate(start=Coalesce("newest", Subquery(oldest.values("ts")[:1])))
            .order_by("pk")
            .values_list("pk", "start", "last_point_at")
        )
        groups: dict[tuple[datetime, datetime], list[tuple[int, datetime, datetime]]] = {}
        for sid, start, end in stale:
            if start is not None and end is not None:
                groups.setdefault((bucket_start(start, 3600), bucket_start(end, 3600)), []).append((sid, start, end))
        shards = [
            RefreshShard(
                tenant_id=tenant_id,
                series_ids=tuple(sid for sid, _, _ in shard),
                start=min(start for _, start, _ in shard),
                end=max(end for _, _, end in shard),
            )
            for _, members in sorted(groups.items())
            for shard in chunked(members, shard_size)
        ]
        if shards:
            per_tenant.append(shards)
    return [shard for rank in itertools.zip_longest(*per_tenant) for shard in rank if shard is not None]


def rollups_catch_up(
    *, shard_size: int = SHARD_SIZE, older_than: timedelta = CATCH_UP_AFTER, now: datetime | None = None
) -> int:
    """Periodic safety net for lost refresh messages: enqueue a refresh per stale shard
    (`rollups_stale_shards`). Returns the number of shards enqueued.

    Harmless to overlap or repeat: refreshes are idempotent, and queued ones expire after
    CATCH_UP_EXPIRES so a backlog does not accumulate duplicates.
    """
    shards = rollups_stale_shards(shard_size=shard_size, older_than=older_than, now=now)
    for shard in shards:
        rollups_refresh_publish(series_ids=shard.series_ids, start=shard.start, end=shard.end, expires=CATCH_UP_EXPIRES)
    return len(shards)


# --- SQL ------------------------------------------------------------------------------------

_T = TypeVar("_T")


def chunked(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    """`items` in lists of at most `size` (itertools.batched arrives with Python 3.12)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


_TABLE = Rollup._meta.db_table
_COLUMNS = ", ".join(
    ["series_id", "resolution", "bucket", *(f'"{f}"' for f in STAT_FIELDS), "computed_at", "revised_at"]
)


def _upsert_clause(distinct: str) -> str:
    """ON CONFLICT clause shared by both paths: rewrite a bucket only when a value differs
    (`distinct` is the null-safe "differs" operator of the dialect), and then mark it revised.
    A first computation is an insert, never a revision; an equal recomputation is a no-op
    (no row version, no WAL, `computed_at` kept)."""
    sets = ", ".join(f'"{f}" = excluded."{f}"' for f in STAT_FIELDS)
    differs = " OR ".join(f'{_TABLE}."{f}" {distinct} excluded."{f}"' for f in STAT_FIELDS)
    return (
        f"ON CONFLICT (series_id, resolution, bucket) DO UPDATE SET {sets}, "
        f"computed_at = excluded.computed_at, revised_at = excluded.computed_at WHERE {differs}"
    )


# One statement per resolution. The inner query groups the points of the span by series and
# epoch-aligned bucket; `sum`, `stddev_samp` and `array_agg` (for first/last) take the points
# in time order, `percentile_cont` sorts by value itself. The mean is sum / count, which is
# exactly avg()'s Sx / N without a fourth sort. Rows are inserted in key order so concurrent
# upserts lock rows in one order.
_POSTGRESQL_UPSERT = f"""
INSERT INTO {_TABLE} ({_COLUMNS})
SELECT series_id, %(resolution)s, bucket, n, s, lo, hi, s / n, sd,
       q[1], q[2], q[3], q[4], v[1], v[array_upper(v, 1)], %(computed_at)s, NULL
FROM (
    SELECT series_id,
           date_bin(%(stride)s, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           count(*) AS n,
           sum(value ORDER BY ts) AS s,
           min(value) AS lo,
           max(value) AS hi,
           stddev_samp(value ORDER BY ts) AS sd,
           percentile_cont(ARRAY[{", ".join(map(repr, PERCENTILES))}]::float8[]) WITHIN GROUP (ORDER BY value) AS q,
           array_agg(value ORDER BY ts) AS v
    FROM {Point._meta.db_table}
    WHERE series_id = ANY(%(series_ids)s) AND ts >= %(lo)s AND ts < %(hi)s
    GROUP BY series_id, bucket
) AS buckets
ORDER BY series_id, bucket
{_upsert_clause("IS DISTINCT FROM")}
"""
