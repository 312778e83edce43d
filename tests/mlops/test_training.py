"""Training, the promotion gate, calendars and feedback that changes behaviour (mlops.training),
run in-process against PostgreSQL; tests/mlops/test_lifecycle_e2e.py runs them on a worker."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from django.conf import settings

from analytics import anomalies, services
from analytics.models import AnomalyResult, DetectorState, MetricSeries
from config.celery_app import app as celery_app
from mlops.artifacts import artifact_read
from mlops.models import CalendarEvent, ModelVersion
from mlops.services import model_version_load
from mlops.training import Scope, model_version_train, model_version_train_start, training_sweep
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

STEP = 300.0  # one point every 5 minutes
DAY = 86400.0


@pytest.fixture
def day0() -> float:
    """Midnight UTC five days ago: days 0-3 are history, day 4 (yesterday) is "after training"."""
    return float(int(time.time() // DAY) * DAY - 5 * DAY)


@pytest.fixture(autouse=True)
def _no_publishing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests drive training themselves: nothing goes to a broker."""
    monkeypatch.setattr("mlops.training.scopes_train_publish", lambda *a, **k: False)
    monkeypatch.setattr("analytics.anomalies.series_detect_publish", lambda **k: 0)
    monkeypatch.setattr("analytics.anomalies.series_rules_evaluate_publish", lambda **k: None)
    celery_app.conf.task_always_eager = False
    yield


def series_values(start: float, days: float, *, spikes_at: tuple[float, ...] = (2 * 3600,), seed: int = 1) -> Any:
    """A flat series with noise, and a +40 spike (two points, 20 noise sds) every day at each of
    `spikes_at` (seconds after midnight): the nightly backup someone keeps calling a false alarm."""
    n = int(days * DAY / STEP)
    ts = start + np.arange(n) * STEP
    values = 100.0 + np.random.default_rng(seed).normal(0.0, 2.0, n)
    for at in spikes_at:
        values[np.isin((ts % DAY), [at, at + STEP])] += 40.0
    return ts, values


def ingest(tenant: Tenant, ts: Any, values: Any, *, node: str = "db-1", metric: str = "io_wait") -> MetricSeries:
    for i in range(0, len(ts), 5000):
        services.points_ingest(
            tenant=tenant,
            points=[
                {"cluster": "eu", "node": node, "metric": metric, "timestamp": float(t), "value": float(v)}
                for t, v in zip(ts[i : i + 5000], values[i : i + 5000], strict=True)
            ],
        )
    return MetricSeries.objects.get(tenant=tenant, node=node, metric=metric)


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def train(series: MetricSeries, start: float, end: float, trigger: str = "manual") -> ModelVersion:
    version, _ = model_version_train_start(
        scope=Scope.of_series(series), trigger=trigger, start=utc(start), end=utc(end)
    )
    return model_version_train(version=version)


def detect(series: MetricSeries) -> None:
    while anomalies.series_detect(series_ids=[series.pk]):
        pass


def spikes(series: MetricSeries, since: float = 0.0) -> list[int]:
    """The hours (UTC) of the series' anomalies since `since`."""
    rows = AnomalyResult.objects.filter(series=series, peak_ts__gte=utc(since)).order_by("peak_ts")
    return [row.peak_ts.hour for row in rows]


# --- Training ----------------------------------------------------------------------------------


def test_training_stores_a_verified_artifact_with_its_metrics_and_reloads_to_identical_scores(
    tenant: Tenant, day0: float
) -> None:
    ts, values = series_values(day0, 4)
    series = ingest(tenant, ts, values)
    version = train(series, day0, day0 + 4 * DAY)

    assert version.status in ("candidate", "active"), version.error
    assert version.artifact is not None
    data = artifact_read(version.artifact)
    assert hashlib.sha256(data).hexdigest() == version.artifact.sha256
    assert (version.train_points, version.trigger, version.detector) == (len(ts), "manual", settings.VIGIL_DETECTOR)
    metrics = version.metrics
    assert set(metrics["score_quantiles"]) == {"p50", "p90", "p99", "p999"}
    assert 0 < metrics["contamination"] < 0.05
    assert metrics["anomaly_rate_per_day"] > 0  # the nightly spike
    assert set(metrics["reference"]) == {"value", "residual"}
    assert metrics["fit_seconds"] >= 0 and metrics["read_seconds"] >= 0

    from analytics.detection import detector_create

    detector = detector_create(version.detector, sensitivity="medium")
    after_ts, after_values = series_values(day0 + 4 * DAY, 0.5, seed=9)
    first = detector.update(model_version_load(version=version)["state"], after_ts, after_values)[0]
    again = detector.update(model_version_load(version=version)["state"], after_ts, after_values)[0]
    np.testing.assert_array_equal(first.score, again.score)


