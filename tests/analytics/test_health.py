"""The health roll-up (analytics.health, GET /api/v1/health and /api/v1/health/top), checked against
numbers worked out by hand.

The fleet, scores per minute in [T0, T0 + 10 min); a series' score is its max, its weight its count:

    cluster a  node a1  s1 [0.2, 0.9]            -> 0.9, 2 minutes
                        s2 [0.4]                 -> 0.4, 1
                        s3 [0.1, 0.1, 0.3]       -> 0.3, 3
                        s6 only outside the range   (takes no part)
               node a2  s4 [0.5, 0.6, 0.7, 0.8]  -> 0.8, 4
    cluster b  node b1  s5 [0.05, 0.2] (+ 1.0 just before and 0.99 at the exclusive end) -> 0.2, 2
    cluster c  node c9  no scores, one open anomaly

Nodes:    max a1 0.9, a2 0.8, b1 0.2
          mean a1 (0.9 + 0.4 + 0.3) / 3 = 0.5333..
          weighted a1 (0.9*2 + 0.4*1 + 0.3*3) / 6 = 3.1 / 6 = 0.51666..
          p95 a1: sorted 0.3, 0.4, 0.9; rank 0.95 * 2 = 1.9 -> 0.4 + 0.9 * (0.9 - 0.4) = 0.85
Clusters: max a 0.9; mean a (0.5333.. + 0.8) / 2 = 0.6666..; weighted a (3.1 + 0.8*4) / 10 = 0.63;
          p95 a: 0.8, 0.85; rank 0.95 -> 0.8 + 0.95 * 0.05 = 0.8475; b is 0.2 by every strategy
Tenant:   max 0.9; mean (0.6666.. + 0.2) / 2 = 0.4333..; weighted (6.3 + 0.4) / 12 = 0.55833..;
          p95: 0.2, 0.8475; rank 0.95 -> 0.2 + 0.95 * 0.6475 = 0.815125
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from analytics import health
from analytics.models import MetricSeries
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory, AnomalyScoreFactory, MetricSeriesFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=10)
RANGE = {"from": "2026-03-02T12:00:00Z", "to": "2026-03-02T12:10:00Z"}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def scored(series: MetricSeries, scores: list[float], *, first_minute: int = 0) -> None:
    for i, score in enumerate(scores):
        AnomalyScoreFactory(series=series, bucket=at(first_minute + i), score=score)


@pytest.fixture
def fleet(tenant: Tenant, other_tenant: Tenant) -> None:
    def series(cluster: str, node: str, metric: str) -> MetricSeries:
        return MetricSeriesFactory(tenant=tenant, cluster=cluster, node=node, metric=metric)

    s1 = series("a", "a1", "cpu")
    scored(s1, [0.2, 0.9])
    scored(series("a", "a1", "mem"), [0.4], first_minute=5)
    scored(series("a", "a1", "disk"), [0.1, 0.1, 0.3], first_minute=7)
    s6 = series("a", "a1", "net")
    AnomalyScoreFactory(series=s6, bucket=at(-1), score=1.0)
    AnomalyScoreFactory(series=s6, bucket=at(10), score=1.0)
    scored(series("a", "a2", "cpu"), [0.5, 0.6, 0.7, 0.8], first_minute=3)
    s5 = series("b", "b1", "cpu")
    scored(s5, [0.05, 0.2])
    AnomalyScoreFactory(series=s5, bucket=at(-1), score=1.0)
    AnomalyScoreFactory(series=s5, bucket=at(10), score=0.99)
    MetricSeriesFactory(tenant=tenant, cluster="b", node="b2", metric="cpu")  # never scored

    # Open anomalies overlapping the range: one on a1 (a series), one on a2 (node-level), one on c9.
    AnomalyResultFactory(series=s1, window_start=at(1), window_end=at(2), status="open")
    AnomalyResultFactory(
        series=None,
        tenant=tenant,
        cluster="a",
        node="a2",
        detector="mv",
        window_start=at(-3),
        window_end=at(9),
        status="open",
    )
    AnomalyResultFactory(series=None, tenant=tenant, cluster="c", node="c9", window_start=at(9), status="open")
    # Not counted: closed; open but ended before the range; open but starting at its exclusive end.
    AnomalyResultFactory(series=s1, window_start=at(3), window_end=at(4), status="closed")
    AnomalyResultFactory(series=None, tenant=tenant, cluster="a", node="a2", window_start=at(-30), status="closed")
    AnomalyResultFactory(series=s5, window_start=at(-20), window_end=at(-1), status="open")
    AnomalyResultFactory(series=s5, window_start=at(10), window_end=at(11), status="open")

    # Another tenant with the same names and higher scores must change nothing.
    theirs = MetricSeriesFactory(tenant=other_tenant, cluster="a", node="a1", metric="cpu")
    scored(theirs, [1.0, 1.0, 1.0])
    AnomalyResultFactory(series=theirs, window_start=at(1), window_end=at(2), status="open")


NODES = {
    # node: (series, buckets, open anomalies)
    ("a", "a1"): (3, 6, 1),
    ("a", "a2"): (1, 4, 1),
    ("b", "b1"): (1, 2, 0),
    ("c", "c9"): (0, 0, 1),
}
NODE_SCORES = {
    "max": {"a1": 0.9, "a2": 0.8, "b1": 0.2},
    "mean": {"a1": 1.6 / 3, "a2": 0.8, "b1": 0.2},
    "weighted": {"a1": 3.1 / 6, "a2": 0.8, "b1": 0.2},
    "p95": {"a1": 0.85, "a2": 0.8, "b1": 0.2},
}
NODE_ORDER = {
    "max": ["a1", "a2", "b1", "c9"],
    "mean": ["a2", "a1", "b1", "c9"],
    "weighted": ["a2", "a1", "b1", "c9"],
    "p95": ["a1", "a2", "b1", "c9"],
}
CLUSTER_SCORES = {
    "max": {"a": 0.9, "b": 0.2},
    "mean": {"a": (1.6 / 3 + 0.8) / 2, "b": 0.2},
    "weighted": {"a": 0.63, "b": 0.2},
    "p95": {"a": 0.8475, "b": 0.2},
}
TENANT_SCORES = {"max": 0.9, "mean": ((1.6 / 3 + 0.8) / 2 + 0.2) / 2, "weighted": 6.7 / 12, "p95": 0.815125}


def rollup(tenant: Tenant, level: str, strategy: str, **kwargs: Any) -> list[health.Health]:
    return health.health_rollup(tenant=tenant, level=level, strategy=strategy, start=T0, end=T1, **kwargs)


@pytest.mark.parametrize("strategy", list(health.STRATEGIES))
def test_node_level(tenant: Tenant, fleet: None, strategy: str) -> None:
    nodes = rollup(tenant, "node", strategy)
    expected = NODE_SCORES[strategy]
    assert [n.node for n in nodes] == NODE_ORDER[strategy]  # highest first, unscored last
    for node in nodes:
        series, buckets, open_anomalies = NODES[(node.cluster, node.node)]
        assert (node.series, node.buckets, node.open_anomalies) == (series, buckets, open_anomalies)
        if node.node == "c9":
            assert node.score is None
        else:
            assert node.score == pytest.approx(expected[node.node])


@pytest.mark.parametrize("strategy", list(health.STRATEGIES))
def test_cluster_level(tenant: Tenant, fleet: None, strategy: str) -> None:
    clusters = {c.cluster: c for c in rollup(tenant, "cluster", strategy)}
    assert list(clusters) == ["a", "b", "c"]  # highest first; c has no score
    for name, score in CLUSTER_SCORES[strategy].items():
        assert clusters[name].score == pytest.approx(score)
    assert clusters["c"].score is None
    assert [(c.node, c.series, c.buckets, c.open_anomalies) for c in clusters.values()] == [
        (None, 4, 10, 2),
        (None, 1, 2, 0),
        (None, 0, 0, 1),
    ]


@pytest.mark.parametrize("strategy", list(health.STRATEGIES))
def test_tenant_level(tenant: Tenant, fleet: None, strategy: str) -> None:
    [entity] = rollup(tenant, "tenant", strategy)
    assert (entity.cluster, entity.node, entity.series, entity.buckets, entity.open_anomalies) == (None, None, 5, 12, 3)
    assert entity.score == pytest.approx(TENANT_SCORES[strategy])


def test_weighted_counts_a_child_with_more_data_more(tenant: Tenant) -> None:
    busy = MetricSeriesFactory(tenant=tenant, cluster="a", node="busy")
    quiet = MetricSeriesFactory(tenant=tenant, cluster="a", node="quiet")
    scored(busy, [0.1] * 9)
    scored(quiet, [0.9])
    [cluster] = rollup(tenant, "cluster", "weighted")
    [mean] = rollup(tenant, "cluster", "mean")
    assert cluster.score == pytest.approx((0.1 * 9 + 0.9) / 10)
    assert mean.score == pytest.approx(0.5)


def test_the_cluster_parameter_narrows_every_level(tenant: Tenant, fleet: None) -> None:
    [entity] = rollup(tenant, "tenant", "mean", cluster="a")
    assert (entity.score, entity.series, entity.open_anomalies) == (pytest.approx((1.6 / 3 + 0.8) / 2), 4, 2)
    assert [n.node for n in rollup(tenant, "node", "max", cluster="b")] == ["b1"]


def test_a_tenant_without_scores_has_one_unscored_entity(tenant: Tenant) -> None:
    MetricSeriesFactory(tenant=tenant)
    assert rollup(tenant, "tenant", "max") == [health.Health(None, None, None, 0, 0, 0)]
    assert rollup(tenant, "node", "max") == []


def test_unknown_strategy_or_level_fails_loudly_listing_the_known_ones(tenant: Tenant) -> None:
    with pytest.raises(ValueError, match="max, mean, weighted, p95"):
        rollup(tenant, "node", "median")
    with pytest.raises(ValueError, match="tenant, cluster, node"):
        rollup(tenant, "region", "max")


def test_top_nodes_highest_first(tenant: Tenant, fleet: None) -> None:
    def top(strategy: str, n: int) -> list[tuple[str | None, float | None]]:
        return [
            (node.node, node.score)
            for node in health.health_top_nodes(tenant=tenant, strategy=strategy, start=T0, end=T1, n=n)
        ]

    assert top("max", 10) == [("a1", 0.9), ("a2", 0.8), ("b1", 0.2)]  # c9 has no score: not ranked
    assert top("mean", 2) == [("a2", 0.8), ("a1", pytest.approx(1.6 / 3))]
    assert top("p95", 1) == [("a1", pytest.approx(0.85))]


def test_top_ties_are_ordered_by_name(tenant: Tenant) -> None:
    for cluster, node in [("b", "x"), ("a", "z"), ("a", "y")]:
        scored(MetricSeriesFactory(tenant=tenant, cluster=cluster, node=node), [0.5])
    nodes = health.health_top_nodes(tenant=tenant, strategy="max", start=T0, end=T1, n=3)
    assert [(n.cluster, n.node) for n in nodes] == [("a", "y"), ("a", "z"), ("b", "x")]


# --- the API -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(health.STRATEGIES))
def test_health_api_at_each_level(owner: APIClient, fleet: None, strategy: str) -> None:
    tenant = owner.get("/api/v1/health", {**RANGE, "strategy": strategy}).json()
    assert (tenant["level"], tenant["strategy"], tenant["from"], tenant["to"]) == (
        "tenant",
        strategy,
        RANGE["from"],
        RANGE["to"],
    )
    [entity] = tenant["entities"]
    assert entity == {
        "cluster": None,
        "node": None,
        "score": pytest.approx(TENANT_SCORES[strategy]),
        "series": 5,
        "buckets": 12,
        "open_anomalies": 3,
    }
    clusters = owner.get("/api/v1/health", {**RANGE, "strategy": strategy, "level": "cluster"}).json()["entities"]
    assert [(c["cluster"], c["score"]) for c in clusters] == [
        ("a", pytest.approx(CLUSTER_SCORES[strategy]["a"])),
        ("b", pytest.approx(0.2)),
        ("c", None),
    ]
    nodes = owner.get("/api/v1/health", {**RANGE, "strategy": strategy, "level": "node"}).json()["entities"]
    assert {n["node"]: n["score"] for n in nodes} == {
        **{k: pytest.approx(v) for k, v in NODE_SCORES[strategy].items()},
        "c9": None,
    }
    a1 = next(n for n in nodes if n["node"] == "a1")
    assert a1 == {**a1, "cluster": "a", "series": 3, "buckets": 6, "open_anomalies": 1}


def test_health_api_defaults_to_max_over_the_last_hour(owner: APIClient, tenant: Tenant) -> None:
    minute = timezone.now().replace(second=0, microsecond=0)
    series = MetricSeriesFactory(tenant=tenant)
    AnomalyScoreFactory(series=series, bucket=minute - timedelta(minutes=10), score=0.3)
    AnomalyScoreFactory(series=series, bucket=minute - timedelta(minutes=20), score=0.6)
    AnomalyScoreFactory(series=series, bucket=minute - timedelta(minutes=70), score=0.9)
    body = owner.get("/api/v1/health").json()
    assert (body["level"], body["strategy"]) == ("tenant", "max")
    assert (body["entities"][0]["score"], body["entities"][0]["buckets"]) == (0.6, 2)
    top = owner.get("/api/v1/health/top").json()
    assert (top["strategy"], [n["score"] for n in top["nodes"]]) == ("max", [0.6])


def test_health_api_cluster_parameter(owner: APIClient, fleet: None) -> None:
    nodes = owner.get("/api/v1/health", {**RANGE, "level": "node", "cluster": "a"}).json()["entities"]
    assert [n["node"] for n in nodes] == ["a1", "a2"]


def test_top_api_orders_nodes_and_honours_n(owner: APIClient, fleet: None) -> None:
    body = owner.get("/api/v1/health/top", {**RANGE, "n": 2, "strategy": "mean"}).json()
    assert body["strategy"] == "mean"
    assert [(n["cluster"], n["node"], n["score"]) for n in body["nodes"]] == [
        ("a", "a2", pytest.approx(0.8)),
        ("a", "a1", pytest.approx(1.6 / 3)),
    ]
    everything = owner.get("/api/v1/health/top", {**RANGE, "n": 1000}).json()["nodes"]
    assert [n["node"] for n in everything] == ["a1", "a2", "b1"]


@pytest.mark.parametrize(
    "path, query, field",
    [
        ("/api/v1/health", "level=region", "level"),
        ("/api/v1/health", "strategy=median", "strategy"),
        ("/api/v1/health/top", "strategy=median", "strategy"),
        ("/api/v1/health/top", "n=0", "n"),
        ("/api/v1/health/top", "n=1001", "n"),
        ("/api/v1/health/top", "n=ten", "n"),
        ("/api/v1/health", "from=yesterday", "from"),
        ("/api/v1/health/top", "from=2026-03-02T12:00:00Z&to=2026-03-02T11:00:00Z", "from"),
    ],
)
def test_bad_parameters_are_400_with_the_error_shape(owner: APIClient, path: str, query: str, field: str) -> None:
    response = owner.get(f"{path}?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert [d["field"] for d in error["details"]] == [field]


def test_bad_strategy_message_lists_the_strategies(owner: APIClient) -> None:
    detail = owner.get("/api/v1/health?strategy=median").json()["error"]["details"][0]
    assert detail["code"] == "invalid_choice"
    assert detail["message"] == '"median" is not allowed; expected one of: max, mean, weighted, p95.'


def test_another_tenant_sees_none_of_it(stranger: APIClient, fleet: None) -> None:
    [entity] = stranger.get("/api/v1/health", RANGE).json()["entities"]
    # Only the stranger's own series: three minutes of 1.0 on its a1, one open anomaly.
    assert entity == {"cluster": None, "node": None, "score": 1.0, "series": 1, "buckets": 3, "open_anomalies": 1}
    assert [n["node"] for n in stranger.get("/api/v1/health/top", RANGE).json()["nodes"]] == ["a1"]


def test_a_tenant_without_data_is_healthy_and_empty(owner: APIClient) -> None:
    body = owner.get("/api/v1/health", RANGE).json()
    assert body["entities"] == [
        {"cluster": None, "node": None, "score": None, "series": 0, "buckets": 0, "open_anomalies": 0}
    ]
    assert owner.get("/api/v1/health", {**RANGE, "level": "node"}).json()["entities"] == []
    assert owner.get("/api/v1/health/top", RANGE).json()["nodes"] == []


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/health/top"])
def test_anonymous_is_401(anonymous: APIClient, path: str) -> None:
    response = anonymous.get(path)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "not_authenticated")


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/health/top"])
def test_health_needs_the_read_scope(make_client: Any, tenant: Tenant, path: str) -> None:
    response = make_client(tenant, scopes=("ingest",)).get(path)
    assert (response.status_code, response.json()["error"]["code"]) == (403, "missing_scope")
    assert make_client(tenant, scopes=("read",)).get(path).status_code == 200


def test_the_schema_documents_health_with_examples(anonymous: APIClient) -> None:
    paths = anonymous.get("/api/v1/schema?format=json").json()["paths"]
    for path, params in [
        ("/api/v1/health", {"level", "strategy", "from", "to", "cluster"}),
        ("/api/v1/health/top", {"n", "strategy", "from", "to", "cluster"}),
    ]:
        op = paths[path]["get"]
        assert params <= {p["name"] for p in op["parameters"]}
        assert "examples" in op["responses"]["200"]["content"]["application/json"]
    assert "weighted" in paths["/api/v1/health"]["get"]["description"]
