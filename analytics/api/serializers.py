from __future__ import annotations

from typing import Any

from rest_framework import serializers

from analytics.health import LEVELS, STRATEGIES
from analytics.models import AnomalyResult, MetricSeries
from analytics.query import ACROSS, AGGREGATIONS
from mlops.api.serializers import ModelVersionLineageSerializer


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


def _choice(choices: list[tuple[str, str]], **kwargs: Any) -> serializers.ChoiceField:
    """A choice whose error message lists the allowed values (the code stays `invalid_choice`)."""
    allowed = ", ".join(value for value, _ in choices)
    return serializers.ChoiceField(
        choices=choices,
        error_messages={"invalid_choice": f'"{{input}}" is not allowed; expected one of: {allowed}.'},
        **kwargs,
    )


class AnomalySerializer(serializers.ModelSerializer):
    """An anomaly: consecutive anomalous points merged into one window, with its explanation and
    the detector's facts behind it (`details`)."""

    series_url: serializers.HyperlinkedRelatedField[MetricSeries] = serializers.HyperlinkedRelatedField(
        source="series",
        view_name="series-detail",
        read_only=True,
        allow_null=True,
        help_text="The series; null for a node-level (multivariate) anomaly.",
    )
    feedback = serializers.ChoiceField(
        choices=AnomalyResult.Feedback.choices,
        allow_null=True,
        read_only=True,
        help_text="A person's verdict; null until given.",
    )
    model_version = ModelVersionLineageSerializer(
        read_only=True,
        allow_null=True,
        help_text="Lineage: the registry's version that scored it, with its training window (full record at "
        "/model-versions/{id}); null for anomalies found before the registry served this scope.",
    )

    class Meta:
        model = AnomalyResult
        fields = [
            "id",
            "series",
            "series_url",
            "cluster",
            "node",
            "metric",
            "detector",
            "model_version",
            "label",
            "status",
            "window_start",
            "window_end",
            "peak_ts",
            "peak_score",
            "observed",
            "expected",
            "lower",
            "upper",
            "deviation",
            "explanation",
            "details",
            "feedback",
            "feedback_comment",
            "feedback_at",
            "created_at",
            "updated_at",
        ]
        extra_kwargs = {
            "series": {"help_text": "Series id; null for a node-level (multivariate) anomaly."},
            "metric": {"help_text": "Empty for a node-level anomaly."},
            "window_end": {"help_text": "The last anomalous point so far (the window is still growing while open)."},
            "peak_score": {"help_text": "Highest calibrated score in the window, 0-1."},
            "deviation": {"help_text": "Signed distance of the peak from `expected`, in robust standard deviations."},
            "details": {"help_text": "What the explanation is built from; the keys depend on the detector."},
        }

    def to_representation(self, instance: AnomalyResult) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["feedback"] = data["feedback"] or None  # stored as "" when nobody has judged it
        return data


class AnomalyFeedbackSerializer(serializers.Serializer):
    feedback = _choice(AnomalyResult.Feedback.choices)
    comment = serializers.CharField(allow_blank=True, default="", max_length=2000)


class ScoreSerializer(serializers.Serializer):
    bucket = serializers.DateTimeField(help_text="Start of the minute.")
    score = serializers.FloatField(help_text="Highest anomaly score of the series in that minute, 0-1.")


class DetectorStatusSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The streaming detector, e.g. `ensemble`.")
    sensitivity = serializers.CharField()
    warming = serializers.BooleanField(help_text="Still learning: scores are 0 and no anomaly opens yet.")
    points_learned = serializers.IntegerField()
    seasonality_seconds = serializers.FloatField(
        allow_null=True, help_text="The period it found (86400 daily, 604800 weekly), or null."
    )
    scores_rate = serializers.BooleanField(help_text="A counter, scored as its per-second rate.")
    scored_until = serializers.DateTimeField(allow_null=True, help_text="The newest point scored.")


class SeriesScoresSerializer(_WithRangeSerializer):
    """A series' anomaly score per minute."""

    from_help_text = "Inclusive start."

    series_id = serializers.IntegerField()
    detector = DetectorStatusSerializer(allow_null=True, help_text="Null before the series' first detection run.")
    to = serializers.DateTimeField(help_text="Exclusive end.")
    scores = ScoreSerializer(many=True, help_text="Only scored minutes, oldest first.")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {"series_id": fields.pop("series_id"), **fields}


class HealthQuerySerializer(serializers.Serializer):
    level = _choice([(level, level) for level in LEVELS], default="tenant")
    strategy = _choice([(name, name) for name in STRATEGIES], default="max")
    cluster = serializers.CharField(required=False, max_length=200)


class HealthTopQuerySerializer(serializers.Serializer):
    n = serializers.IntegerField(min_value=1, max_value=1000, default=10)
    strategy = _choice([(name, name) for name in STRATEGIES], default="max")
    cluster = serializers.CharField(required=False, max_length=200)


class HealthEntitySerializer(serializers.Serializer):
    cluster = serializers.CharField(allow_null=True, help_text="Null for the tenant.")
    node = serializers.CharField(allow_null=True, help_text="Null for a cluster or the tenant.")
    score = serializers.FloatField(
        allow_null=True, help_text="The strategy over the children's scores; null when nothing was scored."
    )
    series = serializers.IntegerField(help_text="Series scored in the range.")
    buckets = serializers.IntegerField(help_text="Scored minutes of those series: the weight in `weighted`.")
    open_anomalies = serializers.IntegerField(help_text="Open anomalies whose window overlaps the range.")


class HealthSerializer(_WithRangeSerializer):
    """Anomaly scores rolled up node -> cluster -> tenant."""

    from_help_text = "Inclusive start."

    level = serializers.ChoiceField(choices=LEVELS)
    strategy = serializers.ChoiceField(choices=list(STRATEGIES))
    to = serializers.DateTimeField(help_text="Exclusive end.")
    entities = HealthEntitySerializer(many=True, help_text="Highest score first; unscored entities last.")


class HealthTopSerializer(_WithRangeSerializer):
    """The nodes with the highest anomaly scores."""

    from_help_text = "Inclusive start."

    strategy = serializers.ChoiceField(choices=list(STRATEGIES))
    to = serializers.DateTimeField(help_text="Exclusive end.")
    nodes = HealthEntitySerializer(many=True, help_text="At most `n`, highest score first.")
