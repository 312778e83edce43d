from __future__ import annotations

from rest_framework import serializers

from analytics.models import MetricSeries
from analytics.query import ACROSS, AGGREGATIONS


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


class _WithRangeSerializer(serializers.Serializer):
    # Adds `from` (a Python keyword, so not declarable as an attribute) just before `to`.
    # A comment, not a docstring: drf-spectacular would make it every subclass's description.

    from_help_text = "Start of the first window: the requested `from` floored to the step."

    def get_fields(self) -> dict[str, serializers.Field]:
        fields: dict[str, serializers.Field] = {}
        for name, field in super().get_fields().items():
            if name == "to":
                fields["from"] = serializers.DateTimeField(help_text=self.from_help_text)
            fields[name] = field
        return fields


class WindowValueSerializer(serializers.Serializer):
    timestamp = serializers.DateTimeField(help_text="Start of the window (epoch-aligned: floor(t / step) * step).")
    value = serializers.FloatField(
        allow_null=True, help_text="The aggregate over the window; null where undefined (stddev of one point)."
    )


class RangeMetaSerializer(_WithRangeSerializer):
    to = serializers.DateTimeField(
        help_text="End of the last window (exclusive): the requested `to` ceiled to the step."
    )
    step = serializers.IntegerField(help_text="Window length in seconds.")
    agg = serializers.ChoiceField(choices=AGGREGATIONS)
    resolution = serializers.ChoiceField(
        choices=["raw", "1m", "5m", "1h"], help_text="What the values were computed from: raw points or rollups."
    )
    approximate = serializers.BooleanField(
        help_text="True when the values are percentile upper bounds combined from several rollup buckets per window."
    )


class SeriesDataSerializer(RangeMetaSerializer):
    """One series' values per window."""

    series_id = serializers.IntegerField()
    points = WindowValueSerializer(many=True, help_text="Only windows with data, oldest first.")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {"series_id": fields.pop("series_id"), **fields}


class QuerySeriesSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    cluster = serializers.CharField()
    node = serializers.CharField()
    metric = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField())
    points = WindowValueSerializer(many=True)


class QueryPerSeriesResultSerializer(RangeMetaSerializer):
    """Without `across`: every matching series with its values per window."""

    series = QuerySeriesSerializer(many=True, help_text="Every matching series, by id, each with its windows.")


class QueryAcrossResultSerializer(RangeMetaSerializer):
    """With `across`: the matching series combined into one, per window."""

    across = serializers.ChoiceField(choices=ACROSS)
    series_count = serializers.IntegerField(help_text="How many series the selectors matched.")
    points = WindowValueSerializer(many=True, help_text="Per window, `across` of the series' values.")


class SloReportSerializer(_WithRangeSerializer):
    """How a series met its objective over a window, bucket by bucket."""

    from_help_text = "now - window."

    series_id = serializers.IntegerField()
    objective = serializers.CharField(help_text="What a good bucket meets, e.g. `p99 < 500`.")
    window = serializers.CharField(help_text="e.g. `30d`.")
    bucket = serializers.ChoiceField(choices=["1m", "5m", "1h"])
    to = serializers.DateTimeField(help_text="The evaluation time (now): buckets start in [from, to).")
    buckets_total = serializers.IntegerField(help_text="Stored buckets with data in the window.")
    buckets_good = serializers.IntegerField()
    good_ratio = serializers.FloatField(allow_null=True, help_text="buckets_good / buckets_total; null without data.")
    target = serializers.FloatField()
    error_budget = serializers.FloatField(help_text="1 - target.")
    error_budget_remaining = serializers.FloatField(
        allow_null=True, help_text="1 - (1 - good_ratio) / error_budget; negative when overspent."
    )
    status = serializers.ChoiceField(
        choices=["ok", "burning", "exhausted", "no_data"],
        help_text="exhausted: remaining <= 0; burning: remaining < 0.25; ok otherwise; no_data: no bucket.",
    )
