from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from analytics.models import MetricSeries
from mlops.models import CalendarEvent, DriftReport, ModelVersion, ModelVersionEvent
from tenants.auth import request_tenant

Kind = ModelVersion.ScopeKind
# The scopes training knows (mlops.training); named in the schema (ENUM_NAME_OVERRIDES).
TRAINABLE_SCOPE_KINDS = [Kind.SERIES.value, Kind.NODE.value]


class ModelVersionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersionEvent
        fields = ["action", "actor", "reason", "created_at"]


class GateCountsSerializer(serializers.Serializer):
    anomalies = serializers.IntegerField(help_text="Anomaly windows in the holdout.")
    false_alarms = serializers.IntegerField(help_text="Holdout anomalies judged false positive or expected it reports.")
    true_positives = serializers.IntegerField(help_text="Holdout anomalies judged true positive it finds.")
    judged_true_positives_held = serializers.IntegerField(help_text="Judged true positives its rules hold back.")
    judged_false_positives_held = serializers.IntegerField(help_text="Judged false positives its rules hold back.")


class GateSerializer(serializers.Serializer):
    """The promotion gate's comparison of a candidate with the active version (mlops.training)."""

    passed = serializers.BooleanField(help_text="No worse on every check: it was (or may be) promoted.")
    active = serializers.IntegerField(allow_null=True, help_text="Id of the version compared with; null: none.")
    active_version = serializers.IntegerField(required=False, help_text="Its number.")
    window = serializers.ListField(
        child=serializers.DateTimeField(), required=False, help_text="The holdout compared: [start, end)."
    )
    candidate = GateCountsSerializer(required=False, help_text="This version on the holdout.")
    current = GateCountsSerializer(required=False, help_text="The active version in production, same window.")
    checks = serializers.DictField(
        child=serializers.BooleanField(),
        required=False,
        help_text="false_alarms, true_positives, judged, stability: whether this version is no worse on each.",
    )
    summary = serializers.CharField()


CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES = [CHAMPION, CHALLENGER]


def challengers(queryset: Any) -> Any:
    """`queryset` with `challenger_id`: the newest candidate of each version's scope."""
    newest = ModelVersion.objects.filter(
        tenant=OuterRef("tenant"), scope_key=OuterRef("scope_key"), status=ModelVersion.Status.CANDIDATE
    ).order_by("-version")
    return queryset.annotate(challenger_id=Subquery(newest.values("pk")[:1]))


class ModelVersionSerializer(serializers.ModelSerializer):
    artifact_sha256 = serializers.CharField(source="artifact_id", allow_null=True, read_only=True)
    gate = serializers.SerializerMethodField(
        help_text="The promotion gate's comparison with the version active when it was trained (also in "
        "`metrics.gate`); null before training ends or for a version that was not gated."
    )
    alias = serializers.SerializerMethodField(
        help_text="`champion`: the scope's active version. `challenger`: its newest candidate, the one a "
        "person would promote next. Null otherwise. Filter with `?alias=`."
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "scope_kind",
            "scope_key",
            "series",
            "cluster",
            "node",
            "metric",
            "version",
            "parent",
            "status",
            "error",
            "detector",
            "hyperparameters",
            "feature_schema",
            "train_from",
            "train_to",
            "train_points",
            "metrics",
            "artifact_sha256",
            "trigger",
            "created_by",
            "created_at",
            "activated_at",
            "gate",
            "alias",
        ]

    @extend_schema_field(GateSerializer(allow_null=True))
    def get_gate(self, version: ModelVersion) -> dict[str, Any] | None:
        gate = version.metrics.get("gate") if isinstance(version.metrics, dict) else None
        return gate if isinstance(gate, dict) else None

    @extend_schema_field(serializers.ChoiceField(choices=ALIASES, allow_null=True))
    def get_alias(self, version: ModelVersion) -> str | None:
        if version.status == ModelVersion.Status.ACTIVE:
            return CHAMPION
        if version.status != ModelVersion.Status.CANDIDATE:
            return None
        newest = getattr(version, "challenger_id", None)  # annotated by the list (challenger_annotate)
        if newest is None:
            newest = challengers(ModelVersion.objects.filter(pk=version.pk)).values_list("challenger_id", flat=True)[0]
        return CHALLENGER if newest == version.pk else None


