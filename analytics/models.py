from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from django.db import models

from tenants.models import Tenant


def series_identity(cluster: str, node: str, metric: str, labels: dict[str, str]) -> str:
    """A series' identity within its tenant: a hash of its canonical address.

    One indexed column serves the ingest lookup of many series at once (`identity IN (...)`)
    whatever the labels, on PostgreSQL and SQLite alike.
    """
    canonical = json.dumps([cluster, node, metric, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:40]


SENSITIVITY_CHOICES = [("low", "low"), ("medium", "medium"), ("high", "high")]


class MetricSeries(models.Model):
    """One metric of one node of one cluster, with its labels. Created on its first point."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="series")
    cluster = models.CharField(max_length=200)
    node = models.CharField(max_length=200)
    metric = models.CharField(max_length=200)
    labels = models.JSONField(default=dict, blank=True)
    unit = models.CharField(max_length=32, blank=True)
    identity = models.CharField(max_length=40, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Newest point stored, maintained by the ingest pipeline task (not by the request).
    last_point_at = models.DateTimeField(null=True, blank=True)
    # Overrides the tenant's detection sensitivity when set.
    detection_sensitivity = models.CharField(max_length=8, choices=SENSITIVITY_CHOICES, blank=True)

    class Meta:
        verbose_name_plural = "metric series"
        constraints = [
            # Serves the ingest lookup `tenant = ? AND identity IN (...)`.
            models.UniqueConstraint(fields=["tenant", "identity"], name="series_unique_tenant_identity"),
        ]
        indexes = [
            # Serves the list filters: ?cluster=&node=&metric=
            models.Index(fields=["tenant", "cluster", "node", "metric"], name="series_tenant_addr_idx"),
            models.Index(fields=["tenant", "metric"], name="series_tenant_metric_idx"),
        ]

    def __str__(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.cluster}/{self.node}/{self.metric}{{{labels}}}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.identity = series_identity(self.cluster, self.node, self.metric, self.labels)
        super().save(*args, **kwargs)


class Point(models.Model):
    """A raw sample. Keyed by (series, ts), no surrogate id: the table is built for volume.

    On PostgreSQL the table is range-partitioned by day on `ts` (see migration 0001 and
    analytics/partitions.py) so that retention drops whole partitions. There is no
    database foreign key to the series: checking it would cost every row of every COPY,
    and points are only ever written by `points_ingest`, which creates the series first
    in the same transaction.
    """

    pk = models.CompositePrimaryKey("series", "ts")
    # No separate index: the primary key (series_id, ts) leads with it.
    series = models.ForeignKey(
        MetricSeries, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    ts = models.DateTimeField()
    value = models.FloatField()

    def __str__(self) -> str:
        return f"{self.series_id}@{self.ts.isoformat()}={self.value}"


class IngestBatch(models.Model):
    """An accepted ingest request: the outbox between the API and the pipeline.

    Written in the same transaction as the points, so a batch whose task message is lost
    (broker restarted, worker killed before ack) is found and re-published by the sweeper.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSED = "processed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="ingest_batches")
    received_at = models.DateTimeField(auto_now_add=True)
    points = models.PositiveIntegerField()
    series_ids = models.JSONField(default=list)
    first_ts = models.DateTimeField()
    last_ts = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Set once the rollups of the batch's series over [first_ts, last_ts] are refreshed: the
    # second outbox stage (the sweeper re-publishes batches processed but not rolled up), and
    # retention keeps raw points a batch still has to roll up.
    rolled_up_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "ingest batches"
        indexes = [
            # Serves the sweeper: pending batches older than N seconds.
            models.Index(fields=["status", "received_at"], name="batch_status_received_idx"),
            # Serves the sweeper's second stage and retention: batches not yet rolled up.
            models.Index(
                fields=["received_at"],
                name="batch_unrolled_idx",
                condition=models.Q(rolled_up_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.points} points at {self.received_at:%Y-%m-%d %H:%M:%S} ({self.status})"


class Rollup(models.Model):
    """Statistics of one series over one time bucket, computed from the raw points.

    Keyed by (series, resolution, bucket), no surrogate id: one row per series per minute is
    the biggest table after the points. Buckets are aligned to the Unix epoch in UTC
    (floor(ts / resolution) * resolution) and cover [bucket, bucket + resolution).
    Written only by `analytics.rollups.rollups_refresh`, which recomputes buckets from raw
    points and rewrites a row only when a value changed.

    `stddev` is the *sample* standard deviation (n - 1 in the denominator; PostgreSQL's
    stddev_samp, pandas' default), so it is NULL for a bucket of one point. Percentiles are
    exact, interpolated linearly between the closest ranks (PostgreSQL's percentile_cont,
    numpy's default 'linear' method). `first` and `last` are the values of the oldest and the
    newest point of the bucket.

    `revised_at` is NULL for a bucket computed once; it is set (with `computed_at`) each time
    a recomputation changed the bucket's values, i.e. late data arrived after it was rolled up.
    """

    class Resolution(models.IntegerChoices):
        MINUTE = 60, "1 minute"
        FIVE_MINUTES = 300, "5 minutes"
        HOUR = 3600, "1 hour"

    # Serves every read: a series' buckets at one resolution over a time range, newest first
    # or oldest first (rollup charts, detection windows, the catch-up's "newest bucket"
    # probe), and is the upsert's conflict target.
    pk = models.CompositePrimaryKey("series", "resolution", "bucket")
    # No separate index: the primary key leads with it. No database foreign key, as for Point:
    # rollups are derived data written in bulk by INSERT ... SELECT from the points (which have
    # none either); a constraint would be checked for every upserted row, and a series deleted
    # while a refresh runs would fail the whole multi-series statement rather than leave a row
    # the next delete sweeps. Deleting a series still deletes its rollups (Django's CASCADE).
    series = models.ForeignKey(
        MetricSeries, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    resolution = models.PositiveSmallIntegerField(choices=Resolution.choices)
    bucket = models.DateTimeField()
    count = models.PositiveIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    mean = models.FloatField()
    stddev = models.FloatField(null=True, blank=True)
    p50 = models.FloatField()
    p90 = models.FloatField()
    p95 = models.FloatField()
    p99 = models.FloatField()
    first = models.FloatField()
    last = models.FloatField()
    computed_at = models.DateTimeField()
    revised_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # Serves "what was revised since t" (rollups_revised_since): resolution = ANY(...)
            # AND revised_at >= t. Partial: only revised buckets are indexed, a small fraction
            # of the table, so the index costs nothing on the insert path of fresh buckets.
            models.Index(
                fields=["resolution", "revised_at"],
                name="rollup_revised_idx",
                condition=models.Q(revised_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.series_id}@{self.bucket.isoformat()}/{self.resolution}s n={self.count}"


class DetectorState(models.Model):
    """What the streaming detector of one series has learned: the source of truth.

    Written only by `analytics.anomalies.series_detect` under a row lock
    (SELECT ... FOR UPDATE), so two workers scoring the same series take turns and neither
    overwrites the other's state. `last_ts` is the newest point scored: the next run scores
    points after it; older points are late and go through the rescan.
    """

    series = models.OneToOneField(
        MetricSeries, on_delete=models.CASCADE, primary_key=True, related_name="detector_state"
    )
    detector = models.CharField(max_length=64)
    sensitivity = models.CharField(max_length=8, choices=SENSITIVITY_CHOICES)
    state = models.JSONField()
    last_ts = models.DateTimeField(null=True, blank=True)
    # The registry's version this state grew from (mlops), and its suppression rules learned
    # from feedback: the serving side of the scope's active version.
    model_version = models.ForeignKey(
        "mlops.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    rules = models.JSONField(default=list)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.detector} state of series {self.series_id}"


class NodeDetectorState(models.Model):
    """What the multivariate detector of one node has learned (its metrics aligned in time).

    Written only by `analytics.anomalies.node_detect` under a row lock, like DetectorState.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    cluster = models.CharField(max_length=200)
    node = models.CharField(max_length=200)
    detector = models.CharField(max_length=64)
    sensitivity = models.CharField(max_length=8, choices=SENSITIVITY_CHOICES)
    state = models.JSONField()
    last_ts = models.DateTimeField(null=True, blank=True)
    model_version = models.ForeignKey(
        "mlops.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # Serves the lock-and-load of a node's state.
            models.UniqueConstraint(fields=["tenant", "cluster", "node", "detector"], name="node_state_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.detector} state of {self.cluster}/{self.node}"


class AnomalyResult(models.Model):
    """One anomaly: consecutive anomalous points of a series (or of a node's metrics, for the
    multivariate detectors), merged into one window so that one incident is one row.

    A window stays `open` while new anomalous points arrive within the gap tolerance of its
    end, and is `closed` once the series has moved past it. Re-scoring the same points finds
    the same window start, so the unique constraints make re-processing idempotent.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    class Label(models.TextChoices):
        SPIKE = "spike"
        DIP = "dip"
        LEVEL_SHIFT = "level_shift"
        TREND_CHANGE = "trend_change"
        VARIANCE_CHANGE = "variance_change"
        SEASONAL_BREAK = "seasonal_break"
        FLATLINE = "flatline"

    class Feedback(models.TextChoices):
        TRUE_POSITIVE = "true_positive"
        FALSE_POSITIVE = "false_positive"
        EXPECTED = "expected"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="anomalies")
    # NULL for a node-level (multivariate) anomaly; cluster and node are always set.
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, null=True, blank=True, related_name="anomalies")
    cluster = models.CharField(max_length=200)
    node = models.CharField(max_length=200)
    metric = models.CharField(max_length=200, blank=True)
    detector = models.CharField(max_length=64)
    # Lineage: the registry's version that scored it (mlops.ModelVersion).
    model_version = models.ForeignKey(
        "mlops.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="anomalies"
    )
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    peak_ts = models.DateTimeField()
    peak_score = models.FloatField()
    label = models.CharField(max_length=32, choices=Label.choices)
    observed = models.FloatField(null=True, blank=True)
    expected = models.FloatField(null=True, blank=True)
    lower = models.FloatField(null=True, blank=True)
    upper = models.FloatField(null=True, blank=True)
    deviation = models.FloatField(null=True, blank=True)
    explanation = models.TextField()
    details = models.JSONField(default=dict)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    feedback = models.CharField(max_length=16, choices=Feedback.choices, blank=True)
    feedback_comment = models.TextField(blank=True)
    feedback_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["series", "detector", "window_start"],
                condition=models.Q(series__isnull=False),
                name="anomaly_unique_series_window",
            ),
            models.UniqueConstraint(
                fields=["tenant", "cluster", "node", "detector", "window_start"],
                condition=models.Q(series__isnull=True),
                name="anomaly_unique_node_window",
            ),
        ]
        indexes = [
            # Serves the API list, newest first, and the health roll-up over a time range.
            models.Index(fields=["tenant", "-window_start"], name="anomaly_tenant_start_idx"),
            # Serves the detector's lookup of a series' open window to extend.
            models.Index(
                fields=["series", "detector", "-window_end"],
                name="anomaly_open_idx",
                condition=models.Q(status="open"),
            ),
        ]

    def __str__(self) -> str:
        where = f"{self.cluster}/{self.node}/{self.metric or 'node'}"
        return f"{self.label} on {where} at {self.peak_ts:%Y-%m-%d %H:%M} ({self.peak_score:.2f})"


class AnomalyScore(models.Model):
    """The highest anomaly score of a series per minute: the score time series and the input
    of the health roll-up (node -> cluster -> tenant).

    Keyed like the rollups, without a database foreign key for the same reason (derived data
    written in bulk); deleting a series deletes its scores through Django's CASCADE.
    """

    pk = models.CompositePrimaryKey("series", "bucket")
    series = models.ForeignKey(
        MetricSeries, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    bucket = models.DateTimeField()
    score = models.FloatField()

    def __str__(self) -> str:
        return f"{self.series_id}@{self.bucket.isoformat()} score={self.score:.3f}"