def test_training_the_same_scope_and_window_again_returns_the_same_version(tenant: Tenant, day0: float) -> None:
    ts, values = series_values(day0, 3)
    series = ingest(tenant, ts, values)
    first = train(series, day0, day0 + 3 * DAY)
    second, new = model_version_train_start(
        scope=Scope.of_series(series), trigger="schedule", start=utc(day0), end=utc(day0 + 3 * DAY)
    )
    assert (second.pk, new) == (first.pk, False)
    other, new = model_version_train_start(
        scope=Scope.of_series(series), trigger="schedule", start=utc(day0), end=utc(day0 + 2 * DAY)
    )
    assert new and other.pk != first.pk


def test_a_window_with_too_few_points_fails_with_the_reason_and_nothing_changes(tenant: Tenant, day0: float) -> None:
    ts, values = series_values(day0, 0.1)
    series = ingest(tenant, ts, values)
    version = train(series, day0, day0 + DAY)
    assert version.status == "failed"
    assert "points in the training window" in version.error
    assert list(version.events.values_list("action", flat=True)) == ["failed"]
    # A failed version does not block another attempt on the same inputs.
    again, new = model_version_train_start(
        scope=Scope.of_series(series), trigger="manual", start=utc(day0), end=utc(day0 + DAY)
    )
    assert new and again.pk != version.pk


def test_a_training_whose_worker_was_lost_is_swept_and_can_start_again(
    tenant: Tenant, day0: float, settings: Any
) -> None:
    ts, values = series_values(day0, 1)
    series = ingest(tenant, ts, values)
    version, _ = model_version_train_start(
        scope=Scope.of_series(series), trigger="manual", start=utc(day0), end=utc(day0 + DAY)
    )
    settings.VIGIL_TRAIN_STALE_SECONDS = 0
    assert training_sweep() == 1
    version.refresh_from_db()
    assert (version.status, version.error) == ("failed", "the worker training it was lost")


def test_calendar_events_are_left_out_of_training(tenant: Tenant, day0: float) -> None:
    ts, values = series_values(day0, 3, spikes_at=())
    outage = (ts >= day0 + DAY) & (ts < day0 + DAY + 6 * 3600)
    values[outage] = 0.0  # a maintenance window: the service was down
    series = ingest(tenant, ts, values)
    CalendarEvent.objects.create(
        tenant=tenant, kind="maintenance", start=utc(day0 + DAY), end=utc(day0 + DAY + 6 * 3600), cluster="eu"
    )
    version = train(series, day0, day0 + 3 * DAY)
    assert version.metrics["excluded_points"] == int(outage.sum())
    assert version.train_points == len(ts) - int(outage.sum())
    assert min(version.metrics["reference"]["value"]["quantiles"]) > 50  # the zeros were not learned


# --- Feedback ----------------------------------------------------------------------------------


def test_a_pattern_marked_false_positive_three_times_stops_alerting_and_a_new_anomaly_still_fires(
    tenant: Tenant, day0: float
) -> None:
    ts, values = series_values(day0, 4)
    series = ingest(tenant, ts, values)
    detect(series)
    nightly = AnomalyResult.objects.filter(series=series, peak_ts__hour=2).order_by("peak_ts")
    assert nightly.count() >= 3, spikes(series)
    for anomaly in nightly[:3]:
        anomalies.anomaly_feedback_set(anomaly=anomaly, feedback="false_positive")

    version = train(series, day0, day0 + 4 * DAY, trigger="feedback")
    assert version.status == "active", version.metrics.get("gate")
    [rule] = model_version_load(version=version)["rules"]
    assert rule["direction"] == 1 and rule["time_of_day"] is not None
    assert DetectorState.objects.get(series=series).model_version_id == version.pk

    # The next day: the backup spike at 02:00 again, and something new at 14:00.
    next_ts, next_values = series_values(day0 + 4 * DAY, 1, spikes_at=(2 * 3600, 14 * 3600), seed=5)
    ingest(tenant, next_ts, next_values)
    detect(series)
    assert spikes(series, since=day0 + 4 * DAY) == [14]
    new = AnomalyResult.objects.get(series=series, peak_ts__gte=utc(day0 + 4 * DAY))
    assert new.model_version_id == version.pk


