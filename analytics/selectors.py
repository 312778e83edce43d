"""Reads for series, points and rollups."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from analytics.models import MetricSeries, Point, Rollup
from tenants.models import Tenant


def points_range(*, series: MetricSeries, start: datetime, end: datetime, limit: int) -> list[tuple[datetime, float]]:
    """Points of `series` with start <= ts < end, oldest first, at most `limit`."""
    return list(
        Point.objects.filter(series=series, ts__gte=start, ts__lt=end).order_by("ts").values_list("ts", "value")[:limit]
    )


def rollups_revised_since(*, tenant: Tenant, since: datetime, resolution: int | None = None) -> QuerySet[Rollup]:
    """The tenant's rollups recomputed with new values (late data) at or after `since`, at one
    resolution or all, in revision order. Buckets only ever computed once are never included.

    Inclusive, so a consumer keeping its watermark at the newest `revised_at` it saw gets
    repeats, never gaps. `revised_at` is taken when the refresh starts and committed up to a
    task time limit later, so such a consumer should read a little behind the present.
    """
    # resolution = ANY(...) rather than no condition, so the partial index
    # (resolution, revised_at) WHERE revised_at IS NOT NULL serves the query.
    resolutions = [resolution] if resolution is not None else list(Rollup.Resolution.values)
    return Rollup.objects.filter(series__tenant=tenant, resolution__in=resolutions, revised_at__gte=since).order_by(
        "revised_at", "series_id", "resolution", "bucket"
    )
