"""Suite-wide fixtures and the services gate.

Tests marked `services` need real PostgreSQL and Redis (config.settings.test finds them at
their standard local addresses). Without them the tests are skipped and the run says so
loudly; with VIGIL_REQUIRE_SERVICES=1 (set by .ci/run) a missing service fails the run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tenants import services as tenant_services
from tenants.models import Tenant
from tests.tenants.factories import TenantFactory

REQUIRE_SERVICES = os.environ.get("VIGIL_REQUIRE_SERVICES") == "1"


def _services_missing() -> str | None:
    if settings.SERVICES_AVAILABLE:
        return None
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    return f"database={engine}, broker={settings.CELERY_BROKER_URL.split(':', 1)[0]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _services_missing()
    if missing is None:
        return
    if REQUIRE_SERVICES:
        raise pytest.UsageError(
            f"VIGIL_REQUIRE_SERVICES=1 but PostgreSQL/Redis are not in use ({missing}). "
            "Start them, or set DATABASE_URL / CELERY_BROKER_URL."
        )
    skip = pytest.mark.skip(reason=f"needs PostgreSQL and Redis ({missing})")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this run's Redis keys (queues, bindings) so runs leave nothing behind."""
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        return
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        keys = list(client.scan_iter(match=f"{settings.VIGIL_TEST_KEYPREFIX}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # cleanup is best effort; a down Redis has nothing of ours to clean
    finally:
        client.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    missing = _services_missing()
    if missing:
        bar = "!" * 78
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(
            f"  PostgreSQL/Redis NOT USED ({missing}): service-backed tests were SKIPPED.", red=True, bold=True
        )
        terminalreporter.write_line(
            "  Start them on 127.0.0.1:5432 / :6379 to run the whole suite.", red=True, bold=True
        )
        terminalreporter.write_line(bar, red=True, bold=True)


@pytest.fixture(scope="module")
def celery_worker(django_db_setup: None, django_db_blocker: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process consuming every queue, shared by the end-to-end tests of a module.

    Per module, not per session: a worker left running would consume the messages that later
    transactional tests publish and mean to drive through the pipeline themselves."""
    from tests.worker import worker_start, worker_stop

    worker = worker_start()
    try:
        yield worker
    finally:
        worker_stop(worker)


@pytest.fixture
def tenant(db: None) -> Tenant:
    return TenantFactory()


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return TenantFactory()


@pytest.fixture
def make_client(db: None) -> Callable[..., APIClient]:
    """An API client authenticated with a fresh key of `tenant` holding `scopes`."""

    def make(tenant: Tenant, scopes: tuple[str, ...] = ("ingest", "read", "admin")) -> APIClient:
        issued = tenant_services.api_key_create(tenant=tenant, name="test", scopes=scopes)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.raw_key}")
        client.api_key = issued.api_key  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def owner(tenant: Tenant, make_client: Callable[..., APIClient]) -> APIClient:
    """A client of `tenant` with every scope."""
    return make_client(tenant)


@pytest.fixture
def stranger(other_tenant: Tenant, make_client: Callable[..., APIClient]) -> APIClient:
    """A client of another tenant with every scope."""
    return make_client(other_tenant)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def _forget_partitions() -> Any:
    """Tests roll back the partitions they created; the per-process cache must forget them too
    (it learns of them from on-commit callbacks, which some tests run inside the rollback)."""
    yield
    from analytics import partitions

    partitions.forget_known()
