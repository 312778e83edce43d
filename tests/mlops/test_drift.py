"""Drift checks of active models (mlops.drift), in-process against PostgreSQL: reports, verdicts,
the tenant's policy, and a drift-triggered retrain through the gate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from analytics.models import MetricSeries
from mlops.drift import model_version_drift, models_drift_publish
from mlops.models import DriftReport, ModelVersion
from mlops.training import Scope, model_version_train, model_version_train_start
from tenants.models import Tenant
from tests.mlops.test_training import DAY, STEP, ingest

pytestmark = pytest.mark.django_db

TRAINED = 7 * DAY  # the training window: days 0-6
WINDOW_END = 8 * DAY


@pytest.fixture
def day0() -> float:
    """Midnight UTC eight days ago: days 0-6 train (a week, so the daily cycle is learned), day 7
    is the drift window."""
    return float(int(time.time() // DAY) * DAY - 8 * DAY)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The versions a drift verdict sent to training (no broker in these tests)."""
    sent: list[int] = []
    monkeypatch.setattr("mlops.training.version_train_publish", lambda version: sent.append(version.pk))
    monkeypatch.setattr("mlops.drift.tenant_rules_evaluate_publish", lambda **kwargs: False)
    yield sent


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def seasonal(
    start: float, days: float, *, seed: int, level: float = 100.0, noise: float = 2.0, phase: float = 0.0
) -> Any:
    n = int(days * DAY / STEP)
    ts = start + np.arange(n) * STEP
    rng = np.random.default_rng(seed)
    values = level + 10.0 * np.sin(2 * np.pi * (ts / DAY + phase)) + rng.normal(0.0, noise, n)
    return ts, values


def trained(tenant: Tenant, day0: float, after: Any, *, seed: int = 3) -> tuple[MetricSeries, ModelVersion]:
    """A series trained on days 0-6 (and promoted), with `after` (ts, values) for day 7."""
    tenant.retention_raw_days = 30  # the week of training is raw points
    tenant.save(update_fields=["retention_raw_days"])
    ts, values = seasonal(day0, 7, seed=seed)
    series = ingest(tenant, np.concatenate([ts, after[0]]), np.concatenate([values, after[1]]))
    version, _ = model_version_train_start(
        scope=Scope.of_series(series), trigger="schedule", start=utc(day0), end=utc(day0 + TRAINED)
    )
    version = model_version_train(version=version)
    assert version.status == "active", (version.error, version.metrics.get("gate"))
    return series, version


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_the_same_distribution_is_not_drift(tenant: Tenant, day0: float, published: list[int], seed: int) -> None:
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=seed), seed=seed + 100)
    report = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert report.verdict == "ok", report.statistics
    assert report.points == 288
    assert set(report.statistics["features"]) == {"value", "residual"}
    for result in report.statistics["features"].values():
        assert {"psi", "ks", "ks_p", "wasserstein", "n", "n_eff", "drifted"} <= set(result)
    assert set(report.statistics["concept"]) == {"anomaly_rate", "feedback_precision"}
    assert (report.action, report.retrained, published) == ("none", None, [])


@pytest.mark.parametrize(
    "change",
    [
        {"level": 112.0},  # a shifted mean
        {"noise": 6.0},  # a changed variance
        {"phase": 0.5},  # a new seasonal shape: the daily cycle half a day off
    ],
    ids=["shifted-mean", "changed-variance", "new-seasonal-shape"],
)
def test_a_changed_distribution_is_drift_and_trains_a_candidate_that_the_gate_judges(
    tenant: Tenant, day0: float, published: list[int], change: dict[str, float]
) -> None:
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=11, **change))
    report = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert report.verdict == "drift", report.statistics
    assert report.drifted
    assert report.action == "retrain"
    retrained = report.retrained
    assert retrained is not None and published == [retrained.pk]
    assert (retrained.trigger, retrained.status, retrained.parent_id) == ("drift", "training", version.pk)
    assert (retrained.train_from, retrained.train_to) != (version.train_from, version.train_to)

    retrained = model_version_train(version=retrained)
    gate = retrained.metrics["gate"]
    assert retrained.status in ("active", "candidate")
    assert gate["active"] == version.pk and "summary" in gate
    assert (retrained.status == "active") == gate["passed"]


def test_a_second_check_of_the_same_window_returns_the_first_report(
    tenant: Tenant, day0: float, published: list[int]
) -> None:
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=11, level=112.0))
    first = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    again = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert again.pk == first.pk
    assert DriftReport.objects.count() == 1 and len(published) == 1


def test_a_scope_retrained_for_drift_recently_is_not_retrained_again(
    tenant: Tenant, day0: float, published: list[int]
) -> None:
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=11, level=112.0))
    model_version_drift(version=version, window_to=utc(day0 + WINDOW_END - 3600))
    second = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert (second.verdict, second.action, second.retrained) == ("drift", "cooldown", None)
    assert len(published) == 1


def test_a_tenant_that_only_wants_to_know_gets_a_report_and_no_training(
    tenant: Tenant, day0: float, published: list[int]
) -> None:
    tenant.drift_policy = Tenant.DriftPolicy.NOTIFY
    tenant.save()
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=11, level=112.0))
    version.refresh_from_db()
    report = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert (report.verdict, report.action, report.retrained) == ("drift", "notify", None)
    assert published == []


def test_retrain_and_promote_promotes_whatever_the_gate_says(tenant: Tenant, day0: float, published: list[int]) -> None:
    tenant.drift_policy = Tenant.DriftPolicy.RETRAIN_PROMOTE
    tenant.save()
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=11, level=112.0))
    version.refresh_from_db()
    report = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert report.retrained is not None
    retrained = model_version_train(version=report.retrained)
    assert retrained.status == "active"
    version.refresh_from_db()
    assert version.status == "retired"


def test_too_few_points_in_the_window_is_insufficient_data(tenant: Tenant, day0: float, published: list[int]) -> None:
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 0.1, seed=11, level=112.0))
    report = model_version_drift(version=version, window_to=utc(day0 + WINDOW_END))
    assert (report.verdict, report.action, report.drifted) == ("insufficient_data", "none", [])


def test_beat_checks_trained_active_versions_only(
    tenant: Tenant, day0: float, published: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr("mlops.tasks.versions_drift.apply_async", lambda args, **kw: sent.append(args))
    _, version = trained(tenant, day0, seasonal(day0 + TRAINED, 1, seed=11))
    assert models_drift_publish() == 1
    [(ids, window_to)] = sent
    assert ids == [version.pk]  # not the online version it replaced
    assert datetime.fromisoformat(window_to).timestamp() % 3600 == 0
