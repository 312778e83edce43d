"""Concurrent ingest on PostgreSQL: no deadlocks, no duplicates, the series quota holds."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from analytics import services
from analytics.models import MetricSeries, Point
from config.errors import Rejected
from tests.concurrency import run_concurrently
from tests.tenants.factories import TenantFactory

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def test_overlapping_batches_with_new_series_never_deadlock_or_duplicate() -> None:
    tenant = TenantFactory()
    now = time.time() - 60
    # Existing series, written by every batch (in a different order each time) ...
    services.points_ingest(
        tenant=tenant,
        points=[{"cluster": "c", "node": f"n{i}", "metric": "m", "timestamp": now, "value": 0.0} for i in range(20)],
    )

    def batch(seed: int) -> Any:
        points = [
            {"cluster": "c", "node": f"n{i}", "metric": "m", "timestamp": now - s, "value": float(seed)}
            for i in range(20)
            for s in range(25)
        ]
        random.Random(seed).shuffle(points)
        # ... and half of them a series of their own, so they take the series-creation lock.
        if seed % 2:
            points.append({"cluster": "c", "node": f"new-{seed}", "metric": "m", "timestamp": now, "value": 1.0})
        return lambda: services.points_ingest(tenant=tenant, points=points)

    for _ in range(3):
        errors = run_concurrently([batch(seed) for seed in range(6)])
        assert errors == []
    assert MetricSeries.objects.filter(tenant=tenant).count() == 23
    assert Point.objects.filter(series__tenant=tenant).count() == 20 * 25 + 3


def test_concurrent_requests_cannot_exceed_the_series_quota() -> None:
    tenant = TenantFactory(max_series=5)
    now = time.time() - 60

    def batch(seed: int) -> Any:
        points = [
            {"cluster": "c", "node": f"{seed}-{i}", "metric": "m", "timestamp": now, "value": 1.0} for i in range(2)
        ]
        return lambda: services.points_ingest(tenant=tenant, points=points)

    errors = run_concurrently([batch(seed) for seed in range(6)])
    assert all(isinstance(e, Rejected) and e.code == "invalid_points" for e in errors)
    assert MetricSeries.objects.filter(tenant=tenant).count() <= 5
    assert len(errors) == 4  # two requests of two series fit in five
