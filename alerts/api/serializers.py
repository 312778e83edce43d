"""Serializers of the alerting API. Plain serializers check the shape of what comes in (the
services check its meaning, with the one parser of each thing); model serializers render."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from alerts import matchers
from alerts.models import (
    Alert,
    AlertRule,
    AlertRuleVersion,
    Delivery,
    DeliveryAttempt,
    Incident,
    IncidentActivity,
    MuteWindow,
    Notification,
    Route,
    Severity,
    Silence,
    WebhookEndpoint,
)
from tenants.auth import request_tenant

# Durations are stored in 32-bit columns; a month is far more than any rule or route needs.
MAX_SECONDS = 30 * 86_400

CONDITION_HELP = (
    "Depends on `kind` (thresholds: at least one of `warning` / `critical`):\n"
    '- threshold: `{"aggregate": "p99", "window_seconds": 300, "by": "series", "operator": ">", '
    '"warning": 500, "critical": 1000, "resolve": 450}`\n'
    '- anomaly: `{"window_seconds": 300, "labels": ["spike", "level_shift"], "warning": 0.9, "critical": 0.99}`\n'
    '- no_data: `{"seconds": 600, "severity": "critical"}`\n'
    '- change: `{"aggregate": "count", "window_seconds": 3600, "offset_seconds": 604800, "by": "series", '
    '"operator": "<", "warning": -30, "critical": -60}`\n'
    '- drift: `{"window_seconds": 7200, "signals": ["residual", "anomaly_rate"], "severity": "warning"}` '
    "(a model's newest drift report; `signals` empty: any)"
)
ANNOTATIONS_HELP = (
    "Templates: `{{ $labels.<name> }}`, `{{ $value }}`, `{{ $severity }}`, `{{ $threshold }}`; "
    "an unknown placeholder is refused."
)


class MatcherSerializer(serializers.Serializer):
    """`label op value`, as in Prometheus and Alertmanager."""

    # DRF's metaclass moves declared fields off the class, so this `label` never meets Field.label
    # at run time; only the checker sees the clash.
    label = serializers.CharField(  # type: ignore[assignment]
        max_length=200, help_text="cluster, node, metric, alertname, severity or a label."
    )
    op = serializers.ChoiceField(
        choices=matchers.OPERATORS, default="=", help_text="`=~` and `!~` are regexes matching the whole value."
    )
    value = serializers.CharField(allow_blank=True, max_length=1000, trim_whitespace=False)


def _matchers(**kwargs: Any) -> serializers.ListSerializer:
    return MatcherSerializer(many=True, **kwargs)  # type: ignore[return-value]  # many=True builds a list


def _string_map(**kwargs: Any) -> serializers.DictField:
    return serializers.DictField(child=serializers.CharField(allow_blank=True, trim_whitespace=False), **kwargs)


# --- rules -------------------------------------------------------------------------------------


class RuleInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    enabled = serializers.BooleanField(default=True)
    kind = serializers.ChoiceField(choices=AlertRule.Kind.choices)
    selector = _matchers(default=list, help_text="Which series: matchers on cluster, node, metric and series labels.")
    condition = serializers.DictField(help_text=CONDITION_HELP)
    for_seconds = serializers.IntegerField(
        min_value=0, max_value=MAX_SECONDS, default=0, help_text="Breached this long before it fires."
    )
    keep_firing_for_seconds = serializers.IntegerField(
        min_value=0, max_value=MAX_SECONDS, default=0, help_text="Keeps firing this long after it clears."
    )
    repeat_interval_seconds = serializers.IntegerField(
        min_value=60, max_value=MAX_SECONDS, allow_null=True, default=None, help_text="Null: the route's."
    )
    no_data_state = serializers.ChoiceField(choices=AlertRule.NoDataState.choices, default="no_data")
    labels = _string_map(default=dict, help_text="Added to every alert; `alertname` and `severity` are Vigil's.")
    annotations = _string_map(default=dict, help_text=ANNOTATIONS_HELP)
    inhibits_nodes = serializers.BooleanField(default=True)


class RuleTemplateApplySerializer(RuleInSerializer):
    """The template's metric; any rule field given replaces the template's value."""

    metric = serializers.CharField(max_length=200, help_text="The metric the rule watches.")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for name, field in fields.items():
            if name != "metric":  # optional, and absent unless given: the template decides
                field.required, field.default = False, empty
        return fields


class RuleSerializer(serializers.ModelSerializer):
    selector = _matchers(read_only=True)
    condition = serializers.DictField(read_only=True)
    labels = _string_map(read_only=True)
    annotations = _string_map(read_only=True)
    created_by = serializers.CharField(read_only=True, help_text="Who wrote version 1: `key:<name>` or a user.")
    updated_by = serializers.CharField(read_only=True, help_text="Who wrote the current version.")

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "enabled",
            "version",
            *AlertRule.VERSIONED_FIELDS,
            "created_by",
            "updated_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class RuleVersionSerializer(serializers.ModelSerializer):
    spec = serializers.DictField(read_only=True, help_text="The versioned fields as they were.")

    class Meta:
        model = AlertRuleVersion
        fields = ["version", "spec", "created_at", "created_by"]
        read_only_fields = fields


class PreviewParamsSerializer(serializers.Serializer):
    hours = serializers.IntegerField(min_value=1, max_value=72, default=24, help_text="How far back.")
    step_seconds = serializers.IntegerField(
        min_value=60, max_value=86_400, default=300, help_text="One evaluation every this many seconds."
    )


class FiredSerializer(serializers.Serializer):
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField(allow_null=True, help_text="Null: still firing at the end.")
    severity = serializers.ChoiceField(choices=Severity.choices, help_text="When it fired.")


class PreviewAlertSerializer(serializers.Serializer):
    labels = _string_map()
    fired = FiredSerializer(many=True)
    max_value = serializers.FloatField(allow_null=True, help_text="The highest value seen.")


class RulePreviewSerializer(serializers.Serializer):
    rule = serializers.IntegerField()
    version = serializers.IntegerField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    step_seconds = serializers.IntegerField()
    evaluations = serializers.IntegerField()
    alerts = PreviewAlertSerializer(many=True, help_text="Only the alerts that would have fired.")


class RuleTemplateSerializer(serializers.Serializer):
    name = serializers.CharField()
    title = serializers.CharField()
    description = serializers.CharField()
    params = serializers.ListField(child=serializers.CharField(), help_text="What `apply` needs.")


# --- alerts and incidents ----------------------------------------------------------------------


class AlertSerializer(serializers.ModelSerializer):
    rule_version = serializers.IntegerField(source="rule_version.version", read_only=True)
    labels = _string_map(read_only=True)
    annotations = _string_map(read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_version",
            "incident",
            "series",
            "anomaly",
            "fingerprint",
            "labels",
            "annotations",
            "severity",
            "state",
            "health",
            "value",
            "active_at",
            "fired_at",
            "resolved_at",
            "evaluated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "active_at": {"help_text": "Breached since (pending or firing)."},
            "fired_at": {"help_text": "startsAt: when it began to fire."},
            "resolved_at": {"help_text": "endsAt: when it resolved."},
        }


class IncidentActivitySerializer(serializers.ModelSerializer):
    class Meta:
        model = IncidentActivity
        fields = ["id", "kind", "alert", "previous", "current", "value", "comment", "actor", "created_at"]
        read_only_fields = fields
        extra_kwargs = {"actor": {"help_text": "`key:<name>`, a user, or empty for Vigil itself."}}


class IncidentSerializer(serializers.ModelSerializer):
    rule_version = serializers.IntegerField(source="rule_version.version", read_only=True)

    class Meta:
        model = Incident
        fields = [
            "id",
            "rule",
            "rule_version",
            "title",
            "severity",
            "status",
            "assignee",
            "acknowledged_at",
            "acknowledged_by",
            "created_at",
            "resolved_at",
        ]
        read_only_fields = fields


class IncidentDetailSerializer(IncidentSerializer):
    activity = IncidentActivitySerializer(many=True, read_only=True, help_text="Oldest first.")
    alerts = AlertSerializer(many=True, read_only=True)

    class Meta(IncidentSerializer.Meta):
        fields = [*IncidentSerializer.Meta.fields, "activity", "alerts"]
        read_only_fields = fields


class AssignSerializer(serializers.Serializer):
    assignee = serializers.CharField(max_length=200, allow_blank=True, help_text="Empty to unassign.")


class CommentSerializer(serializers.Serializer):
    comment = serializers.CharField(max_length=10_000)


# --- silences, mute windows, routes --------------------------------------------------------------


class SilenceInSerializer(serializers.Serializer):
    matchers = _matchers(help_text="At least one: a silence of everything is refused.")
    starts_at = serializers.DateTimeField(required=False, allow_null=True, default=None, help_text="Default: now.")
    ends_at = serializers.DateTimeField()
    comment = serializers.CharField(max_length=2000, allow_blank=True, default="")


class SilenceSerializer(serializers.ModelSerializer):
    matchers = _matchers(read_only=True)
    status = serializers.SerializerMethodField()

    class Meta:
        model = Silence
        fields = ["id", "matchers", "starts_at", "ends_at", "comment", "created_by", "created_at", "status"]
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=["pending", "active", "expired"]))
    def get_status(self, silence: Silence) -> str:
        now = timezone.now()
        # An expired future silence ends when it would have started: over, not pending.
        if silence.ends_at <= max(now, silence.starts_at):
            return "expired"
        return "pending" if now < silence.starts_at else "active"


class MuteWindowInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    matchers = _matchers(default=list, help_text="Empty: every alert.")
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=6),
        default=list,
        help_text="0 = Monday; empty: every day.",
    )
    start_time = serializers.TimeField()
    end_time = serializers.TimeField(help_text="Before start_time: the window crosses midnight.")
    timezone = serializers.CharField(max_length=64, default="UTC", help_text="An IANA name, e.g. Europe/Paris.")
    enabled = serializers.BooleanField(default=True)


class MuteWindowSerializer(serializers.ModelSerializer):
    matchers = _matchers(read_only=True)
    weekdays = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta:
        model = MuteWindow
        fields = ["id", "name", "matchers", "weekdays", "start_time", "end_time", "timezone", "enabled", "created_at"]
        read_only_fields = fields


class TenantEndpointField(serializers.PrimaryKeyRelatedField):
    """An endpoint id of the caller's tenant: another tenant's id does not exist."""

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return WebhookEndpoint.objects.filter(tenant=request_tenant(self.context["request"]))


class RouteInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    position = serializers.IntegerField(default=0, help_text="Routes are tried in ascending position.")
    matchers = _matchers(default=list, help_text="Empty: every alert.")
    severities = serializers.ListField(
        child=serializers.ChoiceField(choices=Severity.choices), default=list, help_text="Empty: every severity."
    )
    endpoints = TenantEndpointField(
        many=True, queryset=WebhookEndpoint.objects.all(), default=list, help_text="Endpoint ids of yours."
    )
    group_by = serializers.ListField(child=serializers.CharField(max_length=200), default=list)
    group_wait_seconds = serializers.IntegerField(min_value=0, max_value=MAX_SECONDS, default=30)
    group_interval_seconds = serializers.IntegerField(min_value=1, max_value=MAX_SECONDS, default=300)
    repeat_interval_seconds = serializers.IntegerField(min_value=60, max_value=MAX_SECONDS, default=4 * 3600)
    continue_matching = serializers.BooleanField(default=False, help_text="Let later routes take the alert too.")


class RouteSerializer(serializers.ModelSerializer):
    matchers = _matchers(read_only=True)
    severities = serializers.ListField(child=serializers.ChoiceField(choices=Severity.choices), read_only=True)
    group_by = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Route
        fields = [
            "id",
            "name",
            "position",
            "matchers",
            "severities",
            "endpoints",
            "group_by",
            "group_wait_seconds",
            "group_interval_seconds",
            "repeat_interval_seconds",
            "continue_matching",
            "created_at",
        ]
        read_only_fields = fields


# --- endpoints and deliveries ------------------------------------------------------------------


class EndpointInSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    # Not a URLField: alerts.delivery checks URLs (scheme, resolvable, public) and names the
    # problem (`unsafe_url` with invalid_url / unresolvable / private_address); one checker.
    url = serializers.CharField(max_length=2000)
    severities = serializers.ListField(
        child=serializers.ChoiceField(choices=Severity.choices), default=list, help_text="Empty: every severity."
    )
    matchers = _matchers(default=list, help_text="On the notification's common labels; empty: every alert.")
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=Notification.Event.choices), default=list, help_text="Empty: all."
    )
    headers = _string_map(default=dict, help_text="Sent with every delivery, e.g. an Authorization header.")
    enabled = serializers.BooleanField(default=True)


class EndpointSerializer(serializers.ModelSerializer):
    severities = serializers.ListField(child=serializers.ChoiceField(choices=Severity.choices), read_only=True)
    matchers = _matchers(read_only=True)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=Notification.Event.choices), read_only=True
    )
    headers = _string_map(read_only=True)

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "name",
            "url",
            "enabled",
            "disabled_at",
            "disabled_reason",
            "failing_since",
            "severities",
            "matchers",
            "event_types",
            "headers",
            "previous_secret_expires_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "failing_since": {"help_text": "First failure of the current run of failures."},
            "previous_secret_expires_at": {"help_text": "Until then the secret before the last rotation also signs."},
        }


class EndpointIssuedSerializer(EndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="The signing secret. Shown once; store it now.")

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = ["number", "started_at", "duration_ms", "status_code", "error", "response_excerpt", "outcome"]
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    event = serializers.ChoiceField(choices=Notification.Event.choices, source="notification.event", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "webhook_id",
            "endpoint",
            "notification",
            "event",
            "status",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "delivered_at",
            "created_at",
        ]
        read_only_fields = fields
        extra_kwargs = {"webhook_id": {"help_text": "The `webhook-id` header: the same on every attempt and replay."}}


class DeliveryDetailSerializer(DeliverySerializer):
    attempt_log = DeliveryAttemptSerializer(many=True, read_only=True, help_text="Every try, oldest first.")
    body = serializers.SerializerMethodField(help_text="The exact JSON sent (Alertmanager's webhook format).")

    class Meta(DeliverySerializer.Meta):
        fields = [*DeliverySerializer.Meta.fields, "attempt_log", "body"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_body(self, delivery: Delivery) -> Any:
        return json.loads(delivery.notification.body)
