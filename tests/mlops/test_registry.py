"""The model registry: versions per scope, artifacts verified by sha256, one active version,
promotion and rollback with an audit trail."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.db import IntegrityError

from analytics.detection import detector_create
from config.errors import Rejected
from mlops.artifacts import ArtifactCorrupt, FileStore, artifact_read, artifact_save
from mlops.models import ModelArtifact, ModelVersion, ModelVersionEvent
from mlops.services import (
    model_version_load,
    model_version_promote,
    model_version_register,
    model_version_rollback,
    scope_key,
)
from tenants.models import Tenant
from tests.analytics.factories import MetricSeriesFactory
from tests.concurrency import run_concurrently

pytestmark = pytest.mark.django_db


def trained_state(seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """A seasonal detector trained on two days of a daily cycle, and the next hour to score."""
    rng = np.random.default_rng(seed)
    ts = np.arange(0, 3 * 86400, 300, dtype=float)
    values = 100 + 20 * np.sin(2 * np.pi * ts / 86400) + rng.normal(0, 2, len(ts))
    detector = detector_create("ensemble", sensitivity="medium")
    cut = 2 * 86400 // 300
    _, state = detector.update(detector.initial_state(), ts[:cut], values[:cut])
    return state, ts[cut:], values[cut:]


def register(tenant: Tenant, series: Any, state: Any, **extra: Any) -> ModelVersion:
    return model_version_register(
        tenant=tenant, kind="series", series=series, detector="ensemble", state=state, trigger="manual", **extra
    )


def test_a_registered_model_reloads_to_identical_scores(tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    state, ts, values = trained_state()
    version = register(tenant, series, state, train_points=576)

    detector = detector_create("ensemble", sensitivity="medium")
    original, _ = detector.update(state, ts, values)
    reloaded, _ = detector.update(model_version_load(version=version)["state"], ts, values)
    np.testing.assert_array_equal(original.score, reloaded.score)
    np.testing.assert_array_equal(original.expected, reloaded.expected)
    assert version.artifact is not None
    assert version.artifact.sha256 == hashlib.sha256(artifact_read(version.artifact)).hexdigest()
    assert (version.scope_key, version.version, version.status) == (f"series:{series.pk}", 1, "candidate")


def test_versions_number_per_scope_and_identical_models_share_one_artifact(tenant: Tenant) -> None:
    one, two = MetricSeriesFactory(tenant=tenant), MetricSeriesFactory(tenant=tenant)
    state, _, _ = trained_state()
    first, second = register(tenant, one, state), register(tenant, one, state)
    other = register(tenant, two, state)
    assert [first.version, second.version, other.version] == [1, 2, 1]
    assert ModelArtifact.objects.count() == 1
    assert list(first.events.values_list("action", flat=True)) == ["registered"]


def test_scope_keys_name_series_metrics_and_nodes(tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    assert scope_key(kind="series", series=series) == f"series:{series.pk}"
    assert scope_key(kind="metric", cluster="eu", metric="latency") == "metric:eu/latency"
    assert scope_key(kind="node", cluster="eu", node="web-1") == "node:eu/web-1"


def test_promotion_keeps_exactly_one_active_version_and_audits_both(tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    state, _, _ = trained_state()
    v1, v2 = register(tenant, series, state), register(tenant, series, trained_state(1)[0])
    model_version_promote(version=v1, actor="ana")
    model_version_promote(version=v2, actor="ana", reason="better on feedback")

    assert dict(ModelVersion.objects.values_list("version", "status")) == {1: "retired", 2: "active"}
    actions = list(ModelVersionEvent.objects.values_list("version__version", "action", "actor"))
    assert actions == [
        (1, "registered", ""),
        (2, "registered", ""),
        (1, "promoted", "ana"),
        (1, "retired", "ana"),
        (2, "promoted", "ana"),
    ]
    assert model_version_promote(version=v2).status == "active"  # again: nothing changes
    assert ModelVersionEvent.objects.count() == 5


def test_rollback_puts_the_previous_active_version_back(tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    versions = [register(tenant, series, trained_state(seed)[0]) for seed in range(3)]
    for version in versions:
        model_version_promote(version=version)

    back = model_version_rollback(tenant=tenant, key=f"series:{series.pk}", actor="ana", reason="too many alerts")
    assert back.version == 2
    assert dict(ModelVersion.objects.values_list("version", "status")) == {1: "retired", 2: "active", 3: "retired"}
    assert ModelVersionEvent.objects.filter(version__version=3, action="rolled_back", actor="ana").exists()
    assert model_version_rollback(tenant=tenant, key=f"series:{series.pk}").version == 1
    with pytest.raises(Rejected) as caught:
        model_version_rollback(tenant=tenant, key=f"series:{series.pk}")
    assert caught.value.code == "nothing_to_roll_back"


def test_the_database_refuses_a_second_active_version(tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    state, _, _ = trained_state()
    v1, v2 = register(tenant, series, state), register(tenant, series, state)
    model_version_promote(version=v1)
    with pytest.raises(IntegrityError):
        ModelVersion.objects.filter(pk=v2.pk).update(status="active")


def test_a_corrupted_artifact_is_refused_and_the_active_version_keeps_serving(tenant: Tenant) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    good = register(tenant, series, trained_state(0)[0])
    model_version_promote(version=good)
    bad = register(tenant, series, trained_state(1)[0])
    assert bad.artifact is not None
    ModelArtifact.objects.filter(pk=bad.artifact.pk).update(data=b'{"tampered": true}')
    bad.refresh_from_db()

    with pytest.raises(ArtifactCorrupt, match="corrupt"):
        model_version_load(version=bad)
    with pytest.raises(Rejected) as caught:
        model_version_promote(version=bad)
    assert caught.value.code == "artifact_corrupt"
    assert ModelVersion.objects.get(status="active") == good
    assert model_version_load(version=good)  # still loads


def test_the_file_store_keeps_bytes_by_hash_and_notices_tampering(tmp_path: Path, settings: Any) -> None:
    settings.VIGIL_ARTIFACT_STORE = f"file://{tmp_path}"
    artifact = artifact_save(data=b'{"a":1}')
    assert artifact.data is None
    assert artifact_read(artifact) == b'{"a":1}'
    path = FileStore(tmp_path).path(artifact.sha256)
    path.write_bytes(b'{"a":2}')
    with pytest.raises(ArtifactCorrupt):
        artifact_read(artifact)
    path.unlink()
    with pytest.raises(ArtifactCorrupt, match="missing"):
        artifact_read(artifact)


@pytest.mark.services
@pytest.mark.django_db(transaction=True)
def test_concurrent_promotions_of_one_scope_leave_one_active_version() -> None:
    series = MetricSeriesFactory()
    versions = [register(series.tenant, series, trained_state(seed)[0]) for seed in range(4)]
    errors = run_concurrently([lambda v=v: model_version_promote(version=v) for v in versions])
    assert errors == []
    assert ModelVersion.objects.filter(status="active").count() == 1
    assert ModelVersionEvent.objects.filter(action="promoted").count() == 4


@pytest.fixture
def operator(client: Any) -> Any:
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("op", "op@example.com", "pw"))
    return client


def test_the_admin_lists_versions_and_promotes_and_rolls_back_through_the_services(
    tenant: Tenant, operator: Any
) -> None:
    series = MetricSeriesFactory(tenant=tenant)
    v1, v2 = (register(tenant, series, trained_state(seed)[0]) for seed in range(2))
    listing = "/admin/mlops/modelversion/"
    assert operator.get(listing).status_code == 200
    page = operator.get(f"{listing}{v1.pk}/change/")
    assert page.status_code == 200 and v1.artifact_id in page.content.decode()

    for version in (v1, v2):
        operator.post(listing, {"action": "promote", "_selected_action": [version.pk]}, follow=True)
    assert ModelVersion.objects.get(status="active") == v2
    operator.post(listing, {"action": "roll_back", "_selected_action": [v2.pk]}, follow=True)
    assert ModelVersion.objects.get(status="active") == v1
    assert ModelVersionEvent.objects.filter(action="rolled_back", actor="op").exists()
    assert operator.get(f"{listing}add/").status_code == 403
