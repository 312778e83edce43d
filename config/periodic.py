"""Periodic work, declared in code. `manage.py sync_periodic_tasks` writes it into
django-celery-beat (idempotently) at start-up; beat's DatabaseScheduler runs it.

Names start with "vigil." so the sync can tell its own entries from ones an operator
added in the admin, and remove its own that are no longer declared here.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from django.conf import settings


class Periodic(TypedDict):
    """A task run every `every_seconds`, or on a `crontab` ("minute hour day month weekday", UTC)."""

    task: str
    every_seconds: NotRequired[int]
    crontab: NotRequired[str]


PERIODIC_TASKS: dict[str, Periodic] = {
    "vigil.ingest-batches-sweep": {"task": "analytics.tasks.ingest_batches_sweep", "every_seconds": 60},
    "vigil.rollups-catch-up": {"task": "analytics.tasks.rollups_catch_up", "every_seconds": 60},
    "vigil.retention-enforce": {"task": "analytics.tasks.retention_enforce", "every_seconds": 3600},
    "vigil.anomalies-rescan": {"task": "analytics.tasks.anomalies_rescan", "every_seconds": 60},
    "vigil.nodes-detect": {"task": "analytics.tasks.nodes_detect", "every_seconds": 300},
    "vigil.rules-evaluate": {
        "task": "alerts.tasks.rules_evaluate",
        "every_seconds": settings.VIGIL_ALERTS_EVALUATE_SECONDS,
    },
    "vigil.notifications-sweep": {"task": "alerts.tasks.notifications_sweep", "every_seconds": 15},
    "vigil.deliveries-sweep": {"task": "alerts.tasks.deliveries_sweep", "every_seconds": 15},
    "vigil.models-train": {"task": "mlops.tasks.models_train", "crontab": settings.VIGIL_TRAIN_CRONTAB},
    "vigil.models-drift": {"task": "mlops.tasks.models_drift", "every_seconds": settings.VIGIL_DRIFT_EVERY_SECONDS},
}
