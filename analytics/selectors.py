"""Reads for series and points."""

from __future__ import annotations

from datetime import datetime

from analytics.models import MetricSeries, Point


def points_range(*, series: MetricSeries, start: datetime, end: datetime, limit: int) -> list[tuple[datetime, float]]:
    """Points of `series` with start <= ts < end, oldest first, at most `limit`."""
    return list(
        Point.objects.filter(series=series, ts__gte=start, ts__lt=end).order_by("ts").values_list("ts", "value")[:limit]
    )
