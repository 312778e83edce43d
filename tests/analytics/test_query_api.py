"""GET /api/v1/series/{id}/data, /api/v1/query and /api/v1/series/{id}/slo, as clients use them.

Data goes in through POST /api/v1/points and the real rollup service; expectations are
computed with numpy straight from the points that were sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from analytics.models import MetricSeries, Rollup
from analytics.rollups import rollups_refresh
from tenants.models import Tenant

pytestmark = pytest.mark.django_db

HOUR = 3600
EXACT_AGGS = ["count", "sum", "min", "max", "mean", "stddev", "first", "last"]
PERCENTILE_AGGS = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}


@dataclass(frozen=True)
class Sent:
    """A series as ingested: its id and the points sent (seconds, values), oldest first."""

    id: int
    ts: np.ndarray
    values: np.ndarray


@pytest.fixture
def base() -> int:
    """The start of the hour three hours ago: two whole hours of data fit before now."""
    return int(time.time()) // HOUR * HOUR - 3 * HOUR


def dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def iso(seconds: float) -> str:
    return dt(seconds).isoformat().replace("+00:00", "Z")


def ingest(
    client: APIClient, *, base: int, node: str = "web-1", cluster: str = "eu", seed: int = 0, hours: int = 2
) -> Sent:
    """Irregular points (3-12 s apart, on quarter seconds) over `hours` from `base`, rolled up."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.integers(12, 48, size=hours * HOUR // 6) / 4)
    ts = base + offsets[offsets < hours * HOUR]
    values = rng.gamma(2.0, 50.0, size=len(ts)).round(3)
    points = [
        {"cluster": cluster, "node": node, "metric": "latency", "timestamp": float(t), "value": float(v)}
        for t, v in zip(ts, values, strict=True)
    ]
    response = client.post("/api/v1/points", {"points": points}, format="json")
    assert response.status_code == 200, response.content
    series_id = MetricSeries.objects.get(tenant=client.api_key.tenant, cluster=cluster, node=node).pk
    rollups_refresh(series_ids=[series_id], start=dt(base), end=dt(base + hours * HOUR))
    return Sent(series_id, ts, values)


def exact(agg: str, values: np.ndarray) -> float | None:
    if agg in PERCENTILE_AGGS:
        return float(np.percentile(values, PERCENTILE_AGGS[agg], method="linear"))
    if agg == "stddev":
        return float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(
        {
            "count": len(values),
            "sum": values.sum(),
            "min": values.min(),
            "max": values.max(),
            "mean": values.mean(),
            "first": values[0],
            "last": values[-1],
        }[agg]
    )


def windows(sent: Sent, step: int) -> dict[str, np.ndarray]:
    """The points sent, grouped by epoch-aligned window, keyed like the API's timestamps."""
    starts = sent.ts // step * step
    return {dt(start).isoformat().replace("+00:00", "Z"): sent.values[starts == start] for start in np.unique(starts)}


def data(client: APIClient, series_id: int, **params: Any) -> Any:
    return client.get(f"/api/v1/series/{series_id}/data", params)


@pytest.fixture
def latency(owner: APIClient, base: int) -> Sent:
    return ingest(owner, base=base)


# --- one series --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, seconds, resolution",
    [
        ("30s", 30, "raw"),
        ("60", 60, "1m"),
        ("120", 120, "1m"),
        ("2m", 120, "1m"),
        ("300", 300, "5m"),
        ("10m", 600, "5m"),
        ("3600", 3600, "1h"),
        ("90", 90, "raw"),
    ],
)
def test_the_step_picks_the_coarsest_dividing_resolution(
    owner: APIClient, latency: Sent, base: int, step: str, seconds: int, resolution: str
) -> None:
    body = data(owner, latency.id, **{"from": base, "to": base + 2 * HOUR, "step": step, "agg": "count"}).json()
    assert (body["step"], body["resolution"], body["approximate"]) == (seconds, resolution, False)
    counts = {ts: len(values) for ts, values in windows(latency, seconds).items()}
    assert {p["timestamp"]: p["value"] for p in body["points"]} == counts


