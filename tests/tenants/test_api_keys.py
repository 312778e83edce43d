"""/api/v1/keys: issue, list, read and revoke keys; only with the admin scope; never across tenants."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from tenants.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db


def test_owner_issues_a_key_whose_secret_is_shown_once(owner: APIClient, tenant: Tenant) -> None:
    response = owner.post("/api/v1/keys", {"name": "collector", "scopes": ["ingest"]}, format="json")
    assert response.status_code == 201
    raw_key = response.json()["key"]
    assert ApiKey.objects.get(pk=response.json()["id"]).tenant == tenant

    listed = owner.get("/api/v1/keys").json()["results"]
    assert "collector" in [k["name"] for k in listed]
    assert all("key" not in k and "hashed_key" not in k for k in listed)
    assert "key" not in owner.get(f"/api/v1/keys/{response.json()['id']}").json()

    collector = APIClient()
    collector.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert collector.post("/api/v1/points", {"points": []}, format="json").status_code == 200


def test_tenant_in_the_body_is_ignored(owner: APIClient, tenant: Tenant, other_tenant: Tenant) -> None:
    response = owner.post("/api/v1/keys", {"name": "k", "scopes": ["read"], "tenant": other_tenant.pk}, format="json")
    assert response.status_code == 201
    assert ApiKey.objects.get(pk=response.json()["id"]).tenant == tenant


def test_revoking_a_key_locks_it_out(owner: APIClient, make_client: Callable[..., APIClient], tenant: Tenant) -> None:
    victim = make_client(tenant, scopes=("read",))
    response = owner.delete(f"/api/v1/keys/{victim.api_key.pk}")
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    assert victim.get("/api/v1/series").status_code == 401
    # Revoking again keeps the first revocation time.
    assert owner.delete(f"/api/v1/keys/{victim.api_key.pk}").json()["revoked_at"] == response.json()["revoked_at"]


def test_bad_scopes_are_400_with_field_details(owner: APIClient) -> None:
    response = owner.post("/api/v1/keys", {"name": "k", "scopes": ["root"]}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["details"][0]["field"] == "scopes.0"


def test_other_tenants_key_is_404_on_every_verb(owner: APIClient, stranger: APIClient) -> None:
    theirs = stranger.api_key.pk
    assert owner.get(f"/api/v1/keys/{theirs}").status_code == 404
    assert owner.delete(f"/api/v1/keys/{theirs}").status_code == 404
    assert ApiKey.objects.get(pk=theirs).revoked_at is None
    assert theirs not in [k["id"] for k in owner.get("/api/v1/keys").json()["results"]]


def test_keys_need_the_admin_scope(tenant: Tenant, make_client: Callable[..., APIClient], anonymous: APIClient) -> None:
    reader = make_client(tenant, scopes=("read", "ingest"))
    assert reader.get("/api/v1/keys").status_code == 403
    assert reader.post("/api/v1/keys", {"name": "k", "scopes": ["admin"]}, format="json").status_code == 403
    assert anonymous.get("/api/v1/keys").status_code == 401
