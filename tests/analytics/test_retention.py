"""Retention removes exactly what expired, never a bucket whose rollups are missing.

Two tenants with different raw retention share a week of points (one every 30 minutes, two
series each), ingested through the real write path and rolled up by the real pipeline stage.
Retention then runs "at" NOW, 13:30 UTC today, so every cutoff falls mid-day and mid-hour:

    tenant  raw    raw cutoff (floored to the hour)   day partitions
    short   2 d    today-2 13:00                     today-7 .. today-5 are before both
    long    4 d    today-4 13:00                     cutoffs: dropped on PostgreSQL

On PostgreSQL the rest goes by batched DELETEs, elsewhere everything does; the rows left are
the same either way, so the tests that do not look at partitions run on SQLite too.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction

from analytics import partitions, retention, services
from analytics.models import IngestBatch, Point, Rollup
from analytics.retention import retention_enforce
from tenants.models import Tenant
from tests.tenants.factories import TenantFactory
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("late_data_allowed")]


TODAY = datetime.now(UTC).date()
MIDNIGHT = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC)
NOW = MIDNIGHT + timedelta(hours=13, minutes=30)
DAYS = 7
PER_DAY = 48  # a point every 30 minutes
NODES = ("a", "b")


def at(days_ago: int, hour: int = 0, minute: int = 0) -> datetime:
    return MIDNIGHT - timedelta(days=days_ago) + timedelta(hours=hour, minutes=minute)


def ingest(tenant: Tenant, timestamps: list[datetime]) -> IngestBatch:
    """Ingest and process (not roll up) a point per node at each timestamp. The ingest window
    is [now - raw retention, now]: the tenant's retention is raised for the call only."""
    keep = tenant.retention_raw_days
    tenant.retention_raw_days = 30
    try:
        result = services.points_ingest(
            tenant=tenant,
            points=[
                {"cluster": "c", "node": node, "metric": "m", "timestamp": ts.timestamp(), "value": float(i)}
                for node in NODES
                for i, ts in enumerate(timestamps)
            ],
        )
    finally:
        tenant.retention_raw_days = keep
    batch = IngestBatch.objects.get(pk=result.batch_id)
    services.ingest_batch_process(batch=batch)
    batch.refresh_from_db()
    return batch


def roll_up(batch: IngestBatch) -> None:
    """The pipeline's rollup stage: refresh the batch's buckets, then stamp `rolled_up_at`."""
    batch.refresh_from_db()
    assert services.ingest_batch_roll_up(batch=batch)


WEEK = [at(DAYS) + timedelta(minutes=30 * i) for i in range(DAYS * PER_DAY)]  # today-7 00:00 .. today-1 23:30


def tenant_with_a_week(raw_days: int, **retention_days: int) -> Tenant:
    """A tenant with its retention and a rolled-up week of points."""
    tenant = TenantFactory(retention_raw_days=raw_days, **retention_days)
    roll_up(ingest(tenant, WEEK))
    return tenant


@pytest.fixture
def short() -> Tenant:
    return tenant_with_a_week(2, retention_1m_days=3, retention_5m_days=5, retention_1h_days=6)


@pytest.fixture
def long() -> Tenant:
    return tenant_with_a_week(4)


def points_per_day(tenant: Tenant) -> dict[int, int]:
    """Days ago -> points left, summed over the tenant's series (absent: none left)."""
    stamps = Point.objects.filter(series__tenant=tenant).values_list("ts", flat=True)
    return dict(Counter((TODAY - ts.astimezone(UTC).date()).days for ts in stamps))


def from_hour(hour: int) -> int:
    """Points of one day from `hour` o'clock on, both series."""
    return (24 - hour) * 2 * len(NODES)


def full(days_ago: int) -> dict[int, int]:
    return {d: PER_DAY * len(NODES) for d in range(1, days_ago + 1)}