@pytest.mark.parametrize("agg", EXACT_AGGS)
@pytest.mark.parametrize("step", [120, 600, 7200])
def test_windows_combined_from_rollups_are_exact(
    owner: APIClient, latency: Sent, base: int, agg: str, step: int
) -> None:
    body = data(owner, latency.id, **{"from": base, "to": base + 2 * HOUR, "step": step, "agg": agg}).json()
    assert body["resolution"] == {120: "1m", 600: "5m", 7200: "1h"}[step]
    assert body["approximate"] is False
    expected = {ts: exact(agg, values) for ts, values in windows(latency, step).items()}
    got = {p["timestamp"]: p["value"] for p in body["points"]}
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("agg", [*EXACT_AGGS, *PERCENTILE_AGGS])
@pytest.mark.parametrize("step", [60, 300, 3600])
def test_a_step_of_a_stored_resolution_is_exact_for_every_aggregation(
    owner: APIClient, latency: Sent, base: int, agg: str, step: int
) -> None:
    body = data(owner, latency.id, **{"from": base, "to": base + 2 * HOUR, "step": step, "agg": agg}).json()
    assert body["approximate"] is False
    expected = {ts: exact(agg, values) for ts, values in windows(latency, step).items()}
    assert {p["timestamp"]: p["value"] for p in body["points"]} == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("agg", PERCENTILE_AGGS)
def test_percentiles_combined_from_rollups_are_flagged_upper_bounds(
    owner: APIClient, latency: Sent, base: int, agg: str
) -> None:
    body = data(owner, latency.id, **{"from": base, "to": base + 2 * HOUR, "step": "10m", "agg": agg}).json()
    assert (body["resolution"], body["approximate"]) == ("5m", True)
    expected = windows(latency, 600)
    assert [p["timestamp"] for p in body["points"]] == list(expected)
    for point in body["points"]:
        values = expected[point["timestamp"]]
        assert exact(agg, values) - 1e-9 <= point["value"] <= values.max()


@pytest.mark.parametrize("agg", [*EXACT_AGGS, *PERCENTILE_AGGS])
@pytest.mark.parametrize("step", ["30s", "90", "45s"])
def test_raw_windows_are_exact_for_every_aggregation(
    owner: APIClient, latency: Sent, base: int, agg: str, step: str
) -> None:
    body = data(owner, latency.id, **{"from": base + 600, "to": base + 1800, "step": step, "agg": agg}).json()
    assert (body["resolution"], body["approximate"]) == ("raw", False)
    step_s = body["step"]
    lo, hi = (base + 600) // step_s * step_s, -(-(base + 1800) // step_s) * step_s  # widened to whole windows
    assert (body["from"], body["to"]) == (iso(lo), iso(hi))
    inside = (latency.ts >= lo) & (latency.ts < hi)
    sent = Sent(latency.id, latency.ts[inside], latency.values[inside])
    expected = {ts: exact(agg, values) for ts, values in windows(sent, step_s).items()}
    got = {p["timestamp"]: p["value"] for p in body["points"]}
    assert got == pytest.approx(expected, rel=1e-12)


def test_the_range_is_widened_to_whole_windows(owner: APIClient, latency: Sent, base: int) -> None:
    body = data(owner, latency.id, **{"from": base + 70, "to": base + 1201, "step": "10m", "agg": "count"}).json()
    assert (body["from"], body["to"]) == (iso(base), iso(base + 1800))
    assert sum(p["value"] for p in body["points"]) == int(((latency.ts >= base) & (latency.ts < base + 1800)).sum())


def test_the_default_step_gives_about_300_points(owner: APIClient, latency: Sent, base: int) -> None:
    body = data(owner, latency.id, **{"from": base, "to": base + 2 * HOUR}).json()
    assert (body["step"], body["agg"], body["resolution"]) == (30, "mean", "raw")
    assert 200 < len(body["points"]) <= 300
    day = data(owner, latency.id, **{"from": base - 22 * HOUR, "to": base + 2 * HOUR}).json()
    assert (day["step"], day["resolution"]) == (300, "5m")


