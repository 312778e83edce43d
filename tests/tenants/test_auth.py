"""Bearer API-key authentication and scopes, as a client sees them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db


def with_key(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def test_no_key_is_401_with_a_bearer_challenge(anonymous: APIClient) -> None:
    response = anonymous.get("/api/v1/series")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer vgl_000000000000_secret", "Token abc"],
)
def test_malformed_or_unknown_keys_are_401(header: str, tenant: Tenant) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/series")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_key"


def test_right_prefix_with_wrong_secret_is_401(tenant: Tenant) -> None:
    issued = services.api_key_create(tenant=tenant, name="k", scopes=["read"])
    tampered = issued.raw_key[:-4] + ("AAAA" if not issued.raw_key.endswith("AAAA") else "BBBB")
    assert with_key(tampered).get("/api/v1/series").status_code == 401


def test_revoked_key_is_401(tenant: Tenant) -> None:
    issued = services.api_key_create(tenant=tenant, name="k", scopes=["read"])
    services.api_key_revoke(api_key=issued.api_key)
    response = with_key(issued.raw_key).get("/api/v1/series")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "revoked_key"


def test_key_of_a_deactivated_tenant_is_401(tenant: Tenant) -> None:
    issued = services.api_key_create(tenant=tenant, name="k", scopes=["read"])
    Tenant.objects.filter(pk=tenant.pk).update(is_active=False)
    response = with_key(issued.raw_key).get("/api/v1/series")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "tenant_inactive"


def test_read_only_key_cannot_ingest(tenant: Tenant, make_client: Callable[..., APIClient]) -> None:
    response = make_client(tenant, scopes=("read",)).post("/api/v1/points", {"points": []}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_scope"


def test_ingest_only_key_cannot_read(tenant: Tenant, make_client: Callable[..., APIClient]) -> None:
    assert make_client(tenant, scopes=("ingest",)).get("/api/v1/series").status_code == 403


def test_only_the_hash_of_a_key_is_stored(tenant: Tenant) -> None:
    issued = services.api_key_create(tenant=tenant, name="k", scopes=["read"])
    stored = ApiKey.objects.get(pk=issued.api_key.pk)
    secret = issued.raw_key.split("_", 2)[2]
    assert secret not in stored.hashed_key
    assert stored.hashed_key == ApiKey.hash(issued.raw_key)
    assert issued.raw_key.startswith(f"vgl_{stored.prefix}_")


def test_use_records_last_used_time(tenant: Tenant) -> None:
    issued = services.api_key_create(tenant=tenant, name="k", scopes=["read"])
    assert issued.api_key.last_used_at is None
    assert with_key(issued.raw_key).get("/api/v1/series").status_code == 200
    issued.api_key.refresh_from_db()
    assert issued.api_key.last_used_at is not None


def test_unknown_scopes_are_refused(tenant: Tenant) -> None:
    with pytest.raises(ValueError):
        services.api_key_create(tenant=tenant, name="k", scopes=["root"])
