from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError

from analytics.ingest import LABEL_NAME_RE
from analytics.models import AnomalyResult, MetricSeries

NO_FEEDBACK = "none"


class SeriesFilter(django_filters.FilterSet):
    cluster = django_filters.CharFilter()
    node = django_filters.CharFilter()
    metric = django_filters.CharFilter()
    label = django_filters.CharFilter(
        method="filter_label", help_text="`name=value`; repeat the parameter to require several labels."
    )

    class Meta:
        model = MetricSeries
        fields = ["cluster", "node", "metric"]

    def filter_label(self, queryset: QuerySet[MetricSeries], name: str, value: str) -> QuerySet[MetricSeries]:
        for matcher in self.request.query_params.getlist("label"):
            label, sep, wanted = matcher.partition("=")
            if not sep or not LABEL_NAME_RE.match(label):
                raise ValidationError({"label": [f"expected name=value with a valid label name, got {matcher!r}"]})
            queryset = queryset.filter(**{f"labels__{label}": wanted})
        return queryset


class AnomalyFilter(django_filters.FilterSet):
    """Filters of the anomaly list. `from`/`to` (the window overlaps the range) are applied by the
    view, with the time parser every endpoint shares."""

    series = django_filters.NumberFilter(field_name="series_id", help_text="A series id of yours.")
    cluster = django_filters.CharFilter()
    node = django_filters.CharFilter()
    metric = django_filters.CharFilter()
    label = django_filters.MultipleChoiceFilter(
        choices=AnomalyResult.Label.choices, help_text="Repeat the parameter for any of several labels."
    )
    min_score = django_filters.NumberFilter(
        field_name="peak_score", lookup_expr="gte", help_text="Peak score at least this (0-1)."
    )
    status = django_filters.ChoiceFilter(choices=AnomalyResult.Status.choices)
    model_version = django_filters.NumberFilter(
        field_name="model_version_id", help_text="Lineage: the anomalies a model version of yours scored."
    )
    feedback = django_filters.ChoiceFilter(
        choices=[*AnomalyResult.Feedback.choices, (NO_FEEDBACK, NO_FEEDBACK)],
        method="filter_feedback",
        help_text=f"`{NO_FEEDBACK}` for anomalies nobody has judged yet.",
    )

    class Meta:
        model = AnomalyResult
        fields = ["series", "cluster", "node", "metric", "label", "min_score", "status", "model_version", "feedback"]

    def filter_feedback(self, queryset: QuerySet[AnomalyResult], name: str, value: str) -> QuerySet[AnomalyResult]:
        return queryset.filter(feedback="" if value == NO_FEEDBACK else value)
