from __future__ import annotations

import django_filters
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError

from analytics.ingest import LABEL_NAME_RE
from analytics.models import MetricSeries


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
