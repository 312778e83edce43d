"""GET /api/v1/drift-reports[/{id}]: newest window first, filtered, the statistics on the detail;
read-only; another tenant's reports are 404 and never listed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from mlops.models import DriftReport, ModelVersion
from tenants.models import Tenant
from tests.analytics.factories import MetricSeriesFactory
from tests.mlops.factories import DriftReportFactory, ModelVersionFactory

pytestmark = pytest.mark.django_db

LIST = "/api/v1/drift-reports"


def error(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def ids(response: Any) -> list[int]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


@pytest.fixture
def version(tenant: Tenant) -> ModelVersion:
    return ModelVersionFactory(series=MetricSeriesFactory(tenant=tenant), status="active")


@pytest.fixture
def reports(version: ModelVersion, tenant: Tenant) -> list[DriftReport]:
    """Oldest window first: ok, drift (retrained), insufficient data of another scope."""
    ok = DriftReportFactory(model_version=version, verdict="ok", drifted=[], action="none")
    retrained = ModelVersionFactory(series=version.series, trigger="drift", status="training")
    drift = DriftReportFactory(model_version=version, action="retrain", retrained=retrained)
    other = ModelVersionFactory(series=MetricSeriesFactory(tenant=tenant), status="active")
    thin = DriftReportFactory(model_version=other, verdict="insufficient_data", drifted=[], action="none")
    return [ok, drift, thin]


@pytest.fixture
def theirs(other_tenant: Tenant) -> DriftReport:
    return DriftReportFactory(model_version=ModelVersionFactory(series=MetricSeriesFactory(tenant=other_tenant)))


def test_owner_lists_reports_newest_window_first_without_statistics(
    owner: APIClient, reports: list[DriftReport], theirs: DriftReport
) -> None:
    response = owner.get(LIST)
    assert ids(response) == [r.pk for r in reversed(reports)]
    drift = response.json()["results"][1]
    assert {k: drift[k] for k in ("verdict", "drifted", "action", "retrained")} == {
        "verdict": "drift",
        "drifted": ["value"],
        "action": "retrain",
        "retrained": reports[1].retrained_id,
    }
    assert "statistics" not in drift


def test_the_list_is_cursor_paginated(owner: APIClient, reports: list[DriftReport]) -> None:
    first = owner.get(LIST, {"page_size": 2}).json()
    second = owner.get(first["next"]).json()
    assert [r["id"] for r in first["results"] + second["results"]] == [r.pk for r in reversed(reports)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"verdict": "drift"}, [1]),
        ({"verdict": "insufficient_data"}, [2]),
        ({"action": "retrain"}, [1]),
        ({"model_version": "$version"}, [1, 0]),
        ({"scope_key": "$scope"}, [1, 0]),
    ],
)
def test_filters_narrow_the_list(
    owner: APIClient, reports: list[DriftReport], version: ModelVersion, query: dict[str, str], expected: list[int]
) -> None:
    values = {"$version": str(version.pk), "$scope": version.scope_key}
    query = {name: values.get(value, value) for name, value in query.items()}
    assert ids(owner.get(LIST, query)) == [reports[i].pk for i in expected]


def test_a_bad_filter_is_400(owner: APIClient) -> None:
    response = owner.get(LIST, {"verdict": "maybe"})
    assert error(response) == (400, "invalid")
    assert response.json()["error"]["details"][0]["field"] == "verdict"


def test_the_detail_has_the_statistics(owner: APIClient, reports: list[DriftReport]) -> None:
    detail = owner.get(f"{LIST}/{reports[1].pk}").json()
    assert detail["statistics"] == reports[1].statistics
    assert (detail["model_version"], detail["scope_key"]) == (reports[1].model_version_id, reports[1].scope_key)


def test_another_tenants_report_is_404_and_never_listed(
    owner: APIClient, stranger: APIClient, theirs: DriftReport
) -> None:
    assert error(owner.get(f"{LIST}/{theirs.pk}")) == (404, "not_found")
    assert ids(owner.get(LIST)) == []
    assert ids(owner.get(LIST, {"model_version": theirs.model_version_id})) == []
    assert ids(stranger.get(LIST)) == [theirs.pk]


@pytest.mark.parametrize(
    ("method", "suffix"), [("post", ""), ("put", "/{id}"), ("patch", "/{id}"), ("delete", "/{id}")]
)
def test_reports_are_read_only(owner: APIClient, reports: list[DriftReport], method: str, suffix: str) -> None:
    report = reports[1]
    response = getattr(owner, method)(LIST + suffix.format(id=report.pk), {"verdict": "ok"}, format="json")
    assert error(response) == (405, "method_not_allowed")
    report.refresh_from_db()
    assert report.verdict == "drift"


def test_anonymous_is_401_and_a_read_key_reads(
    anonymous: APIClient, make_client: Callable[..., APIClient], tenant: Tenant, reports: list[DriftReport]
) -> None:
    assert error(anonymous.get(LIST))[0] == 401
    assert error(anonymous.get(f"{LIST}/{reports[0].pk}"))[0] == 401
    reader = make_client(tenant, scopes=("read",))
    assert len(ids(reader.get(LIST))) == 3
    assert reader.get(f"{LIST}/{reports[0].pk}").status_code == 200
    assert error(make_client(tenant, scopes=("ingest",)).get(LIST)) == (403, "missing_scope")
