"""End to end on real services: HTTP -> PostgreSQL -> Redis -> a real Celery worker process.

The worker is a separate `celery worker` process started against the test database and a
Redis key space of this test run only (see config/settings/test.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db.models import F, Q

from analytics import services
from analytics.models import AnomalyResult, AnomalyScore, DetectorState, IngestBatch, MetricSeries, Rollup
from tenants import services as tenant_services
from tests.tenants.factories import TenantFactory
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _pipeline_settled(transactional_db: None) -> Iterator[None]:
    """After each test, wait until the worker has finished the stages the test set off (roll
    up, detection), so that the database flush at teardown does not race (and deadlock with)
    a task still writing."""
    yield

    def settled() -> bool:
        unfinished = IngestBatch.objects.filter(
            Q(status=IngestBatch.Status.PENDING) | Q(rolled_up_at__isnull=True)
        ).exists()
        unscored = MetricSeries.objects.filter(last_point_at__isnull=False).filter(
            Q(detector_state__isnull=True) | Q(detector_state__last_ts__lt=F("last_point_at"))
        )
        return not unfinished and not unscored.exists()

    wait_for(settled, timeout=60, what="the worker to finish the pipeline stages")


def test_points_posted_over_http_are_processed_by_the_worker(live_server: Any, celery_worker: Any) -> None:
    tenant = TenantFactory()
    key = tenant_services.api_key_create(tenant=tenant, name="e2e", scopes=["ingest", "read"]).raw_key
    now = time.time()
    body = {
        "points": [
            {"cluster": "c", "node": "n", "metric": "m", "timestamp": now - i, "value": float(i)} for i in range(100)
        ]
    }
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/points",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result = json.loads(response.read())
    assert result["accepted"] == 100

    batch = wait_for(
        lambda: IngestBatch.objects.filter(pk=result["batch_id"], status=IngestBatch.Status.PROCESSED).first(),
        what="the worker to process the batch",
    )
    assert batch.attempts == 0
    series = MetricSeries.objects.get(tenant=tenant)
    assert abs(series.last_point_at.timestamp() - now) < 1e-3

    # The rollup stage runs on its own queue, on the same worker here.
    wait_for(
        lambda: IngestBatch.objects.filter(pk=result["batch_id"], rolled_up_at__isnull=False).exists(),
        what="the worker to roll the batch up",
    )
    hourly = Rollup.objects.filter(series=series, resolution=Rollup.Resolution.HOUR)
    assert sum(r.count for r in hourly) == 100
    assert Rollup.objects.filter(series=series, resolution=Rollup.Resolution.MINUTE).count() >= 2


def test_a_spike_posted_over_http_becomes_an_anomaly_through_the_worker(live_server: Any, celery_worker: Any) -> None:
    """HTTP -> ingest queue -> detect queue, on the real worker: the spike is one anomaly."""
    assert "detect" in settings.VIGIL_QUEUES  # the worker consumes every queue
    tenant = TenantFactory()
    key = tenant_services.api_key_create(tenant=tenant, name="e2e", scopes=["ingest"]).raw_key
    now = time.time()
    values = [100.0 + (i * 7919 % 13) / 6 for i in range(150)]  # steady, deterministic ripple
    values[120] = 400.0
    body = {
        "points": [
            {
                "cluster": "c",
                "node": "web-1",
                "metric": "latency_p99",
                "unit": "ms",
                "timestamp": now - 150 + i,
                "value": v,
            }
            for i, v in enumerate(values)
        ]
    }
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/points",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["accepted"] == 150

    anomaly = wait_for(
        lambda: AnomalyResult.objects.filter(tenant=tenant).first(),
        timeout=60,
        what="the worker to ingest the batch and detect the spike",
    )
    series = MetricSeries.objects.get(tenant=tenant)
    assert anomaly.series == series and anomaly.label == "spike" and anomaly.observed == 400.0
    assert anomaly.explanation.startswith("latency_p99 on web-1 was 400 ms")
    assert DetectorState.objects.get(series=series).last_ts == series.last_point_at
    assert AnomalyScore.objects.filter(series=series).exists()


def test_a_lost_pipeline_message_is_recovered_by_the_sweeper(
    celery_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = TenantFactory()
    # The broker loses the message: publishing fails after the points are committed.
    monkeypatch.setattr(services, "ingest_batch_publish", lambda **kwargs: None)
    result = services.points_ingest(
        tenant=tenant, points=[{"cluster": "c", "node": "n", "metric": "m", "timestamp": time.time(), "value": 1.0}]
    )
    monkeypatch.undo()
    IngestBatch.objects.filter(pk=result.batch_id).update(received_at=datetime.now(tz=UTC) - timedelta(hours=1))

    from analytics.tasks import ingest_batches_sweep

    ingest_batches_sweep.delay()  # what beat does every minute
    batch = wait_for(
        lambda: IngestBatch.objects.filter(pk=result.batch_id, status=IngestBatch.Status.PROCESSED).first(),
        what="the sweeper to re-publish the batch and the worker to process it",
    )
    assert batch.attempts == 1