def test_a_stddev_of_one_point_is_null_and_an_empty_csv_cell(owner: APIClient, base: int) -> None:
    response = owner.post(
        "/api/v1/points",
        {
            "points": [
                {"cluster": "c", "node": "n", "metric": "m", "timestamp": base + t, "value": t} for t in (1, 2, 61)
            ]
        },
        format="json",
    )
    assert response.status_code == 200
    series = MetricSeries.objects.get()
    rollups_refresh(series_ids=[series.pk], start=dt(base), end=dt(base + 120))
    params = {"from": base, "to": base + 120, "step": "1m", "agg": "stddev"}
    assert [p["value"] for p in data(owner, series.pk, **params).json()["points"]] == [
        pytest.approx(np.std([1, 2], ddof=1)),
        None,
    ]
    csv = owner.get(f"/api/v1/series/{series.pk}/data", {**params, "format": "csv"}).content.decode()
    assert csv.splitlines()[2] == iso(base + 60) + ","


def test_data_as_csv(owner: APIClient, latency: Sent, base: int) -> None:
    params = {"from": base, "to": base + HOUR, "step": "5m", "agg": "max"}
    url = f"/api/v1/series/{latency.id}/data"
    body = owner.get(url, params).json()
    response = owner.get(url, params, HTTP_ACCEPT="text/csv")
    assert response["Content-Type"].startswith("text/csv")
    lines = response.content.decode().splitlines()
    assert lines[0] == "timestamp,value"
    assert [line.split(",") for line in lines[1:]] == [[p["timestamp"], repr(p["value"])] for p in body["points"]]
    assert owner.get(url, {**params, "format": "csv"}).content == response.content


