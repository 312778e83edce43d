"""Alerting: rules and their versions, alerts and incidents, silences and mute windows, routes,
and the webhook outbox (endpoints, notifications, deliveries, attempts).

The life of a notification (README "Alerting"):

    rule evaluation -> Alert state change -> NotificationGroup marked due (same transaction)
    -> group flush -> one Notification (payload stored once) + one Delivery per endpoint
    -> delivery task -> one DeliveryAttempt per try

Every arrow after the first is an outbox: the row that says "this is due" is written in the
transaction that makes it due, and a periodic sweeper picks up anything whose message was lost.
"""

from __future__ import annotations

from django.db import models

from analytics.models import AnomalyResult, MetricSeries
from tenants.models import Tenant


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY_RANK: dict[str, int] = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


class AlertRule(models.Model):
    """A tenant's alert rule. The versioned part (everything an evaluation reads) is also kept,
    frozen, in AlertRuleVersion: editing a rule adds a version, alerts and incidents point at the
    version that fired them.

    `selector` and `condition` are JSON validated by alerts.conditions (the one parser): the
    selector is a list of matchers on cluster / node / metric / series labels, the condition
    depends on `kind` (see alerts.conditions).
    """

    class Kind(models.TextChoices):
        THRESHOLD = "threshold"
        ANOMALY = "anomaly"
        NO_DATA = "no_data"
        CHANGE = "change"
        DRIFT = "drift"  # a model of the tenant drifted (mlops.DriftReport)

    class NoDataState(models.TextChoices):
        # What a threshold or change rule does with a series that has no points in its window
        # (a drift rule: with a model whose newest report says insufficient_data, or none).
        NO_DATA = "no_data", "keep the alert's state, mark it no data"
        ALERTING = "alerting", "treat as breached"
        OK = "ok", "treat as recovered"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alert_rules")
    name = models.CharField(max_length=200)
    enabled = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1)
    # --- versioned ---
    kind = models.CharField(max_length=16, choices=Kind.choices)
    selector = models.JSONField(default=list, blank=True)
    condition = models.JSONField(default=dict)
    for_seconds = models.PositiveIntegerField(default=0)
    keep_firing_for_seconds = models.PositiveIntegerField(default=0)
    # NULL: the route's repeat interval.
    repeat_interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    no_data_state = models.CharField(max_length=16, choices=NoDataState.choices, default=NoDataState.NO_DATA)
    labels = models.JSONField(default=dict, blank=True)
    annotations = models.JSONField(default=dict, blank=True)
    # A cluster-level alert of this rule holds back node-level alerts of the same cluster and
    # metric (from any rule) while it fires.
    inhibits_nodes = models.BooleanField(default=True)
    # --- end versioned ---
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    VERSIONED_FIELDS = (
        "kind",
        "selector",
        "condition",
        "for_seconds",
        "keep_firing_for_seconds",
        "repeat_interval_seconds",
        "no_data_state",
        "labels",
        "annotations",
        "inhibits_nodes",
    )

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="alert_rule_unique_name")]
        indexes = [
            # Serves the evaluation fan-out: a tenant's enabled rules.
            models.Index(fields=["tenant", "enabled"], name="alert_rule_tenant_enabled_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def spec(self) -> dict[str, object]:
        return {field: getattr(self, field) for field in self.VERSIONED_FIELDS}


class AlertRuleVersion(models.Model):
    """A frozen copy of a rule's versioned fields, written by every create and edit."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    spec = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["rule", "-version"]
        constraints = [models.UniqueConstraint(fields=["rule", "version"], name="alert_rule_version_unique")]

    def __str__(self) -> str:
        return f"{self.rule} v{self.version}"


class Incident(models.Model):
    """The alerts of one rule that fire together: opened by the first firing alert, resolved
    when the last one resolves (or by hand). Its activity log tells the story."""

    class Status(models.TextChoices):
        FIRING = "firing"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="incidents")
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="incidents")
    rule_version = models.ForeignKey(AlertRuleVersion, on_delete=models.RESTRICT, related_name="incidents")
    title = models.CharField(max_length=500)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.FIRING)
    assignee = models.CharField(max_length=200, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One open incident per rule: the firing alerts of a rule join it.
            models.UniqueConstraint(
                fields=["rule"], condition=~models.Q(status="resolved"), name="incident_one_open_per_rule"
            ),
        ]
        indexes = [
            # Serves the API list, newest first, filtered by status.
            models.Index(fields=["tenant", "status", "-created_at"], name="incident_tenant_status_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title} ({self.status})"


class IncidentActivity(models.Model):
    """One thing that happened to an incident (Sentry's IncidentActivity)."""

    class Kind(models.TextChoices):
        CREATED = "created"
        STATE_CHANGE = "state_change"
        ACKNOWLEDGED = "acknowledged"
        ASSIGNED = "assigned"
        COMMENTED = "commented"
        RESOLVED = "resolved"

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="activity")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # For state changes: which alert, from what to what, at which value.
    alert = models.ForeignKey("Alert", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    previous = models.CharField(max_length=200, blank=True)  # a state, a severity or an assignee
    current = models.CharField(max_length=200, blank=True)
    value = models.FloatField(null=True, blank=True)
    comment = models.TextField(blank=True)
    actor = models.CharField(max_length=200, blank=True)  # "" is Vigil itself
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "incident activities"

    def __str__(self) -> str:
        return f"{self.kind} {self.previous}->{self.current}".strip()


class Alert(models.Model):
    """The state of one label set of one rule (Prometheus' alert instance): pending -> firing
    -> resolved, and again. Written only by alerts.evaluation under a row lock on the rule, so
    it survives worker and beat restarts and two evaluations never interleave."""

    class State(models.TextChoices):
        INACTIVE = "inactive"  # a pending alert that cleared before `for`: never notified
        PENDING = "pending"
        FIRING = "firing"
        RESOLVED = "resolved"

    class Health(models.TextChoices):
        OK = "ok"
        NO_DATA = "no_data"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alerts")
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    rule_version = models.ForeignKey(AlertRuleVersion, on_delete=models.RESTRICT, related_name="alerts")
    incident = models.ForeignKey(Incident, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts")
    series = models.ForeignKey(MetricSeries, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    anomaly = models.ForeignKey(AnomalyResult, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    fingerprint = models.CharField(max_length=16)
    labels = models.JSONField()
    annotations = models.JSONField(default=dict)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    state = models.CharField(max_length=16, choices=State.choices)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.OK)
    value = models.FloatField(null=True, blank=True)
    active_at = models.DateTimeField(null=True, blank=True)  # breached since (pending or firing)
    fired_at = models.DateTimeField(null=True, blank=True)  # startsAt
    resolved_at = models.DateTimeField(null=True, blank=True)  # endsAt
    clear_since = models.DateTimeField(null=True, blank=True)  # firing but no longer breached (keep_firing_for)
    evaluated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "fingerprint"], name="alert_unique_rule_fingerprint")]
        indexes = [
            # Serves the group flush and inhibition: a tenant's firing alerts.
            models.Index(fields=["tenant", "state"], name="alert_tenant_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.rule} {self.labels} ({self.state})"


class Silence(models.Model):
    """Mutes notifications of the alerts its matchers select between `starts_at` and `ends_at`
    (Alertmanager's silences). Alerts keep their state; nothing is sent for them. Expires on
    its own; `expire` ends it now."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="silences")
    matchers = models.JSONField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    comment = models.TextField(blank=True)
    created_by = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [
            # Serves "silences active now" at every flush.
            models.Index(fields=["tenant", "ends_at"], name="silence_tenant_ends_idx"),
        ]

    def __str__(self) -> str:
        return f"silence {self.pk} until {self.ends_at:%Y-%m-%d %H:%M}"


class MuteWindow(models.Model):
    """A recurring maintenance window (Alertmanager's time_intervals): on `weekdays`, between
    `start_time` and `end_time` in `timezone`, notifications of matching alerts are held back."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="mute_windows")
    name = models.CharField(max_length=200)
    matchers = models.JSONField(default=list, blank=True)
    weekdays = models.JSONField(default=list, blank=True)  # 0 = Monday; empty = every day
    start_time = models.TimeField()
    end_time = models.TimeField()  # before start_time: the window crosses midnight
    timezone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="mute_window_unique_name")]

    def __str__(self) -> str:
        return self.name


class WebhookEndpoint(models.Model):
    """A tenant's receiver. `secret` is `whsec_<base64>`; during a rotation the previous secret
    also signs every delivery until `previous_secret_expires_at`."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="webhook_endpoints")
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2000)
    secret = models.CharField(max_length=100)
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    # Filters: empty means everything.
    severities = models.JSONField(default=list, blank=True)
    matchers = models.JSONField(default=list, blank=True)
    event_types = models.JSONField(default=list, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    # First failure of the current run of failures; cleared by a success.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="endpoint_unique_name")]

    def __str__(self) -> str:
        return self.name


class Route(models.Model):
    """Where a tenant's alerts go and how they are grouped (one level of Alertmanager's routing
    tree). Routes are tried by `position`; the first that matches takes the alert unless it says
    `continue_matching`. Alerts no route takes go to every enabled endpoint, grouped by the
    settings' defaults."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="routes")
    name = models.CharField(max_length=200)
    position = models.IntegerField(default=0)
    matchers = models.JSONField(default=list, blank=True)
    severities = models.JSONField(default=list, blank=True)  # empty = every severity
    endpoints = models.ManyToManyField(WebhookEndpoint, related_name="routes", blank=True)
    group_by = models.JSONField(default=list, blank=True)
    group_wait_seconds = models.PositiveIntegerField(default=30)
    group_interval_seconds = models.PositiveIntegerField(default=300)
    repeat_interval_seconds = models.PositiveIntegerField(default=4 * 3600)
    continue_matching = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="route_unique_name")]

    def __str__(self) -> str:
        return self.name


