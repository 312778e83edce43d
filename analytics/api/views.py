from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

from django.conf import settings
from django.utils import timezone as dj_timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import mixins, parsers, renderers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import health, query, selectors, services
from analytics.api.filters import SeriesFilter
from analytics.api.serializers import (
    IngestResultSerializer,
    PointsIngestSerializer,
    PointsPageSerializer,
    QueryAcrossResultSerializer,
    QueryPerSeriesResultSerializer,
    SeriesDataSerializer,
    SeriesScoresSerializer,
    SeriesSerializer,
    SloReportSerializer,
)
from analytics.models import MetricSeries
from config.api import ERROR_RESPONSES, TenantScopedViewSet
from config.errors import Rejected
from tenants.auth import request_tenant

_T = TypeVar("_T")

# A week of minutes (10,080 scores) per request at most.
MAX_SCORES_RANGE = timedelta(days=7)


class CSVRenderer(renderers.BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["timestamp", "value"])
        for point in data["points"]:
            value = point["value"]
            writer.writerow([point["timestamp"], "" if value is None else repr(value)])
        return out.getvalue().encode()


INGEST_EXAMPLE = {
    "points": [
        {
            "cluster": "eu-west",
            "node": "web-1",
            "metric": "cpu.usage",
            "labels": {"env": "prod"},
            "unit": "percent",
            "timestamp": "2026-11-23T12:00:00Z",
            "value": 42.5,
        },
        {
            "cluster": "eu-west",
            "node": "web-1",
            "metric": "cpu.usage",
            "labels": {"env": "prod"},
            "timestamp": 1795435260,
            "value": 43.1,
        },
    ]
}


