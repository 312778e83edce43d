"""The model registry over the API: versions (list, detail with its audit trail), promote,
roll back a scope, compare two versions. Tenant-scoped like everything else."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from config.api import ERROR_RESPONSES, ErrorSerializer, TenantScopedViewSet
from config.pagination import CursorPagination
from mlops.api.serializers import (
    CompareQuerySerializer,
    CompareSerializer,
    ModelVersionDetailSerializer,
    ModelVersionSerializer,
    ReasonSerializer,
)
from mlops.models import ModelVersion
from mlops.services import model_version_promote, model_version_rollback

VERSION: dict[str, Any] = {
    "id": 31,
    "scope_kind": "series",
    "scope_key": "series:7",
    "series": 7,
    "cluster": "eu-west",
    "node": "web-1",
    "metric": "http.latency.p99",
    "version": 3,
    "parent": 30,
    "status": "active",
    "error": "",
    "detector": "ensemble",
    "hyperparameters": {"sensitivity": "medium"},
    "feature_schema": ["http.latency.p99"],
    "train_from": "2026-11-01T00:00:00Z",
    "train_to": "2026-11-22T00:00:00Z",
    "train_points": 181440,
    "metrics": {"score_p99": 0.41, "fit_seconds": 2.7},
    "artifact_sha256": "9f2c1e0b4d3a6f8e7c5b2a19d0e4f6a8b7c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9",
    "trigger": "schedule",
    "created_by": "",
    "created_at": "2026-11-22T02:10:00Z",
    "activated_at": "2026-11-22T02:11:00Z",
}
CONFLICT = {409: ErrorSerializer}


class ModelVersionFilter(filters.FilterSet):
    class Meta:
        model = ModelVersion
        fields = ["status", "scope_kind", "scope_key", "detector", "series"]


class VersionPagination(CursorPagination):
    ordering = ("-created_at", "-id")  # type: ignore[assignment]  # the base says "-id"; DRF takes a tuple


@extend_schema_view(
    list=extend_schema(
        summary="List model versions",
        description="Your trained models, newest first; filter by status, scope or detector.",
        responses={200: ModelVersionSerializer(many=True), **{c: ERROR_RESPONSES[c] for c in (400, 401, 403)}},
        examples=[OpenApiExample("An active version", response_only=True, value=VERSION)],
    ),
    retrieve=extend_schema(
        summary="One model version",
        description="With its training window, metrics, artifact hash and audit trail (`events`).",
        responses={200: ModelVersionDetailSerializer, **ERROR_RESPONSES},
        examples=[OpenApiExample("An active version", response_only=True, value={**VERSION, "events": []})],
    ),
)
class ModelVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    queryset = ModelVersion.objects.all()
    serializer_class = ModelVersionSerializer
    filterset_class = ModelVersionFilter
    pagination_class = VersionPagination

    def get_queryset(self) -> QuerySet[ModelVersion]:
        queryset: QuerySet[ModelVersion] = super().get_queryset()  # type: ignore[assignment]
        return queryset if self.action == "list" else queryset.prefetch_related("events")

    def get_serializer_class(self) -> Any:
        return ModelVersionSerializer if self.action == "list" else ModelVersionDetailSerializer

    def _reason(self) -> str:
        params = ReasonSerializer(data=self.request.data)
        params.is_valid(raise_exception=True)
        return str(params.validated_data["reason"])

    @extend_schema(
        summary="Promote a version",
        description="Make it its scope's active model; the active one retires. Both are audit events. "
        "A version still training, failed, or whose artifact does not verify is refused (409) and the "
        "active version keeps serving. Needs the `admin` scope.",
        request=ReasonSerializer,
        responses={200: ModelVersionDetailSerializer, **ERROR_RESPONSES, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        version = model_version_promote(version=self.get_object(), actor=self.actor, reason=self._reason())
        return Response(ModelVersionDetailSerializer(self.get_queryset().get(pk=version.pk)).data)

    @extend_schema(
        summary="Roll back this version's scope",
        description="Put back the newest earlier version of the scope that has served; the current one "
        "retires. 409 `nothing_to_roll_back` when there is none. Needs the `admin` scope.",
        request=ReasonSerializer,
        responses={200: ModelVersionDetailSerializer, **ERROR_RESPONSES, **CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        version = self.get_object()
        back = model_version_rollback(
            tenant=self.tenant, key=version.scope_key, actor=self.actor, reason=self._reason()
        )
        return Response(ModelVersionDetailSerializer(self.get_queryset().get(pk=back.pk)).data)

    @extend_schema(
        summary="Compare two versions",
        description="Side by side, with the hyperparameters that differ and every training metric of "
        "either. `other` must be a version of yours (else 404).",
        parameters=[CompareQuerySerializer],
        responses={200: CompareSerializer, **ERROR_RESPONSES},
    )
    @action(detail=True, methods=["get"])
    def compare(self, request: Request, pk: str | None = None) -> Response:
        a = self.get_object()
        params = CompareQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        b = self.get_queryset().filter(pk=params.validated_data["other"]).first()
        if b is None:
            raise Http404
        names = sorted(set(a.hyperparameters) | set(b.hyperparameters))
        return Response(
            {
                "a": ModelVersionSerializer(a).data,
                "b": ModelVersionSerializer(b).data,
                "same_scope": a.scope_key == b.scope_key,
                "hyperparameters_changed": {
                    n: [a.hyperparameters.get(n), b.hyperparameters.get(n)]
                    for n in names
                    if a.hyperparameters.get(n) != b.hyperparameters.get(n)
                },
                "metrics": {n: [a.metrics.get(n), b.metrics.get(n)] for n in sorted(set(a.metrics) | set(b.metrics))},
            }
        )
