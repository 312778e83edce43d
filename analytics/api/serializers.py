from __future__ import annotations

from rest_framework import serializers

from analytics.models import MetricSeries


class PointInSerializer(serializers.Serializer):
    """Describes one point for the OpenAPI schema. Validation itself is analytics.ingest (fast path)."""

    cluster = serializers.CharField(max_length=200)
    node = serializers.CharField(max_length=200)
    metric = serializers.CharField(max_length=200)
    labels = serializers.DictField(child=serializers.CharField(max_length=200), required=False)
    unit = serializers.CharField(max_length=32, required=False, help_text="Set on the series when it is created.")
    timestamp = serializers.CharField(help_text="Unix seconds (a number) or RFC 3339 with an offset.")
    value = serializers.FloatField(help_text="A finite number. NaN and Infinity are refused.")


class PointsIngestSerializer(serializers.Serializer):
    points = PointInSerializer(many=True)


class IngestResultSerializer(serializers.Serializer):
    batch_id = serializers.UUIDField(allow_null=True)
    accepted = serializers.IntegerField()
    series_created = serializers.IntegerField()


class SeriesSerializer(serializers.ModelSerializer):
    class Meta:
        model = MetricSeries
        fields = ["id", "cluster", "node", "metric", "labels", "unit", "created_at", "last_point_at"]


class PointOutSerializer(serializers.Serializer):
    timestamp = serializers.DateTimeField()
    value = serializers.FloatField()


class PointsPageSerializer(serializers.Serializer):
    series_id = serializers.IntegerField()
    points = PointOutSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page of the same range, if the limit cut it.")
