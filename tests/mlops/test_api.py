"""The registry's API: list and detail with the audit trail and the gate, promote, roll back,
compare, train; another tenant's versions (and series) are out of reach; writes need the admin
scope."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from analytics.models import MetricSeries
from mlops.models import ModelVersion
from mlops.training import training_window
from tenants.models import Tenant
from tests.analytics.factories import AnomalyResultFactory, MetricSeriesFactory
from tests.mlops.factories import ModelVersionFactory
from tests.mlops.test_registry import register, trained_state

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(tenant: Tenant) -> list[ModelVersion]:
    series = MetricSeriesFactory(tenant=tenant)
    return [
        register(tenant, series, trained_state(seed)[0], hyperparameters={"sensitivity": s}, metrics={"fit_s": seed})
        for seed, s in enumerate(["medium", "high"])
    ]


@pytest.fixture
def theirs(other_tenant: Tenant) -> ModelVersion:
    return register(other_tenant, MetricSeriesFactory(tenant=other_tenant), trained_state()[0])


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_owner_lists_versions_and_reads_one_with_its_events(owner: APIClient, versions: list[ModelVersion]) -> None:
    listed = owner.get("/api/v1/model-versions").json()["results"]
    assert [v["version"] for v in listed] == [2, 1]
    detail = owner.get(f"/api/v1/model-versions/{versions[0].pk}").json()
    assert detail["artifact_sha256"] == versions[0].artifact_id
    assert [e["action"] for e in detail["events"]] == ["registered"]
    assert owner.get("/api/v1/model-versions?status=active").json()["results"] == []


def test_promote_then_rollback_through_the_api(owner: APIClient, versions: list[ModelVersion]) -> None:
    for version in versions:
        response = owner.post(f"/api/v1/model-versions/{version.pk}/promote", {"reason": "gate passed"}, format="json")
        assert response.status_code == 200 and response.json()["status"] == "active"
    back = owner.post(f"/api/v1/model-versions/{versions[1].pk}/rollback", {}, format="json")
    assert back.status_code == 200 and back.json()["version"] == 1
    assert [e["actor"] for e in back.json()["events"]][-1] == "key:test"
    assert error(owner.post(f"/api/v1/model-versions/{versions[0].pk}/rollback", {}, format="json")) == (
        409,
        "nothing_to_roll_back",
    )


def test_aliases_name_the_champion_and_the_newest_challenger(
    owner: APIClient, tenant: Tenant, versions: list[ModelVersion]
) -> None:
    newest = register(tenant, versions[0].series, trained_state(7)[0])
    owner.post(f"/api/v1/model-versions/{versions[0].pk}/promote", {}, format="json")

    listed = {v["version"]: v["alias"] for v in owner.get("/api/v1/model-versions").json()["results"]}
    assert listed == {3: "challenger", 2: None, 1: "champion"}
    assert owner.get(f"/api/v1/model-versions/{newest.pk}").json()["alias"] == "challenger"
    compared = owner.get(f"/api/v1/model-versions/{versions[1].pk}/compare?other={newest.pk}").json()
    assert (compared["a"]["alias"], compared["b"]["alias"]) == (None, "challenger")
    for alias, expected in (("champion", [1]), ("challenger", [3])):
        found = owner.get(f"/api/v1/model-versions?alias={alias}").json()["results"]
        assert [v["version"] for v in found] == expected
    assert error(owner.get("/api/v1/model-versions?alias=boss")) == (400, "invalid")


def test_compare_shows_what_differs(owner: APIClient, versions: list[ModelVersion]) -> None:
    body = owner.get(f"/api/v1/model-versions/{versions[0].pk}/compare?other={versions[1].pk}").json()
    assert body["same_scope"] is True
    assert body["hyperparameters_changed"] == {"sensitivity": ["medium", "high"]}
    assert body["metrics"] == {"fit_s": [0, 1]}
    assert error(owner.get(f"/api/v1/model-versions/{versions[0].pk}/compare")) == (400, "invalid")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("post", "/promote"), ("post", "/rollback"), ("get", "/compare?other=1")],
)
def test_another_tenants_version_is_404(owner: APIClient, theirs: ModelVersion, method: str, suffix: str) -> None:
    assert error(getattr(owner, method)(f"/api/v1/model-versions/{theirs.pk}{suffix}", format="json")) == (
        404,
        "not_found",
    )
    assert ModelVersion.objects.get(pk=theirs.pk).status == "candidate"


def test_comparing_with_another_tenants_version_is_404(
    owner: APIClient, versions: list[ModelVersion], theirs: ModelVersion
) -> None:
    assert error(owner.get(f"/api/v1/model-versions/{versions[0].pk}/compare?other={theirs.pk}")) == (404, "not_found")


def test_anonymous_is_401_and_a_read_key_cannot_promote(
    anonymous: APIClient, make_client: Any, tenant: Tenant, versions: list[ModelVersion]
) -> None:
    assert anonymous.get("/api/v1/model-versions").status_code == 401
    reader = make_client(tenant, scopes=("read",))
    assert reader.get("/api/v1/model-versions").status_code == 200
    assert error(reader.post(f"/api/v1/model-versions/{versions[0].pk}/promote", {}, format="json")) == (
        403,
        "missing_scope",
    )


# --- gate and lineage on the version -------------------------------------------------------------


def test_a_version_shows_its_gate_and_how_many_anomalies_it_scored(owner: APIClient, tenant: Tenant) -> None:
    gate = {"passed": False, "active": None, "summary": "worse than v1 on stability"}
    version = ModelVersionFactory(series=MetricSeriesFactory(tenant=tenant), metrics={"gate": gate})
    AnomalyResultFactory.create_batch(2, series=version.series, model_version=version)
    AnomalyResultFactory(series=version.series)  # scored before the registry served it
    detail = owner.get(f"/api/v1/model-versions/{version.pk}").json()
    assert (detail["gate"], detail["anomalies_count"]) == (gate, 2)
    listed = owner.get("/api/v1/model-versions").json()["results"]
    assert [v["gate"] for v in listed] == [gate]
    assert "anomalies_count" not in listed[0]


def test_a_version_not_gated_has_no_gate(owner: APIClient, versions: list[ModelVersion]) -> None:
    assert owner.get(f"/api/v1/model-versions/{versions[0].pk}").json()["gate"] is None


# --- train ---------------------------------------------------------------------------------------

TRAIN = "/api/v1/model-versions/train"


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The version ids sent to the training task: the broker is the one door mocked."""
    sent: list[int] = []
    monkeypatch.setattr("mlops.tasks.version_train.delay", sent.append)
    return sent


