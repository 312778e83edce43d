from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from analytics.models import IngestBatch, MetricSeries


@admin.register(MetricSeries)
class MetricSeriesAdmin(admin.ModelAdmin):
    list_display = ["__str__", "tenant", "unit", "created_at", "last_point_at"]
    list_filter = ["tenant", "cluster", "metric"]
    search_fields = ["cluster", "node", "metric"]
    readonly_fields = ["identity", "created_at", "last_point_at"]
    list_select_related = ["tenant"]


@admin.register(IngestBatch)
class IngestBatchAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "received_at", "points", "status", "attempts", "processed_at"]
    list_filter = ["status", "tenant"]
    date_hierarchy = "received_at"
    list_select_related = ["tenant"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: IngestBatch | None = None) -> bool:
        return False


# Rollup, like Point, is not registered: Django 5.2's admin refuses models with a composite
# primary key (AdminSite.register raises ImproperlyConfigured).
