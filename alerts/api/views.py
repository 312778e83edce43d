"""The alerting API: rules (versions, preview, templates), alerts, incidents, silences, mute
windows, routes, webhook endpoints and deliveries.

Thin views: an input serializer checks the shape, one service (alerts.services,
alerts.delivery) acts and refuses bad input with Rejected, an output serializer renders.
Reading needs `read`; every write and action needs `admin` (HasScope's default).
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, OuterRef, Prefetch, QuerySet, Subquery
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from alerts import delivery, services
from alerts.api import filters
from alerts.api.serializers import (
    AlertSerializer,
    AssignSerializer,
    CommentSerializer,
    DeliveryDetailSerializer,
    DeliverySerializer,
    EndpointInSerializer,
    EndpointIssuedSerializer,
    EndpointSerializer,
    IncidentDetailSerializer,
    IncidentSerializer,
    MuteWindowInSerializer,
    MuteWindowSerializer,
    PreviewParamsSerializer,
    RouteInSerializer,
    RouteSerializer,
    RuleInSerializer,
    RulePreviewSerializer,
    RuleSerializer,
    RuleTemplateApplySerializer,
    RuleTemplateSerializer,
    RuleVersionSerializer,
    SilenceInSerializer,
    SilenceSerializer,
)
from alerts.evaluation import NotPreviewable, rule_preview
from alerts.models import (
    Alert,
    AlertRule,
    AlertRuleVersion,
    Delivery,
    Incident,
    MuteWindow,
    Route,
    Silence,
    WebhookEndpoint,
)
from config.api import ERROR_RESPONSES, ErrorSerializer, TenantScopedViewSet, WritableViewSet
from config.errors import Rejected
from config.pagination import CursorPagination

# --- documentation -------------------------------------------------------------------------------

_CONFLICT = OpenApiResponse(ErrorSerializer, description="Conflicts with the current state (see the code).")


def _errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: _CONFLICT if code == 409 else ERROR_RESPONSES[code] for code in codes}


LIST_ERRORS = _errors(400, 401, 403)
READ_ERRORS = _errors(401, 403, 404)
CREATE_ERRORS = _errors(400, 401, 403, 409)
WRITE_ERRORS = _errors(400, 401, 403, 404, 409)


def _error_example(name: str, code: str, message: str, *details: dict[str, str], status: int = 400) -> OpenApiExample:
    return OpenApiExample(
        name,
        status_codes=[str(status)],
        response_only=True,
        value={"error": {"code": code, "message": message, "details": list(details)}},
    )


INVALID_MATCHER = _error_example(
    "Bad regex",
    "invalid",
    "Invalid matchers; see details.",
    {
        "field": "matchers[0].value",
        "code": "invalid_regex",
        "message": "Bad regex: missing ), unterminated subpattern.",
    },
)

NOT_FOUND = _error_example("Not yours", "not_found", "Not found.", status=404)

MATCHER = {"label": "cluster", "op": "=~", "value": "eu-.*"}
RULE_IN = {
    "name": "High error rate",
    "kind": "threshold",
    "selector": [{"label": "metric", "op": "=", "value": "http.errors"}, MATCHER],
    "condition": {"aggregate": "mean", "window_seconds": 300, "operator": ">", "warning": 5, "critical": 20},
    "for_seconds": 120,
    "labels": {"team": "payments"},
    "annotations": {"summary": "Error rate {{ $value }}% on {{ $labels.node }} ({{ $severity }})"},
}
RULE: dict[str, Any] = {
    "id": 12,
    "enabled": True,
    "version": 2,
    "keep_firing_for_seconds": 0,
    "repeat_interval_seconds": None,
    "no_data_state": "no_data",
    "inhibits_nodes": True,
    **RULE_IN,
    "created_by": "key:terraform",
    "updated_by": "key:oncall",
    "created_at": "2026-11-20T09:00:00Z",
    "updated_at": "2026-11-23T12:00:00Z",
}
INVALID_RULE = _error_example(
    "No threshold",
    "invalid",
    "The rule is invalid; see details.",
    {"field": "condition", "code": "invalid", "message": "Give a warning threshold, a critical one, or both."},
)
ALERT = {
    "id": 301,
    "rule": 12,
    "rule_version": 2,
    "incident": 44,
    "series": 7,
    "anomaly": None,
    "fingerprint": "5f0c2a9e1b7d3c44",
    "labels": {
        "alertname": "High error rate",
        "cluster": "eu-west",
        "node": "web-1",
        "metric": "http.errors",
        "severity": "critical",
        "team": "payments",
    },
    "annotations": {"summary": "Error rate 23.5% on web-1 (critical)"},
    "severity": "critical",
    "state": "firing",
    "health": "ok",
    "value": 23.5,
    "active_at": "2026-11-23T12:00:00Z",
    "fired_at": "2026-11-23T12:02:00Z",
    "resolved_at": None,
    "evaluated_at": "2026-11-23T12:05:00Z",
}
INCIDENT = {
    "id": 44,
    "rule": 12,
    "rule_version": 2,
    "title": "Error rate 23.5% on web-1 (critical)",
    "severity": "critical",
    "status": "acknowledged",
    "assignee": "alice",
    "acknowledged_at": "2026-11-23T12:04:00Z",
    "acknowledged_by": "key:oncall",
    "created_at": "2026-11-23T12:02:00Z",
    "resolved_at": None,
}
ACTIVITY = {"alert": None, "previous": "", "current": "", "value": None, "comment": ""}
INCIDENT_DETAIL = {
    **INCIDENT,
    "activity": [
        {**ACTIVITY, "id": 1, "kind": "created", "value": 23.5, "actor": "", "created_at": "2026-11-23T12:02:00Z"},
        {
            **ACTIVITY,
            "id": 2,
            "kind": "state_change",
            "alert": 301,
            "previous": "pending",
            "current": "firing",
            "value": 23.5,
            "actor": "",
            "created_at": "2026-11-23T12:02:00Z",
        },
        {**ACTIVITY, "id": 3, "kind": "acknowledged", "actor": "key:oncall", "created_at": "2026-11-23T12:04:00Z"},
        {
            **ACTIVITY,
            "id": 4,
            "kind": "assigned",
            "current": "alice",
            "actor": "key:oncall",
            "created_at": "2026-11-23T12:04:30Z",
        },
    ],
    "alerts": [ALERT],
}
SILENCE = {
    "id": 9,
    "matchers": [{"label": "cluster", "op": "=", "value": "eu-west"}],
    "starts_at": "2026-11-23T22:00:00Z",
    "ends_at": "2026-11-24T02:00:00Z",
    "comment": "Database migration",
    "created_by": "key:oncall",
    "created_at": "2026-11-23T18:00:00Z",
    "status": "pending",
}
MUTE_WINDOW = {
    "id": 3,
    "name": "Weekend batch",
    "matchers": [{"label": "metric", "op": "=~", "value": "batch\\..*"}],
    "weekdays": [5, 6],
    "start_time": "01:00:00",
    "end_time": "05:00:00",
    "timezone": "Europe/Paris",
    "enabled": True,
    "created_at": "2026-11-01T10:00:00Z",
}
ROUTE = {
    "id": 2,
    "name": "Payments critical",
    "position": 0,
    "matchers": [{"label": "team", "op": "=", "value": "payments"}],
    "severities": ["critical"],
    "endpoints": [5],
    "group_by": ["alertname", "cluster"],
    "group_wait_seconds": 30,
    "group_interval_seconds": 300,
    "repeat_interval_seconds": 14400,
    "continue_matching": False,
    "created_at": "2026-11-01T10:00:00Z",
}
ENDPOINT = {
    "id": 5,
    "name": "PagerDuty bridge",
    "url": "https://hooks.example.com/vigil",
    "enabled": True,
    "disabled_at": None,
    "disabled_reason": "",
    "failing_since": None,
    "severities": ["warning", "critical"],
    "matchers": [],
    "event_types": [],
    "headers": {"Authorization": "Bearer 8c1f..."},
    "previous_secret_expires_at": None,
    "created_at": "2026-11-01T10:00:00Z",
    "updated_at": "2026-11-01T10:00:00Z",
}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UNSAFE_URL = _error_example(
    "Private address",
    "unsafe_url",
    "The URL is refused.",
    {"field": "url", "code": "private_address", "message": "10.0.0.5 is a private address."},
)
DELIVERY = {
    "id": 880,
    "webhook_id": "msg_01JDA8Z6Q7W3K9V2N4R5T6Y7U8",
    "endpoint": 5,
    "notification": 610,
    "event": "alert.firing",
    "status": "failed",
    "attempts": 2,
    "next_attempt_at": None,
    "last_status_code": 404,
    "last_error": "HTTP 404",
    "delivered_at": None,
    "created_at": "2026-11-23T12:02:31Z",
}
DELIVERY_DETAIL = {
    **DELIVERY,
    "attempt_log": [
        {
            "number": 1,
            "started_at": "2026-11-23T12:02:31Z",
            "duration_ms": 10012.4,
            "status_code": None,
            "error": "timeout: no answer within 10 s",
            "response_excerpt": "",
            "outcome": "retry",
        },
        {
            "number": 2,
            "started_at": "2026-11-23T12:02:37Z",
            "duration_ms": 84.2,
            "status_code": 404,
            "error": "HTTP 404",
            "response_excerpt": "Not Found",
            "outcome": "failed",
        },
    ],
    "body": {"version": "4", "status": "firing", "receiver": "PagerDuty bridge", "alerts": ["..."]},
}
NOT_REPLAYABLE = _error_example(
    "Still sending", "not_replayable", "The delivery is pending; wait for it to finish.", status=409
)


# --- plumbing ------------------------------------------------------------------------------------


class RoutePagination(CursorPagination):
    ordering = ("position", "id")  # type: ignore[assignment]  # the order routes are tried in


class NewestFirstPagination(CursorPagination):
    # As the (tenant, [status,] -created_at) indexes of incidents and deliveries read; ids break ties.
    ordering = ("-created_at", "-id")  # type: ignore[assignment]  # the base says "-id"; DRF takes a tuple


def _crud_schema(
    noun: str,
    serializers_: tuple[Any, Any],
    examples: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
    description: str,
    bad_input: OpenApiExample,
) -> dict[str, Any]:
    """extend_schema for list, create, retrieve, update, partial_update and destroy of one
    resource: `serializers_` is (output, input), `examples` (output, create body, patch body)."""
    serializer, input_serializer = serializers_
    a = "an" if noun[0] in "aeiou" else "a"
    out = OpenApiExample(noun.capitalize(), response_only=True, value=examples[0])
    body = OpenApiExample(noun.capitalize(), request_only=True, value=examples[1])
    patch = OpenApiExample("Change", request_only=True, value=examples[2])
    duplicate = _error_example("Name taken", "duplicate_name", f"A {noun} named 'Payments' exists.", status=409)
    return {
        "list": extend_schema(
            summary=f"List {noun}s",
            description=description,
            responses={200: serializer(many=True), **LIST_ERRORS},
            examples=[out],
        ),
        "create": extend_schema(
            summary=f"Create {a} {noun}",
            description=f"{description}\n\nNeeds the `admin` scope.",
            request=input_serializer,
            responses={201: serializer, **CREATE_ERRORS},
            examples=[body, out, bad_input, duplicate],
        ),
        "retrieve": extend_schema(
            summary=f"One {noun}",
            description=description,
            responses={200: serializer, **READ_ERRORS},
            examples=[out, NOT_FOUND],
        ),
        "update": extend_schema(
            summary=f"Replace {a} {noun}",
            description="Every field; those left out take their defaults. Needs the `admin` scope.",
            request=input_serializer,
            responses={200: serializer, **WRITE_ERRORS},
            examples=[body, out, bad_input, NOT_FOUND],
        ),
        "partial_update": extend_schema(
            summary=f"Change {a} {noun}",
            description="Only the fields given. Needs the `admin` scope.",
            request=input_serializer,
            responses={200: serializer, **WRITE_ERRORS},
            examples=[patch, out, bad_input, NOT_FOUND],
        ),
        "destroy": extend_schema(
            summary=f"Delete {a} {noun}",
            description="Needs the `admin` scope.",
            responses={204: None, **READ_ERRORS},
            examples=[NOT_FOUND],
        ),
    }


# --- rules ---------------------------------------------------------------------------------------

RULE_DESCRIPTION = (
    "Alert rules. A change to a versioned field (kind, selector, condition, durations, no_data_state, "
    "labels, annotations, inhibits_nodes) writes a new `version`; renaming or enabling does not. "
    "Alerts and incidents keep the version that moved them."
)


def rules_with_actors(queryset: QuerySet[AlertRule]) -> QuerySet[AlertRule]:
    """Rules with `created_by` (who wrote version 1) and `updated_by` (the current version)."""
    versions = AlertRuleVersion.objects.filter(rule=OuterRef("pk"))
    return queryset.annotate(
        created_by=Subquery(versions.filter(version=1).values("created_by")[:1]),
        updated_by=Subquery(versions.filter(version=OuterRef("version")).values("created_by")[:1]),
    )


@extend_schema_view(
    **_crud_schema(
        "rule", (RuleSerializer, RuleInSerializer), (RULE, RULE_IN, {"enabled": False}), RULE_DESCRIPTION, INVALID_RULE
    )
)
class RuleViewSet(WritableViewSet):
    queryset = AlertRule.objects.all()
    serializer_class = RuleSerializer
    input_serializer_class = RuleInSerializer
    filterset_class = filters.RuleFilter

    def get_queryset(self) -> QuerySet[AlertRule]:
        return rules_with_actors(super().get_queryset())  # type: ignore[arg-type]

    def save(self, instance: AlertRule | None, values: dict[str, Any]) -> AlertRule:
        if instance is None:
            return services.rule_create(tenant=self.tenant, created_by=self.actor, **values)
        return services.rule_update(rule=instance, updated_by=self.actor, **values)

    def perform_destroy(self, instance: AlertRule) -> None:
        services.rule_delete(rule=instance, actor=self.actor)

    def render(self, instance: Model) -> Any:
        return super().render(self.get_queryset().get(pk=instance.pk))  # with its actors

    @extend_schema(
        summary="A rule's versions",
        description="Every version of the rule, newest first, with the versioned fields as they were (`spec`).",
        responses={200: RuleVersionSerializer(many=True), **READ_ERRORS},
        examples=[
            NOT_FOUND,
            OpenApiExample(
                "Two versions",
                response_only=True,
                value=[
                    {
                        "version": 2,
                        "spec": {"kind": "threshold", "condition": RULE_IN["condition"], "...": "..."},
                        "created_at": "2026-11-23T12:00:00Z",
                        "created_by": "key:oncall",
                    },
                    {
                        "version": 1,
                        "spec": {"kind": "threshold", "condition": {"...": "..."}},
                        "created_at": "2026-11-20T09:00:00Z",
                        "created_by": "key:terraform",
                    },
                ],
            ),
        ],
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def versions(self, request: Request, pk: str | None = None) -> Response:
        rule = self.get_object()
        return Response(RuleVersionSerializer(rule.versions.order_by("-version"), many=True).data)

    @extend_schema(
        summary="Test a rule against past data",
        description=(
            "What the rule would have done over the last `hours` (1-72, default 24), evaluated every "
            "`step_seconds` (at least 60, default 300) on the data stored now, through the same reading "
            "and state machine as the live evaluation: per alert that would have fired, when it fired and "
            "resolved and its highest value. Writes nothing. Parameters in the query or the body. "
            "No-data rules cannot be replayed (`not_previewable`). Needs the `admin` scope."
        ),
        parameters=[PreviewParamsSerializer],
        request=PreviewParamsSerializer,
        responses={200: RulePreviewSerializer, **_errors(400, 401, 403, 404)},
        examples=[
            OpenApiExample("Last 6 hours", request_only=True, value={"hours": 6, "step_seconds": 60}),
            OpenApiExample(
                "Fired twice",
                response_only=True,
                value={
                    "rule": 12,
                    "version": 2,
                    "start": "2026-11-23T06:00:00Z",
                    "end": "2026-11-23T12:00:00Z",
                    "step_seconds": 60,
                    "evaluations": 361,
                    "alerts": [
                        {
                            "labels": ALERT["labels"],
                            "fired": [
                                {
                                    "starts_at": "2026-11-23T07:12:00Z",
                                    "ends_at": "2026-11-23T07:31:00Z",
                                    "severity": "warning",
                                },
                                {"starts_at": "2026-11-23T11:40:00Z", "ends_at": None, "severity": "critical"},
                            ],
                            "max_value": 31.2,
                        }
                    ],
                },
            ),
            _error_example("No-data rule", "not_previewable", "This rule cannot be previewed: no-data rules ..."),
        ],
    )
    @action(detail=True, methods=["post"], filter_backends=[])
    def preview(self, request: Request, pk: str | None = None) -> Response:
        rule = self.get_object()
        body = request.data if isinstance(request.data, dict) else {}
        params = self.validated(PreviewParamsSerializer, data={**request.query_params.dict(), **body})
        try:
            preview = rule_preview(rule=rule, **params)
        except NotPreviewable as exc:
            raise Rejected("not_previewable", f"This rule cannot be previewed: {exc}.") from None
        data = {
            "rule": rule.pk,
            "version": rule.version,
            "start": preview.start,
            "end": preview.end,
            "step_seconds": preview.step_seconds,
            "evaluations": preview.evaluations,
            "alerts": [
                {
                    "labels": alert.labels,
                    "fired": [{"starts_at": s, "ends_at": e, "severity": sev} for s, e, sev in alert.fired],
                    "max_value": alert.max_value,
                }
                for alert in preview.alerts
            ],
        }
        return Response(RulePreviewSerializer(data).data)


class RuleTemplateViewSet(TenantScopedViewSet):
    """Ready-made rules (alerts.services.RULE_TEMPLATES): give a metric, get a working rule."""

    lookup_field = "name"
    pagination_class = None
    filter_backends: list[Any] = []

    @extend_schema(
        summary="List rule templates",
        description="Ready-made rules: `apply` one with a metric to create a rule.",
        responses={200: RuleTemplateSerializer(many=True), **_errors(401, 403)},
        examples=[
            OpenApiExample(
                "Templates",
                response_only=True,
                value=[
                    {
                        "name": "high_error_rate",
                        "title": "High error rate",
                        "description": "Mean of an error-rate metric (percent) over 5 min: warning above 5, "
                        "critical above 20.",
                        "params": ["metric"],
                    }
                ],
            )
        ],
    )
    def list(self, request: Request) -> Response:
        return Response(RuleTemplateSerializer(services.RULE_TEMPLATES.values(), many=True).data)

    @extend_schema(
        summary="Create a rule from a template",
        description=(
            'Creates a rule from the template and `metric`, named `name` (default: "<title>: <metric>"). '
            "Any rule field given replaces the template's value, e.g. `for_seconds` or `labels`. "
            "An unknown template is `unknown_template`. Needs the `admin` scope."
        ),
        parameters=[OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, description="Template name.")],
        request=RuleTemplateApplySerializer,
        responses={201: RuleSerializer, **CREATE_ERRORS},
        examples=[
            OpenApiExample(
                "Error rate of the API",
                request_only=True,
                value={"metric": "http.errors", "labels": {"team": "payments"}, "for_seconds": 0},
            ),
            OpenApiExample("Created", response_only=True, status_codes=["201"], value=RULE),
            _error_example("Unknown template", "unknown_template", "No template 'bogus'; known: [...]."),
        ],
    )
    @action(detail=True, methods=["post"])
    def apply(self, request: Request, name: str | None = None) -> Response:
        values = self.validated(RuleTemplateApplySerializer)
        rule = services.rule_template_apply(tenant=self.tenant, template=name or "", created_by=self.actor, **values)
        data = RuleSerializer(rules_with_actors(AlertRule.objects.filter(pk=rule.pk)).get()).data
        return Response(data, status=status.HTTP_201_CREATED)


# --- alerts and incidents ------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        summary="List alerts",
        description="The state of each label set of each rule (pending, firing, resolved, inactive), newest first.",
        responses={200: AlertSerializer(many=True), **LIST_ERRORS},
        examples=[OpenApiExample("Firing", response_only=True, value=ALERT)],
    ),
    retrieve=extend_schema(
        summary="One alert",
        description="`fired_at` is Alertmanager's startsAt, `resolved_at` its endsAt.",
        responses={200: AlertSerializer, **READ_ERRORS},
        examples=[NOT_FOUND, OpenApiExample("Firing", response_only=True, value=ALERT)],
    ),
)
class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    queryset = Alert.objects.select_related("rule_version")
    serializer_class = AlertSerializer
    filterset_class = filters.AlertFilter


def _incident_action(
    summary: str, description: str, request: Any = None, request_example: Any = None, *, refused: bool = False
) -> Any:
    """The schema of an incident action; `refused`: a resolved incident is refused (409)."""
    examples = [OpenApiExample("Incident", response_only=True, value=INCIDENT_DETAIL)]
    if request_example is not None:
        examples.insert(0, OpenApiExample("Body", request_only=True, value=request_example))
    if refused:
        examples.append(
            _error_example("Resolved", "incident_resolved", "A resolved incident cannot be acknowledged.", status=409)
        )
    codes = (400,) * (request is not None) + (401, 403, 404) + (409,) * refused
    return extend_schema(
        summary=summary,
        description=f"{description} Answers with the incident and its activity. Needs the `admin` scope.",
        request=request,
        responses={200: IncidentDetailSerializer, **_errors(*codes)},
        examples=examples,
    )


@extend_schema_view(
    list=extend_schema(
        summary="List incidents",
        description="The alerts of one rule that fire together, newest first.",
        responses={200: IncidentSerializer(many=True), **LIST_ERRORS},
        examples=[OpenApiExample("Acknowledged", response_only=True, value=INCIDENT)],
    ),
    retrieve=extend_schema(
        summary="One incident",
        description="With its activity log (oldest first) and its alerts.",
        responses={200: IncidentDetailSerializer, **READ_ERRORS},
        examples=[NOT_FOUND, OpenApiExample("Acknowledged", response_only=True, value=INCIDENT_DETAIL)],
    ),
)
class IncidentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    queryset = Incident.objects.select_related("rule_version")
    serializer_class = IncidentSerializer
    filterset_class = filters.IncidentFilter
    pagination_class = NewestFirstPagination

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return IncidentSerializer if self.action == "list" else IncidentDetailSerializer

    def get_queryset(self) -> QuerySet[Incident]:
        queryset: QuerySet[Incident] = super().get_queryset()  # type: ignore[assignment]
        if self.action == "list":
            return queryset
        return queryset.prefetch_related("activity", Prefetch("alerts", Alert.objects.select_related("rule_version")))

    def _answer(self, incident: Incident) -> Response:
        return Response(IncidentDetailSerializer(incident).data)

    @_incident_action(
        "Acknowledge an incident",
        "Someone is on it; nothing changes if it already was. A resolved incident is `incident_resolved`.",
        refused=True,
    )
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str | None = None) -> Response:
        return self._answer(services.incident_acknowledge(incident=self.get_object(), actor=self.actor))

    @_incident_action("Assign an incident", "An empty assignee unassigns.", AssignSerializer, {"assignee": "alice"})
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        incident = self.get_object()
        assignee = self.validated(AssignSerializer)["assignee"]
        return self._answer(services.incident_assign(incident=incident, assignee=assignee, actor=self.actor))

    @_incident_action(
        "Comment on an incident",
        "Adds the comment to the activity log.",
        CommentSerializer,
        {"comment": "Rolling back."},
    )
    @action(detail=True, methods=["post"])
    def comment(self, request: Request, pk: str | None = None) -> Response:
        incident = self.get_object()
        services.incident_comment(
            incident=incident, comment=self.validated(CommentSerializer)["comment"], actor=self.actor
        )
        return self._answer(incident)

    @_incident_action(
        "Resolve an incident",
        "Its firing alerts resolve with it (and are notified as resolved); if their condition still holds "
        "they fire again, in a new incident, at the next evaluation. Nothing changes if it already was.",
    )
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str | None = None) -> Response:
        return self._answer(services.incident_resolve(incident=self.get_object(), actor=self.actor))


# --- silences, mute windows, routes ----------------------------------------------------------------

SILENCE_DESCRIPTION = (
    "A silence mutes the notifications of the alerts its matchers select between `starts_at` and "
    "`ends_at`; the alerts keep their state. `status`: pending, active or expired."
)


@extend_schema_view(
    list=extend_schema(
        summary="List silences",
        description=SILENCE_DESCRIPTION,
        responses={200: SilenceSerializer(many=True), **LIST_ERRORS},
        examples=[OpenApiExample("Pending", response_only=True, value=SILENCE)],
    ),
    create=extend_schema(
        summary="Create a silence",
        description=f"{SILENCE_DESCRIPTION} At least one matcher. Needs the `admin` scope.",
        request=SilenceInSerializer,
        responses={201: SilenceSerializer, **LIST_ERRORS},
        examples=[
            OpenApiExample(
                "Maintenance",
                request_only=True,
                value={k: SILENCE[k] for k in ("matchers", "starts_at", "ends_at", "comment")},
            ),
            OpenApiExample("Pending", response_only=True, status_codes=["201"], value=SILENCE),
            INVALID_MATCHER,
        ],
    ),
    retrieve=extend_schema(
        summary="One silence",
        description=SILENCE_DESCRIPTION,
        responses={200: SilenceSerializer, **READ_ERRORS},
        examples=[NOT_FOUND, OpenApiExample("Pending", response_only=True, value=SILENCE)],
    ),
    destroy=extend_schema(
        summary="Expire a silence",
        description="Ends it now (a pending one never starts). The silence stays listed, with its new "
        "`ends_at`. Needs the `admin` scope.",
        responses={204: None, **READ_ERRORS},
        examples=[NOT_FOUND],
    ),
)
class SilenceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    queryset = Silence.objects.all()
    serializer_class = SilenceSerializer
    filterset_class = filters.SilenceFilter

    def create(self, request: Request) -> Response:
        values = self.validated(SilenceInSerializer)
        silence = services.silence_create(tenant=self.tenant, created_by=self.actor, **values)
        return Response(SilenceSerializer(silence).data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        services.silence_expire(silence=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


MUTE_WINDOW_IN = {k: v for k, v in MUTE_WINDOW.items() if k not in ("id", "created_at")}


@extend_schema_view(
    **_crud_schema(
        "mute window",
        (MuteWindowSerializer, MuteWindowInSerializer),
        (MUTE_WINDOW, MUTE_WINDOW_IN, {"enabled": False}),
        "Recurring maintenance windows: on `weekdays`, between `start_time` and `end_time` in `timezone`, "
        "notifications of the alerts the matchers select are held back.",
        _error_example(
            "Unknown time zone",
            "invalid",
            "The mute window is invalid; see details.",
            {"field": "timezone", "code": "invalid", "message": "Unknown time zone 'Mars/Olympus'."},
        ),
    )
)
class MuteWindowViewSet(WritableViewSet):
    queryset = MuteWindow.objects.all()
    serializer_class = MuteWindowSerializer
    input_serializer_class = MuteWindowInSerializer

    def save(self, instance: MuteWindow | None, values: dict[str, Any]) -> MuteWindow:
        return services.mute_window_save(tenant=self.tenant, window=instance, **values)


ROUTE_IN = {k: v for k, v in ROUTE.items() if k not in ("id", "created_at")}


@extend_schema_view(
    **_crud_schema(
        "route",
        (RouteSerializer, RouteInSerializer),
        (ROUTE, ROUTE_IN, {"endpoints": [5, 6]}),
        "Where alerts go and how they are grouped. Routes are tried by `position`; the first that "
        "matches takes the alert unless it says `continue_matching`. Alerts no route takes go to every "
        "enabled endpoint. `endpoints` are ids of your endpoints.",
        _error_example(
            "Not your endpoint",
            "invalid",
            "The request is invalid; see details.",
            {"field": "endpoints", "code": "does_not_exist", "message": 'Invalid pk "77" - object does not exist.'},
        ),
    )
)
class RouteViewSet(WritableViewSet):
    queryset = Route.objects.prefetch_related("endpoints")
    serializer_class = RouteSerializer
    input_serializer_class = RouteInSerializer
    pagination_class = RoutePagination

    def save(self, instance: Route | None, values: dict[str, Any]) -> Route:
        return services.route_save(tenant=self.tenant, route=instance, **values)

    def render(self, instance: Model) -> Any:
        return super().render(self.get_queryset().get(pk=instance.pk))  # endpoints as saved


# --- endpoints and deliveries --------------------------------------------------------------------

ENDPOINT_DESCRIPTION = (
    "Webhook receivers. Every delivery is signed (Standard Webhooks: `webhook-id`, `webhook-timestamp`, "
    "`webhook-signature`) with the endpoint's secret, which is shown only when it is made: in the "
    "answer of create and of `rotate-secret`. The URL must resolve to a public address (`unsafe_url`)."
)
ENDPOINT_SCHEMA = _crud_schema(
    "endpoint",
    (EndpointSerializer, EndpointInSerializer),
    (ENDPOINT, {k: ENDPOINT[k] for k in ("name", "url", "severities", "headers")}, {"enabled": False}),
    ENDPOINT_DESCRIPTION,
    UNSAFE_URL,
)
ENDPOINT_SCHEMA["create"] = extend_schema(
    summary="Create an endpoint",
    description=f"{ENDPOINT_DESCRIPTION}\n\nThe answer has the `secret`, shown once. Needs the `admin` scope.",
    request=EndpointInSerializer,
    responses={201: EndpointIssuedSerializer, **CREATE_ERRORS},
    examples=[
        OpenApiExample("Endpoint", request_only=True, value={k: ENDPOINT[k] for k in ("name", "url", "severities")}),
        OpenApiExample("Created", response_only=True, status_codes=["201"], value={**ENDPOINT, "secret": SECRET}),
        UNSAFE_URL,
    ],
)


@extend_schema_view(**ENDPOINT_SCHEMA)
class EndpointViewSet(WritableViewSet):
    queryset = WebhookEndpoint.objects.all()
    serializer_class = EndpointSerializer
    input_serializer_class = EndpointInSerializer

    def create(self, request: Request) -> Response:
        endpoint, secret = delivery.endpoint_create(tenant=self.tenant, **self.validated(EndpointInSerializer))
        data = {**EndpointSerializer(endpoint).data, "secret": secret}
        return Response(data, status=status.HTTP_201_CREATED)

    def save(self, instance: WebhookEndpoint | None, values: dict[str, Any]) -> WebhookEndpoint:
        assert instance is not None  # create is above: it returns the secret
        return delivery.endpoint_update(endpoint=instance, **values)

    @extend_schema(
        summary="Send a test notification",
        description="Sends a `test` event to this endpoint only, whatever its filters; answers 202 with the "
        "delivery, which is attempted in the background. A disabled endpoint is `endpoint_disabled`. "
        "Needs the `admin` scope.",
        request=None,
        responses={202: DeliveryDetailSerializer, **_errors(401, 403, 404, 409)},
        examples=[
            OpenApiExample(
                "Queued",
                response_only=True,
                status_codes=["202"],
                value={**DELIVERY_DETAIL, "event": "test", "status": "pending", "attempts": 0, "attempt_log": []},
            ),
            _error_example("Disabled", "endpoint_disabled", "The endpoint is disabled; enable it first.", status=409),
        ],
    )
    @action(detail=True, methods=["post"], url_path="send-test")
    def send_test(self, request: Request, pk: str | None = None) -> Response:
        sent = delivery.endpoint_send_test(endpoint=self.get_object())
        return Response(DeliveryDetailSerializer(sent).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Rotate an endpoint's secret",
        description="Makes a new secret and answers with it, once. The previous secret keeps signing, next to "
        "the new one, until `previous_secret_expires_at`, so receivers can switch without losing a message. "
        "Needs the `admin` scope.",
        request=None,
        responses={200: EndpointIssuedSerializer, **READ_ERRORS},
        examples=[
            OpenApiExample(
                "Rotated",
                response_only=True,
                value={**ENDPOINT, "previous_secret_expires_at": "2026-11-24T12:00:00Z", "secret": SECRET},
            )
        ],
    )
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request: Request, pk: str | None = None) -> Response:
        endpoint = self.get_object()
        secret = delivery.endpoint_secret_rotate(endpoint=endpoint)
        return Response({**EndpointSerializer(endpoint).data, "secret": secret})


@extend_schema_view(
    list=extend_schema(
        summary="List deliveries",
        description="One row per notification and endpoint, newest first.",
        responses={200: DeliverySerializer(many=True), **LIST_ERRORS},
        examples=[OpenApiExample("Failed", response_only=True, value=DELIVERY)],
    ),
    retrieve=extend_schema(
        summary="One delivery",
        description="With every attempt and the exact body sent.",
        responses={200: DeliveryDetailSerializer, **READ_ERRORS},
        examples=[NOT_FOUND, OpenApiExample("Failed", response_only=True, value=DELIVERY_DETAIL)],
    ),
)
class DeliveryViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    queryset = Delivery.objects.select_related("notification")
    serializer_class = DeliverySerializer
    filterset_class = filters.DeliveryFilter
    pagination_class = NewestFirstPagination

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return DeliverySerializer if self.action == "list" else DeliveryDetailSerializer

    def get_queryset(self) -> QuerySet[Delivery]:
        queryset: QuerySet[Delivery] = super().get_queryset()  # type: ignore[assignment]
        return queryset if self.action == "list" else queryset.prefetch_related("attempt_log")

    @extend_schema(
        summary="Send a delivery again",
        description="A failed (or delivered) delivery goes back to pending with a fresh retry budget and the "
        "same `webhook_id`, so the receiver can deduplicate; answers 202. A pending or sending one is "
        "`not_replayable`, one whose endpoint is disabled `endpoint_disabled`. Needs the `admin` scope.",
        request=None,
        responses={202: DeliveryDetailSerializer, **_errors(401, 403, 404, 409)},
        examples=[
            OpenApiExample(
                "Pending again",
                response_only=True,
                status_codes=["202"],
                value={**DELIVERY_DETAIL, "status": "pending", "next_attempt_at": "2026-11-23T14:00:00Z"},
            ),
            NOT_REPLAYABLE,
        ],
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str | None = None) -> Response:
        replayed = delivery.delivery_replay(delivery=self.get_object())
        return Response(DeliveryDetailSerializer(replayed).data, status=status.HTTP_202_ACCEPTED)
