"""The registry's API: list and detail with the audit trail, promote, roll back, compare;
another tenant's versions are 404 everywhere; writes need the admin scope."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from mlops.models import ModelVersion
from tenants.models import Tenant
from tests.analytics.factories import MetricSeriesFactory
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
