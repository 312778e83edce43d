"""Rollups: exact statistics per 1m/5m/1h bucket from raw points; idempotent; late data revises
exactly the buckets it lands in; the catch-up finds lost refreshes and fans them out in shards."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import rollups, services
from analytics.models import IngestBatch, MetricSeries, Rollup
from analytics.rollups import STAT_FIELDS, rollups_refresh
from analytics.selectors import rollups_revised_since
from config.celery_app import app as celery_app
from tenants.models import Tenant
from tests.concurrency import run_concurrently
from tests.tenants.factories import TenantFactory
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("late_data_allowed")]


Key = tuple[int, int, datetime]  # (series_id, resolution, bucket)
MINUTE, FIVE, HOUR = 60, 300, 3600


def floor(ts: datetime, seconds: int) -> datetime:
    return rollups.bucket_start(ts, seconds)


def ingest(tenant: Tenant, points: list[tuple[str, datetime, float]]) -> dict[str, int]:
    """Ingest (node, ts, value) points through the real write path; returns node -> series id.
    Each batch is then processed by the pipeline (which sets `last_point_at`)."""
    result = services.points_ingest(
        tenant=tenant,
        points=[
            {"cluster": "c", "node": node, "metric": "m", "timestamp": ts.timestamp(), "value": value}
            for node, ts, value in points
        ],
    )
    services.ingest_batch_process(batch=IngestBatch.objects.get(pk=result.batch_id))
    return dict(MetricSeries.objects.filter(tenant=tenant).values_list("node", "id"))


def stored(tenant: Tenant) -> dict[Key, dict[str, Any]]:
    """Every rollup row of the tenant, all columns."""
    return {
        (row["series_id"], row["resolution"], row["bucket"]): row
        for row in Rollup.objects.filter(series__tenant=tenant).values()
    }


def pandas_rollups(points: list[tuple[int, datetime, float]]) -> dict[Key, dict[str, Any]]:
    """The specification, computed independently: pandas floor + groupby, sample std,
    linear-interpolated quantiles, first/last by time. Re-sent points: the last one wins."""
    frame = pd.DataFrame(points, columns=["series", "ts", "value"])
    frame = frame.drop_duplicates(["series", "ts"], keep="last").sort_values(["series", "ts"])
    expected: dict[Key, dict[str, Any]] = {}
    for resolution in (MINUTE, FIVE, HOUR):
        frame["bucket"] = frame["ts"].dt.floor(f"{resolution}s")
        grouped = frame.groupby(["series", "bucket"])["value"]
        stats = grouped.agg(["count", "sum", "min", "max", "mean", "std", "first", "last"])
        quantiles = grouped.quantile([0.5, 0.9, 0.95, 0.99]).unstack()
        for (sid, bucket), row in stats.iterrows():
            q = quantiles.loc[(sid, bucket)]
            expected[(int(sid), resolution, bucket.to_pydatetime())] = {
                "count": int(row["count"]),
                "sum": row["sum"],
                "min": row["min"],
                "max": row["max"],
                "mean": row["mean"],
                "stddev": None if math.isnan(row["std"]) else row["std"],
                "p50": q[0.5],
                "p90": q[0.9],
                "p95": q[0.95],
                "p99": q[0.99],
                "first": row["first"],
                "last": row["last"],
            }
    return expected


def assert_rollups_equal(actual: dict[Key, dict[str, Any]], expected: dict[Key, dict[str, Any]]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, want in expected.items():
        for field in STAT_FIELDS:
            got = actual[key][field]
            if want[field] is None:
                assert got is None, (key, field, got)
            else:
                assert math.isclose(got, want[field], rel_tol=1e-9, abs_tol=1e-9), (key, field, got, want[field])


# --- Correctness ------------------------------------------------------------------------------

WINDOW_MINUTES = 180


@st.composite
def point_sets(draw: st.DrawFn) -> tuple[list[tuple[int, int, float]], int]:
    """(series index, millisecond offset in a 3-hour window, value) points, and where the
    list is split into two ingest batches.

    Points crowd into a few "hot" minutes (so buckets hold several points, ties and all)
    and land on bucket edges. Values are multiples of 1/64 up to ~1.5e5: exactly
    representable and summed without rounding, so comparing with pandas (another summation
    order, another variance algorithm) tests the statistics, not float cancellation.
    """
    series = draw(st.integers(1, 4))
    hot = draw(st.lists(st.integers(0, WINDOW_MINUTES - 1), min_size=1, max_size=5))
    minute = st.one_of(st.sampled_from(hot), st.integers(0, WINDOW_MINUTES - 1))
    millisecond = st.one_of(st.sampled_from([0, 59_999]), st.integers(0, 59_999))
    value = st.one_of(st.sampled_from([-2.5, 0.0, 1.0, 7.25]), st.integers(-(10**7), 10**7).map(lambda n: n / 64))
    points = draw(
        st.lists(
            st.tuples(st.integers(0, series - 1), minute, millisecond, value).map(
                lambda p: (p[0], p[1] * 60_000 + p[2], p[3])
            ),
            min_size=1,
            max_size=120,
        )
    )
    return points, draw(st.integers(0, len(points)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=point_sets())
def test_rollups_match_an_independent_pandas_computation(db: None, case: Any) -> None:
    points, split = case
    tenant = TenantFactory()  # a fresh tenant per example: examples never see each other's rows
    start = floor(datetime.now(UTC), MINUTE) - timedelta(minutes=WINDOW_MINUTES + 10)
    end = start + timedelta(minutes=WINDOW_MINUTES)
    timed = [(f"n{s}", start + timedelta(milliseconds=ms), value) for s, ms, value in points]
    ids: dict[str, int] = {}
    for batch in (timed[:split], timed[split:]):
        if batch:
            ids = ingest(tenant, batch)

    written = rollups_refresh(series_ids=list(ids.values()), start=start, end=end)

    expected = pandas_rollups([(ids[node], ts, value) for node, ts, value in timed])
    assert_rollups_equal(stored(tenant), expected)
    assert written == len(expected)


@pytest.mark.services
def test_postgresql_and_the_portable_path_agree_to_the_bit(tenant: Tenant) -> None:
    """The SQL and the Python path compute the same floats, not merely close ones: a bucket
    recomputed by either must not look changed. Values here are arbitrary floats."""
    rng = random.Random(7)
    start = floor(datetime.now(UTC), HOUR) - timedelta(hours=4)
    points = [
        (f"n{s}", start + timedelta(seconds=rng.uniform(0, 3 * 3600)), rng.gauss(0, 10.0 ** rng.randint(-3, 9)))
        for s in range(3)
        for _ in range(1500)
    ]
    ids = ingest(tenant, points)
    rollups_refresh(series_ids=list(ids.values()), start=start, end=start + timedelta(hours=3))

    computed = rollups.rollups_compute(series_ids=list(ids.values()), start=start, end=start + timedelta(hours=3))
    rows = stored(tenant)
    assert sorted(rows) == sorted(computed)
    for key, stats in computed.items():
        assert tuple(rows[key][f] for f in STAT_FIELDS) == tuple(getattr(stats, f) for f in STAT_FIELDS), key


def test_buckets_are_aligned_to_the_epoch_in_utc() -> None:
    ts = datetime(2024, 3, 5, 10, 37, 12, 500_000, tzinfo=UTC)
    assert [floor(ts, r) for r in (MINUTE, FIVE, HOUR)] == [
        datetime(2024, 3, 5, 10, 37, tzinfo=UTC),
        datetime(2024, 3, 5, 10, 35, tzinfo=UTC),
        datetime(2024, 3, 5, 10, 0, tzinfo=UTC),
    ]
    assert floor(datetime(2024, 3, 5, 10, 40, tzinfo=UTC), FIVE) == datetime(2024, 3, 5, 10, 40, tzinfo=UTC)


def test_a_single_point_has_no_standard_deviation(tenant: Tenant) -> None:
    ts = floor(datetime.now(UTC), HOUR) - timedelta(hours=2, seconds=-30)
    ids = ingest(tenant, [("n", ts, 4.5)])
    assert rollups_refresh(series_ids=[ids["n"]], start=ts, end=ts) == 3
    row = Rollup.objects.get(series_id=ids["n"], resolution=MINUTE)
    assert (row.count, row.stddev, row.p50, row.p99, row.first, row.last) == (1, None, 4.5, 4.5, 4.5, 4.5)


def test_a_series_whose_sum_overflows_is_skipped_and_the_others_are_rolled_up(tenant: Tenant) -> None:
    ts = floor(datetime.now(UTC), HOUR) - timedelta(hours=2)
    ids = ingest(tenant, [("huge", ts, 1.5e308), ("huge", ts + timedelta(seconds=1), 1.5e308), ("ok", ts, 1.0)])
    assert rollups_refresh(series_ids=list(ids.values()), start=ts, end=ts) == 3
    assert set(Rollup.objects.values_list("series_id", flat=True)) == {ids["ok"]}


# --- Idempotence and concurrency --------------------------------------------------------------


def steady_points(start: datetime, minutes: int, nodes: tuple[str, ...] = ("a", "b")) -> list[Any]:
    """A point every 20 s per node, with values that differ from point to point."""
    return [
        (node, start + timedelta(seconds=20 * i), float((i * 7 + k) % 13))
        for k, node in enumerate(nodes)
        for i in range(minutes * 3)
    ]


def test_refreshing_again_writes_nothing_and_revises_nothing(tenant: Tenant) -> None:
    start = floor(datetime.now(UTC), HOUR) - timedelta(hours=3)
    ids = ingest(tenant, steady_points(start, 90))
    first = rollups_refresh(series_ids=list(ids.values()), start=start, end=start + timedelta(minutes=90))
    before = stored(tenant)

    assert rollups_refresh(series_ids=list(ids.values()), start=start, end=start + timedelta(minutes=90)) == 0
    assert stored(tenant) == before  # computed_at included: no row was rewritten
    assert first == len(before) == 2 * (90 + 18 + 2)
    assert all(row["revised_at"] is None for row in before.values())


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_two_refreshes_at_once_give_the_rows_of_one_and_write_each_once() -> None:
    tenant = TenantFactory()
    start = floor(datetime.now(UTC), HOUR) - timedelta(hours=3)
    ids = list(ingest(tenant, steady_points(start, 120, nodes=("a", "b", "c", "d"))).values())
    end = start + timedelta(minutes=120)
    written: list[int] = []

    def refresh() -> None:
        written.append(rollups_refresh(series_ids=ids, start=start, end=end))

    assert run_concurrently([refresh, refresh]) == []
    together = stored(tenant)
    Rollup.objects.all().delete()
    rollups_refresh(series_ids=ids, start=start, end=end)
    alone = stored(tenant)

    def values(rows: dict[Key, dict[str, Any]]) -> dict[Key, tuple[Any, ...]]:
        return {key: tuple(row[f] for f in (*STAT_FIELDS, "revised_at")) for key, row in rows.items()}

    assert values(together) == values(alone)
    assert sum(written) == len(alone)  # the second run found every bucket written and equal
    assert all(row["revised_at"] is None for row in together.values())


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_a_refresh_waits_for_one_in_progress_then_reads_the_points_committed_meanwhile() -> None:
    """A refresh that read its points before a late point committed must not overwrite the
    rollups of one that read after: refreshes of a series take turns, and each reads its
    points once its turn has come."""
    tenant = TenantFactory()
    ts = floor(datetime.now(UTC), HOUR) - timedelta(hours=2)
    sid = ingest(tenant, [("a", ts, 1.0)])["a"]
    done: list[int] = []

    def refresh() -> None:
        try:
            done.append(rollups_refresh(series_ids=[sid], start=ts, end=ts))
        finally:
            connection.close()

    with transaction.atomic():
        with connection.cursor() as cursor:  # what a refresh of the series in progress holds
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [rollups._ADVISORY_CLASS, sid])
        waiting = threading.Thread(target=refresh)
        waiting.start()
        wait_for(lambda: advisory_waiters(sid) == 1)
        # Late data, committed together with the release of the lock.
        services.points_ingest(
            tenant=tenant,
            points=[{"cluster": "c", "node": "a", "metric": "m", "timestamp": ts.timestamp() + 1, "value": 3.0}],
        )
    waiting.join(timeout=30)

    assert done == [3]
    assert Rollup.objects.get(series_id=sid, resolution=MINUTE).count == 2


def advisory_waiters(series_id: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = %s AND objid = %s AND objsubid = 2",
            [rollups._ADVISORY_CLASS, series_id],
        )
        return int(cursor.fetchone()[0])


# --- Late data --------------------------------------------------------------------------------


def test_a_late_point_revises_exactly_the_three_buckets_it_falls_in(tenant: Tenant, other_tenant: Tenant) -> None:
    start = floor(datetime.now(UTC), HOUR) - timedelta(hours=3)
    end = start + timedelta(minutes=120)
    ids = ingest(tenant, steady_points(start, 120))
    ingest(other_tenant, steady_points(start, 120))
    rollups_refresh(series_ids=list(ids.values()), start=start, end=end)
    before = stored(tenant)
    checkpoint = datetime.now(UTC)

    late = start + timedelta(minutes=37, seconds=10.5)  # the 10:37 minute already has points
    ingest(tenant, [("a", late, 1000.0)])
    assert rollups_refresh(series_ids=[ids["a"]], start=late, end=late) == 3

    after = stored(tenant)
    changed = {key for key in after if after[key] != before.get(key)}
    a = ids["a"]
    assert changed == {
        (a, MINUTE, start + timedelta(minutes=37)),
        (a, FIVE, start + timedelta(minutes=35)),
        (a, HOUR, start),
    }
    for key in changed:
        assert after[key]["revised_at"] == after[key]["computed_at"] > before[key]["computed_at"]
        assert after[key]["count"] == before[key]["count"] + 1
        assert after[key]["max"] == 1000.0
    # Nothing else was stale: a refresh of everything changes nothing more.
    assert rollups_refresh(series_ids=list(ids.values()), start=start, end=end) == 0
    revised = rollups_revised_since(tenant=tenant, since=checkpoint)
    assert {(r.series_id, r.resolution, r.bucket) for r in revised} == changed
    assert [r.resolution for r in rollups_revised_since(tenant=tenant, since=checkpoint, resolution=FIVE)] == [FIVE]
    assert not rollups_revised_since(tenant=other_tenant, since=checkpoint).exists()


def test_a_late_point_in_an_empty_minute_adds_that_minute_and_revises_the_others(tenant: Tenant) -> None:
    """A bucket's first computation is not a revision, even when it comes late."""
    start = floor(datetime.now(UTC), HOUR) - timedelta(hours=3)
    ids = ingest(tenant, [("a", start + timedelta(minutes=m), 1.0) for m in (0, 10, 20)])
    rollups_refresh(series_ids=[ids["a"]], start=start, end=start + timedelta(minutes=20))

    late = start + timedelta(minutes=11, seconds=5)
    ingest(tenant, [("a", late, 2.0)])
    assert rollups_refresh(series_ids=[ids["a"]], start=late, end=late) == 3

    minute, five, hour = (
        Rollup.objects.get(series_id=ids["a"], bucket=floor(late, r), resolution=r) for r in (60, 300, 3600)
    )
    assert minute.revised_at is None and minute.count == 1
    assert five.revised_at is not None and five.count == 2
    assert hour.revised_at is not None and hour.count == 4