def test_without_feedback_the_pattern_keeps_firing(tenant: Tenant, day0: float) -> None:
    ts, values = series_values(day0, 4)
    series = ingest(tenant, ts, values)
    detect(series)
    version = train(series, day0, day0 + 4 * DAY)
    assert model_version_load(version=version)["rules"] == []
    next_ts, next_values = series_values(day0 + 4 * DAY, 1, spikes_at=(2 * 3600, 14 * 3600), seed=5)
    ingest(tenant, next_ts, next_values)
    detect(series)
    assert spikes(series, since=day0 + 4 * DAY) == [2, 14]


# --- The gate ----------------------------------------------------------------------------------


def test_a_candidate_that_reports_more_than_the_active_version_stays_a_candidate(tenant: Tenant, day0: float) -> None:
    ts, values = series_values(day0, 3, spikes_at=())
    series = ingest(tenant, ts, values)
    detect(series)
    active = ModelVersion.objects.get(scope_key=f"series:{series.pk}", status="active")
    assert active.trigger == "online"
    # The holdout day (day 3) has six spikes the active version reported none of (production ran
    # before they arrived): the candidate would report six where the active one reported nothing.
    late_ts, late_values = series_values(day0 + 3 * DAY, 1, spikes_at=tuple(h * 3600 for h in (1, 5, 9, 13, 17, 21)))
    ingest(tenant, late_ts, late_values)
    candidate = train(series, day0, day0 + 4 * DAY)

    gate = candidate.metrics["gate"]
    assert candidate.status == "candidate"
    assert gate["passed"] is False and gate["checks"]["stability"] is False
    assert (gate["candidate"]["anomalies"], gate["current"]["anomalies"]) == (6, 0)
    assert "kept as a candidate" in candidate.events.get(action="gated").reason
    active.refresh_from_db()
    assert active.status == "active"
    assert DetectorState.objects.get(series=series).model_version_id == active.pk


# --- Nodes -------------------------------------------------------------------------------------


