"""The model lifecycle end to end on real services: points through the pipeline on a real Celery
worker, training on the `train` queue, drift on the `drift` queue, promotion and rollback over
HTTP, all against PostgreSQL and Redis."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from django.db.models import F, Q

from analytics.detection import detector_create
from analytics.models import AnomalyResult, DetectorState, IngestBatch, MetricSeries
from mlops.artifacts import artifact_read
from mlops.models import DriftReport, ModelArtifact, ModelVersion
from mlops.services import model_version_load, model_version_promote, model_version_rollback
from mlops.tasks import version_train, versions_drift
from mlops.training import Scope, model_version_train_start
from tenants import services as tenant_services
from tenants.models import Tenant
from tests.mlops.test_drift import seasonal
from tests.mlops.test_training import DAY, ingest, series_values
from tests.tenants.factories import TenantFactory
from tests.waiting import wait_for

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _pipeline_settled(transactional_db: None) -> Iterator[None]:
    """After each test, wait for the worker to finish what the test set off, so the database
    flush at teardown does not race a task still writing."""
    yield

    def settled() -> bool:
        unfinished = IngestBatch.objects.filter(
            Q(status=IngestBatch.Status.PENDING) | Q(rolled_up_at__isnull=True)
        ).exists()
        unscored = MetricSeries.objects.filter(last_point_at__isnull=False).filter(
            Q(detector_state__isnull=True) | Q(detector_state__last_ts__lt=F("last_point_at"))
        )
        training = ModelVersion.objects.filter(status="training").exists()
        return not unfinished and not unscored.exists() and not training

    wait_for(settled, timeout=120, what="the worker to finish")


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def a_tenant() -> Tenant:
    tenant = TenantFactory(retention_raw_days=30)
    return tenant


def detected(series: MetricSeries, last: float) -> DetectorState:
    """Wait until the worker has scored the series up to its point at `last` (Unix seconds)."""
    return wait_for(
        lambda: DetectorState.objects.filter(series=series, last_ts__gte=utc(last)).first(),
        timeout=120,
        what="the worker to detect the series",
    )


def trained(series: MetricSeries, start: float, end: float, trigger: str = "manual") -> ModelVersion:
    """Start training and let the worker's `train` queue do it."""
    version, new = model_version_train_start(
        scope=Scope.of_series(series), trigger=trigger, start=utc(start), end=utc(end)
    )
    assert new
    version_train.delay(version.pk)
    done = Q(metrics__has_key="gate") | Q(status="failed")  # the gate writes its call with the outcome
    return wait_for(
        lambda: ModelVersion.objects.filter(done, pk=version.pk).first(),
        timeout=120,
        what="the worker to train the version",
    )