class NotificationGroup(models.Model):
    """Alertmanager's aggregation group: the alerts of a route that share the values of its
    `group_by` labels, notified together. `flush_at` is the outbox mark: set (in the
    transaction of the alert change) when the group is due, cleared by the flush."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    route = models.ForeignKey(Route, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    key = models.CharField(max_length=64)  # hash of route and group labels
    labels = models.JSONField()
    flush_at = models.DateTimeField(null=True, blank=True)
    flushed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Fingerprints (rule id:fingerprint) notified as firing by the last notification sent.
    notified = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "key"], name="group_unique_key")]
        indexes = [
            # Serves the sweeper: groups due for a flush.
            models.Index(fields=["flush_at"], name="group_due_idx", condition=models.Q(flush_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"group {self.labels}"


class Notification(models.Model):
    """One message to send, stored once (the exact bytes every endpoint receives)."""

    class Event(models.TextChoices):
        FIRING = "alert.firing"
        RESOLVED = "alert.resolved"
        TEST = "test"
        ENDPOINT_DISABLED = "endpoint.disabled"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="notifications")
    group = models.ForeignKey(NotificationGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    incident = models.ForeignKey(Incident, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    event = models.CharField(max_length=32, choices=Event.choices)
    body = models.TextField()  # the exact JSON sent and signed
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.event} {self.created_at:%Y-%m-%d %H:%M:%S}"


class Delivery(models.Model):
    """A notification to one endpoint. `webhook_id` is the Standard Webhooks message id: the same
    on every attempt and replay, so a receiver can deduplicate.

    Claimed for an attempt by a conditional update (PENDING and due -> SENDING, with a lease in
    `claimed_until`); a worker that dies mid-attempt leaves a lease the sweeper reclaims."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"

    notification = models.ForeignKey(Notification, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    webhook_id = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # `attempts` when the current run began (0, or its value at the last replay): the retry
    # budget counts the attempts of this run only, so a replay gets a fresh one.
    run_start_attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The lease of the attempt in flight: when it was claimed and when the sweeper may reclaim it.
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["notification", "endpoint"], name="delivery_unique_endpoint"),
        ]
        indexes = [
            # Serves the sweeper: pending deliveries due, and sending ones whose lease ran out.
            models.Index(
                fields=["status", "next_attempt_at"],
                name="delivery_due_idx",
                condition=models.Q(status__in=["pending", "sending"]),
            ),
            # Serves the API list, newest first.
            models.Index(fields=["tenant", "-created_at"], name="delivery_tenant_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_id} -> {self.endpoint} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try of one delivery: what was sent when, and what came back."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered"
        RETRY = "retry"  # transient: another attempt is scheduled
        FAILED = "failed"  # final

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    response_excerpt = models.TextField(blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_unique_number")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}: {self.outcome}"