class PointsIngestView(APIView):
    # The body is decoded by the ingest service itself (a fast typed decoder, and NaN and
    # Infinity reported per point); the parser only declares the media type.
    parser_classes = [parsers.JSONParser]
    required_scopes = {"POST": "ingest"}

    @extend_schema(
        operation_id="points_ingest",
        summary="Ingest a batch of points",
        description=(
            "Stores up to the tenant's `max_points_per_request` points (default 10,000) atomically: "
            "if any point is invalid the answer is 400 listing every bad point by index and reason, "
            "and nothing is written. Series are created on their first point. Re-sending a point "
            "with the same series and timestamp never duplicates it: the value received last wins."
        ),
        request=PointsIngestSerializer,
        responses={200: IngestResultSerializer, **ERROR_RESPONSES, 413: OpenApiResponse(description="Too large")},
        examples=[
            OpenApiExample("Two points", value=INGEST_EXAMPLE, request_only=True),
            OpenApiExample(
                "Accepted", value={"batch_id": "5f0c...", "accepted": 2, "series_created": 1}, response_only=True
            ),
            OpenApiExample(
                "Rejected",
                status_codes=["400"],
                response_only=True,
                value={
                    "error": {
                        "code": "invalid_points",
                        "message": "1 of 2 points are invalid; nothing was written.",
                        "details": [
                            {
                                "index": 1,
                                "field": "value",
                                "code": "not_finite",
                                "message": "value must be a finite number (no NaN or Infinity)",
                            }
                        ],
                    }
                },
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise Rejected(
                "body_too_large", f"The body exceeds {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.", status_code=413
            )
        if request.content_type.split(";")[0].strip() != "application/json":
            raise Rejected("unsupported_media_type", "Send the points as application/json.", status_code=415)
        result = services.points_ingest_json(tenant=request_tenant(request), body=request.body)
        return Response(IngestResultSerializer(result).data, status=status.HTTP_200_OK)


def _time_param(request: Request, name: str, default: datetime) -> datetime:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return datetime.fromtimestamp(float(raw), tz=UTC)
    except ValueError:
        pass
    except OverflowError:
        raise ValidationError({name: ["timestamp out of range"]}, code="invalid_timestamp") from None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError({name: ["expected unix seconds or RFC 3339"]}, code="invalid_timestamp") from None
    if parsed.tzinfo is None:
        raise ValidationError({name: ["RFC 3339 timestamps need an offset, e.g. 'Z'"]}, code="invalid_timestamp")
    return parsed


def _param(request: Request, name: str, parse: Callable[[str], _T]) -> _T | None:
    """Query parameter `name` parsed by `parse` (None when absent); a ValueError is a 400 on it."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValidationError({name: [str(exc)]}) from None


def _time_range(request: Request) -> tuple[datetime, datetime]:
    """`from` (inclusive) and `to` (exclusive); by default the last hour."""
    end = _time_param(request, "to", dj_timezone.now())
    start = _time_param(request, "from", end - timedelta(hours=1))
    if start >= end:
        raise ValidationError({"from": ["must be before 'to'"]})
    return start, end


def _range_plan(request: Request, *, series_count: int = 1) -> query.RangePlan:
    start, end = _time_range(request)
    step = _param(request, "step", query.parse_duration)
    agg = _param(request, "agg", query.parse_agg) or "mean"
    try:
        return query.range_plan(start=start, end=end, step=step, agg=agg, series_count=series_count)
    except OverflowError:
        raise ValidationError({"to": ["the range widened to whole steps leaves the supported dates"]}) from None


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _points(samples: list[query.Sample]) -> list[dict[str, Any]]:
    return [{"timestamp": _iso(ts), "value": value} for ts, value in samples]


def _range_meta(plan: query.RangePlan) -> dict[str, Any]:
    return {
        "from": _iso(plan.start),
        "to": _iso(plan.end),
        "step": plan.step,
        "agg": plan.agg,
        "resolution": plan.resolution_label,
        "approximate": plan.approximate,
    }


RANGE_DESCRIPTION = """\
Like Prometheus' `query_range`: one value per `step`-long window, windows aligned to the Unix epoch \
(`floor(t / step) * step`). `from` is floored and `to` ceiled to the step, so every window is computed \
whole; only windows with data are listed, oldest first.

**Source.** The coarsest stored rollup resolution r of 1h, 5m, 1m with r <= step and step a multiple \
of r; raw points otherwise (steps under a minute or not a whole number of minutes). `resolution` says which. \
Rollups follow ingest within seconds (a sweep catches up within minutes), so the newest window of a \
rollup-backed answer may briefly lag the raw points.

**Exactness.** From raw points every aggregation is exact (percentiles interpolate linearly between the \
closest ranks; `stddev` is the sample standard deviation, null for one point). With step = r, the \
stored bucket values. With step a multiple of r, `count`, `sum`, `min`, `max`, `mean`, `first`, `last` \
and `stddev` (pooled from the buckets' counts, means and sample stddevs) are exact, but **percentiles \
are approximate**: they cannot be combined exactly from bucket summaries, so a window spanning several \
buckets gets a guaranteed *upper bound*, the smallest stored bucket statistic that the window's exact \
percentile provably does not exceed (never below the exact value: conservative, as a latency objective \
wants), and the answer has `"approximate": true`. A window holding a single bucket gets its exact value.

**Defaults and limits.** `agg` defaults to `mean`, `to` to now, `from` to `to` - 1h, `step` to a round \
step giving at most 300 windows. More than 11,000 windows is a 400 `too_many_points`: use a larger \
step or a shorter range.
"""

RANGE_PARAMETERS = [
    OpenApiParameter(
        "from", OpenApiTypes.STR, description="Inclusive start, unix seconds or RFC 3339. Default: `to` - 1h."
    ),
    OpenApiParameter("to", OpenApiTypes.STR, description="Exclusive end, unix seconds or RFC 3339. Default: now."),
    OpenApiParameter(
        "step",
        OpenApiTypes.STR,
        description="Window length: `30s`, `1m`, `5m`, `10m`, `1h`, `1d`, `1h30m`, ... or whole seconds (`90`). "
        "Default: a round step giving at most 300 windows.",
    ),
    OpenApiParameter(
        "agg", OpenApiTypes.STR, enum=list(query.AGGREGATIONS), default="mean", description="Aggregate per window."
    ),
]

TOO_MANY_POINTS_EXAMPLE = OpenApiExample(
    "Too many points",
    status_codes=["400"],
    response_only=True,
    value={
        "error": {
            "code": "too_many_points",
            "message": "This query would answer 17280 windows per series, more than 11000. Use a larger step "
            "(at least 1m for this range), a shorter range.",
            "details": [],
        }
    },
)

SERIES_DATA_EXAMPLE = {
    "series_id": 7,
    "from": "2026-11-23T12:00:00Z",
    "to": "2026-11-23T12:30:00Z",
    "step": 600,
    "agg": "p95",
    "resolution": "5m",
    "approximate": True,
    "points": [
        {"timestamp": "2026-11-23T12:00:00Z", "value": 212.5},
        {"timestamp": "2026-11-23T12:10:00Z", "value": 198.0},
        {"timestamp": "2026-11-23T12:20:00Z", "value": 240.25},
    ],
}


class SeriesViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """The tenant's metric series."""

    queryset = MetricSeries.objects.all()
    serializer_class = SeriesSerializer
    filterset_class = SeriesFilter

    def handle_exception(self, exc: Exception) -> Response:
        # Errors are JSON whatever was negotiated for the body (e.g. text/csv).
        self.request.accepted_renderer = renderers.JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return super().handle_exception(exc)

    @extend_schema(
        summary="Raw points of a series",
        parameters=[
            OpenApiParameter(
                "from", OpenApiTypes.STR, description="Inclusive start, unix seconds or RFC 3339. Default: `to` - 1h."
            ),
            OpenApiParameter(
                "to", OpenApiTypes.STR, description="Exclusive end, unix seconds or RFC 3339. Default: now."
            ),
            OpenApiParameter(
                "limit", OpenApiTypes.INT, description="At most this many points (1-10000, default 1000)."
            ),
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], description="Or `Accept: text/csv`."),
        ],
        responses={200: PointsPageSerializer, **ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "A page",
                response_only=True,
                value={"series_id": 7, "points": [{"timestamp": "2026-11-23T12:00:00Z", "value": 42.5}], "next": None},
            )
        ],
    )
    @action(detail=True, methods=["get"], renderer_classes=[renderers.JSONRenderer, CSVRenderer])
    def points(self, request: Request, pk: str | None = None) -> Response:
        series = self.get_object()
        start, end = _time_range(request)
        try:
            limit = int(request.query_params.get("limit", 1000))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 10_000:
            raise ValidationError({"limit": ["an integer from 1 to 10000"]})
        rows = selectors.points_range(series=series, start=start, end=end, limit=limit + 1)
        next_url = None
        if len(rows) > limit:
            rows = rows[:limit]
            params = request.query_params.copy()
            params["from"] = (rows[-1][0] + timedelta(microseconds=1)).isoformat()
            params["to"] = end.isoformat()
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(sorted(params.items()))}")
        data = {
            "series_id": series.pk,
            "points": [{"timestamp": _iso(ts), "value": value} for ts, value in rows],
            "next": next_url,
        }
        headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else None
        return Response(data, headers=headers)

    @extend_schema(
        operation_id="series_data",
        summary="Aggregated values of a series per time window",
        description=RANGE_DESCRIPTION,
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], description="Or `Accept: text/csv`."),
        ],
        responses={200: SeriesDataSerializer, **ERROR_RESPONSES},
        examples=[
            OpenApiExample("p95 per 10 minutes from 5-minute rollups", response_only=True, value=SERIES_DATA_EXAMPLE),
            TOO_MANY_POINTS_EXAMPLE,
        ],
    )
    @action(detail=True, methods=["get"], renderer_classes=[renderers.JSONRenderer, CSVRenderer])
    def data(self, request: Request, pk: str | None = None) -> Response:
        series = self.get_object()
        plan = _range_plan(request)
        samples = query.range_query(series_ids=[series.pk], plan=plan)[series.pk]
        return Response({"series_id": series.pk, **_range_meta(plan), "points": _points(samples)})

    @extend_schema(
        operation_id="series_slo",
        summary="Service-level objective report of a series",
        description=(
            "Evaluates every stored rollup bucket of the series (`bucket` resolution) that starts in "
            "[now - `window`, now) and has data: a bucket is good when its `agg` value meets the "
            "`objective` (buckets whose `agg` is undefined, a stddev of one point, are skipped). "
            "`good_ratio` = good / total; `error_budget` = 1 - `target`; `error_budget_remaining` = "
            "1 - (1 - good_ratio) / error_budget, negative when overspent (computed exactly from the "
            "decimal target). `status`: `exhausted` when remaining <= 0, `burning` when remaining < 0.25, "
            "`ok` otherwise; `no_data` (with `good_ratio` null) when there is no bucket at all."
        ),
        parameters=[
            OpenApiParameter(
                "objective",
                OpenApiTypes.STR,
                required=True,
                description="`<`, `<=`, `>` or `>=` and a number, e.g. `<500` (URL-encoded: `%3C500`).",
            ),
            OpenApiParameter(
                "window", OpenApiTypes.STR, default="30d", description="How far back: `30d`, `7d`, `24h`, ..."
            ),
            OpenApiParameter(
                "agg",
                OpenApiTypes.STR,
                enum=list(query.AGGREGATIONS),
                default="p99",
                description="The bucket statistic the objective is about.",
            ),
            OpenApiParameter(
                "target",
                OpenApiTypes.STR,
                default="0.99",
                description="Fraction of good buckets aimed at, strictly between 0 and 1.",
            ),
            OpenApiParameter(
                "bucket", OpenApiTypes.STR, enum=["1m", "5m", "1h"], default="5m", description="Rollup resolution."
            ),
        ],
        responses={200: SloReportSerializer, **ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "Within budget",
                response_only=True,
                value={
                    "series_id": 7,
                    "objective": "p99 < 500",
                    "window": "30d",
                    "bucket": "5m",
                    "from": "2026-10-24T12:00:00Z",
                    "to": "2026-11-23T12:00:00Z",
                    "buckets_total": 8640,
                    "buckets_good": 8580,
                    "good_ratio": 0.9930555555555556,
                    "target": 0.99,
                    "error_budget": 0.01,
                    "error_budget_remaining": 0.3055555555555556,
                    "status": "ok",
                },
            )
        ],
    )
    @action(detail=True, methods=["get"])
    def slo(self, request: Request, pk: str | None = None) -> Response:
        series = self.get_object()
        objective = _param(request, "objective", query.parse_objective)
        if objective is None:
            raise ValidationError({"objective": ["required, e.g. '<500'"]})
        window = _param(request, "window", query.parse_duration) or 30 * 86400
        agg = _param(request, "agg", query.parse_agg) or "p99"
        target = _param(request, "target", query.parse_target) or query.parse_target("0.99")
        resolution = _param(request, "bucket", query.parse_resolution) or 300
        end = dj_timezone.now()
        start = end - timedelta(seconds=window)
        report = query.slo_report(
            series_id=series.pk,
            agg=agg,
            objective=objective,
            target=target,
            resolution=resolution,
            start=start,
            end=end,
        )
        return Response(
            {
                "series_id": series.pk,
                "objective": objective.describe(agg),
                "window": query.format_duration(window),
                "bucket": query.format_duration(resolution),
                "from": _iso(start),
                "to": _iso(end),
                **asdict(report),
            }
        )

    @extend_schema(
        operation_id="series_scores",
        summary="Anomaly score of a series per minute",
        description=(
            "The highest anomaly score (0-1) of the series in each scored minute with `from` <= minute < `to`, "
            "oldest first: the input of `/health`. At most 7 days per request."
        ),
        parameters=[
            OpenApiParameter(
                "from", OpenApiTypes.STR, description="Inclusive start, unix seconds or RFC 3339. Default: `to` - 1h."
            ),
            OpenApiParameter(
                "to", OpenApiTypes.STR, description="Exclusive end, unix seconds or RFC 3339. Default: now."
            ),
        ],
        responses={200: SeriesScoresSerializer, **ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "Two minutes",
                response_only=True,
                value={
                    "series_id": 7,
                    "from": "2026-11-23T12:00:00Z",
                    "to": "2026-11-23T12:02:00Z",
                    "scores": [
                        {"bucket": "2026-11-23T12:00:00Z", "score": 0.08},
                        {"bucket": "2026-11-23T12:01:00Z", "score": 0.97},
                    ],
                },
            )
        ],
    )
    @action(detail=True, methods=["get"])
    def scores(self, request: Request, pk: str | None = None) -> Response:
        series = self.get_object()
        start, end = _time_range(request)
        if end - start > MAX_SCORES_RANGE:
            raise ValidationError({"from": ["at most 7 days before 'to'"]}, code="range_too_long")
        scores = health.series_scores(series=series, start=start, end=end)
        data = {
            "series_id": series.pk,
            "detector": health.series_detector_status(series=series),
            "from": start,
            "to": end,
            "scores": [{"bucket": bucket, "score": score} for bucket, score in scores],
        }
        return Response(SeriesScoresSerializer(data).data)


