from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet
from django.utils import timezone

from alerts.models import Alert, AlertRule, Delivery, Incident, Notification, Severity, Silence


class RuleFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=AlertRule.Kind.choices)
    enabled = django_filters.BooleanFilter()

    class Meta:
        model = AlertRule
        fields = ["kind", "enabled"]


class AlertFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=Alert.State.choices)
    severity = django_filters.ChoiceFilter(choices=Severity.choices)
    rule = django_filters.NumberFilter(field_name="rule_id", help_text="A rule id of yours.")
    incident = django_filters.NumberFilter(field_name="incident_id", help_text="An incident id of yours.")

    class Meta:
        model = Alert
        fields = ["state", "severity", "rule", "incident"]


class IncidentFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Incident.Status.choices)
    severity = django_filters.ChoiceFilter(choices=Severity.choices)
    rule = django_filters.NumberFilter(field_name="rule_id", help_text="A rule id of yours.")

    class Meta:
        model = Incident
        fields = ["status", "severity", "rule"]


class SilenceFilter(django_filters.FilterSet):
    # A choice rather than a BooleanFilter, which reads "maybe" as no filter instead of an error.
    active = django_filters.ChoiceFilter(
        choices=[("true", "true"), ("false", "false")],
        method="filter_active",
        help_text="`true`: in force now; `false`: pending or expired.",
    )

    class Meta:
        model = Silence
        fields = ["active"]

    def filter_active(self, queryset: QuerySet[Silence], name: str, value: str) -> QuerySet[Silence]:
        now = timezone.now()
        in_force = Q(starts_at__lte=now, ends_at__gt=now)
        return queryset.filter(in_force) if value == "true" else queryset.exclude(in_force)


class DeliveryFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Delivery.Status.choices)
    endpoint = django_filters.NumberFilter(field_name="endpoint_id", help_text="An endpoint id of yours.")
    event = django_filters.ChoiceFilter(field_name="notification__event", choices=Notification.Event.choices)

    class Meta:
        model = Delivery
        fields = ["status", "endpoint", "event"]
