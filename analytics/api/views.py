from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.utils import timezone as dj_timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, parsers, renderers, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import selectors, services
from analytics.api.filters import SeriesFilter
from analytics.api.serializers import (
    IngestResultSerializer,
    PointsIngestSerializer,
    PointsPageSerializer,
    SeriesSerializer,
)
from analytics.models import MetricSeries
from config.api import ERROR_RESPONSES, TenantScopedViewSet
from config.errors import Rejected
from tenants.auth import request_tenant


class CSVRenderer(renderers.BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["timestamp", "value"])
        for point in data["points"]:
            writer.writerow([point["timestamp"], repr(point["value"])])
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
        end = _time_param(request, "to", dj_timezone.now())
        start = _time_param(request, "from", end - timedelta(hours=1))
        try:
            limit = int(request.query_params.get("limit", 1000))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 10_000:
            raise ValidationError({"limit": ["an integer from 1 to 10000"]})
        if start >= end:
            raise ValidationError({"from": ["must be before 'to'"]})
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
            "points": [{"timestamp": ts.isoformat().replace("+00:00", "Z"), "value": value} for ts, value in rows],
            "next": next_url,
        }
        headers = {"Link": f'<{next_url}>; rel="next"'} if next_url else None
        return Response(data, headers=headers)
