"""Celery wrappers around the model lifecycle: ids in, re-fetch, one service call."""

from __future__ import annotations

from datetime import datetime

from celery import shared_task

from mlops import drift, training
from mlops.models import ModelVersion

# A shard trains scope after scope; the limits leave room for slow ones.
TRAIN_SOFT_TIME_LIMIT = 1800
TRAIN_TIME_LIMIT = 1900


@shared_task(acks_late=True)
def models_train() -> int:
    """Periodic (nightly): publish training of every detected scope of every tenant."""
    return training.models_train_publish()


@shared_task(acks_late=True, soft_time_limit=TRAIN_SOFT_TIME_LIMIT, time_limit=TRAIN_TIME_LIMIT)
def scopes_train(tenant_id: int, kind: str, keys: list[str], trigger: str, start_iso: str, end_iso: str) -> int:
    """Train the scopes `keys` (series ids, or "cluster/node") of one tenant on one window.
    Idempotent per (scope, window), so acks_late: a redelivered shard skips what it trained."""
    return training.scopes_train(
        tenant_id=tenant_id,
        kind=kind,
        keys=keys,
        trigger=trigger,
        start=datetime.fromisoformat(start_iso),
        end=datetime.fromisoformat(end_iso),
    )


@shared_task(acks_late=True, soft_time_limit=TRAIN_SOFT_TIME_LIMIT, time_limit=TRAIN_TIME_LIMIT)
def version_train(version_id: int) -> None:
    """Train a version started by the API or the admin. A version no longer `training` is left."""
    version = ModelVersion.objects.select_related("tenant", "series__tenant").filter(pk=version_id).first()
    if version is not None:
        training.model_version_train(version=version)


@shared_task(acks_late=True)
def models_drift() -> int:
    """Periodic: publish the drift check of every trained active model; mark lost training failed."""
    training.training_sweep()
    return drift.models_drift_publish()


@shared_task(acks_late=True, soft_time_limit=TRAIN_SOFT_TIME_LIMIT, time_limit=TRAIN_TIME_LIMIT)
def versions_drift(version_ids: list[int], window_to_iso: str) -> int:
    """Check drift of the active versions `version_ids` for the window ending at `window_to`.
    One report per (version, window end), so acks_late."""
    return drift.versions_drift(version_ids=version_ids, window_to=datetime.fromisoformat(window_to_iso))