@pytest.fixture(params=[50_000, 7], ids=["one-batch", "many-batches"])
def batch_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The default batch, and tiny batches over one series id per statement: same result."""
    if request.param < 100:
        monkeypatch.setattr(retention, "SERIES_CHUNK", 1)
    return int(request.param)


def test_each_tenant_loses_exactly_its_expired_hours(short: Tenant, long: Tenant, batch_size: int) -> None:
    report = retention_enforce(now=NOW, batch_size=batch_size)

    assert report.complete
    # The cutoff hour itself (13:00-14:00) straddles now - retention: kept whole.
    assert points_per_day(short) == {**full(1), 2: from_hour(13)}
    assert points_per_day(long) == {**full(3), 4: from_hour(13)}
    cutoffs = {t.tenant_id: t.raw_cutoff for t in report.tenants}
    assert cutoffs[short.pk].effective == at(2, 13) and not cutoffs[short.pk].held_back
    assert cutoffs[long.pk].effective == at(4, 13)


def test_rollups_go_exactly_when_their_whole_bucket_is_past_their_own_retention(short: Tenant, long: Tenant) -> None:
    before = Counter(Rollup.objects.filter(series__tenant=long).values_list("resolution", flat=True))

    retention_enforce(now=NOW)

    # short keeps 1m for 3 days, 5m for 5, 1h for 6: the oldest buckets kept start at or
    # after now - retention (13:30); the hour bucket 13:00 straddles it and stays.
    oldest = {
        resolution: min(Rollup.objects.filter(series__tenant=short, resolution=resolution).values_list("bucket"))[0]
        for resolution in (60, 300, 3600)
    }
    assert oldest == {60: at(3, 13, 30), 300: at(5, 13, 30), 3600: at(6, 13)}
    left = Counter(Rollup.objects.filter(series__tenant=short).values_list("resolution", flat=True))
    # A point every 30 minutes: a 1m and a 5m bucket per point (21 from 13:30 to 23:30), an
    # hour bucket per hour (11 from 13:00), per series.
    assert left == {
        60: (2 * PER_DAY + 21) * len(NODES),
        300: (4 * PER_DAY + 21) * len(NODES),
        3600: (5 * 24 + 11) * len(NODES),
    }
    # long keeps the defaults (30 days, 90 days, 2 years): nothing of its week went.
    assert Counter(Rollup.objects.filter(series__tenant=long).values_list("resolution", flat=True)) == before


def test_a_second_run_deletes_nothing(short: Tenant, long: Tenant) -> None:
    retention_enforce(now=NOW)
    after_first = (points_per_day(short), points_per_day(long), Rollup.objects.count())

    again = retention_enforce(now=NOW)

    assert (points_per_day(short), points_per_day(long), Rollup.objects.count()) == after_first
    assert (again.partitions_dropped, again.points_deleted, again.rollups_deleted) == ((), 0, 0)


def test_points_a_batch_still_has_to_roll_up_stay_from_its_first_hour_on(short: Tenant, long: Tenant) -> None:
    late = ingest(short, [at(3, 10, 17)])  # processed, not rolled up yet

    report = retention_enforce(now=NOW)

    held = {t.tenant_id: t.raw_cutoff for t in report.tenants}[short.pk]
    assert held.held_back and held.effective == at(3, 10)
    # Everything from the hour of the batch's first point stays: the 10:00 bucket will be
    # recomputed from all of its points. Before that hour, the expired points went.
    assert points_per_day(short) == {**full(2), 3: from_hour(10) + len(NODES)}
    assert points_per_day(long) == {**full(3), 4: from_hour(13)}

    roll_up(late)
    retention_enforce(now=NOW)

    assert points_per_day(short) == {**full(1), 2: from_hour(13)}
    assert Rollup.objects.get(series__tenant=short, series__node="a", resolution=3600, bucket=at(3, 10)).count == 3


def test_a_batch_committed_after_the_cutoffs_were_read_stops_the_delete(
    short: Tenant, long: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each DELETE re-checks for unrolled batches in its own snapshot, not in the cutoffs."""
    stale = retention.raw_cutoffs(now=NOW)
    late = ingest(short, [at(3, 10, 17)])  # commits "between" reading the cutoffs and deleting
    monkeypatch.setattr(retention, "raw_cutoffs", lambda now: stale)

    retention_enforce(now=NOW)

    # Without the re-check, everything before today-2 13:00 would be gone. Day by day on
    # PostgreSQL, the days before the late batch's go; in one statement elsewhere, nothing does.
    left = points_per_day(short)
    assert (left[3], left[2], left[1]) == (
        PER_DAY * len(NODES) + len(NODES),
        PER_DAY * len(NODES),
        PER_DAY * len(NODES),
    )
    assert late.rolled_up_at is None


