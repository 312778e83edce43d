"""POST /api/v1/points and the series/points read API, as clients use them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from analytics.models import IngestBatch, MetricSeries, Point
from tenants.models import Tenant

pytestmark = pytest.mark.django_db


def point(**overrides: Any) -> dict[str, Any]:
    return {"cluster": "eu", "node": "web-1", "metric": "cpu", "timestamp": time.time() - 60, "value": 1.5} | overrides


def post(client: APIClient, points: list[Any]) -> Any:
    return client.post("/api/v1/points", {"points": points}, format="json")


def post_raw(client: APIClient, body: str) -> Any:
    return client.generic("POST", "/api/v1/points", body, content_type="application/json")


def stored() -> list[tuple[int, float]]:
    return sorted(Point.objects.values_list("series_id", "value"))


def test_a_batch_is_stored_and_its_series_created(owner: APIClient, tenant: Tenant) -> None:
    now = time.time()
    response = post(
        owner,
        [
            point(timestamp=now - 2, value=1, labels={"env": "prod"}, unit="percent"),
            point(timestamp=now - 1, value=2, labels={"env": "prod"}),
            point(node="web-2", value=3),
        ],
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["series_created"]) == (3, 2)
    series = MetricSeries.objects.get(tenant=tenant, node="web-1")
    assert (series.labels, series.unit) == ({"env": "prod"}, "percent")
    assert Point.objects.filter(series=series).count() == 2
    assert IngestBatch.objects.get(pk=body["batch_id"]).points == 3

    again = post(owner, [point(timestamp=now, labels={"env": "prod"})]).json()
    assert again["series_created"] == 0


def test_resending_a_point_never_duplicates_and_the_later_value_wins(owner: APIClient) -> None:
    ts = time.time() - 30
    post(owner, [point(timestamp=ts, value=1.0)])
    post(owner, [point(timestamp=ts, value=2.0)])
    assert [v for _, v in stored()] == [2.0]
    # Within one batch too, the last occurrence wins.
    post(owner, [point(timestamp=ts, value=3.0), point(timestamp=ts, value=4.0)])
    assert [v for _, v in stored()] == [4.0]


def test_rfc3339_and_unix_seconds_address_the_same_point(owner: APIClient) -> None:
    ts = int(time.time()) - 120
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    post(owner, [point(timestamp=ts, value=1.0), point(timestamp=iso, value=2.0)])
    assert [v for _, v in stored()] == [2.0]


NOW = "__NOW__"


@pytest.mark.parametrize(
    "body, field, code",
    [
        ('{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__,"value":NaN}]}', "value", "not_finite"),
        (
            '{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__,"value":Infinity}]}',
            "value",
            "not_finite",
        ),
        (
            '{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__,"value":-Infinity}]}',
            "value",
            "not_finite",
        ),
        (
            '{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__,"value":1e400}]}',
            "value",
            "not_finite",
        ),
        (
            '{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__,"value":"nan"}]}',
            "value",
            "not_a_number",
        ),
        (
            '{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__,"value":"inf"}]}',
            "value",
            "not_a_number",
        ),
        ('{"points":[{"cluster":"c","node":"n","metric":"m","timestamp":__NOW__}]}', "value", "required"),
        ('{"points":[{"node":"n","metric":"m","timestamp":__NOW__,"value":1}]}', "cluster", "required"),
        ('{"points":[{"cluster":"c","metric":"m","timestamp":__NOW__,"value":1}]}', "node", "required"),
        ('{"points":[{"cluster":"c","node":"n","timestamp":__NOW__,"value":1}]}', "metric", "required"),
        ('{"points":[{"cluster":"c","node":"n","metric":"m","value":1}]}', "timestamp", "required"),
    ],
)
def test_a_bad_point_rejects_the_whole_batch(owner: APIClient, body: str, field: str, code: str) -> None:
    good = json.dumps(point())
    body = body.replace(NOW, str(time.time())).replace('{"points":[', '{"points":[' + good + ",")
    response = post_raw(owner, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_points"
    assert [(d["index"], d["field"], d["code"]) for d in error["details"]] == [(1, field, code)]
    assert stored() == []
    assert not MetricSeries.objects.exists()
    assert not IngestBatch.objects.exists()


@pytest.mark.parametrize("age, code", [(8 * 86400, "out_of_range"), (-301, "out_of_range"), (-200, None)])
def test_timestamps_must_lie_within_raw_retention_and_five_minutes_ahead(
    owner: APIClient, age: int, code: str | None
) -> None:
    response = post(owner, [point(timestamp=time.time() - age)])
    if code is None:
        assert response.status_code == 200
    else:
        assert response.json()["error"]["details"][0]["code"] == code
        assert stored() == []


def test_retention_window_follows_the_tenants_setting(owner: APIClient, tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(retention_raw_days=30)
    assert post(owner, [point(timestamp=time.time() - 20 * 86400)]).status_code == 200


def test_every_bad_point_is_listed(owner: APIClient) -> None:
    points = [point(), point(value="x"), point(), point(cluster="bad name", value=None)]
    details = post(owner, points).json()["error"]["details"]
    assert [(d["index"], d["field"]) for d in details] == [(1, "value"), (3, "cluster"), (3, "value")]


@pytest.mark.parametrize(
    "body, status, code",
    [
        ("[]", 400, "invalid_body"),
        ('{"points": {}}', 400, "invalid_body"),
        ('{"pts": []}', 400, "invalid_body"),
        ('{"points": [', 400, "parse_error"),
    ],
)
def test_malformed_bodies_are_400(owner: APIClient, body: str, status: int, code: str) -> None:
    response = post_raw(owner, body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_more_points_than_the_tenant_allows_is_413(owner: APIClient, tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(max_points_per_request=3)
    response = post(owner, [point(timestamp=time.time() - i) for i in range(4)])
    assert (response.status_code, response.json()["error"]["code"]) == (413, "too_many_points")
    assert stored() == []


def test_series_beyond_the_quota_reject_the_batch(owner: APIClient, tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(max_series=2)
    post(owner, [point(node="a")])
    response = post(owner, [point(node="a"), point(node="b"), point(node="c"), point(node="d")])
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert {d["code"] for d in details} == {"series_quota_exceeded"}
    assert [d["index"] for d in details] == [2, 3]
    assert MetricSeries.objects.count() == 1
    assert len(stored()) == 1


def test_empty_batch_is_accepted_and_writes_nothing(owner: APIClient) -> None:
    assert post(owner, []).json() == {"batch_id": None, "accepted": 0, "series_created": 0}
    assert not IngestBatch.objects.exists()


def test_batch_is_handed_to_the_pipeline_after_commit(
    owner: APIClient, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr("analytics.tasks.ingest_batch_process.delay", sent.append)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        batch_id = post(owner, [point()]).json()["batch_id"]
    assert len(callbacks) >= 1
    assert sent == [batch_id]


def test_ingest_succeeds_when_the_broker_is_down(
    owner: APIClient, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*args: Any) -> None:
        raise ConnectionError("redis is restarting")

    monkeypatch.setattr("analytics.tasks.ingest_batch_process.delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = post(owner, [point()])
    assert response.status_code == 200
    assert IngestBatch.objects.get().status == IngestBatch.Status.PENDING  # the sweeper will publish it
    assert len(stored()) == 1


# --- reading -------------------------------------------------------------------------------


@pytest.fixture
def fleet(owner: APIClient) -> None:
    post(
        owner,
        [
            point(cluster="eu", node="web-1", metric="cpu", labels={"env": "prod", "az": "a"}),
            point(cluster="eu", node="web-2", metric="cpu", labels={"env": "staging"}),
            point(cluster="eu", node="web-1", metric="mem"),
            point(cluster="us", node="web-9", metric="cpu", labels={"env": "prod"}),
        ],
    )


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", {"eu/web-1/cpu", "eu/web-2/cpu", "eu/web-1/mem", "us/web-9/cpu"}),
        ("?cluster=eu", {"eu/web-1/cpu", "eu/web-2/cpu", "eu/web-1/mem"}),
        ("?cluster=eu&node=web-1", {"eu/web-1/cpu", "eu/web-1/mem"}),
        ("?metric=cpu&label=env=prod", {"eu/web-1/cpu", "us/web-9/cpu"}),
        ("?label=env=prod&label=az=a", {"eu/web-1/cpu"}),
        ("?label=env=none", set()),
    ],
)
def test_series_list_filters(owner: APIClient, fleet: None, query: str, expected: set[str]) -> None:
    response = owner.get(f"/api/v1/series{query}")
    assert response.status_code == 200
    assert {f"{s['cluster']}/{s['node']}/{s['metric']}" for s in response.json()["results"]} == expected


def test_bad_label_filter_is_400(owner: APIClient, fleet: None) -> None:
    response = owner.get("/api/v1/series?label=env")
    assert (response.status_code, response.json()["error"]["details"][0]["field"]) == (400, "label")


def test_points_of_a_range_as_json_and_csv(owner: APIClient) -> None:
    base = int(time.time()) - 600
    post(owner, [point(timestamp=base + i, value=float(i)) for i in range(10)])
    series = MetricSeries.objects.get()
    url = f"/api/v1/series/{series.pk}/points?from={base + 2}&to={base + 5}"

    body = owner.get(url).json()
    assert [p["value"] for p in body["points"]] == [2.0, 3.0, 4.0]
    assert body["next"] is None

    csv_response = owner.get(url, HTTP_ACCEPT="text/csv")
    assert csv_response["Content-Type"].startswith("text/csv")
    lines = csv_response.content.decode().splitlines()
    assert lines[0] == "timestamp,value" and [line.split(",")[1] for line in lines[1:]] == ["2.0", "3.0", "4.0"]
    assert owner.get(url + "&format=csv").content == csv_response.content


def test_points_pages_follow_next_until_the_range_is_read(owner: APIClient) -> None:
    base = int(time.time()) - 600
    post(owner, [point(timestamp=base + i, value=float(i)) for i in range(7)])
    series = MetricSeries.objects.get()
    url: str | None = f"/api/v1/series/{series.pk}/points?from={base}&to={base + 100}&limit=3"
    values: list[float] = []
    while url:
        page = owner.get(url).json()
        values += [p["value"] for p in page["points"]]
        url = page["next"]
    assert values == [float(i) for i in range(7)]


@pytest.mark.parametrize(
    "query", ["from=yesterday", "to=2026-01-01T00:00:00", "limit=0", "limit=x", "from=2000&to=1000"]
)
def test_bad_range_parameters_are_400(owner: APIClient, fleet: None, query: str) -> None:
    series = MetricSeries.objects.first()
    response = owner.get(f"/api/v1/series/{series.pk}/points?{query}", HTTP_ACCEPT="text/csv")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"


# --- isolation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/series/{id}", "/api/v1/series/{id}/points", "/api/v1/series/{id}/points?format=csv"]
)
def test_other_tenants_series_is_404(owner: APIClient, stranger: APIClient, path: str) -> None:
    post(stranger, [point()])
    theirs = MetricSeries.objects.get()
    response = owner.get(path.format(id=theirs.pk))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert stranger.get(path.format(id=theirs.pk)).status_code == 200


def test_lists_never_show_other_tenants_series(owner: APIClient, stranger: APIClient) -> None:
    post(stranger, [point(node="theirs")])
    post(owner, [point(node="mine")])
    assert [s["node"] for s in owner.get("/api/v1/series").json()["results"]] == ["mine"]


def test_same_address_in_two_tenants_is_two_series(owner: APIClient, stranger: APIClient, tenant: Tenant) -> None:
    ts = time.time() - 5
    post(owner, [point(timestamp=ts, value=1.0)])
    assert post(stranger, [point(timestamp=ts, value=2.0)]).json()["series_created"] == 1
    mine = MetricSeries.objects.get(tenant=tenant)
    assert owner.get(f"/api/v1/series/{mine.pk}/points").json()["points"][0]["value"] == 1.0


@pytest.mark.parametrize("path", ["/api/v1/series", "/api/v1/series/1", "/api/v1/series/1/points"])
def test_anonymous_is_401(anonymous: APIClient, path: str) -> None:
    assert anonymous.get(path).status_code == 401


def test_write_verbs_on_series_are_405(owner: APIClient, fleet: None, make_client: Callable[..., APIClient]) -> None:
    series = MetricSeries.objects.first()
    assert owner.delete(f"/api/v1/series/{series.pk}").status_code == 405


def test_a_body_over_the_size_limit_is_413_and_writes_nothing(owner: APIClient, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = post(owner, [point(timestamp=time.time() - i) for i in range(20)])
    assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")
    assert stored() == []


def test_a_body_that_is_not_json_is_415(owner: APIClient) -> None:
    response = owner.generic("POST", "/api/v1/points", "points=1", content_type="application/x-www-form-urlencoded")
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media_type")


def test_labels_in_any_order_address_the_same_series(owner: APIClient) -> None:
    ts = time.time() - 10
    body = post(
        owner, [point(labels={"a": "1", "b": "2"}, timestamp=ts), point(labels={"b": "2", "a": "1"}, timestamp=ts + 1)]
    )
    assert body.json()["series_created"] == 1
    assert len(stored()) == 2