def test_more_than_11000_points_is_400_with_a_fix(owner: APIClient, latency: Sent, base: int) -> None:
    response = data(owner, latency.id, **{"from": base - 2 * 86400, "to": base, "step": "10s"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_points"
    assert "larger step" in error["message"] and "shorter range" in error["message"]
    assert data(owner, latency.id, **{"from": base, "to": base + 11_000, "step": "1s"}).status_code == 200


@pytest.mark.parametrize(
    "params, field",
    [
        ({"step": "0"}, "step"),
        ({"step": "-5"}, "step"),
        ({"step": "1.5"}, "step"),
        ({"step": "soon"}, "step"),
        ({"agg": "median"}, "agg"),
        ({"from": "2000", "to": "1000"}, "from"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-01-01T00:00:00"}, "to"),
    ],
)
def test_bad_data_parameters_are_400(owner: APIClient, latency: Sent, params: dict[str, str], field: str) -> None:
    response = owner.get(f"/api/v1/series/{latency.id}/data", params, HTTP_ACCEPT="text/csv")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["details"][0]["field"]) == ("invalid", field)


# --- many series -------------------------------------------------------------------------------


@pytest.fixture
def fleet(owner: APIClient, base: int) -> dict[str, Sent]:
    return {
        "web-1": ingest(owner, base=base, node="web-1", seed=1, hours=1),
        "web-2": ingest(owner, base=base, node="web-2", seed=2, hours=1),
        "web-3": ingest(owner, base=base + 1800, node="web-3", seed=3, hours=1),
        "us-1": ingest(owner, base=base, node="us-1", cluster="us", seed=4, hours=1),
    }


def test_query_answers_every_matching_series(owner: APIClient, fleet: dict[str, Sent], base: int) -> None:
    body = owner.get(
        "/api/v1/query", {"cluster": "eu", "from": base, "to": base + 2 * HOUR, "step": "10m", "agg": "max"}
    ).json()
    assert (body["step"], body["resolution"], body["agg"]) == (600, "5m", "max")
    assert [s["node"] for s in body["series"]] == ["web-1", "web-2", "web-3"]
    for entry in body["series"]:
        sent = fleet[entry["node"]]
        assert (entry["id"], entry["cluster"], entry["metric"], entry["labels"]) == (sent.id, "eu", "latency", {})
        expected = {ts: exact("max", values) for ts, values in windows(sent, 600).items()}
        assert {p["timestamp"]: p["value"] for p in entry["points"]} == expected


@pytest.mark.parametrize(
    "across, combine",
    [
        ("mean", np.mean),
        ("sum", np.sum),
        ("min", np.min),
        ("max", np.max),
        ("p95", lambda v: np.percentile(v, 95)),
    ],
)
def test_query_across_combines_the_series_per_window(
    owner: APIClient, fleet: dict[str, Sent], base: int, across: str, combine: Callable[[Any], float]
) -> None:
    body = owner.get(
        "/api/v1/query",
        {"cluster": "eu", "from": base, "to": base + 2 * HOUR, "step": "15m", "agg": "mean", "across": across},
    ).json()
    assert (body["across"], body["series_count"], body["resolution"]) == (across, 3, "5m")
    per_series: dict[str, list[float]] = {}
    for node in ("web-1", "web-2", "web-3"):
        for ts, values in windows(fleet[node], 900).items():
            per_series.setdefault(ts, []).append(values.mean())
    expected = {ts: float(combine(np.array(values))) for ts, values in sorted(per_series.items())}
    assert {p["timestamp"]: p["value"] for p in body["points"]} == pytest.approx(expected, rel=1e-9)
    assert [p["timestamp"] for p in body["points"]] == list(expected)


def test_query_with_no_match_is_empty(owner: APIClient, fleet: dict[str, Sent]) -> None:
    assert owner.get("/api/v1/query", {"cluster": "nowhere"}).json()["series"] == []
    body = owner.get("/api/v1/query", {"cluster": "nowhere", "across": "sum"}).json()
    assert (body["series_count"], body["points"]) == (0, [])


def test_more_than_500_series_is_400(owner: APIClient, tenant: Tenant) -> None:
    MetricSeries.objects.bulk_create(
        [MetricSeries(tenant=tenant, cluster="big", node=f"n{i}", metric="m", identity=f"id{i}") for i in range(501)]
    )
    response = owner.get("/api/v1/query", {"cluster": "big"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_series"
    assert "501 series" in response.json()["error"]["message"]
    assert owner.get("/api/v1/query", {"cluster": "big", "label": "none=x"}).status_code == 200


def test_query_bounds_series_times_windows(owner: APIClient, tenant: Tenant, base: int) -> None:
    MetricSeries.objects.bulk_create(
        [MetricSeries(tenant=tenant, cluster="c", node=f"n{i}", metric="m", identity=f"id{i}") for i in range(12)]
    )
    params = {"cluster": "c", "from": base, "to": base + 10_000, "step": "1s"}
    response = owner.get("/api/v1/query", params)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "too_many_points")
    assert "12 series x 10000 windows" in response.json()["error"]["message"]
    assert owner.get("/api/v1/query", {**params, "node": "n1"}).status_code == 200
    assert owner.get("/api/v1/query", {"cluster": "c"}).status_code == 200  # the default step fits


@pytest.mark.parametrize(
    "params, field",
    [
        ({"across": "median"}, "across"),
        ({"agg": "avg"}, "agg"),
        ({"step": "0s"}, "step"),
        ({"label": "env"}, "label"),
        ({"from": "2000", "to": "1000"}, "from"),
    ],
)
def test_bad_query_parameters_are_400(
    owner: APIClient, fleet: dict[str, Sent], params: dict[str, str], field: str
) -> None:
    response = owner.get("/api/v1/query", params)
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == field


# --- SLO -----------------------------------------------------------------------------------------


def buckets(series_id: int, p99s: list[float], *, resolution: int = 300, end: datetime | None = None) -> None:
    """Stored buckets with the given p99s, newest ending at `end` (default: the bucket before now)."""
    step = timedelta(seconds=resolution)
    newest = dt(int((end or timezone.now()).timestamp()) // resolution * resolution) - step
    Rollup.objects.bulk_create(
        Rollup(
            series_id=series_id,
            resolution=resolution,
            bucket=newest - i * step,
            count=1,
            sum=v,
            min=v,
            max=v,
            mean=v,
            stddev=None,
            p50=v,
            p90=v,
            p95=v,
            p99=v,
            first=v,
            last=v,
            computed_at=timezone.now(),
        )
        for i, v in enumerate(p99s)
    )


@pytest.fixture
def api(owner: APIClient) -> MetricSeries:
    response = owner.post(
        "/api/v1/points",
        {"points": [{"cluster": "c", "node": "n", "metric": "api", "timestamp": time.time() - 5, "value": 1}]},
        format="json",
    )
    assert response.status_code == 200
    return MetricSeries.objects.get()


def slo(client: APIClient, series_id: int, **params: str) -> Any:
    return client.get(f"/api/v1/series/{series_id}/slo", params)


@pytest.mark.parametrize(
    "good, total, target, remaining, status",
    [
        (8, 10, "0.9", -1.0, "exhausted"),
        (9, 10, "0.9", 0.0, "exhausted"),
        (23, 25, "0.9", 0.2, "burning"),
        (19, 20, "0.9", 0.5, "ok"),
        (10, 10, "0.99", 1.0, "ok"),
    ],
)
def test_slo_report_counts_good_buckets_and_the_budget_left(
    owner: APIClient, api: MetricSeries, good: int, total: int, target: str, remaining: float, status: str
) -> None:
    buckets(api.pk, [120.0] * good + [900.0] * (total - good))
    body = slo(owner, api.pk, objective="<500", target=target).json()
    assert body == body | {
        "series_id": api.pk,
        "objective": "p99 < 500",
        "window": "30d",
        "bucket": "5m",
        "buckets_total": total,
        "buckets_good": good,
        "good_ratio": good / total,
        "target": float(target),
        "error_budget": {"0.9": 0.1, "0.99": 0.01}[target],
        "error_budget_remaining": remaining,
        "status": status,
    }


def test_slo_reads_only_the_window_the_bucket_size_and_the_aggregate(owner: APIClient, api: MetricSeries) -> None:
    now = timezone.now()
    buckets(api.pk, [100.0] * 10)  # the last 50 minutes
    buckets(api.pk, [900.0] * 5, end=now - timedelta(days=2))  # outside a 1d window
    buckets(api.pk, [900.0] * 3, resolution=3600)  # another resolution
    Rollup.objects.filter(series=api, resolution=300, bucket__gte=now - timedelta(hours=1)).update(p50=900.0)
    day = slo(owner, api.pk, objective="<500", window="1d").json()
    assert (day["buckets_total"], day["buckets_good"], day["status"]) == (10, 10, "ok")
    month = slo(owner, api.pk, objective="<500").json()
    assert (month["buckets_total"], month["buckets_good"]) == (15, 10)
    hourly = slo(owner, api.pk, objective="<500", bucket="1h").json()
    assert (hourly["bucket"], hourly["buckets_total"], hourly["buckets_good"]) == ("1h", 3, 0)
    p50 = slo(owner, api.pk, objective="<=500", window="24h", agg="p50").json()
    assert (p50["objective"], p50["window"], p50["buckets_good"]) == ("p50 <= 500", "1d", 0)


def test_slo_at_the_threshold_depends_on_the_operator(owner: APIClient, api: MetricSeries) -> None:
    buckets(api.pk, [500.0, 400.0])
    assert slo(owner, api.pk, objective="<500").json()["buckets_good"] == 1
    assert slo(owner, api.pk, objective="<=500").json()["buckets_good"] == 2
    assert slo(owner, api.pk, objective=">=500").json()["buckets_good"] == 1


def test_slo_without_buckets_is_no_data(owner: APIClient, api: MetricSeries) -> None:
    response = slo(owner, api.pk, objective="<500")
    assert response.status_code == 200
    body = response.json()
    assert (body["buckets_total"], body["good_ratio"], body["error_budget_remaining"], body["status"]) == (
        0,
        None,
        None,
        "no_data",
    )


def test_slo_over_real_rollups(owner: APIClient, latency: Sent, base: int) -> None:
    body = slo(owner, latency.id, objective="<250", agg="p90", window="7d", target="0.5").json()
    p90s = [np.percentile(values, 90) for values in windows(latency, 300).values()]
    assert body["buckets_total"] == len(p90s) == 24
    assert body["buckets_good"] == sum(p < 250 for p in p90s)


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "objective"),
        ({"objective": "500"}, "objective"),
        ({"objective": "<abc"}, "objective"),
        ({"objective": "=<5"}, "objective"),
        ({"objective": "<nan"}, "objective"),
        ({"objective": "<5", "window": "a month"}, "window"),
        ({"objective": "<5", "window": "0d"}, "window"),
        ({"objective": "<5", "target": "1"}, "target"),
        ({"objective": "<5", "target": "0"}, "target"),
        ({"objective": "<5", "target": "99%"}, "target"),
        ({"objective": "<5", "bucket": "2m"}, "bucket"),
        ({"objective": "<5", "agg": "median"}, "agg"),
    ],
)
def test_bad_slo_parameters_are_400(owner: APIClient, api: MetricSeries, params: dict[str, str], field: str) -> None:
    response = slo(owner, api.pk, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["details"][0]["field"]) == ("invalid", field)


# --- isolation and auth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/series/{id}/data",
        "/api/v1/series/{id}/data?format=csv",
        "/api/v1/series/{id}/slo?objective=%3C500",
    ],
)
def test_other_tenants_series_is_404(owner: APIClient, stranger: APIClient, base: int, path: str) -> None:
    theirs = ingest(stranger, base=base, hours=1)
    response = owner.get(path.format(id=theirs.id))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert stranger.get(path.format(id=theirs.id)).status_code == 200