def call(live_server: Any, key: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{live_server.url}{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_trained_on_the_worker_promoted_and_rolled_back_with_anomalies_keeping_their_version(
    live_server: Any, celery_worker: Any
) -> None:
    tenant = a_tenant()
    key = tenant_services.api_key_create(tenant=tenant, name="e2e", scopes=["read", "admin"]).raw_key
    day0 = float(int(time.time() // DAY) * DAY - 5 * DAY)
    ts, values = series_values(day0, 4)
    series = ingest(tenant, ts, values)
    detected(series, ts[-1])
    online = ModelVersion.objects.get(scope_key=f"series:{series.pk}", status="active")
    assert online.trigger == "online"
    ids = list(AnomalyResult.objects.filter(series=series).values_list("pk", flat=True))
    first = AnomalyResult.objects.filter(pk__in=ids)
    assert ids and set(first.values_list("model_version", flat=True)) == {online.pk}

    version = trained(series, day0, day0 + 4 * DAY)
    assert version.status in ("candidate", "active"), version.error
    assert version.artifact is not None
    stored = ModelArtifact.objects.get(pk=version.artifact_id)
    assert hashlib.sha256(artifact_read(stored)).hexdigest() == stored.sha256 == version.artifact_id
    detector = detector_create(version.detector, sensitivity="medium")
    after_ts, after_values = series_values(day0 + 4 * DAY, 0.5, seed=9)
    scored = [
        detector.update(model_version_load(version=version)["state"], after_ts, after_values)[0].score for _ in range(2)
    ]
    np.testing.assert_array_equal(*scored)

    status, body = call(live_server, key, f"/api/v1/model-versions/{version.pk}/promote", {"reason": "e2e"})
    assert status == 200 and body["status"] == "active"
    assert ModelVersion.objects.filter(scope_key=f"series:{series.pk}", status="active").count() == 1
    assert DetectorState.objects.get(series=series).model_version_id == version.pk

    # New points: a new anomaly is the promoted version's; the old ones stay the online one's.
    next_ts, next_values = series_values(day0 + 4 * DAY, 1, spikes_at=(14 * 3600,), seed=5)
    ingest(tenant, next_ts, next_values)
    detected(series, next_ts[-1])
    new = wait_for(
        lambda: AnomalyResult.objects.filter(series=series, peak_ts__gte=utc(day0 + 4 * DAY)).first(),
        what="the new anomaly",
    )
    assert new.model_version_id == version.pk
    assert set(first.values_list("model_version", flat=True)) == {online.pk}

    back = model_version_rollback(tenant=tenant, key=f"series:{series.pk}", reason="e2e")
    assert back.pk == online.pk
    assert list(ModelVersion.objects.filter(scope_key=f"series:{series.pk}", status="active")) == [online]
    assert DetectorState.objects.get(series=series).model_version_id == online.pk
    new.refresh_from_db()
    assert new.model_version_id == version.pk


def test_drift_on_shifted_data_reports_retrains_and_gates_on_the_worker(celery_worker: Any) -> None:
    tenant = a_tenant()
    day0 = float(int(time.time() // DAY) * DAY - 8 * DAY)
    ts, values = seasonal(day0, 7, seed=3)
    shifted_ts, shifted = seasonal(day0 + 7 * DAY, 1, seed=11, level=112.0)
    series = ingest(tenant, np.concatenate([ts, shifted_ts]), np.concatenate([values, shifted]))
    detected(series, shifted_ts[-1])
    version = trained(series, day0, day0 + 7 * DAY, trigger="schedule")
    if version.status == "candidate":  # the gate's call; this test is about what drift does next
        version = model_version_promote(version=version, reason="e2e")
    assert version.status == "active"

    versions_drift.delay([version.pk], utc(day0 + 8 * DAY).isoformat())
    report = wait_for(
        lambda: DriftReport.objects.filter(model_version=version).first(), timeout=120, what="the drift report"
    )
    assert (report.verdict, report.action) == ("drift", "retrain"), report.statistics
    assert "value" in report.drifted
    retrained = wait_for(
        lambda: ModelVersion.objects.filter(pk=report.retrained_id, metrics__has_key="gate").first(),
        timeout=120,
        what="the worker to train the drift candidate",
    )
    assert (retrained.trigger, retrained.parent_id) == ("drift", version.pk)
    gate = retrained.metrics["gate"]
    assert gate["active"] == version.pk
    assert retrained.status == ("active" if gate["passed"] else "candidate")
    assert ModelVersion.objects.filter(scope_key=f"series:{series.pk}", status="active").count() == 1


def test_a_corrupted_artifact_is_refused_and_the_active_version_keeps_serving(
    live_server: Any, celery_worker: Any
) -> None:
    tenant = a_tenant()
    key = tenant_services.api_key_create(tenant=tenant, name="e2e", scopes=["read", "admin"]).raw_key
    day0 = float(int(time.time() // DAY) * DAY - 5 * DAY)
    ts, values = series_values(day0, 4, spikes_at=())
    series = ingest(tenant, ts, values)
    detected(series, ts[-1])
    active = ModelVersion.objects.get(scope_key=f"series:{series.pk}", status="active")
    candidate = trained(series, day0 + DAY, day0 + 4 * DAY)
    if candidate.status == "active":  # the gate let it through; roll back to have a candidate
        model_version_rollback(tenant=tenant, key=f"series:{series.pk}")
        candidate.refresh_from_db()
        active.refresh_from_db()
    assert candidate.artifact_id is not None
    ModelArtifact.objects.filter(pk=candidate.artifact_id).update(data=b'{"state": {"last_ts": 0}, "rules": []}')

    status, body = call(live_server, key, f"/api/v1/model-versions/{candidate.pk}/promote")
    assert status == 409 and body["error"]["code"] == "artifact_corrupt", body
    assert f"v{candidate.version} (" in body["error"]["message"] and "cannot be served" in body["error"]["message"]
    assert "its bytes hash to" in body["error"]["message"]
    serving = ModelVersion.objects.get(scope_key=f"series:{series.pk}", status="active")
    assert serving.pk == active.pk

    # Detection goes on with the active version.
    next_ts, next_values = series_values(day0 + 4 * DAY, 1, spikes_at=(14 * 3600,), seed=5)
    ingest(tenant, next_ts, next_values)
    detected(series, next_ts[-1])
    new = wait_for(
        lambda: AnomalyResult.objects.filter(series=series, peak_ts__gte=utc(day0 + 4 * DAY)).first(),
        what="an anomaly after the refused promotion",
    )
    assert new.model_version_id == active.pk