@pytest.fixture
def cpu(tenant: Tenant) -> MetricSeries:
    return MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="cpu")


def window(days: int = 7) -> dict[str, str]:
    end = (timezone.now() - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return {"train_from": (end - timedelta(days=days)).isoformat(), "train_to": end.isoformat()}


def test_training_a_series_is_202_then_200_for_the_same_inputs(
    owner: APIClient, cpu: MetricSeries, enqueued: list[int], django_capture_on_commit_callbacks: Any
) -> None:
    body = {"scope_kind": "series", "series": cpu.pk, **window()}
    with django_capture_on_commit_callbacks(execute=True):
        first = owner.post(TRAIN, body, format="json")
    assert first.status_code == 202, first.content
    version = first.json()
    assert (version["scope_key"], version["status"], version["trigger"], version["created_by"]) == (
        f"series:{cpu.pk}",
        "training",
        "manual",
        "key:test",
    )
    assert (version["train_from"], version["train_to"]) == (
        body["train_from"].replace("+00:00", "Z"),
        body["train_to"].replace("+00:00", "Z"),
    )
    assert enqueued == [version["id"]]

    with django_capture_on_commit_callbacks(execute=True):
        again = owner.post(TRAIN, body, format="json")
    assert (again.status_code, again.json()["id"]) == (200, version["id"])
    assert enqueued == [version["id"]]  # nothing trains twice
    assert ModelVersion.objects.count() == 1


def test_training_without_a_window_trains_the_default_one(
    owner: APIClient, cpu: MetricSeries, enqueued: list[int]
) -> None:
    before = training_window()
    response = owner.post(TRAIN, {"scope_kind": "series", "series": cpu.pk}, format="json")
    assert response.status_code == 202, response.content
    version = ModelVersion.objects.get(pk=response.json()["id"])
    assert (version.train_from, version.train_to) in {before, training_window()}  # an hour may turn meanwhile


def test_training_a_node(owner: APIClient, tenant: Tenant, cpu: MetricSeries, enqueued: list[int]) -> None:
    MetricSeriesFactory(tenant=tenant, cluster="eu", node="web-1", metric="mem")
    response = owner.post(TRAIN, {"scope_kind": "node", "cluster": "eu", "node": "web-1", **window()}, format="json")
    assert response.status_code == 202, response.content
    assert (response.json()["scope_key"], response.json()["series"]) == ("node:eu/web-1", None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"scope_kind": "series"}, [("series", "required")]),
        ({"scope_kind": "series", "series": 0}, [("series", "does_not_exist")]),
        ({"scope_kind": "series", "series": "$cpu", "node": "web-1"}, [("node", "invalid")]),
        ({"scope_kind": "metric", "cluster": "eu"}, [("scope_kind", "invalid_choice")]),
        ({"scope_kind": "node", "node": "web-1"}, [("cluster", "required")]),
        ({"scope_kind": "node", "cluster": "eu", "node": "nowhere"}, [("node", "does_not_exist")]),
        ({"scope_kind": "node", "series": "$cpu", "cluster": "eu", "node": "web-1"}, [("series", "invalid")]),
        ({"scope_kind": "series", "series": "$cpu", "train_from": "2026-01-01T00:00:00Z"}, [("train_to", "required")]),
        (
            {"scope_kind": "series", "series": "$cpu", "train_from": "2026-01-01T00:00:00Z", "train_to": "2999-01-01"},
            [("train_to", "in_future")],
        ),
    ],
)
def test_bad_training_requests_are_400_and_nothing_is_written(
    owner: APIClient, cpu: MetricSeries, enqueued: list[int], body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    body = {name: cpu.pk if value == "$cpu" else value for name, value in body.items()}
    response = owner.post(TRAIN, body, format="json")
    assert error(response) == (400, "invalid")
    assert [(d["field"], d["code"]) for d in response.json()["error"]["details"]] == expected
    assert not ModelVersion.objects.exists()
    assert enqueued == []


def test_an_inverted_window_is_400(owner: APIClient, cpu: MetricSeries, enqueued: list[int]) -> None:
    body = {"scope_kind": "series", "series": cpu.pk, "train_from": "2026-01-02T00:00:00Z", "train_to": "2026-01-01"}
    assert error(owner.post(TRAIN, body, format="json")) == (400, "invalid_window")
    assert not ModelVersion.objects.exists()


def test_another_tenants_series_or_node_cannot_be_trained(
    owner: APIClient, other_tenant: Tenant, enqueued: list[int]
) -> None:
    theirs = MetricSeriesFactory(tenant=other_tenant, cluster="us", node="db-1")
    MetricSeriesFactory(tenant=other_tenant, cluster="us", node="db-1", metric="mem")
    response = owner.post(TRAIN, {"scope_kind": "series", "series": theirs.pk}, format="json")
    assert error(response) == (400, "invalid")
    assert response.json()["error"]["details"][0]["code"] == "does_not_exist"
    response = owner.post(TRAIN, {"scope_kind": "node", "cluster": "us", "node": "db-1"}, format="json")
    assert response.json()["error"]["details"][0]["code"] == "does_not_exist"
    assert not ModelVersion.objects.exists() and enqueued == []


def test_training_needs_the_admin_scope(
    anonymous: APIClient, make_client: Any, tenant: Tenant, cpu: MetricSeries, enqueued: list[int]
) -> None:
    body = {"scope_kind": "series", "series": cpu.pk}
    assert error(anonymous.post(TRAIN, body, format="json"))[0] == 401
    assert error(make_client(tenant, scopes=("read", "ingest")).post(TRAIN, body, format="json")) == (
        403,
        "missing_scope",
    )
    assert not ModelVersion.objects.exists() and enqueued == []