class ModelVersionDetailSerializer(ModelVersionSerializer):
    events = ModelVersionEventSerializer(many=True, read_only=True)
    anomalies_count = serializers.SerializerMethodField(
        help_text="Anomalies this version scored (list them with `/anomalies?model_version=<id>`)."
    )

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "anomalies_count", "events"]

    def get_anomalies_count(self, version: ModelVersion) -> int:
        return version.anomalies.count()


class ModelVersionLineageSerializer(serializers.ModelSerializer):
    """The version that scored an anomaly, in short; /model-versions/{id} has the rest."""

    metrics = serializers.SerializerMethodField(
        help_text="Its training metrics (score quantiles, contamination, the gate...) without the reference "
        "distributions drift compares with."
    )

    class Meta:
        model = ModelVersion
        fields = ["id", "version", "scope_key", "status", "detector", "trigger", "train_from", "train_to", "metrics"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_metrics(self, version: ModelVersion) -> dict[str, Any]:
        # The reference holds 101 quantiles per feature: too heavy to repeat on every anomaly.
        return {name: value for name, value in version.metrics.items() if name != "reference"}


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class CompareQuerySerializer(serializers.Serializer):
    other = serializers.IntegerField(help_text="The id of the version to compare with (same tenant).")


class CompareSerializer(serializers.Serializer):
    a = ModelVersionSerializer()
    b = ModelVersionSerializer()
    same_scope = serializers.BooleanField()
    hyperparameters_changed = serializers.DictField(
        help_text="Each hyperparameter that differs: {name: [a's value, b's value]}."
    )
    metrics = serializers.DictField(help_text="Each training metric of either: {name: [a's value, b's value]}.")


# --- training ------------------------------------------------------------------------------------


class TenantSeriesField(serializers.PrimaryKeyRelatedField):
    """A series id of the caller's tenant: another tenant's id does not exist."""

    def get_queryset(self) -> QuerySet[MetricSeries]:
        tenant = request_tenant(self.context["request"])
        return MetricSeries.objects.filter(tenant=tenant).select_related("tenant")


def _error(message: str, code: str) -> list[ErrorDetail]:
    return [ErrorDetail(message, code=code)]


class TrainInSerializer(serializers.Serializer):
    scope_kind = serializers.ChoiceField(
        choices=TRAINABLE_SCOPE_KINDS,
        help_text="`series`: one series' detector; `node`: the multivariate detector of a node's metrics.",
    )
    series = TenantSeriesField(
        queryset=MetricSeries.objects.all(),
        required=False,
        allow_null=True,
        default=None,
        help_text="A series id of yours; required for (and only for) a series scope.",
    )
    cluster = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        default="",
        help_text="With `node`: required for a node scope.",
    )
    node = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default="", help_text="A node that has series."
    )
    train_from = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Start of the window (inclusive). Give both ends or neither: the default window is the "
        "configured training span up to now, aligned, so repeated requests train the same window.",
    )
    train_to = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="End of the window (exclusive), not in the future."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, list[ErrorDetail]] = {}
        if attrs["scope_kind"] == Kind.SERIES:
            if attrs["series"] is None:
                errors["series"] = _error("A series scope needs its series.", "required")
            for name in ("cluster", "node"):
                if attrs[name]:
                    errors[name] = _error("Only for a node scope: a series' own cluster and node are used.", "invalid")
        else:
            if attrs["series"] is not None:
                errors["series"] = _error("Only for a series scope.", "invalid")
            for name in ("cluster", "node"):
                if not attrs[name]:
                    errors[name] = _error("A node scope needs its cluster and node.", "required")
            if not errors and not self._node_exists(attrs["cluster"], attrs["node"]):
                errors["node"] = _error(f"No series of yours on {attrs['cluster']}/{attrs['node']}.", "does_not_exist")
        start, end = attrs["train_from"], attrs["train_to"]
        if (start is None) != (end is None):
            missing = "train_to" if end is None else "train_from"
            errors[missing] = _error("Give train_from and train_to together, or neither.", "required")
        if end is not None and end > timezone.now():
            # The window's points must all be in: the version found again for the same window
            # would otherwise be one trained on part of them.
            errors["train_to"] = _error("The window must have ended.", "in_future")
        if errors:
            raise serializers.ValidationError(errors)
        return attrs

    def _node_exists(self, cluster: str, node: str) -> bool:
        tenant = request_tenant(self.context["request"])
        return MetricSeries.objects.filter(tenant=tenant, cluster=cluster, node=node).exists()


