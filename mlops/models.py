"""The model registry: versioned detector models per scope, their artifacts and an audit trail.

A scope is what one model covers: one series, one metric across the nodes of a cluster, or one
node's metric vector. `ModelVersion.scope_key` spells it canonically (`series:<id>`,
`metric:<cluster>/<metric>`, `node:<cluster>/<node>`) so the "one active version per scope"
rule is one database constraint.

Artifacts are bytes addressed by their sha256 (mlops.artifacts): the detector's own JSON state and
the suppression rules learned from feedback, never a pickle; reading one verifies the hash.
"""

from __future__ import annotations

from django.db import models

from analytics.models import MetricSeries
from tenants.models import Tenant


class ModelArtifact(models.Model):
    """The bytes of a trained model, stored once per content (sha256). `data` holds them when
    the store is the database; the file store keeps them under their hash and leaves it NULL."""

    class Format(models.TextChoices):
        # A detector's own state (analytics.detection, the node detectors included), canonical
        # JSON. Never a pickle: loading one from storage would run whatever it says.
        JSON = "json"

    sha256 = models.CharField(max_length=64, primary_key=True)
    format = models.CharField(max_length=8, choices=Format.choices)
    size = models.PositiveBigIntegerField()
    data = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sha256[:12]} ({self.format}, {self.size} bytes)"


class ModelVersion(models.Model):
    """One trained model of one scope. Versions number 1, 2, ... per scope; at most one is active."""

    class ScopeKind(models.TextChoices):
        SERIES = "series"
        METRIC = "metric"  # one metric across the nodes of a cluster
        NODE = "node"  # one node's metric vector (the multivariate detectors)

    class Status(models.TextChoices):
        TRAINING = "training"
        CANDIDATE = "candidate"
        ACTIVE = "active"
        RETIRED = "retired"
        FAILED = "failed"

    class Trigger(models.TextChoices):
        # The scope's model as streaming learns it from its first point (or from a change of
        # detector or sensitivity): the version every scope starts with, before any training.
        ONLINE = "online"
        SCHEDULE = "schedule"
        MANUAL = "manual"
        DRIFT = "drift"
        FEEDBACK = "feedback"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="model_versions")
    scope_kind = models.CharField(max_length=8, choices=ScopeKind.choices)
    scope_key = models.CharField(max_length=500)
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    cluster = models.CharField(max_length=200)
    node = models.CharField(max_length=200, blank=True)
    metric = models.CharField(max_length=200, blank=True)
    version = models.PositiveIntegerField()
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
    detector = models.CharField(max_length=64)
    hyperparameters = models.JSONField(default=dict)
    feature_schema = models.JSONField(default=list)  # the features, in order (metric names for a node)
    train_from = models.DateTimeField(null=True, blank=True)
    train_to = models.DateTimeField(null=True, blank=True)
    train_points = models.PositiveBigIntegerField(default=0)
    artifact = models.ForeignKey(ModelArtifact, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    metrics = models.JSONField(default=dict)  # score quantiles, contamination, fit seconds, gate comparison
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING)
    error = models.TextField(blank=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    created_by = models.CharField(max_length=200, blank=True)
    # What the version was trained from (scope, detector, hyperparameters, window, feedback and
    # calendar), hashed: training the same inputs again finds this version (mlops.training).
    training_key = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["scope_key", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "training_key"],
                condition=~models.Q(training_key="") & ~models.Q(status="failed"),
                name="model_version_one_per_training",
            ),
            models.UniqueConstraint(fields=["tenant", "scope_key", "version"], name="model_version_unique_number"),
            # The registry's promise: a scope is served by one model at a time.
            models.UniqueConstraint(
                fields=["tenant", "scope_key"], condition=models.Q(status="active"), name="model_version_one_active"
            ),
        ]
        indexes = [
            # Serves the API list and the admin: a tenant's versions by status.
            models.Index(fields=["tenant", "status"], name="model_version_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.scope_key} v{self.version} ({self.status})"


class ModelVersionEvent(models.Model):
    """The audit trail: every registration, promotion, retirement, rollback and failure."""

    class Action(models.TextChoices):
        REGISTERED = "registered"
        PROMOTED = "promoted"
        RETIRED = "retired"
        ROLLED_BACK = "rolled_back"
        FAILED = "failed"
        GATED = "gated"  # the promotion gate kept it a candidate (mlops.training)

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=200, blank=True)  # "" is Vigil itself
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.action} {self.version}"


class DriftReport(models.Model):
    """One drift check of one active model: the recent window against the training reference.

    `statistics` holds, per feature, the population stability index, the two-sample
    Kolmogorov-Smirnov statistic and p-value and the Wasserstein distance (mlops.drift_stats),
    and the concept signals: the anomaly rate against the rate in training, and the trend of
    feedback precision. One report per model and window end, so a repeated run changes nothing.
    """

    class Verdict(models.TextChoices):
        OK = "ok"
        DRIFT = "drift"
        INSUFFICIENT = "insufficient_data"

    class Action(models.TextChoices):
        NONE = "none"
        RETRAIN = "retrain"  # a candidate was trained (and gated, or promoted, by the tenant's policy)
        NOTIFY = "notify"  # the tenant's policy is to be told only (a `drift` alert rule)
        COOLDOWN = "cooldown"  # the scope was retrained for drift recently; not again yet

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="drift_reports")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="drift_reports")
    scope_key = models.CharField(max_length=500)
    window_from = models.DateTimeField()
    window_to = models.DateTimeField()
    points = models.PositiveIntegerField()
    statistics = models.JSONField(default=dict)
    verdict = models.CharField(max_length=20, choices=Verdict.choices)
    drifted = models.JSONField(default=list)  # the signals that drifted, e.g. ["residual", "anomaly_rate"]
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.NONE)
    retrained = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="drift_retrains"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-window_to", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["model_version", "window_to"], name="drift_report_one_per_window"),
        ]
        indexes = [models.Index(fields=["tenant", "-window_to"], name="drift_report_tenant_idx")]

    def __str__(self) -> str:
        return f"{self.verdict} for {self.scope_key} at {self.window_to:%Y-%m-%d %H:%M}"


class CalendarEvent(models.Model):
    """A known event on a tenant's calendar (maintenance, a holiday, an incident), like Elastic's
    scheduled events: its points are left out of training, and while `suppress` it also holds
    back detection (no scores, no anomalies, nothing learned). Scoped to a cluster and node, or
    the whole tenant when they are blank."""

    class Kind(models.TextChoices):
        MAINTENANCE = "maintenance"
        HOLIDAY = "holiday"
        INCIDENT = "incident"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="calendar_events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=500, blank=True)
    start = models.DateTimeField()
    end = models.DateTimeField()
    cluster = models.CharField(max_length=200, blank=True)  # "" is every cluster
    node = models.CharField(max_length=200, blank=True)  # "" is every node (of the cluster)
    suppress = models.BooleanField(default=True)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-start", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(end__gt=models.F("start")), name="calendar_event_ends_after"),
        ]
        indexes = [models.Index(fields=["tenant", "end"], name="calendar_event_tenant_end_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.start:%Y-%m-%d %H:%M}-{self.end:%Y-%m-%d %H:%M}"
