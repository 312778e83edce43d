"""Anomaly detection services: streaming detection, the rescan, node detection and feedback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from analytics import anomalies, rollups, services
from analytics.detection import detector_create
from analytics.models import (
    AnomalyResult,
    AnomalyScore,
    DetectorState,
    IngestBatch,
    MetricSeries,
    NodeDetectorState,
)
from config.celery_app import app as celery_app
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory, AnomalyScoreFactory
from tests.tenants.factories import TenantFactory

pytestmark = pytest.mark.django_db

INTERVAL = 10.0
NORMAL, SPIKE = 100.0, 200.0


def noise(n: int, seed: int = 7) -> np.ndarray:
    return NORMAL + np.random.default_rng(seed).normal(0.0, 2.0, n)


def send(
    tenant: Tenant,
    start: float,
    values: Any,
    *,
    node: str = "web-1",
    metric: str = "latency_p99",
    unit: str = "ms",
    interval: float = INTERVAL,
) -> MetricSeries:
    """Ingest `values` one `interval` apart from `start` (unix seconds); returns the series."""
    services.points_ingest(
        tenant=tenant,
        points=[
            {
                "cluster": "eu",
                "node": node,
                "metric": metric,
                "unit": unit,
                "timestamp": start + i * interval,
                "value": float(v),
            }
            for i, v in enumerate(values)
        ],
    )
    return MetricSeries.objects.get(tenant=tenant, node=node, metric=metric)


def detect(series: MetricSeries) -> int:
    return anomalies.series_detect(series_ids=[series.pk])


def rows(series: MetricSeries) -> list[tuple[Any, ...]]:
    return list(
        AnomalyResult.objects.filter(series=series)
        .order_by("window_start")
        .values_list("window_start", "window_end", "peak_ts", "peak_score", "label", "status", "explanation")
    )


@pytest.fixture
def start() -> float:
    """A stream start 50 minutes ago, on a whole minute: 300 points at 10 s end a minute ago."""
    return float(int(time.time() - 3060) // 60 * 60)


@pytest.fixture
def eager_celery() -> Iterator[None]:
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


@pytest.fixture(autouse=True)
def _no_rescan_watermark() -> Iterator[None]:
    cache.delete(anomalies.RESCAN_WATERMARK_KEY)
    yield
    cache.delete(anomalies.RESCAN_WATERMARK_KEY)


# --- Streaming ----------------------------------------------------------------------------------


def test_a_spike_in_the_stream_opens_exactly_one_anomaly_with_an_explanation(tenant: Tenant, start: float) -> None:
    values = noise(150)
    values[120] = SPIKE
    series = send(tenant, start, values)
    assert detect(series) == 150

    anomaly = AnomalyResult.objects.get(series=series)
    spike_at = datetime.fromtimestamp(start + 120 * INTERVAL, tz=UTC)
    assert (anomaly.window_start, anomaly.window_end, anomaly.peak_ts) == (spike_at, spike_at, spike_at)
    assert (anomaly.label, anomaly.detector, anomaly.tenant, anomaly.node) == ("spike", "ensemble", tenant, "web-1")
    assert anomaly.observed == SPIKE and anomaly.lower < NORMAL < anomaly.upper
    assert anomaly.explanation.startswith(f"latency_p99 on web-1 was 200 ms at {spike_at:%Y-%m-%d %H:%M} UTC")
    assert "robust standard deviations above normal" in anomaly.explanation
    assert anomaly.details["label"] == "spike" and anomaly.details["observed"] == SPIKE
    # The spike is 29 points (290 s) before the newest point: past the 100 s gap, so closed.
    assert anomaly.status == AnomalyResult.Status.CLOSED


def test_running_detection_again_on_the_same_points_changes_nothing(tenant: Tenant, start: float) -> None:
    values = noise(150)
    values[140] = SPIKE
    series = send(tenant, start, values)
    detect(series)
    before = (rows(series), DetectorState.objects.get(series=series).state)
    assert detect(series) == 0
    assert (rows(series), DetectorState.objects.get(series=series).state) == before


def test_rescoring_the_same_points_from_scratch_gives_the_same_rows(tenant: Tenant, start: float) -> None:
    values = noise(200)
    values[[120, 121, 170]] = SPIKE
    series = send(tenant, start, values)
    for first in range(0, 200, 20):  # streamed, batch by batch
        send(tenant, start + first * INTERVAL, values[first : first + 20])
        detect(series)
    streamed = [row[:6] for row in rows(series)]
    assert len(streamed) == 2

    DetectorState.objects.filter(series=series).delete()
    detect(series)  # from scratch, all at once
    assert [row[:6] for row in rows(series)] == streamed


def test_consecutive_anomalous_batches_extend_one_anomaly(tenant: Tenant, start: float) -> None:
    values = noise(130)
    values[[99, 100, 101]] = SPIKE
    series = send(tenant, start, values[:100])  # ends on a spike
    detect(series)
    first = AnomalyResult.objects.get(series=series)
    assert first.status == AnomalyResult.Status.OPEN

    send(tenant, start + 100 * INTERVAL, values[100:102])  # begins with two more
    detect(series)
    extended = AnomalyResult.objects.get(series=series)
    assert extended.pk == first.pk
    assert extended.window_start == first.window_start
    assert extended.window_end == datetime.fromtimestamp(start + 101 * INTERVAL, tz=UTC)
    assert extended.details["points"] == 3
    assert "from" in extended.explanation


def test_an_open_anomaly_closes_once_the_series_is_past_the_gap(tenant: Tenant, start: float) -> None:
    values = noise(130)
    values[99] = SPIKE
    series = send(tenant, start, values[:102])
    detect(series)
    assert AnomalyResult.objects.get(series=series).status == AnomalyResult.Status.OPEN

    send(tenant, start + 102 * INTERVAL, values[102:105])  # 50 s past the spike: within the 100 s gap
    detect(series)
    assert AnomalyResult.objects.get(series=series).status == AnomalyResult.Status.OPEN

    send(tenant, start + 105 * INTERVAL, values[105:])  # 300 s past it
    detect(series)
    assert AnomalyResult.objects.get(series=series).status == AnomalyResult.Status.CLOSED


def test_an_open_anomaly_of_a_series_that_went_silent_is_closed_by_the_rescan(tenant: Tenant, start: float) -> None:
    values = noise(102)
    values[99] = SPIKE
    series = send(tenant, start, values)  # and then nothing more
    detect(series)
    anomaly = AnomalyResult.objects.get(series=series)
    assert anomaly.status == AnomalyResult.Status.OPEN
    end = anomaly.window_end
    grace = timedelta(seconds=settings.VIGIL_DETECT_GRACE_SECONDS)

    # Within the 100 s gap (10 samples of 10 s) plus the grace, it may still grow.
    assert anomalies.anomalies_close_silent(now=end + timedelta(seconds=90) + grace) == 0
    assert anomalies.anomalies_close_silent(now=end + timedelta(seconds=110) + grace) == 1
    assert AnomalyResult.objects.get(series=series).status == AnomalyResult.Status.CLOSED
    assert anomalies.anomalies_close_silent(now=end + timedelta(hours=1)) == 0  # idempotent


def test_a_detector_state_that_is_not_valid_json_starts_afresh_instead_of_failing(
    tenant: Tenant, start: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = send(tenant, start, noise(50))
    real = detector_create("ensemble").__class__.update

    def overflowing(self: Any, state: Any, ts: Any, vs: Any) -> Any:
        scores, new = real(self, state, ts, vs)
        return scores, {**new, "interval": float("inf")}

    monkeypatch.setattr(detector_create("ensemble").__class__, "update", overflowing)
    assert detect(series) == 50

    stored = DetectorState.objects.get(series=series)
    assert stored.state["seen"] == 0 and stored.last_ts is not None  # afresh, and the stream moved on


def test_the_score_series_holds_the_highest_score_of_each_minute(tenant: Tenant, start: float) -> None:
    values = noise(150)
    values[123] = SPIKE  # 20 minutes and 30 seconds in
    series = send(tenant, start, values)
    detect(series)
    scores = dict(AnomalyScore.objects.filter(series=series).values_list("bucket", "score"))
    assert len(scores) == 25  # 150 points at 10 s
    spike_minute = datetime.fromtimestamp(start + 20 * 60, tz=UTC)
    assert scores[spike_minute] == max(scores.values()) == AnomalyResult.objects.get(series=series).peak_score
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_a_changed_sensitivity_resets_the_state_without_reporting_history_again(
    tenant: Tenant, start: float, settings: Any
) -> None:
    settings.VIGIL_DETECT_WARMUP_POINTS = 80
    values = noise(160)
    values[100] = SPIKE
    series = send(tenant, start, values[:150])
    detect(series)
    assert DetectorState.objects.get(series=series).state["seen"] == 150

    MetricSeries.objects.filter(pk=series.pk).update(detection_sensitivity="high")
    send(tenant, start + 150 * INTERVAL, values[150:])
    assert detect(series) == 10
    state = DetectorState.objects.get(series=series)
    assert state.sensitivity == "high"
    assert state.state["seen"] == 80 + 10  # relearned from the last 80 points, then 10 new
    assert AnomalyResult.objects.filter(series=series).count() == 1  # history not re-reported

    Tenant.objects.filter(pk=tenant.pk).update(detection_sensitivity="low")  # the series' own wins
    detect(series)
    assert DetectorState.objects.get(series=series).sensitivity == "high"


def test_a_changed_detector_resets_the_state_and_closes_the_old_detectors_anomaly(
    tenant: Tenant, start: float, settings: Any
) -> None:
    values = noise(110)
    values[99] = SPIKE
    series = send(tenant, start, values[:100])
    detect(series)
    assert AnomalyResult.objects.get(series=series, detector="ensemble").status == AnomalyResult.Status.OPEN

    settings.VIGIL_DETECTOR = "robust_zscore"
    send(tenant, start + 100 * INTERVAL, values[100:])
    detect(series)
    state = DetectorState.objects.get(series=series)
    assert state.detector == "robust_zscore" and "baseline" not in state.state
    assert AnomalyResult.objects.get(series=series, detector="ensemble").status == AnomalyResult.Status.CLOSED


def test_a_backlog_longer_than_one_run_is_scored_by_a_follow_up_message(
    tenant: Tenant, start: float, settings: Any, eager_celery: None, django_capture_on_commit_callbacks: Any
) -> None:
    settings.VIGIL_DETECT_MAX_POINTS = 100
    series = send(tenant, start, noise(250))
    with django_capture_on_commit_callbacks(execute=True):
        assert detect(series) == 100  # the rest in follow-up messages (run inline here)
    state = DetectorState.objects.get(series=series)
    assert (state.state["seen"], state.last_ts) == (250, _at(start + 249 * INTERVAL))


def test_late_points_are_left_to_the_rescan(tenant: Tenant, start: float) -> None:
    series = send(tenant, start, noise(100))
    detect(series)
    send(tenant, start + 50 * INTERVAL + 5, [SPIKE])  # between two scored points
    assert detect(series) == 0
    assert not AnomalyResult.objects.filter(series=series).exists()


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_two_workers_detecting_the_same_series_write_what_one_would() -> None:
    tenant, begin = TenantFactory(), float(int(time.time() - 3060) // 60 * 60)
    values = noise(150)
    values[[60, 61, 140]] = SPIKE
    raced, alone = send(tenant, begin, values, node="raced"), send(tenant, begin, values, node="alone")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            anomalies.series_detect(series_ids=[raced.pk])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    anomalies.series_detect(series_ids=[alone.pk])

    assert [row[:6] for row in rows(raced)] == [row[:6] for row in rows(alone)]
    assert len(rows(raced)) == 2
    raced_state, alone_state = DetectorState.objects.get(series=raced), DetectorState.objects.get(series=alone)
    assert (raced_state.state, raced_state.last_ts) == (alone_state.state, alone_state.last_ts)
    assert list(AnomalyScore.objects.filter(series=raced).order_by("bucket").values_list("bucket", "score")) == list(
        AnomalyScore.objects.filter(series=alone).order_by("bucket").values_list("bucket", "score")
    )


def test_processing_an_ingest_batch_hands_its_series_to_detection(
    tenant: Tenant, start: float, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: list[list[int]] = []
    monkeypatch.setattr(anomalies, "series_detect_publish", lambda *, series_ids: published.append(series_ids))
    send(tenant, start, noise(10))
    send(tenant, start, noise(10), metric="cpu")
    batch = IngestBatch.objects.order_by("received_at").last()
    with django_capture_on_commit_callbacks(execute=True):
        services.ingest_batch_process(batch=batch)
        services.ingest_batch_process(batch=batch)  # redelivered: claims nothing, publishes nothing
    assert published == [batch.series_ids]


def test_publishing_detection_never_raises_when_the_broker_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    from analytics import tasks

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.series_detect, "apply_async", down)
    assert anomalies.series_detect_publish(series_ids=[1, 2]) == 0


# --- The rescan -------------------------------------------------------------------------------


def test_the_rescan_detects_a_series_whose_detect_message_was_lost(
    tenant: Tenant, start: float, eager_celery: None
) -> None:
    values = noise(150)
    values[130] = SPIKE
    lost = send(tenant, start, values)
    fresh = send(tenant, time.time() - 30, noise(2), metric="cpu")  # still within the grace period
    MetricSeries.objects.filter(pk=lost.pk).update(last_point_at=datetime.fromtimestamp(start + 1490, tz=UTC))
    MetricSeries.objects.filter(pk=fresh.pk).update(last_point_at=timezone.now())

    report = anomalies.anomalies_rescan()
    assert report.detect_messages == 1
    assert DetectorState.objects.get(series=lost).last_ts == datetime.fromtimestamp(start + 1490, tz=UTC)
    assert AnomalyResult.objects.filter(series=lost).count() == 1
    assert not DetectorState.objects.filter(series=fresh).exists()
    assert anomalies.anomalies_rescan().detect_messages == 0  # scored now: nothing left to re-publish


def test_the_rescan_rescores_a_late_spike_without_moving_the_stream(
    tenant: Tenant, start: float, eager_celery: None, settings: Any
) -> None:
    series = send(tenant, start, noise(300))
    rollups.rollups_refresh(series_ids=[series.pk], start=_at(start), end=_at(start + 3000))
    detect(series)
    state_before = DetectorState.objects.get(series=series)
    assert not AnomalyResult.objects.filter(series=series).exists()

    late_ts = start + 150 * INTERVAL + 5  # 25 minutes in, between two scored points
    send(tenant, late_ts, [SPIKE])
    rollups.rollups_refresh(series_ids=[series.pk], start=_at(late_ts), end=_at(late_ts))
    assert detect(series) == 0  # streaming skips it

    later = timezone.now() + timedelta(seconds=settings.VIGIL_RESCAN_LAG_SECONDS + 1)
    report = anomalies.anomalies_rescan(now=later)
    assert report.rescore_messages == 1
    anomaly = AnomalyResult.objects.get(series=series)
    assert (anomaly.peak_ts, anomaly.observed, anomaly.label) == (_at(late_ts), SPIKE, "spike")
    assert anomaly.status == AnomalyResult.Status.CLOSED
    state_after = DetectorState.objects.get(series=series)
    assert (state_after.state, state_after.last_ts) == (state_before.state, state_before.last_ts)
    spike_minute = _at(start + 25 * 60)
    assert AnomalyScore.objects.get(series=series, bucket=spike_minute).score == anomaly.peak_score

    # The next run starts at the watermark: the revision is not re-scored.
    assert anomalies.anomalies_rescan(now=later + timedelta(minutes=1)).rescore_messages == 0
    assert AnomalyResult.objects.filter(series=series).count() == 1

    # Re-scoring the same range again (a redelivered message) rewrites nothing.
    minute = _at(late_ts // 60 * 60)
    assert anomalies.series_rescore(ranges=[(series.pk, minute, minute + timedelta(minutes=1))]) == 7
    assert AnomalyResult.objects.get(series=series).updated_at == anomaly.updated_at


def test_the_rescan_leaves_a_minute_completed_by_in_order_data_to_streaming(tenant: Tenant) -> None:
    minute = float(int(time.time()) // 60 * 60)  # the current minute: its points arrive as it goes
    series = send(tenant, minute, noise(2))
    rollups.rollups_refresh(series_ids=[series.pk], start=_at(minute), end=_at(minute + 10))
    send(tenant, minute + 20, noise(2))
    rollups.rollups_refresh(series_ids=[series.pk], start=_at(minute + 20), end=_at(minute + 30))
    now = timezone.now()
    assert anomalies.late_ranges(since=now - timedelta(hours=1), until=now + timedelta(seconds=1)) == []


# --- Nodes ----------------------------------------------------------------------------------------


NODE_MINUTES = 130


def node_history(tenant: Tenant, begin: float, *, node: str = "db-1", incident: bool) -> None:
    """NODE_MINUTES of cpu, latency and memory, one point a minute, rolled up; cpu and latency
    rise together in the last 3 minutes when `incident`."""
    n = NODE_MINUTES
    rng = np.random.default_rng(11)
    load = 50 + rng.normal(0, 5, n)
    cpu, latency = load + rng.normal(0, 1, n), 2 * load + rng.normal(0, 2, n)
    memory = 70 + rng.normal(0, 1, n)
    if incident:
        cpu[n - 3 :] += 45
        latency[n - 3 :] += 150
    for metric, values, unit in (("cpu", cpu, "percent"), ("latency", latency, "ms"), ("memory", memory, "percent")):
        send(tenant, begin, values, node=node, metric=metric, unit=unit, interval=60.0)
    node_series = MetricSeries.objects.filter(tenant=tenant, node=node)
    node_series.update(last_point_at=_at(begin + (n - 1) * 60))
    rollups.rollups_refresh(
        series_ids=node_series.values_list("pk", flat=True), start=_at(begin), end=_at(begin + n * 60)
    )


@pytest.fixture
def node_begin() -> float:
    """Where node data starts so that it ends 5 minutes ago (complete and past the delay)."""
    return float(int(time.time() - (NODE_MINUTES + 5) * 60) // 60 * 60)


def test_node_detection_opens_a_node_anomaly_naming_the_contributing_metrics(tenant: Tenant, node_begin: float) -> None:
    node_history(tenant, node_begin, incident=True)
    assert anomalies.node_detect(tenant=tenant, nodes=[("eu", "db-1")]) == NODE_MINUTES

    anomaly = AnomalyResult.objects.get(tenant=tenant, series__isnull=True)
    assert (anomaly.cluster, anomaly.node, anomaly.metric, anomaly.detector) == ("eu", "db-1", "", "isolation_forest")
    assert anomaly.label == "spike"
    assert anomaly.window_start >= _at(node_begin + (NODE_MINUTES - 3) * 60)
    assert set(anomaly.details["top_metrics"][:2]) == {"cpu", "latency"}
    assert "db-1" in anomaly.explanation and "cpu" in anomaly.explanation and "latency" in anomaly.explanation
    shares = {c["metric"]: c["share"] for c in anomaly.details["contributions"]}
    assert shares["memory"] < min(shares["cpu"], shares["latency"])

    assert anomalies.node_detect(tenant=tenant, nodes=[("eu", "db-1")]) == 0  # nothing new
    assert AnomalyResult.objects.filter(tenant=tenant, series__isnull=True).count() == 1


def test_nodes_of_the_same_name_in_two_tenants_are_detected_apart(node_begin: float, eager_celery: None) -> None:
    troubled, calm = TenantFactory(), TenantFactory()
    node_history(troubled, node_begin, incident=True)
    node_history(calm, node_begin, incident=False)
    assert anomalies.nodes_detect() == 2  # one message per tenant

    states = NodeDetectorState.objects.order_by("tenant_id")
    assert [(s.tenant_id, s.node, len(s.state["names"])) for s in states] == [
        (troubled.pk, "db-1", 3),
        (calm.pk, "db-1", 3),
    ]
    assert AnomalyResult.objects.filter(tenant=troubled, series__isnull=True).count() == 1
    assert not AnomalyResult.objects.filter(tenant=calm, series__isnull=True).exists()


def test_a_node_with_a_single_series_is_not_scored(tenant: Tenant, node_begin: float) -> None:
    send(tenant, node_begin, noise(NODE_MINUTES), node="lonely", interval=60.0)
    assert anomalies.node_detect(tenant=tenant, nodes=[("eu", "lonely")]) == 0
    assert not NodeDetectorState.objects.exists()


# --- Feedback ----------------------------------------------------------------------------------


def test_feedback_is_recorded_with_its_comment_and_time() -> None:
    anomaly = AnomalyResultFactory()
    anomalies.anomaly_feedback_set(anomaly=anomaly, feedback="false_positive", comment="deploy")
    anomaly.refresh_from_db()
    assert (anomaly.feedback, anomaly.feedback_comment) == ("false_positive", "deploy")
    assert anomaly.feedback_at is not None


def test_the_same_feedback_twice_changes_nothing() -> None:
    anomaly = AnomalyResultFactory()
    anomalies.anomaly_feedback_set(anomaly=anomaly, feedback="true_positive")
    first_at = AnomalyResult.objects.get(pk=anomaly.pk).feedback_at
    anomalies.anomaly_feedback_set(anomaly=AnomalyResult.objects.get(pk=anomaly.pk), feedback="true_positive")
    assert AnomalyResult.objects.get(pk=anomaly.pk).feedback_at == first_at


def test_unknown_feedback_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown feedback"):
        anomalies.anomaly_feedback_set(anomaly=AnomalyResultFactory(), feedback="maybe")


def test_factories_build_series_and_node_level_anomalies_and_scores() -> None:
    series_level = AnomalyResultFactory()
    node_level = AnomalyResultFactory(series=None, tenant=series_level.tenant, node="web-1")
    score = AnomalyScoreFactory(series=series_level.series)
    assert series_level.tenant == series_level.series.tenant and series_level.metric == "cpu.usage"
    assert node_level.series is None and node_level.metric == ""
    assert score.series_id == series_level.series_id


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)