def test_a_node_trains_its_multivariate_model_on_rollups_and_serves_it(tenant: Tenant) -> None:
    from analytics import rollups
    from analytics.models import NodeDetectorState
    from mlops.drift import model_version_drift

    minutes = 720
    begin = float(int(time.time() // 3600) * 3600 - (minutes + 60) * 60)
    rng = np.random.default_rng(4)
    load = 50 + rng.normal(0, 5, minutes)
    metrics = {"cpu": load + rng.normal(0, 1, minutes), "latency": 2 * load + rng.normal(0, 2, minutes)}
    ts = begin + np.arange(minutes) * 60.0
    for metric, values in metrics.items():
        ingest(tenant, ts, values, node="db-1", metric=metric)
    members = MetricSeries.objects.filter(tenant=tenant, node="db-1")
    rollups.rollups_refresh(
        series_ids=list(members.values_list("pk", flat=True)), start=utc(begin), end=utc(ts[-1] + 60)
    )
    anomalies.node_detect(tenant=tenant, nodes=[("eu", "db-1")])
    online = ModelVersion.objects.get(scope_key="node:eu/db-1", status="active")

    scope = Scope(tenant=tenant, kind="node", cluster="eu", node="db-1")
    end = begin + minutes * 60.0
    version, _ = model_version_train_start(scope=scope, trigger="manual", start=utc(begin), end=utc(end))
    version = model_version_train(version=version)

    assert version.status in ("candidate", "active"), version.error
    assert (version.detector, version.feature_schema) == (settings.VIGIL_NODE_DETECTOR, ["cpu", "latency"])
    assert version.train_points == minutes
    assert set(version.metrics["reference"]) == {"cpu", "latency"}
    assert version.metrics["gate"]["active"] == online.pk
    if version.status == "active":
        assert NodeDetectorState.objects.get(tenant=tenant, node="db-1").model_version_id == version.pk
    report = model_version_drift(version=version, window_to=utc(end + 3600))
    assert report.verdict == "insufficient_data"  # nothing after training yet


# --- Beat ----------------------------------------------------------------------------------------


def test_beat_fans_training_out_per_tenant_and_scope_and_a_shard_trains_its_scopes(
    tenant: Tenant, other_tenant: Tenant, day0: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops import training

    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        "mlops.training.scopes_train_publish", lambda *shard, **options: sent.append((*shard, options)) or True
    )
    monkeypatch.setattr("mlops.training.TRAIN_SHARD", 2)
    ts, values = series_values(day0, 2, spikes_at=())
    mine = [ingest(tenant, ts, values, node=f"db-{i}") for i in range(3)]
    theirs = ingest(other_tenant, ts, values)
    quiet = ingest(tenant, ts, values, node="never-detected")
    for series in [*mine, theirs]:
        detect(series)
    MetricSeries.objects.update(last_point_at=utc(ts[-1]))  # what the ingest pipeline's worker sets

    now = utc(day0 + 2 * DAY + 1800)
    assert training.models_train_publish(now=now) == 3
    shards = [(tenant_id, kind, keys) for tenant_id, kind, keys, _ in sent]
    # Round-robin: the first shard of each tenant before the second of any.
    assert shards == [
        (tenant.pk, "series", [str(mine[0].pk), str(mine[1].pk)]),
        (other_tenant.pk, "series", [str(theirs.pk)]),
        (tenant.pk, "series", [str(mine[2].pk)]),
    ]
    assert str(quiet.pk) not in {key for _, _, keys in shards for key in keys}
    options = sent[0][3]
    assert options["trigger"] == "schedule" and options["end"] == utc(day0 + 2 * DAY)

    # A shard trains its scopes once: a redelivered shard trains nothing more.
    start, end = options["start"], options["end"]
    args = {"tenant_id": tenant.pk, "kind": "series", "keys": shards[0][2], "trigger": "schedule"}
    assert training.scopes_train(**args, start=start, end=end) == 2
    assert training.scopes_train(**args, start=start, end=end) == 0
    assert ModelVersion.objects.filter(trigger="schedule").count() == 2


# --- Calendars at serving time -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "hours"),
    [
        ({"cluster": "eu", "suppress": True}, [14]),  # held back: the 02:00 spike is in maintenance
        ({"cluster": "eu", "node": "db-1", "suppress": True}, [14]),  # the node's own event
        ({"cluster": "eu", "suppress": False}, [2, 14]),  # known, but not suppressing detection
        ({"cluster": "us", "suppress": True}, [2, 14]),  # another cluster's maintenance
    ],
    ids=["cluster", "node", "not-suppressing", "other-cluster"],
)
def test_a_suppressing_calendar_event_holds_detection_back(
    tenant: Tenant, day0: float, event: dict[str, Any], hours: list[int]
) -> None:
    from analytics.models import AnomalyScore

    ts, values = series_values(day0, 2, spikes_at=())
    series = ingest(tenant, ts, values)
    detect(series)
    start = day0 + 2 * DAY
    CalendarEvent.objects.create(
        tenant=tenant, kind="maintenance", start=utc(start + 3600), end=utc(start + 3 * 3600), **event
    )
    next_ts, next_values = series_values(start, 1, spikes_at=(2 * 3600, 14 * 3600), seed=5)
    ingest(tenant, next_ts, next_values)
    detect(series)

    assert spikes(series, since=start) == hours
    scored = AnomalyScore.objects.filter(series=series, bucket__gte=utc(start + 3600), bucket__lt=utc(start + 3 * 3600))
    assert scored.exists() is (hours != [14])  # suppressed: not scored at all
    assert DetectorState.objects.get(series=series).last_ts == utc(next_ts[-1])
