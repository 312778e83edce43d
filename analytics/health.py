"""Reads for anomaly scores: a series' score time series, and the health roll-up of scores
through the hierarchy node -> cluster -> tenant. No writes.

Definitions (the API and the README say the same):

- A series' **score** over [start, end) is the maximum of its AnomalyScore buckets (one per
  minute) with start <= bucket < end, and its **weight** is the number of those buckets (its
  scored minutes). A series without a bucket in the range has no score and takes no part.
- A **node**'s score is the strategy applied to its series' scores, a **cluster**'s to its
  nodes' scores, the **tenant**'s to its clusters' scores. Every level passes up its score
  and its weight (the sum of its children's weights).
- Strategies (`STRATEGIES`):
  `max`: the largest child score.
  `mean`: the plain mean of the child scores (each child counts once, however much data it has;
  so a cluster's mean is the mean of its node means, not of all its series).
  `weighted`: the mean of the child scores weighted by each child's scored minutes, so a child
  with more data counts more. Because weights add up, the weighted score of any entity equals the
  weighted mean over all its series directly.
  `p95`: the 95th percentile of the child scores, interpolated linearly between the closest ranks
  (numpy's default, PostgreSQL's percentile_cont); with one child, its score.

The heavy part, reading every score bucket in the range, is one SQL GROUP BY per series (max and
count), portable between PostgreSQL and SQLite. The roll-up then runs in Python over one row per
scored series: a tenant has thousands of series, not millions, and the percentile of percentiles
is not expressible portably in SQL.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean

import numpy as np
from django.db.models import Count, Max

from analytics.detection import detector_create
from analytics.models import AnomalyResult, AnomalyScore, DetectorState, MetricSeries
from tenants.models import Tenant

LEVELS = ("tenant", "cluster", "node")


@dataclass(frozen=True)
class Scored:
    """A child in the roll-up: its score and its weight (scored minutes)."""

    score: float
    buckets: int


def _max(children: Sequence[Scored]) -> float:
    return max(child.score for child in children)


def _mean(children: Sequence[Scored]) -> float:
    return fmean(child.score for child in children)


def _weighted(children: Sequence[Scored]) -> float:
    # Every scored child has at least one bucket, so the total weight is never 0.
    return sum(child.score * child.buckets for child in children) / sum(child.buckets for child in children)


def _p95(children: Sequence[Scored]) -> float:
    return float(np.percentile([child.score for child in children], 95))


STRATEGIES: dict[str, Callable[[Sequence[Scored]], float]] = {
    "max": _max,
    "mean": _mean,
    "weighted": _weighted,
    "p95": _p95,
}


def combine(strategy: str, children: Sequence[Scored]) -> float | None:
    """The score of an entity from its scored children (None without any)."""
    try:
        how = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}") from None
    return how(children) if children else None


@dataclass(frozen=True)
class Health:
    """One entity of the roll-up. `cluster` is None for the tenant, `node` for a cluster or the tenant.

    `score` is None when no series of the entity was scored in the range (it is listed for its
    open anomalies). `series` counts the scored series, `buckets` their scored minutes (the
    entity's weight); `open_anomalies` the anomalies still open whose window overlaps the range,
    node-level (multivariate) ones included.
    """

    cluster: str | None
    node: str | None
    score: float | None
    series: int
    buckets: int
    open_anomalies: int

    @property
    def scored(self) -> Scored | None:
        return None if self.score is None else Scored(self.score, self.buckets)


def series_detector_status(*, series: MetricSeries) -> dict[str, object] | None:
    """The streaming detector of `series` as its stored state describes it (None before its
    first run): name, sensitivity, whether it is still warming up, points learned, the
    seasonality it found, and the newest point it scored."""
    stored = DetectorState.objects.filter(series=series).first()
    if stored is None:
        return None
    try:
        status = detector_create(stored.detector, sensitivity=stored.sensitivity).status(stored.state)
    except ValueError:  # a detector no longer registered: its state says nothing we can read
        return None
    return {
        "name": stored.detector,
        "sensitivity": stored.sensitivity,
        "warming": status.warming,
        "points_learned": status.seen,
        "seasonality_seconds": status.period,
        "scores_rate": status.rate,
        "scored_until": stored.last_ts,
    }


def series_scores(*, series: MetricSeries, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """The score time series of `series`: (bucket, score) with start <= bucket < end, oldest first."""
    # The primary key (series_id, bucket) serves the range scan.
    return list(
        AnomalyScore.objects.filter(series=series, bucket__gte=start, bucket__lt=end)
        .order_by("bucket")
        .values_list("bucket", "score")
    )


def health_rollup(
    *, tenant: Tenant, level: str, strategy: str, start: datetime, end: datetime, cluster: str | None = None
) -> list[Health]:
    """The tenant's health at `level` (tenant, cluster or node) over [start, end), by `strategy`.

    Lists every entity with a scored series or an open anomaly in the range, highest score first
    (entities without a score last), then by name; at tenant level always exactly one entity.
    `cluster` narrows everything, the tenant's score included, to that cluster.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    nodes = _node_health(tenant=tenant, strategy=strategy, start=start, end=end, cluster=cluster)
    if level == "node":
        return _ranked(nodes)
    clusters = _roll_up(nodes, strategy=strategy, key=lambda node: node.cluster)
    if level == "cluster":
        return _ranked(clusters)
    return _roll_up(clusters, strategy=strategy, key=lambda _: None) or [Health(None, None, None, 0, 0, 0)]


def health_top_nodes(
    *, tenant: Tenant, strategy: str, start: datetime, end: datetime, n: int, cluster: str | None = None
) -> list[Health]:
    """The `n` scored nodes with the highest score over [start, end) by `strategy`, highest first
    (ties by cluster and node name). Nodes without a scored series are not ranked."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    nodes = _node_health(tenant=tenant, strategy=strategy, start=start, end=end, cluster=cluster)
    return _ranked(node for node in nodes if node.score is not None)[:n]


def _node_health(*, tenant: Tenant, strategy: str, start: datetime, end: datetime, cluster: str | None) -> list[Health]:
    series_scores_q = AnomalyScore.objects.filter(series__tenant=tenant, bucket__gte=start, bucket__lt=end)
    # Same overlap rule as the anomaly list: the window touches [start, end).
    open_q = AnomalyResult.objects.filter(
        tenant=tenant, status=AnomalyResult.Status.OPEN, window_start__lt=end, window_end__gte=start
    )
    if cluster is not None:
        series_scores_q = series_scores_q.filter(series__cluster=cluster)
        open_q = open_q.filter(cluster=cluster)
    # One row per scored series: the only pass over the score buckets.
    per_series = (
        series_scores_q.values("series_id", "series__cluster", "series__node")
        .annotate(score=Max("score"), buckets=Count("bucket"))
        .values_list("series__cluster", "series__node", "score", "buckets")
        .order_by()
    )
    children: dict[tuple[str, str], list[Scored]] = defaultdict(list)
    for cluster_name, node_name, score, buckets in per_series:
        children[(cluster_name, node_name)].append(Scored(score, buckets))
    open_counts: dict[tuple[str, str], int] = {
        (c, node): count
        for c, node, count in open_q.values("cluster", "node")
        .annotate(count=Count("id"))
        .values_list("cluster", "node", "count")
        .order_by()
    }
    return [
        Health(
            cluster=key[0],
            node=key[1],
            score=combine(strategy, children.get(key, [])),
            series=len(children.get(key, [])),
            buckets=sum(child.buckets for child in children.get(key, [])),
            open_anomalies=open_counts.get(key, 0),
        )
        for key in children.keys() | open_counts.keys()
    ]


def _roll_up(children: Iterable[Health], *, strategy: str, key: Callable[[Health], str | None]) -> list[Health]:
    """Groups `children` by `key` (a cluster name, or None for the tenant) into parents."""
    groups: dict[str | None, list[Health]] = defaultdict(list)
    for child in children:
        groups[key(child)].append(child)
    return [
        Health(
            cluster=parent,
            node=None,
            score=combine(strategy, [scored for child in members if (scored := child.scored) is not None]),
            series=sum(child.series for child in members),
            buckets=sum(child.buckets for child in members),
            open_anomalies=sum(child.open_anomalies for child in members),
        )
        for parent, members in groups.items()
    ]


def _ranked(entities: Iterable[Health]) -> list[Health]:
    return sorted(
        entities,
        key=lambda e: (e.score is None, -(e.score or 0.0), e.cluster or "", e.node or ""),
    )