# --- Catch-up -----------------------------------------------------------------------------


@pytest.fixture
def eager_celery() -> Any:
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def test_catch_up_enqueues_stale_series_in_shards_round_robin_across_tenants(
    tenant: Tenant, other_tenant: Tenant, monkeypatch: pytest.MonkeyPatch, eager_celery: None
) -> None:
    now = datetime.now(UTC)
    old = floor(now, MINUTE) - timedelta(minutes=30)
    # Tenant one: five series never rolled up, one rolled up to date, one whose rollups stop
    # before its newest points, one whose newest point is too fresh to call its refresh lost.
    one = ingest(tenant, [(f"lost-{i}", old + timedelta(seconds=s), 1.0) for i in range(5) for s in (0, 70)])
    one |= ingest(tenant, [("current", old, 1.0), ("behind", old, 1.0)])
    rollups_refresh(series_ids=[one["current"], one["behind"]], start=old, end=old)
    one |= ingest(tenant, [("behind", old + timedelta(minutes=5), 2.0), ("fresh", now - timedelta(seconds=20), 1.0)])
    two = ingest(other_tenant, [(f"lost-{i}", old, 1.0) for i in range(2)])

    shards = rollups.rollups_stale_shards(shard_size=2, now=now)

    stale_one = {one[f"lost-{i}"] for i in range(5)} | {one["behind"]}
    assert {sid for shard in shards for sid in shard.series_ids} == stale_one | set(two.values())
    assert all(len(shard.series_ids) <= 2 for shard in shards)
    by_tenant = {tenant.pk: set(stale_one), other_tenant.pk: set(two.values())}
    assert all(set(shard.series_ids) <= by_tenant[shard.tenant_id] for shard in shards)
    assert [shard.tenant_id for shard in shards[:2]] == [tenant.pk, other_tenant.pk]  # nobody waits for all of one
    behind = next(shard for shard in shards if one["behind"] in shard.series_ids)
    assert behind.start <= old and behind.end >= old + timedelta(minutes=5)

    published: list[tuple[tuple[int, ...], datetime, datetime]] = []
    with monkeypatch.context() as patch:
        patch.setattr(
            rollups,
            "rollups_refresh_publish",
            lambda *, series_ids, start, end, expires: published.append((tuple(series_ids), start, end)),
        )
        assert rollups.rollups_catch_up(shard_size=2, now=now) == len(shards)
    assert published == [(s.series_ids, s.start, s.end) for s in shards]

    # Through Celery (eager): the refreshes run, and then nothing is stale any more.
    from analytics.tasks import rollups_catch_up

    rollups_catch_up.apply()
    assert rollups.rollups_stale_shards(now=now) == []
    assert Rollup.objects.filter(series_id=one["behind"], resolution=MINUTE, bucket=old + timedelta(minutes=5)).exists()


def test_refresh_task_for_deleted_series_returns_quietly(tenant: Tenant) -> None:
    from analytics.tasks import rollups_refresh as task

    ts = datetime.now(UTC) - timedelta(hours=1)
    assert task.run([987_654_321], ts.isoformat(), ts.isoformat()) == 0


def test_refresh_task_takes_iso_strings(tenant: Tenant) -> None:
    from analytics.tasks import rollups_refresh as task

    ts = floor(datetime.now(UTC), HOUR) - timedelta(hours=2)
    ids = ingest(tenant, [("n", ts, 1.0)])
    assert task.run([ids["n"]], ts.isoformat(), ts.replace(tzinfo=None).isoformat()) == 3
