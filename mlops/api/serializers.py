from __future__ import annotations

from rest_framework import serializers

from mlops.models import ModelVersion, ModelVersionEvent


class ModelVersionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersionEvent
        fields = ["action", "actor", "reason", "created_at"]


class ModelVersionSerializer(serializers.ModelSerializer):
    artifact_sha256 = serializers.CharField(source="artifact_id", allow_null=True, read_only=True)

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
        ]


class ModelVersionDetailSerializer(ModelVersionSerializer):
    events = ModelVersionEventSerializer(many=True, read_only=True)

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "events"]


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
