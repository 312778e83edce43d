"""The model registry over the API: versions (list, detail with its audit trail), promote, roll
back a scope, compare two versions, train a scope; the drift reports of the active versions; the
tenant's calendar of known events. Tenant-scoped like everything else: reading needs `read`, every
write and action `admin` (HasScope's default)."""

from __future__ import annotations

from typing import Any

from django.db.models import F, QuerySet
from django.http import Http404
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from analytics.api.anomalies import _optional_time
from config.api import ERROR_RESPONSES, ErrorSerializer, TenantScopedViewSet, WritableViewSet
from config.pagination import CursorPagination
from mlops import training
from mlops.api.serializers import (
    ALIASES,
    CHAMPION,
    CalendarEventInSerializer,
    CalendarEventSerializer,
    CompareQuerySerializer,
    CompareSerializer,
    DriftReportDetailSerializer,
    DriftReportSerializer,
    ModelVersionDetailSerializer,
    ModelVersionSerializer,
    ReasonSerializer,
    TrainInSerializer,
    challengers,
)
from mlops.calendars import calendar_event_save
from mlops.models import CalendarEvent, DriftReport, ModelVersion
from mlops.services import model_version_promote, model_version_rollback

GATE: dict[str, Any] = {
    "passed": True,
    "active": 30,
    "active_version": 2,
    "window": ["2026-11-21T00:00:00+00:00", "2026-11-22T00:00:00+00:00"],
    "candidate": {
        "anomalies": 3,
        "false_alarms": 0,
        "true_positives": 1,
        "judged_true_positives_held": 0,
        "judged_false_positives_held": 2,
    },
    "current": {
        "anomalies": 4,
        "false_alarms": 2,
        "true_positives": 1,
        "judged_true_positives_held": 0,
        "judged_false_positives_held": 0,
    },
    "checks": {"false_alarms": True, "true_positives": True, "judged": True, "stability": True},
    "summary": "no worse than v2 (holdout anomalies 3 vs 4, false alarms 0 vs 2)",
}
METRICS: dict[str, Any] = {
    "points": 181440,
    "excluded_points": 240,
    "score_quantiles": {"p50": 0.08, "p90": 0.21, "p99": 0.41, "p999": 0.77},
    "contamination": 0.0021,
    "anomaly_windows": 12,
    "anomaly_rate_per_day": 0.57,
    "fit_seconds": 2.7,
    "gate": GATE,
}
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
    "metrics": METRICS,
    "artifact_sha256": "9f2c1e0b4d3a6f8e7c5b2a19d0e4f6a8b7c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9",
    "trigger": "schedule",
    "created_by": "",
    "created_at": "2026-11-22T02:10:00Z",
    "activated_at": "2026-11-22T02:11:00Z",
    "gate": GATE,
}
EVENTS = [
    {
        "action": "registered",
        "actor": "",
        "reason": "trained on 181440 points (schedule)",
        "created_at": VERSION["created_at"],
    },
    {"action": "promoted", "actor": "", "reason": f"gate: {GATE['summary']}", "created_at": VERSION["activated_at"]},
]
VERSION_DETAIL: dict[str, Any] = {**VERSION, "anomalies_count": 14, "events": EVENTS}
TRAINING: dict[str, Any] = {
    **VERSION,
    "id": 32,
    "version": 4,
    "parent": 31,
    "status": "training",
    "feature_schema": [],
    "train_from": "2026-11-02T00:00:00Z",
    "train_to": "2026-11-23T00:00:00Z",
    "train_points": 0,
    "metrics": {},
    "artifact_sha256": None,
    "trigger": "manual",
    "created_by": "key:oncall",
    "created_at": "2026-11-23T09:30:00Z",
    "activated_at": None,
    "gate": None,
    "anomalies_count": 0,
    "events": [],
}
CONFLICT = {409: OpenApiResponse(ErrorSerializer, description="Conflicts with the current state (see the code).")}
LIST_ERRORS = {code: ERROR_RESPONSES[code] for code in (400, 401, 403)}
READ_ERRORS = {code: ERROR_RESPONSES[code] for code in (401, 403, 404)}
CREATE_ERRORS = LIST_ERRORS  # 400, 401, 403: nothing to find yet


def _error_example(name: str, code: str, message: str, *details: dict[str, str], status: int = 400) -> OpenApiExample:
    return OpenApiExample(
        name,
        status_codes=[str(status)],
        response_only=True,
        value={"error": {"code": code, "message": message, "details": list(details)}},
    )


