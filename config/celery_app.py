"""The Celery application. Configuration lives in Django settings under CELERY_*."""

from __future__ import annotations

import os

from celery import Celery, Task
from django.db import InterfaceError, OperationalError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")


class VigilTask(Task):
    """Defaults for every Vigil task: bounded retries on transient errors, with jittered backoff.

    Tasks name their own queue in settings.CELERY_TASK_ROUTES and opt into acks_late only
    when their body is idempotent.
    """

    # Transient: the database or broker went away for a moment. Programming errors are not
    # retried: they would fail the same way five times.
    autoretry_for = (ConnectionError, TimeoutError, OperationalError, InterfaceError)
    retry_backoff = 2
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 5


app = Celery("vigil", task_cls=VigilTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
