"""The anomaly API (list, detail, feedback) and the health roll-up of anomaly scores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone as dj_timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from analytics import health
from analytics.anomalies import anomaly_feedback_set
from analytics.api.filters import AnomalyFilter
from analytics.api.serializers import (
    AnomalyFeedbackSerializer,
    AnomalySerializer,
    HealthQuerySerializer,
    HealthSerializer,
    HealthTopQuerySerializer,
    HealthTopSerializer,
)
from analytics.api.views import _time_param, _time_range
from analytics.models import AnomalyResult
from config.api import ERROR_RESPONSES, TenantScopedViewSet
from config.pagination import CursorPagination


class AnomalyPagination(CursorPagination):
    # Newest first; the index (tenant, -window_start) serves it. A window's start never moves
    # (an open window grows at its end), so cursors stay valid while anomalies are extended.
    ordering = ("-window_start", "-id")  # type: ignore[assignment]  # the base says "-id"; DRF takes a tuple


ANOMALY_EXAMPLE: dict[str, Any] = {
    "id": 4812,
    "series": 7,
    "series_url": "https://vigil.example.com/api/v1/series/7",
    "cluster": "eu-west",
    "node": "web-1",
    "metric": "latency.p99",
    "detector": "robust_zscore",
    "model_version": {
        "id": 31,
        "version": 3,
        "scope_key": "series:7",
        "status": "active",
        "detector": "ensemble",
        "trigger": "schedule",
        "train_from": "2026-11-01T00:00:00Z",
        "train_to": "2026-11-22T00:00:00Z",
        "metrics": {"points": 181440, "score_quantiles": {"p99": 0.41}, "contamination": 0.0021},
    },
    "label": "spike",
    "status": "closed",
    "window_start": "2026-11-23T12:03:00Z",
    "window_end": "2026-11-23T12:09:00Z",
    "peak_ts": "2026-11-23T12:05:00Z",
    "peak_score": 0.97,
    "observed": 912.0,
    "expected": 240.0,
    "lower": 180.0,
    "upper": 310.0,
    "deviation": 7.4,
    "explanation": "latency.p99 on web-1 was 912 at 12:05, expected 240 (normal range 180-310): 7.4 robust "
    "standard deviations above.",
    "details": {"window_points": 7, "median": 240.0, "mad": 44.5},
    "feedback": None,
    "feedback_comment": "",
    "feedback_at": None,
    "created_at": "2026-11-23T12:04:10Z",
    "updated_at": "2026-11-23T12:10:05Z",
}

TIME_OVERLAP_PARAMETERS = [
    OpenApiParameter(
        "from", OpenApiTypes.STR, description="Anomalies whose window ends at or after this (unix seconds or RFC 3339)."
    ),
    OpenApiParameter("to", OpenApiTypes.STR, description="Anomalies whose window starts before this."),
]

HEALTH_RANGE_PARAMETERS = [
    OpenApiParameter(
        "from", OpenApiTypes.STR, description="Inclusive start, unix seconds or RFC 3339. Default: `to` - 1h."
    ),
    OpenApiParameter("to", OpenApiTypes.STR, description="Exclusive end, unix seconds or RFC 3339. Default: now."),
]

HEALTH_DESCRIPTION = """\
Anomaly scores rolled up node -> cluster -> tenant over [`from`, `to`).

A series' score is the maximum of its per-minute anomaly scores in the range; its weight is its \
number of scored minutes. A node's score is the `strategy` over its series' scores, a cluster's \
over its nodes' scores, the tenant's over its clusters' scores:

- `max`: the highest child score.
- `mean`: the plain mean of the child scores (a cluster's is the mean of its node scores).
- `weighted`: the mean weighted by each child's scored minutes, so a child with more data counts \
more (equal to the weighted mean over all the entity's series).
- `p95`: the 95th percentile of the child scores, linearly interpolated (one child: its score).

