"""The lateness window: late points revise rolled-up buckets within it and are refused beyond it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from analytics import services
from analytics.models import IngestBatch, Point, Rollup
from config.errors import Rejected
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

HOUR = 3600


def ingest_and_roll_up(tenant: Tenant, *timestamps: float, value: float = 1.0) -> None:
    points = [{"cluster": "c", "node": "n", "metric": "m", "timestamp": ts, "value": value} for ts in timestamps]
    result = services.points_ingest(tenant=tenant, points=points)
    batch = IngestBatch.objects.get(pk=result.batch_id)
    services.ingest_batch_process(batch=batch)
    batch.refresh_from_db()
    services.ingest_batch_roll_up(batch=batch)


def late_point(ts: float, value: float = 9.0) -> dict[str, Any]:
    return {"cluster": "c", "node": "n", "metric": "m", "timestamp": ts, "value": value}


@pytest.fixture
def three_hours_ago() -> float:
    """A minute boundary in the middle of an hour three hours back."""
    return (time.time() // HOUR - 3) * HOUR + 30 * 60


def test_a_point_beyond_the_window_into_a_rolled_up_hour_is_refused(tenant: Tenant, three_hours_ago: float) -> None:
    ingest_and_roll_up(tenant, three_hours_ago)
    with pytest.raises(Rejected) as refused:
        services.points_ingest(tenant=tenant, points=[late_point(time.time() - 60), late_point(three_hours_ago + 7)])
    assert [(d["index"], d["code"]) for d in refused.value.details] == [(1, "too_late")]
    assert Point.objects.count() == 1  # the whole batch was refused, the fresh point too


def test_a_late_point_within_the_window_revises_its_buckets(
    tenant: Tenant, three_hours_ago: float, settings: Any
) -> None:
    settings.VIGIL_ROLLUP_LATENESS_SECONDS = 4 * HOUR
    ingest_and_roll_up(tenant, three_hours_ago)
    ingest_and_roll_up(tenant, three_hours_ago + 7, value=9.0)
    hour = Rollup.objects.get(resolution=Rollup.Resolution.HOUR)
    assert (hour.count, hour.max, hour.revised_at is not None) == (2, 9.0, True)


def test_an_old_hour_never_rolled_up_accepts_a_backfill(tenant: Tenant, three_hours_ago: float) -> None:
    ingest_and_roll_up(tenant, time.time() - 60)
    services.points_ingest(tenant=tenant, points=[late_point(three_hours_ago), late_point(three_hours_ago - 2 * HOUR)])
    assert Point.objects.count() == 3


def test_another_series_in_a_rolled_up_hour_is_not_late(tenant: Tenant, three_hours_ago: float) -> None:
    ingest_and_roll_up(tenant, three_hours_ago)
    services.points_ingest(tenant=tenant, points=[{**late_point(three_hours_ago + 7), "node": "other"}])
    assert Point.objects.count() == 2