def test_query_never_returns_other_tenants_series(owner: APIClient, stranger: APIClient, base: int) -> None:
    mine = ingest(owner, base=base, node="mine", hours=1)
    ingest(stranger, base=base, node="theirs", hours=1)
    params = {"cluster": "eu", "from": base, "to": base + HOUR, "step": "5m"}
    assert [s["id"] for s in owner.get("/api/v1/query", params).json()["series"]] == [mine.id]
    across = owner.get("/api/v1/query", {**params, "across": "sum", "agg": "count"}).json()
    assert (across["series_count"], sum(p["value"] for p in across["points"])) == (1, len(mine.ts))


@pytest.mark.parametrize(
    "path",
    ["/api/v1/series/1/data", "/api/v1/series/1/slo?objective=%3C5", "/api/v1/query", "/api/v1/query?across=sum"],
)
def test_anonymous_is_401(anonymous: APIClient, path: str) -> None:
    assert anonymous.get(path.format(id=1)).status_code == 401


@pytest.mark.parametrize(
    "path", ["/api/v1/series/{id}/data", "/api/v1/series/{id}/slo?objective=%3C5", "/api/v1/query"]
)
def test_a_key_without_read_is_403(
    make_client: Callable[..., APIClient], tenant: Tenant, api: MetricSeries, path: str
) -> None:
    ingest_only = make_client(tenant, scopes=("ingest",))
    response = ingest_only.get(path.format(id=api.pk))
    assert (response.status_code, response.json()["error"]["code"]) == (403, "missing_scope")
    assert make_client(tenant, scopes=("read",)).get(path.format(id=api.pk)).status_code == 200


# --- schema --------------------------------------------------------------------------------------


def test_the_schema_documents_the_query_api_with_examples(anonymous: APIClient) -> None:
    paths = anonymous.get("/api/v1/schema?format=json").json()["paths"]
    data_op = paths["/api/v1/series/{id}/data"]["get"]
    assert "approximate" in data_op["description"] and "upper bound" in data_op["description"]
    assert set(data_op["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert "examples" in data_op["responses"]["400"]["content"]["application/json"]
    query_op = paths["/api/v1/query"]["get"]
    assert {"cluster", "node", "metric", "label", "across", "step", "agg"} <= {
        p["name"] for p in query_op["parameters"]
    }
    slo_op = paths["/api/v1/series/{id}/slo"]["get"]
    assert {p["name"]: p.get("required", False) for p in slo_op["parameters"]}["objective"] is True
    for op in (data_op, query_op, slo_op):
        assert op["security"] == [{"ApiKey": []}]
        assert "examples" in op["responses"]["200"]["content"]["application/json"]