Series with no scored minute in the range take no part. `series` and `buckets` count what was \
scored; `open_anomalies` counts open anomalies whose window overlaps the range (node-level ones \
included).
"""


def _optional_time(request: Request, name: str) -> datetime | None:
    if name not in request.query_params:
        return None
    return _time_param(request, name, dj_timezone.now())  # the default is never used: it is present


@extend_schema_view(
    list=extend_schema(
        summary="List anomalies",
        description="Your anomalies, newest window first, cursor-paginated. Every filter narrows the list; "
        "`label` may be repeated (any of them).",
        parameters=TIME_OVERLAP_PARAMETERS,
        responses={200: AnomalySerializer(many=True), **{code: ERROR_RESPONSES[code] for code in (400, 401, 403)}},
        examples=[OpenApiExample("A spike", response_only=True, value=ANOMALY_EXAMPLE)],
    ),
    retrieve=extend_schema(
        summary="One anomaly",
        description="With the explanation and the facts behind it (`details`, per detector).",
        responses={200: AnomalySerializer, **ERROR_RESPONSES},
        examples=[OpenApiExample("A spike", response_only=True, value=ANOMALY_EXAMPLE)],
    ),
)
class AnomalyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """The tenant's anomalies. Reading needs `read`; feedback needs `admin` (see `required_scopes`)."""

    # The lineage (`model_version`) is rendered on every anomaly: joined, never one query each.
    queryset = AnomalyResult.objects.select_related("model_version")
    serializer_class = AnomalySerializer
    filterset_class = AnomalyFilter
    pagination_class = AnomalyPagination
    # Feedback changes what the tenant's anomalies say (and what tuning will learn from), so it
    # is not for `read` keys, which dashboards hold, nor `ingest` keys, which collectors hold.
    # `admin` is also HasScope's default for writes; stated here so it is not missed.
    required_scopes = {"POST": "admin"}

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        queryset = super().filter_queryset(queryset)
        if self.action != "list":
            return queryset
        start, end = _optional_time(self.request, "from"), _optional_time(self.request, "to")
        if start is not None:
            queryset = queryset.filter(window_end__gte=start)
        if end is not None:
            queryset = queryset.filter(window_start__lt=end)
        return queryset

    @extend_schema(
        operation_id="anomalies_feedback",
        summary="Judge an anomaly",
        description="Records a person's verdict: `true_positive`, `false_positive` or `expected` (real but "
        "planned, e.g. a deploy), with an optional comment. Sending the same verdict and comment again "
        "changes nothing (`feedback_at` stays). Needs the `admin` scope.",
        request=AnomalyFeedbackSerializer,
        responses={200: AnomalySerializer, **ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "False positive",
                request_only=True,
                value={"feedback": "false_positive", "comment": "Batch job, runs nightly."},
            ),
            OpenApiExample(
                "Judged",
                response_only=True,
                value={
                    **ANOMALY_EXAMPLE,
                    "feedback": "false_positive",
                    "feedback_comment": "Batch job, runs nightly.",
                    "feedback_at": "2026-11-23T14:02:11Z",
                },
            ),
            OpenApiExample(
                "Unknown verdict",
                status_codes=["400"],
                response_only=True,
                value={
                    "error": {
                        "code": "invalid",
                        "message": "The request is invalid; see details.",
                        "details": [
                            {
                                "field": "feedback",
                                "code": "invalid_choice",
                                "message": '"bogus" is not allowed; expected one of: true_positive, '
                                "false_positive, expected.",
                            }
                        ],
                    }
                },
            ),
        ],
    )
    @action(detail=True, methods=["post"])
    def feedback(self, request: Request, pk: str | None = None) -> Response:
        anomaly = self.get_object()  # first: another tenant's anomaly is a 404 whatever the body
        params = AnomalyFeedbackSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        anomaly = anomaly_feedback_set(
            anomaly=anomaly, feedback=params.validated_data["feedback"], comment=params.validated_data["comment"]
        )
        return Response(self.get_serializer(anomaly).data)


HEALTH_ENTITY_EXAMPLE = {
    "cluster": "eu-west",
    "node": "web-1",
    "score": 0.97,
    "series": 12,
    "buckets": 720,
    "open_anomalies": 1,
}


class HealthViewSet(TenantScopedViewSet):
    """Anomaly scores rolled up through the hierarchy (analytics.health)."""

    pagination_class = None
    filter_backends: list[Any] = []

    @extend_schema(
        operation_id="health",
        summary="Health of the tenant, its clusters or its nodes",
        description=HEALTH_DESCRIPTION,
        parameters=[HealthQuerySerializer, *HEALTH_RANGE_PARAMETERS],
        responses={200: HealthSerializer, **{code: ERROR_RESPONSES[code] for code in (400, 401, 403)}},
        examples=[
            OpenApiExample(
                "Clusters by max",
                response_only=True,
                value={
                    "level": "cluster",
                    "strategy": "max",
                    "from": "2026-11-23T12:00:00Z",
                    "to": "2026-11-23T13:00:00Z",
                    "entities": [
                        {**HEALTH_ENTITY_EXAMPLE, "node": None, "series": 40, "buckets": 2400},
                        {
                            "cluster": "us-east",
                            "node": None,
                            "score": 0.12,
                            "series": 25,
                            "buckets": 1500,
                            "open_anomalies": 0,
                        },
                    ],
                },
            ),
            OpenApiExample(
                "Unknown strategy",
                status_codes=["400"],
                response_only=True,
                value={
                    "error": {
                        "code": "invalid",
                        "message": "The request is invalid; see details.",
                        "details": [
                            {
                                "field": "strategy",
                                "code": "invalid_choice",
                                "message": '"median" is not allowed; expected one of: max, mean, weighted, p95.',
                            }
                        ],
                    }
                },
            ),
        ],
    )
    def summary(self, request: Request) -> Response:
        params = HealthQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        start, end = _time_range(request)
        entities = health.health_rollup(tenant=self.tenant, start=start, end=end, **params.validated_data)
        data = {**params.validated_data, "from": start, "to": end, "entities": entities}
        return Response(HealthSerializer(data).data)

    @extend_schema(
        operation_id="health_top",
        summary="The nodes with the highest anomaly scores",
        description="Node scores as in `/health?level=node` (same strategies and range), the `n` highest "
        "first; nodes with no scored minute in the range are not ranked.",
        parameters=[HealthTopQuerySerializer, *HEALTH_RANGE_PARAMETERS],
        responses={200: HealthTopSerializer, **{code: ERROR_RESPONSES[code] for code in (400, 401, 403)}},
        examples=[
            OpenApiExample(
                "Top 2 by p95",
                response_only=True,
                value={
                    "strategy": "p95",
                    "from": "2026-11-23T12:00:00Z",
                    "to": "2026-11-23T13:00:00Z",
                    "nodes": [
                        HEALTH_ENTITY_EXAMPLE,
                        {**HEALTH_ENTITY_EXAMPLE, "node": "web-3", "score": 0.41, "open_anomalies": 0},
                    ],
                },
            )
        ],
    )
    def top(self, request: Request) -> Response:
        params = HealthTopQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        start, end = _time_range(request)
        nodes = health.health_top_nodes(tenant=self.tenant, start=start, end=end, **params.validated_data)
        data = {"strategy": params.validated_data["strategy"], "from": start, "to": end, "nodes": nodes}
        return Response(HealthTopSerializer(data).data)