# --- drift reports -------------------------------------------------------------------------------


class DriftReportSerializer(serializers.ModelSerializer):
    drifted = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="The signals that drifted: features (a series' `value`, `residual`; a node's metric names) "
        "and concept signals (`anomaly_rate`, `feedback_precision`).",
    )

    class Meta:
        model = DriftReport
        fields = [
            "id",
            "model_version",
            "scope_key",
            "window_from",
            "window_to",
            "points",
            "verdict",
            "drifted",
            "action",
            "retrained",
            "created_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "model_version": {"help_text": "The active version checked."},
            "window_from": {"help_text": "Start of the recent window compared with training (inclusive)."},
            "window_to": {"help_text": "Its end (exclusive); one report per version and window end."},
            "points": {"help_text": "Points in the recent window."},
            "action": {"help_text": "What the tenant's drift policy did with a `drift` verdict."},
            "retrained": {"help_text": "The version a `retrain` action trained (the gate decides on it)."},
        }


class DriftReportDetailSerializer(DriftReportSerializer):
    statistics = serializers.DictField(
        read_only=True,
        help_text="`features`: per feature n, n_eff, psi, ks, ks_p, wasserstein (in reference robust standard "
        "deviations) and drifted; `concept`: `anomaly_rate` (count, days, rate_per_day, reference_rate_per_day, "
        "p, drifted) and `feedback_precision` (precision, reference_precision, feedback, drifted).",
    )

    class Meta(DriftReportSerializer.Meta):
        fields = [*DriftReportSerializer.Meta.fields, "statistics"]
        read_only_fields = fields


# --- calendar events -----------------------------------------------------------------------------


class CalendarEventInSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=CalendarEvent.Kind.choices,
        error_messages={
            "invalid_choice": f'"{{input}}" is not allowed; expected one of: {", ".join(CalendarEvent.Kind.values)}.'
        },
    )
    description = serializers.CharField(max_length=500, allow_blank=True, default="")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField(help_text="After `start`.")
    cluster = serializers.CharField(max_length=200, allow_blank=True, default="", help_text="Empty: every cluster.")
    node = serializers.CharField(
        max_length=200, allow_blank=True, default="", help_text="Empty: every node of the cluster; needs `cluster`."
    )
    suppress = serializers.BooleanField(
        default=True, help_text="Also hold back detection while it lasts (training leaves it out either way)."
    )


class CalendarEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = CalendarEvent
        fields = [
            "id",
            "kind",
            "description",
            "start",
            "end",
            "cluster",
            "node",
            "suppress",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "cluster": {"help_text": "Empty: every cluster."},
            "node": {"help_text": "Empty: every node of the cluster."},
            "suppress": {"help_text": "Also holds back detection while it lasts."},
            "created_by": {"help_text": "`key:<name>` or an admin user."},
        }