NOT_FOUND = _error_example("Not yours", "not_found", "Not found.", status=404)
REASON = OpenApiExample("With a reason", request_only=True, value={"reason": "Seasonal change; v2 misses weekends."})


class ModelVersionFilter(filters.FilterSet):
    alias = filters.ChoiceFilter(
        choices=[(a, a) for a in ALIASES], method="filter_alias", help_text="`champion` or `challenger`."
    )

    class Meta:
        model = ModelVersion
        fields = ["status", "scope_kind", "scope_key", "detector", "series"]

    def filter_alias(self, queryset: QuerySet[ModelVersion], name: str, value: str) -> QuerySet[ModelVersion]:
        if value == CHAMPION:
            return queryset.filter(status=ModelVersion.Status.ACTIVE)
        return challengers(queryset).filter(pk=F("challenger_id"))


class VersionPagination(CursorPagination):
    ordering = ("-created_at", "-id")  # type: ignore[assignment]  # the base says "-id"; DRF takes a tuple


@extend_schema_view(
    list=extend_schema(
        summary="List model versions",
        description="Your trained models, newest first; filter by status, scope or detector. `gate` is the "
        "promotion gate's comparison with the version that was active when it was trained.",
        responses={200: ModelVersionSerializer(many=True), **LIST_ERRORS},
        examples=[OpenApiExample("An active version", response_only=True, value=VERSION)],
    ),
    retrieve=extend_schema(
        summary="One model version",
        description="With its training window, metrics, gate comparison, artifact hash, the number of "
        "anomalies it scored (`anomalies_count`; list them with `/anomalies?model_version=<id>`) and its "
        "audit trail (`events`).",
        responses={200: ModelVersionDetailSerializer, **READ_ERRORS},
        examples=[OpenApiExample("An active version", response_only=True, value=VERSION_DETAIL), NOT_FOUND],
    ),
)
class ModelVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    queryset = ModelVersion.objects.all()
    serializer_class = ModelVersionSerializer
    filterset_class = ModelVersionFilter
    pagination_class = VersionPagination

    def get_queryset(self) -> QuerySet[ModelVersion]:
        queryset: QuerySet[ModelVersion] = challengers(super().get_queryset())
        return queryset if self.action == "list" else queryset.prefetch_related("events")

    def get_serializer_class(self) -> Any:
        return ModelVersionSerializer if self.action == "list" else ModelVersionDetailSerializer

    def _reason(self) -> str:
        params = ReasonSerializer(data=self.request.data)
        params.is_valid(raise_exception=True)
        return str(params.validated_data["reason"])

    def _detail(self, version: ModelVersion, status_code: int = status.HTTP_200_OK) -> Response:
        return Response(ModelVersionDetailSerializer(self.get_queryset().get(pk=version.pk)).data, status=status_code)

    @extend_schema(
        summary="Promote a version",
        description="Make it its scope's active model; the active one retires. Both are audit events. "
        "A version still training, failed, or whose artifact does not verify is refused (409) and the "
        "active version keeps serving. Needs the `admin` scope.",
        request=ReasonSerializer,
        responses={200: ModelVersionDetailSerializer, **ERROR_RESPONSES, **CONFLICT},
        examples=[
            REASON,
            OpenApiExample("Promoted", response_only=True, value=VERSION_DETAIL),
            _error_example(
                "Still training", "not_promotable", "series:7 v4 (training) cannot be promoted.", status=409
            ),
            NOT_FOUND,
        ],
    )
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        version = model_version_promote(version=self.get_object(), actor=self.actor, reason=self._reason())
        return self._detail(version)

    @extend_schema(
        summary="Roll back this version's scope",
        description="Put back the newest earlier version of the scope that has served; the current one "
        "retires. 409 `nothing_to_roll_back` when there is none. Needs the `admin` scope.",
        request=ReasonSerializer,
        responses={200: ModelVersionDetailSerializer, **ERROR_RESPONSES, **CONFLICT},
        examples=[
            REASON,
            OpenApiExample("Back on v2", response_only=True, value={**VERSION_DETAIL, "id": 30, "version": 2}),
            _error_example(
                "Nothing earlier",
                "nothing_to_roll_back",
                "series:7 v1 (active) has no earlier active version.",
                status=409,
            ),
            NOT_FOUND,
        ],
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        version = self.get_object()
        back = model_version_rollback(
            tenant=self.tenant, key=version.scope_key, actor=self.actor, reason=self._reason()
        )
        return self._detail(back)

    @extend_schema(
        summary="Compare two versions",
        description="Side by side, with the hyperparameters that differ and every training metric of "
        "either. `other` must be a version of yours (else 404).",
        parameters=[CompareQuerySerializer],
        responses={200: CompareSerializer, **ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "v2 against v3",
                response_only=True,
                value={
                    "a": {**VERSION, "id": 30, "version": 2, "status": "retired", "metrics": {"fit_seconds": 2.1}},
                    "b": VERSION,
                    "same_scope": True,
                    "hyperparameters_changed": {},
                    "metrics": {"fit_seconds": [2.1, 2.7], "gate": [None, GATE]},
                },
            ),
            NOT_FOUND,
        ],
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

    @extend_schema(
        summary="Train a scope",
        description="Train a new version of one series' detector (`scope_kind` `series`, with `series`) or of "
        "a node's multivariate detector (`node`, with `cluster` and `node`) on [`train_from`, `train_to`), "
        "by default the configured training window up to now. Training runs in the background: the answer "
        "is the version, `training` (202); poll `/model-versions/{id}` until it is a `candidate` (the gate "
        "kept the active version), `active` (the gate promoted it) or `failed` (see `error`).\n\n"
        "Idempotent: the same inputs (scope, detector, sensitivity, window, feedback and calendar events) "
        "answer 200 with the version they already gave, trained or training. The trigger is `manual` and "
        "`created_by` the key. Needs the `admin` scope.",
        request=TrainInSerializer,
        responses={
            202: OpenApiResponse(ModelVersionDetailSerializer, description="A new version, training."),
            200: OpenApiResponse(ModelVersionDetailSerializer, description="These inputs already gave it."),
            **CREATE_ERRORS,
        },
        examples=[
            OpenApiExample("A series, default window", request_only=True, value={"scope_kind": "series", "series": 7}),
            OpenApiExample(
                "A node, given window",
                request_only=True,
                value={
                    "scope_kind": "node",
                    "cluster": "eu-west",
                    "node": "web-1",
                    "train_from": "2026-11-01T00:00:00Z",
                    "train_to": "2026-11-22T00:00:00Z",
                },
            ),
            OpenApiExample("Training", response_only=True, status_codes=["202"], value=TRAINING),
            OpenApiExample("Already trained", response_only=True, status_codes=["200"], value=VERSION_DETAIL),
            _error_example(
                "Not your series",
                "invalid",
                "The request is invalid; see details.",
                {"field": "series", "code": "does_not_exist", "message": 'Invalid pk "77" - object does not exist.'},
            ),
            _error_example("Inverted window", "invalid_window", "The training window must end after it starts."),
        ],
    )
    @action(detail=False, methods=["post"])
    def train(self, request: Request) -> Response:
        params = TrainInSerializer(data=request.data, context=self.get_serializer_context())
        params.is_valid(raise_exception=True)
        values = params.validated_data
        if values["series"] is not None:
            scope = training.Scope.of_series(values["series"])
        else:
            scope = training.Scope(
                tenant=self.tenant, kind=ModelVersion.ScopeKind.NODE, cluster=values["cluster"], node=values["node"]
            )
        version, created = training.model_version_train_request(
            scope=scope,
            trigger=ModelVersion.Trigger.MANUAL,
            actor=self.actor,
            start=values["train_from"],
            end=values["train_to"],
        )
        return self._detail(version, status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK)


# --- drift reports -------------------------------------------------------------------------------

DRIFT_REPORT: dict[str, Any] = {
    "id": 905,
    "model_version": 31,
    "scope_key": "series:7",
    "window_from": "2026-11-29T00:00:00Z",
    "window_to": "2026-12-06T00:00:00Z",
    "points": 10080,
    "verdict": "drift",
    "drifted": ["value", "anomaly_rate"],
    "action": "retrain",
    "retrained": 32,
    "created_at": "2026-12-06T00:04:12Z",
}
DRIFT_STATISTICS: dict[str, Any] = {
    "features": {
        "value": {
            "n": 10080,
            "n_eff": 812.4,
            "psi": 0.41,
            "ks": 0.22,
            "ks_p": 2.1e-9,
            "wasserstein": 0.93,
            "drifted": True,
        },
        "residual": {
            "n": 10080,
            "n_eff": 812.4,
            "psi": 0.05,
            "ks": 0.04,
            "ks_p": 0.31,
            "wasserstein": 0.12,
            "drifted": False,
        },
    },
    "concept": {
        "anomaly_rate": {
            "count": 11,
            "days": 7.0,
            "rate_per_day": 1.57,
            "reference_rate_per_day": 0.57,
            "p": 0.0009,
            "drifted": True,
        },
        "feedback_precision": {"precision": None, "reference_precision": None, "feedback": 0, "drifted": False},
    },
}


class DriftReportFilter(filters.FilterSet):
    model_version = filters.NumberFilter(field_name="model_version_id", help_text="A version id of yours.")
    scope_key = filters.CharFilter(help_text="e.g. `series:7` or `node:eu-west/web-1`.")
    verdict = filters.ChoiceFilter(choices=DriftReport.Verdict.choices)
    action = filters.ChoiceFilter(choices=DriftReport.Action.choices)

    class Meta:
        model = DriftReport
        fields = ["model_version", "scope_key", "verdict", "action"]


class DriftReportPagination(CursorPagination):
    # Newest window first, as the (tenant, -window_to) index reads; ids break ties.
    ordering = ("-window_to", "-id")  # type: ignore[assignment]  # the base says "-id"; DRF takes a tuple


@extend_schema_view(
    list=extend_schema(
        summary="List drift reports",
        description="The drift checks of your active models, newest window first: the recent window of each "
        "against what the version was trained on (data drift per feature; anomaly rate and feedback precision "
        "for concept drift), the verdict and what your tenant's drift policy did. Filter by version, scope, "
        "verdict or action; the statistics are on the detail.",
        responses={200: DriftReportSerializer(many=True), **LIST_ERRORS},
        examples=[OpenApiExample("Drift, retrained", response_only=True, value=DRIFT_REPORT)],
    ),
    retrieve=extend_schema(
        summary="One drift report",
        description="With its `statistics`: per feature the population stability index, the Kolmogorov-Smirnov "
        "statistic and p-value and the Wasserstein distance; the anomaly rate and the feedback precision "
        "against training.",
        responses={200: DriftReportDetailSerializer, **READ_ERRORS},
        examples=[
            OpenApiExample(
                "Drift, retrained", response_only=True, value={**DRIFT_REPORT, "statistics": DRIFT_STATISTICS}
            ),
            NOT_FOUND,
        ],
    ),
)
class DriftReportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """Read-only: reports are written by the drift checks (mlops.drift)."""

    queryset = DriftReport.objects.all()
    serializer_class = DriftReportSerializer
    filterset_class = DriftReportFilter
    pagination_class = DriftReportPagination

    def get_serializer_class(self) -> Any:
        return DriftReportSerializer if self.action == "list" else DriftReportDetailSerializer


# --- calendar events -----------------------------------------------------------------------------

CALENDAR_EVENT_IN: dict[str, Any] = {
    "kind": "maintenance",
    "description": "Database upgrade",
    "start": "2026-12-01T22:00:00Z",
    "end": "2026-12-02T02:00:00Z",
    "cluster": "eu-west",
    "node": "db-1",
    "suppress": True,
}
CALENDAR_EVENT: dict[str, Any] = {
    "id": 17,
    **CALENDAR_EVENT_IN,
    "created_by": "key:oncall",
    "created_at": "2026-11-28T10:00:00Z",
    "updated_at": "2026-11-28T10:00:00Z",
}
CALENDAR_DESCRIPTION = (
    "Known events on your calendar: maintenance, holidays, incidents. Training leaves their points out; "
    "while an event that `suppress`es lasts, detection of what it covers is held back (no scores, no "
    "anomalies, nothing learned). An event covers a node (`cluster` and `node`), a cluster (`node` empty) "
    "or everything (both empty). A new or changed event makes the next training of the scopes it covers a "
    "new version."
)
INVALID_EVENT = _error_example(
    "Node without cluster",
    "invalid",
    "The calendar event is invalid; see details.",
    {"field": "node", "code": "requires_cluster", "message": "A node needs its cluster."},
)
ENDS_BEFORE_START = _error_example(
    "Ends before it starts",
    "invalid",
    "The calendar event is invalid; see details.",
    {"field": "end", "code": "before_start", "message": "end must be after start."},
)
EVENT_OUT = OpenApiExample("Maintenance", response_only=True, value=CALENDAR_EVENT)
EVENT_IN = OpenApiExample("Maintenance", request_only=True, value=CALENDAR_EVENT_IN)
EVENT_PATCH = OpenApiExample("Longer", request_only=True, value={"end": "2026-12-02T04:00:00Z"})


class CalendarEventFilter(filters.FilterSet):
    """`from`/`to` (the event overlaps the range) are applied by the view, with the time parser
    every endpoint shares."""

    kind = filters.ChoiceFilter(choices=CalendarEvent.Kind.choices)
    cluster = filters.CharFilter(help_text="Events of this cluster (not those of every cluster).")
    node = filters.CharFilter()
    suppress = filters.BooleanFilter()

    class Meta:
        model = CalendarEvent
        fields = ["kind", "cluster", "node", "suppress"]


class CalendarPagination(CursorPagination):
    ordering = ("-start", "-id")  # type: ignore[assignment]  # the base says "-id"; DRF takes a tuple


@extend_schema_view(
    list=extend_schema(
        summary="List calendar events",
        description=f"{CALENDAR_DESCRIPTION}\n\nLatest start first; `from`/`to` select the events overlapping "
        "the range.",
        parameters=[
            OpenApiParameter(
                "from", OpenApiTypes.STR, description="Events that end after this (unix seconds or RFC 3339)."
            ),
            OpenApiParameter("to", OpenApiTypes.STR, description="Events that start before this."),
        ],
        responses={200: CalendarEventSerializer(many=True), **LIST_ERRORS},
        examples=[EVENT_OUT],
    ),
    create=extend_schema(
        summary="Add a calendar event",
        description=f"{CALENDAR_DESCRIPTION}\n\n`created_by` is the key. Needs the `admin` scope.",
        request=CalendarEventInSerializer,
        responses={201: CalendarEventSerializer, **CREATE_ERRORS},
        examples=[EVENT_IN, EVENT_OUT, INVALID_EVENT, ENDS_BEFORE_START],
    ),
    retrieve=extend_schema(
        summary="One calendar event",
        description=CALENDAR_DESCRIPTION,
        responses={200: CalendarEventSerializer, **READ_ERRORS},
        examples=[EVENT_OUT, NOT_FOUND],
    ),
    update=extend_schema(
        summary="Replace a calendar event",
        description="Every field; those left out take their defaults. Needs the `admin` scope.",
        request=CalendarEventInSerializer,
        responses={200: CalendarEventSerializer, **ERROR_RESPONSES},
        examples=[EVENT_IN, EVENT_OUT, ENDS_BEFORE_START, NOT_FOUND],
    ),
    partial_update=extend_schema(
        summary="Change a calendar event",
        description="Only the fields given; the event must still end after it starts. Needs the `admin` scope.",
        request=CalendarEventInSerializer,
        responses={200: CalendarEventSerializer, **ERROR_RESPONSES},
        examples=[EVENT_PATCH, EVENT_OUT, ENDS_BEFORE_START, NOT_FOUND],
    ),
    destroy=extend_schema(
        summary="Delete a calendar event",
        description="Its points are trained on again by the next training. Needs the `admin` scope.",
        responses={204: None, **READ_ERRORS},
        examples=[NOT_FOUND],
    ),
)
class CalendarEventViewSet(WritableViewSet):
    """Create and edit through mlops.calendars.calendar_event_save; delete is a plain delete."""

    queryset = CalendarEvent.objects.all()
    serializer_class = CalendarEventSerializer
    input_serializer_class = CalendarEventInSerializer
    filterset_class = CalendarEventFilter
    pagination_class = CalendarPagination

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        queryset = super().filter_queryset(queryset)
        if self.action != "list":
            return queryset
        start, end = _optional_time(self.request, "from"), _optional_time(self.request, "to")
        if start is not None:
            queryset = queryset.filter(end__gt=start)
        if end is not None:
            queryset = queryset.filter(start__lt=end)
        return queryset

    def save(self, instance: CalendarEvent | None, values: dict[str, Any]) -> CalendarEvent:
        if instance is None:
            return calendar_event_save(tenant=self.tenant, created_by=self.actor, **values)
        return calendar_event_save(tenant=self.tenant, event=instance, **values)
