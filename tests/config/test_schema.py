"""The OpenAPI schema: valid, complete, with examples and the bearer scheme."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_schema_generates_without_warnings() -> None:
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json", stdout=out)
    assert '"openapi"' in out.getvalue()


def test_schema_documents_every_endpoint_with_the_error_shape(anonymous: APIClient) -> None:
    schema = anonymous.get("/api/v1/schema?format=json").json()
    paths = schema["paths"]
    for path in [
        "/api/v1/points",
        "/api/v1/series",
        "/api/v1/series/{id}",
        "/api/v1/series/{id}/points",
        "/api/v1/keys",
        "/api/v1/keys/{id}",
        "/api/v1/anomalies",
        "/api/v1/anomalies/{id}",
        "/api/v1/anomalies/{id}/feedback",
        "/api/v1/series/{id}/scores",
        "/api/v1/health",
        "/api/v1/health/top",
        "/api/v1/rules",
        "/api/v1/rules/{id}",
        "/api/v1/rules/{id}/versions",
        "/api/v1/rules/{id}/preview",
        "/api/v1/rule-templates",
        "/api/v1/rule-templates/{name}/apply",
        "/api/v1/alerts",
        "/api/v1/alerts/{id}",
        "/api/v1/incidents",
        "/api/v1/incidents/{id}",
        "/api/v1/incidents/{id}/acknowledge",
        "/api/v1/incidents/{id}/assign",
        "/api/v1/incidents/{id}/comment",
        "/api/v1/incidents/{id}/resolve",
        "/api/v1/silences",
        "/api/v1/silences/{id}",
        "/api/v1/mute-windows",
        "/api/v1/mute-windows/{id}",
        "/api/v1/routes",
        "/api/v1/routes/{id}",
        "/api/v1/endpoints",
        "/api/v1/endpoints/{id}",
        "/api/v1/endpoints/{id}/send-test",
        "/api/v1/endpoints/{id}/rotate-secret",
        "/api/v1/deliveries",
        "/api/v1/deliveries/{id}",
        "/api/v1/deliveries/{id}/replay",
        "/api/v1/model-versions",
        "/api/v1/model-versions/{id}",
        "/api/v1/model-versions/{id}/promote",
        "/api/v1/model-versions/{id}/rollback",
        "/api/v1/model-versions/{id}/compare",
        "/api/v1/model-versions/train",
        "/api/v1/drift-reports",
        "/api/v1/drift-reports/{id}",
        "/api/v1/calendar-events",
        "/api/v1/calendar-events/{id}",
    ]:
        assert path in paths, path
    ingest = paths["/api/v1/points"]["post"]
    assert ingest["security"] == [{"ApiKey": []}]
    assert "examples" in ingest["requestBody"]["content"]["application/json"]
    assert ingest["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert "text/csv" in paths["/api/v1/series/{id}/points"]["get"]["responses"]["200"]["content"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


ALERTING = ("rules", "rule-templates", "alerts", "incidents", "silences", "mute-windows", "routes", "endpoints")


def test_alerting_operations_have_a_summary_examples_and_the_error_shape(anonymous: APIClient) -> None:
    paths = anonymous.get("/api/v1/schema?format=json").json()["paths"]
    prefixes = tuple(f"/api/v1/{name}" for name in (*ALERTING, "deliveries"))
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, by_method in paths.items()
        if path.startswith(prefixes)
        for method, operation in by_method.items()
    ]
    assert len(operations) == 45
    for where, operation in operations:
        assert operation["summary"] and operation["description"], where
        assert "examples" in json.dumps(operation), where
        responses = operation["responses"]
        assert {"401", "403"} <= set(responses), where
        for code, response in responses.items():
            if code.startswith("4"):
                assert response["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), (where, code)


MLOPS = ("model-versions", "drift-reports", "calendar-events")


def test_mlops_operations_have_a_summary_examples_and_the_error_shape(anonymous: APIClient) -> None:
    paths = anonymous.get("/api/v1/schema?format=json").json()["paths"]
    prefixes = tuple(f"/api/v1/{name}" for name in MLOPS)
    operations = {
        f"{method.upper()} {path}": operation
        for path, by_method in paths.items()
        if path.startswith(prefixes)
        for method, operation in by_method.items()
    }
    assert sorted(operations) == [
        "DELETE /api/v1/calendar-events/{id}",
        "GET /api/v1/calendar-events",
        "GET /api/v1/calendar-events/{id}",
        "GET /api/v1/drift-reports",
        "GET /api/v1/drift-reports/{id}",
        "GET /api/v1/model-versions",
        "GET /api/v1/model-versions/{id}",
        "GET /api/v1/model-versions/{id}/compare",
        "PATCH /api/v1/calendar-events/{id}",
        "POST /api/v1/calendar-events",
        "POST /api/v1/model-versions/train",
        "POST /api/v1/model-versions/{id}/promote",
        "POST /api/v1/model-versions/{id}/rollback",
        "PUT /api/v1/calendar-events/{id}",
    ]
    for where, operation in operations.items():
        assert operation["summary"] and operation["description"], where
        assert "examples" in json.dumps(operation), where
        responses = operation["responses"]
        assert {"401", "403"} <= set(responses), where
        for code, response in responses.items():
            if code.startswith("4"):
                assert response["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), (where, code)
    train = operations["POST /api/v1/model-versions/train"]
    assert {"200", "202", "400"} <= set(train["responses"])
    assert "examples" in train["requestBody"]["content"]["application/json"]
    assert {"from", "to", "kind"} <= {p["name"] for p in operations["GET /api/v1/calendar-events"]["parameters"]}
    assert {"model_version", "scope_key", "verdict"} <= {
        p["name"] for p in operations["GET /api/v1/drift-reports"]["parameters"]
    }


def test_docs_page_is_served(anonymous: APIClient) -> None:
    assert anonymous.get("/api/v1/docs").status_code == 200
