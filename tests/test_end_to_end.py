"""End to end on real services: HTTP -> PostgreSQL -> Redis -> a real Celery worker process.

The worker is a separate `celery worker` process started against the test database and a
Redis key space of this test run only (see config/settings/test.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from analytics import services
from analytics.models import IngestBatch, MetricSeries, Rollup
from config.celery_app import app as celery_app
from tenants import services as tenant_services
from tests.tenants.factories import TenantFactory
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: None, django_db_blocker: Any) -> Iterator[subprocess.Popen[bytes]]:
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "VIGIL_TEST_KEYPREFIX": settings.VIGIL_TEST_KEYPREFIX,
    }
    queues = ",".join(settings.VIGIL_QUEUES)
    (ROOT / ".run").mkdir(exist_ok=True)
    log = open(ROOT / ".run" / "e2e-worker.log", "wb")  # noqa: SIM115 - closed at teardown
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queues,
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"e2e-{os.getpid()}@%h",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            lambda: worker.poll() is not None or celery_app.control.ping(timeout=0.5), 60, "the worker to answer ping"
        )
        assert worker.poll() is None, f"worker exited; see {log.name}"
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()


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