class SeriesQueryViewSet(TenantScopedViewSet):
    """Range queries over many series at once, selected like the series list."""

    queryset = MetricSeries.objects.all()
    filterset_class = SeriesFilter

    @extend_schema(
        operation_id="series_query",
        summary="Aggregated values of many series per time window",
        description=(
            "The series endpoint `/series/{id}/data` over every series of yours matching the selectors "
            "(`cluster`, `node`, `metric`, `label=name=value`, repeatable), at most 500 "
            "(`too_many_series` otherwise). Without `across`, each series with its windows. With `across`, "
            "one combined series: per window, the `across` (sum, mean, min, max or p95) of the series' "
            "`agg` values, e.g. the mean CPU of all nodes of a cluster.\n\n"
            + RANGE_DESCRIPTION
            + "\nFor many series the bound is on series x windows: at most 110,000 (and 11,000 windows per "
            "series); the default step keeps within it."
        ),
        filters=True,
        parameters=[
            *RANGE_PARAMETERS,
            OpenApiParameter(
                "across",
                OpenApiTypes.STR,
                enum=list(query.ACROSS),
                description="Combine the series into one, per window.",
            ),
        ],
        responses={
            200: PolymorphicProxySerializer(
                component_name="QueryResult",
                serializers=[QueryPerSeriesResultSerializer, QueryAcrossResultSerializer],
                resource_type_field_name=None,
            ),
            **{code: ERROR_RESPONSES[code] for code in (400, 401, 403)},
        },
        examples=[
            OpenApiExample(
                "Two nodes",
                response_only=True,
                value={
                    "from": "2026-11-23T12:00:00Z",
                    "to": "2026-11-23T13:00:00Z",
                    "step": 1800,
                    "agg": "mean",
                    "resolution": "5m",
                    "approximate": False,
                    "series": [
                        {
                            "id": 7,
                            "cluster": "eu-west",
                            "node": "web-1",
                            "metric": "cpu.usage",
                            "labels": {"env": "prod"},
                            "points": [
                                {"timestamp": "2026-11-23T12:00:00Z", "value": 41.2},
                                {"timestamp": "2026-11-23T12:30:00Z", "value": 44.9},
                            ],
                        },
                        {
                            "id": 8,
                            "cluster": "eu-west",
                            "node": "web-2",
                            "metric": "cpu.usage",
                            "labels": {"env": "prod"},
                            "points": [{"timestamp": "2026-11-23T12:00:00Z", "value": 38.0}],
                        },
                    ],
                },
            ),
            OpenApiExample(
                "Mean across a cluster",
                response_only=True,
                value={
                    "from": "2026-11-23T12:00:00Z",
                    "to": "2026-11-23T13:00:00Z",
                    "step": 1800,
                    "agg": "mean",
                    "resolution": "5m",
                    "approximate": False,
                    "across": "mean",
                    "series_count": 2,
                    "points": [
                        {"timestamp": "2026-11-23T12:00:00Z", "value": 39.6},
                        {"timestamp": "2026-11-23T12:30:00Z", "value": 44.9},
                    ],
                },
            ),
            OpenApiExample(
                "Too many series",
                status_codes=["400"],
                response_only=True,
                value={
                    "error": {
                        "code": "too_many_series",
                        "message": "The selectors match 1200 series, more than 500. Narrow them with cluster, "
                        "node, metric or label.",
                        "details": [],
                    }
                },
            ),
            TOO_MANY_POINTS_EXAMPLE,
        ],
    )
    def query_range(self, request: Request) -> Response:
        across = _param(request, "across", lambda raw: query.parse_agg(raw, query.ACROSS))
        selected = self.filter_queryset(self.get_queryset()).order_by("pk")
        series = list(selected.values("id", "cluster", "node", "metric", "labels")[: query.MAX_SERIES + 1])
        if len(series) > query.MAX_SERIES:
            raise Rejected(
                "too_many_series",
                f"The selectors match {selected.count()} series, more than {query.MAX_SERIES}. "
                "Narrow them with cluster, node, metric or label.",
            )
        plan = _range_plan(request, series_count=len(series))
        ids = [s["id"] for s in series]
        if across is not None:
            samples = query.range_query_across(series_ids=ids, plan=plan, how=across)
            return Response(
                {**_range_meta(plan), "across": across, "series_count": len(ids), "points": _points(samples)}
            )
        values = query.range_query(series_ids=ids, plan=plan)
        return Response(
            {
                **_range_meta(plan),
                "series": [{**s, "points": _points(values[s["id"]])} for s in series],
            }
        )
