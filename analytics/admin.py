from __future__ import annotations

import json

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from analytics.anomalies import anomaly_feedback_set
from analytics.models import AnomalyResult, IngestBatch, MetricSeries, Rollup
from mlops.admin import training_window, version_link

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


ANOMALY_SECTIONS: list[tuple[str | None, tuple[str, ...]]] = [
    (None, ("tenant", "series", "cluster", "node", "metric", "detector", "label", "status")),
    ("Window", ("window_start", "window_end", "peak_ts", "peak_score")),
    ("Values at the peak", ("observed", "expected", "lower", "upper", "deviation")),
    ("Explanation", ("explanation", "details_json")),
    ("Model (lineage)", ("scored_by", "scored_by_window")),
    ("Feedback", ("feedback", "feedback_comment", "feedback_at")),
    (None, ("created_at", "updated_at")),
]


@admin.register(AnomalyResult)
class AnomalyResultAdmin(admin.ModelAdmin):
    """Every tenant's anomalies, for operators. Read-only: anomalies are what the detectors found;
    the only change is a verdict, given through the actions (the same service as the API)."""

    list_display = [
        "window_start",
        "tenant",
        "cluster",
        "node",
        "metric",
        "label",
        "peak_score",
        "detector",
        "status",
        "feedback",
    ]
    list_filter = ["label", "status", "feedback", "detector", "cluster", "tenant"]
    search_fields = ["cluster", "node", "metric"]
    list_select_related = ["tenant"]
    date_hierarchy = "window_start"
    ordering = ["-window_start", "-id"]
    actions = ["mark_true_positive", "mark_false_positive", "mark_expected"]
    fieldsets = [(title, {"fields": fields}) for title, fields in ANOMALY_SECTIONS]
    readonly_fields = [field for _, fields in ANOMALY_SECTIONS for field in fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AnomalyResult | None = None) -> bool:
        return False  # the change page is a view page; verdicts go through the actions

    def has_feedback_permission(self, request: HttpRequest) -> bool:
        """Who may run the verdict actions: whoever Django would let change an anomaly."""
        return request.user.has_perm("analytics.change_anomalyresult")

    @admin.display(description="Model version")
    def scored_by(self, anomaly: AnomalyResult) -> str:
        return version_link(anomaly.model_version)

    @admin.display(description="Its training window")
    def scored_by_window(self, anomaly: AnomalyResult) -> str:
        return training_window(anomaly.model_version)

    # The read-only JSON field would render as one compact line; details are nested facts.
    @admin.display(description="Details")
    def details_json(self, anomaly: AnomalyResult) -> str:
        return format_html("<pre>{}</pre>", json.dumps(anomaly.details, indent=2, sort_keys=True))

    def _mark(self, request: HttpRequest, queryset: QuerySet[AnomalyResult], feedback: str) -> None:
        changed = 0
        for anomaly in queryset:
            # A comment explains a verdict: keep it when the verdict stays (a no-op), drop it when
            # the verdict changes, since it would then describe the old one.
            comment = anomaly.feedback_comment if anomaly.feedback == feedback else ""
            before = anomaly.feedback_at
            changed += anomaly_feedback_set(anomaly=anomaly, feedback=feedback, comment=comment).feedback_at != before
        verdict = feedback.replace("_", " ")
        self.message_user(request, f"Marked {changed} anomalies as {verdict} ({len(queryset) - changed} already were).")

    @admin.action(description="Mark as true positive", permissions=["feedback"])
    def mark_true_positive(self, request: HttpRequest, queryset: QuerySet[AnomalyResult]) -> None:
        self._mark(request, queryset, AnomalyResult.Feedback.TRUE_POSITIVE)

    @admin.action(description="Mark as false positive", permissions=["feedback"])
    def mark_false_positive(self, request: HttpRequest, queryset: QuerySet[AnomalyResult]) -> None:
        self._mark(request, queryset, AnomalyResult.Feedback.FALSE_POSITIVE)

    @admin.action(description="Mark as expected", permissions=["feedback"])
    def mark_expected(self, request: HttpRequest, queryset: QuerySet[AnomalyResult]) -> None:
        self._mark(request, queryset, AnomalyResult.Feedback.EXPECTED)