def test_a_run_out_of_time_leaves_the_rest_to_the_next(short: Tenant, long: Tenant) -> None:
    cut_short = retention_enforce(now=NOW, budget=timedelta(0))
    assert not cut_short.complete
    assert cut_short.points_deleted == cut_short.rollups_deleted == 0

    assert retention_enforce(now=NOW).complete
    assert points_per_day(short) == {**full(1), 2: from_hour(13)}
    assert points_per_day(long) == {**full(3), 4: from_hour(13)}


def test_the_periodic_task_enforces_retention(short: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    from analytics.tasks import retention_enforce as task

    real = retention.retention_enforce
    monkeypatch.setattr(retention, "retention_enforce", lambda: real(now=NOW))

    result: dict[str, Any] = task.apply().get()

    assert result["complete"] is True
    assert points_per_day(short) == {**full(1), 2: from_hour(13)}


# --- PostgreSQL: day partitions ----------------------------------------------------------------


def partition_days() -> set[int]:
    """Days ago (negative: ahead) of the point partitions that exist."""
    return {(TODAY - day).days for day in partitions.partitions_existing()}


def names(*days_ago: int) -> set[str]:
    return {partitions.partition_name(TODAY - timedelta(days=d)) for d in days_ago}


@pytest.mark.services
def test_days_before_every_tenants_cutoff_are_dropped_and_days_ahead_created(short: Tenant, long: Tenant) -> None:
    assert set(range(1, DAYS + 1)) <= partition_days()

    report = retention_enforce(now=NOW)

    # long's cutoff (today-4 13:00) is the earliest: the days ending by then go, whole.
    dropped = set(report.partitions_dropped)
    assert names(5, 6, 7) <= dropped and not dropped & names(*range(5))
    days = partition_days()
    assert not days & {5, 6, 7}
    assert set(range(-settings.VIGIL_PARTITIONS_AHEAD_DAYS, 5)) <= days
    # Row by row, only what the cutoffs leave in the days kept: short's days 4 and 3 and
    # day 2 to 13:00, long's day 4 to 13:00.
    assert report.points_deleted == (2 * PER_DAY + 26 + 26) * len(NODES)
    assert points_per_day(short) == {**full(1), 2: from_hour(13)}
    assert points_per_day(long) == {**full(3), 4: from_hour(13)}


@pytest.mark.services
def test_a_day_with_points_still_to_roll_up_is_kept_for_everyone(short: Tenant, long: Tenant) -> None:
    late = ingest(long, [at(6, 5, 10)])

    report = retention_enforce(now=NOW)

    dropped = set(report.partitions_dropped)
    assert names(7) <= dropped and not dropped & names(*range(7))
    assert 6 in partition_days()
    # long keeps day 6 from 05:00 on; short's points there are past its cutoff: deleted.
    assert points_per_day(long) == {**full(5), 6: from_hour(5) + len(NODES)}
    assert points_per_day(short) == {**full(1), 2: from_hour(13)}

    roll_up(late)
    again = retention_enforce(now=NOW)

    assert set(again.partitions_dropped) == names(5, 6)
    assert points_per_day(long) == {**full(3), 4: from_hour(13)}


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_drop_waits_for_ingest_in_progress_and_keeps_the_day_it_wrote_to(short: Tenant, long: Tenant) -> None:
    """Decided before a late batch committed, the drop of its day would lose points nobody
    rolled up: the drop locks ingest out, waits for the batch, and decides again."""
    dropped: list[str] = []

    def enforce() -> None:
        try:
            dropped.extend(retention_enforce(now=NOW).partitions_dropped)
        finally:
            connection.close()

    partitions.partitions_ensure(TODAY + timedelta(days=n) for n in range(settings.VIGIL_PARTITIONS_AHEAD_DAYS + 1))
    with transaction.atomic():
        ingest(long, [at(6, 5, 10)])  # writing to day 6, not committed yet
        thread = threading.Thread(target=enforce)
        thread.start()
        wait_for(lambda: lock_waiters(partitions.PARENT) == 1)
    thread.join(timeout=30)

    assert set(dropped) == names(7)
    assert points_per_day(long)[6] == from_hour(5) + len(NODES)


def lock_waiters(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = %s AND NOT l.granted",
            [table],
        )
        return int(cursor.fetchone()[0])


@pytest.mark.services
def test_a_day_dropped_by_another_process_is_re_created_once_the_cache_expires(
    django_capture_on_commit_callbacks: Any,
) -> None:
    day = TODAY - timedelta(days=400)
    with django_capture_on_commit_callbacks(execute=True):
        partitions.partitions_ensure([day])
        assert partitions.partitions_drop([day], still_droppable=lambda days: days) == [partitions.partition_name(day)]
    assert day not in partitions.partitions_existing()

    partitions._known_days[day] = time.monotonic()  # another process, which saw it just now
    assert partitions.partitions_ensure([day]) == []
    partitions._known_days[day] = time.monotonic() - partitions.KNOWN_FOR - 1  # ... a while ago
    assert partitions.partitions_ensure([day]) == [partitions.partition_name(day)]


@pytest.mark.services
def test_a_partition_drop_keeps_what_the_check_under_the_lock_refuses() -> None:
    days = [TODAY - timedelta(days=400 + n) for n in range(3)]
    partitions.partitions_ensure(days)

    dropped = partitions.partitions_drop([*days, TODAY - timedelta(days=500)], still_droppable=lambda ds: ds[:1])

    assert dropped == [partitions.partition_name(days[2])]  # the oldest; the missing day is ignored
    assert set(days[:2]) <= partitions.partitions_existing().keys()


def test_anomaly_scores_go_with_the_1m_rollups_and_closed_anomalies_with_the_1h_rollups(batch_size: int) -> None:
    from analytics.models import AnomalyResult, AnomalyScore
    from tests.analytics.factories import AnomalyResultFactory, AnomalyScoreFactory, MetricSeriesFactory

    tenant = TenantFactory(retention_1m_days=3, retention_1h_days=6)
    series = MetricSeriesFactory(tenant=tenant)
    neighbour = MetricSeriesFactory(tenant=TenantFactory(retention_1m_days=30, retention_1h_days=30))
    for days_ago in (1, 3, 4):
        AnomalyScoreFactory(series=series, bucket=at(days_ago, 13, 29))
        AnomalyScoreFactory(series=neighbour, bucket=at(days_ago, 13, 29))
    for window_start, status in ((at(5, 13), "closed"), (at(7, 13), "closed"), (at(7, 14), "open")):
        for owner in (series, neighbour):
            AnomalyResultFactory(series=owner, status=status, window_start=window_start)

    report = retention_enforce(now=NOW, batch_size=batch_size)

    # 1m retention of 3 days at 13:30: the minute 13:29 three days ago has expired, yesterday's not.
    assert set(AnomalyScore.objects.filter(series=series).values_list("bucket", flat=True)) == {at(1, 13, 29)}
    kept = AnomalyResult.objects.filter(series=series).values_list("window_start", "status")
    assert set(kept) == {(at(5, 13), "closed"), (at(7, 14), "open")}  # open ones are never deleted
    assert AnomalyScore.objects.filter(series=neighbour).count() == 3
    assert AnomalyResult.objects.filter(series=neighbour).count() == 3
    assert (report.scores_deleted, report.anomalies_deleted) == (2, 1)
