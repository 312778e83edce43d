"""The Django admin: every page renders, and keys issued there show their secret once."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client

from analytics.models import IngestBatch, MetricSeries
from tenants.models import ApiKey, Tenant

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("op", "op@example.com", "pw")
    client.force_login(user)
    return client


@pytest.mark.parametrize("model", [Tenant, ApiKey, MetricSeries, IngestBatch])
def test_changelists_and_add_pages_render(operator: Client, model: type, tenant: Tenant) -> None:
    meta = model._meta
    assert operator.get(f"/admin/{meta.app_label}/{meta.model_name}/").status_code == 200
    expected_add = 403 if model is IngestBatch else 200
    assert operator.get(f"/admin/{meta.app_label}/{meta.model_name}/add/").status_code == expected_add


def test_key_issued_in_the_admin_is_shown_once_and_stored_hashed(operator: Client, tenant: Tenant) -> None:
    response = operator.post(
        "/admin/tenants/apikey/add/", {"tenant": tenant.pk, "name": "from admin", "scopes": ["read", "ingest"]}
    )
    assert response.status_code == 302
    key = ApiKey.objects.get(name="from admin")
    shown = [str(m) for m in get_messages(response.wsgi_request) if "vgl_" in str(m)]
    assert len(shown) == 1
    raw_key = next(word for word in shown[0].split() if word.startswith("vgl_"))
    assert key.hashed_key == ApiKey.hash(raw_key)
    assert key.scopes == ["ingest", "read"]
    # The page after the redirect shows it; no later page does.
    assert raw_key in operator.get(response["Location"]).content.decode()
    assert raw_key not in operator.get(response["Location"]).content.decode()
    assert raw_key not in operator.get(f"/admin/tenants/apikey/{key.pk}/change/").content.decode()


def test_revoke_action(operator: Client, tenant: Tenant) -> None:
    from tenants.services import api_key_create

    key = api_key_create(tenant=tenant, name="k", scopes=["read"]).api_key
    operator.post("/admin/tenants/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_series_page_shows_its_newest_rollups(operator: Client, tenant: Tenant) -> None:
    import time

    from analytics import services

    result = services.points_ingest(
        tenant=tenant,
        points=[{"cluster": "c", "node": "n", "metric": "m", "timestamp": time.time() - 5, "value": 42.5}],
    )
    batch = IngestBatch.objects.get(pk=result.batch_id)
    services.ingest_batch_roll_up(batch=batch)
    series = MetricSeries.objects.get(tenant=tenant)
    page = operator.get(f"/admin/analytics/metricseries/{series.pk}/change/").content.decode()
    assert "Newest rollups" in page
    assert "1 minute" in page and "1 hour" in page and "42.5" in page
