"""The ingest pipeline: batch processing, idempotence, and the sweeper for lost messages."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analytics import services
from analytics.models import IngestBatch, MetricSeries, Rollup
from config.celery_app import app as celery_app
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def ingest(tenant: Tenant, *timestamps: float) -> IngestBatch:
    result = services.points_ingest(
        tenant=tenant,
        points=[{"cluster": "c", "node": "n", "metric": "m", "timestamp": ts, "value": 1.0} for ts in timestamps],
    )
    return IngestBatch.objects.get(pk=result.batch_id)


def test_processing_a_batch_sets_the_series_newest_point(tenant: Tenant) -> None:
    now = time.time()
    batch = ingest(tenant, now - 30, now - 10)
    assert services.ingest_batch_process(batch=batch) is True
    batch.refresh_from_db()
    assert batch.status == IngestBatch.Status.PROCESSED
    assert abs(MetricSeries.objects.get().last_point_at.timestamp() - (now - 10)) < 1e-3


def test_a_late_batch_does_not_move_last_point_backwards(tenant: Tenant) -> None:
    now = time.time()
    services.ingest_batch_process(batch=ingest(tenant, now - 10))
    services.ingest_batch_process(batch=ingest(tenant, now - 3600))
    assert abs(MetricSeries.objects.get().last_point_at.timestamp() - (now - 10)) < 1e-3


def test_processing_twice_does_nothing_the_second_time(tenant: Tenant) -> None:
    batch = ingest(tenant, time.time() - 5)
    assert services.ingest_batch_process(batch=batch) is True
    processed_at = IngestBatch.objects.get(pk=batch.pk).processed_at
    assert services.ingest_batch_process(batch=IngestBatch.objects.get(pk=batch.pk)) is False
    assert IngestBatch.objects.get(pk=batch.pk).processed_at == processed_at


def test_a_stale_redelivery_claims_nothing(tenant: Tenant) -> None:
    """Two deliveries raced: both loaded the row while pending; only one claims it."""
    batch = ingest(tenant, time.time() - 5)
    stale_copy = IngestBatch.objects.get(pk=batch.pk)
    assert services.ingest_batch_process(batch=batch) is True
    assert services.ingest_batch_process(batch=stale_copy) is False


@pytest.fixture
def eager_celery() -> Any:
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def test_sweeper_republishes_only_batches_pending_too_long(tenant: Tenant, eager_celery: None) -> None:
    old, fresh = ingest(tenant, time.time() - 5), ingest(tenant, time.time() - 4)
    IngestBatch.objects.filter(pk=old.pk).update(received_at=datetime.now(tz=UTC) - timedelta(minutes=10))
    assert services.ingest_batches_sweep(older_than=timedelta(minutes=2)) == 1
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert (old.status, old.attempts) == (IngestBatch.Status.PROCESSED, 1)
    assert fresh.status == IngestBatch.Status.PENDING


def test_sweeper_republishes_batches_processed_but_not_rolled_up(tenant: Tenant, eager_celery: None) -> None:
    batch = ingest(tenant, time.time() - 5)
    services.ingest_batch_process(batch=batch)  # its roll-up message was lost (never committed here)
    IngestBatch.objects.filter(pk=batch.pk).update(received_at=datetime.now(tz=UTC) - timedelta(minutes=10))
    assert services.ingest_batches_sweep(older_than=timedelta(minutes=2)) == 1
    batch.refresh_from_db()
    assert batch.rolled_up_at is not None
    assert Rollup.objects.filter(series__tenant=tenant).count() == 3


def test_processing_hands_the_batch_to_the_rollup_stage_after_commit(
    tenant: Tenant, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr("analytics.tasks.ingest_batch_roll_up.delay", sent.append)
    batch = ingest(tenant, time.time() - 5)
    with django_capture_on_commit_callbacks(execute=True):
        services.ingest_batch_process(batch=batch)
        assert sent == []  # not before commit
    assert sent == [str(batch.pk)]


def test_rolling_up_a_batch_writes_every_resolution_once(tenant: Tenant) -> None:
    now = time.time()
    batch = ingest(tenant, now - 30, now - 20, now - 10)
    services.ingest_batch_process(batch=batch)
    batch.refresh_from_db()
    assert services.ingest_batch_roll_up(batch=batch) is True
    counted: dict[int, int] = {}
    for row in Rollup.objects.filter(series__tenant=tenant):
        counted[row.resolution] = counted.get(row.resolution, 0) + row.count
    assert counted == {60: 3, 300: 3, 3600: 3}
    batch.refresh_from_db()
    stamped = batch.rolled_up_at
    assert stamped is not None
    assert services.ingest_batch_roll_up(batch=batch) is False
    batch.refresh_from_db()
    assert batch.rolled_up_at == stamped


def test_task_for_a_deleted_batch_returns_quietly(tenant: Tenant) -> None:
    from analytics.tasks import ingest_batch_process

    batch = ingest(tenant, time.time() - 5)
    IngestBatch.objects.filter(pk=batch.pk).delete()
    ingest_batch_process.run(str(batch.pk))  # no exception
