"""The OpenAPI schema: valid, complete, with examples and the bearer scheme."""

from __future__ import annotations

import io

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
    ]:
        assert path in paths, path
    ingest = paths["/api/v1/points"]["post"]
    assert ingest["security"] == [{"ApiKey": []}]
    assert "examples" in ingest["requestBody"]["content"]["application/json"]
    assert ingest["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    assert "text/csv" in paths["/api/v1/series/{id}/points"]["get"]["responses"]["200"]["content"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_docs_page_is_served(anonymous: APIClient) -> None:
    assert anonymous.get("/api/v1/docs").status_code == 200
