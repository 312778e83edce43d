from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from analytics.models import IngestBatch, MetricSeries, Rollup

ROLLUP_COLUMNS = ["count", "min", "mean", "max", "p50", "p95", "p99", "last"]


@admin.register(MetricSeries)
class MetricSeriesAdmin(admin.ModelAdmin):
    list_display = ["__str__", "tenant", "unit", "created_at", "last_point_at"]
    list_filter = ["tenant", "cluster", "metric"]
    search_fields = ["cluster", "node", "metric"]
    readonly_fields = ["identity", "created_at", "last_point_at", "recent_rollups"]
    list_select_related = ["tenant"]

    # Django 5.2's admin refuses to register models with a composite primary key (Point,
    # Rollup), so a series' newest buckets are shown here, where an operator looks for them.
    @admin.display(description="Newest rollups")
    def recent_rollups(self, series: MetricSeries) -> str:
        rows = []
        for resolution in Rollup.Resolution:
            buckets = Rollup.objects.filter(series=series, resolution=resolution).order_by("-bucket")[:5]
            rows += [
                (
                    resolution.label,
                    f"{rollup.bucket:%Y-%m-%d %H:%M}",
                    "revised" if rollup.revised_at else "",
                    *(_number(getattr(rollup, column)) for column in ROLLUP_COLUMNS),
                )
                for rollup in buckets
            ]
        if not rows:
            return "No rollups yet."
        header = format_html_join("", "<th>{}</th>", ((c,) for c in ["resolution", "bucket", "", *ROLLUP_COLUMNS]))
        body = format_html_join(
            "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((v,) for v in row)),) for row in rows)
        )
        return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, body)


def _number(value: float | int | None) -> str:
    return "" if value is None else f"{value:.6g}"


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
