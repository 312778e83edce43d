"""Periodic tasks are declared in code and synced into django-celery-beat idempotently."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from config.periodic import PERIODIC_TASKS

pytestmark = pytest.mark.django_db


def sync() -> str:
    out = io.StringIO()
    call_command("sync_periodic_tasks", stdout=out)
    return out.getvalue()


def test_sync_installs_every_declared_task_once_however_often_it_runs() -> None:
    sync()
    sync()
    rows = {t.name: t for t in PeriodicTask.objects.filter(name__startswith="vigil.")}
    assert set(rows) == set(PERIODIC_TASKS)
    for name, spec in PERIODIC_TASKS.items():
        assert rows[name].task == spec["task"]
        if "crontab" in spec:
            crontab = rows[name].crontab
            fields = (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week)
            assert " ".join(fields) == spec["crontab"]
            assert rows[name].interval is None
        else:
            assert rows[name].interval.every == spec["every_seconds"]
        assert rows[name].enabled
    intervals = {s["every_seconds"] for s in PERIODIC_TASKS.values() if "every_seconds" in s}
    assert IntervalSchedule.objects.count() == len(intervals)
    assert PeriodicTask.objects.get(name="vigil.models-train").crontab is not None


def test_sync_removes_its_own_stale_entries_and_keeps_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    every_minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="vigil.retired-task", task="analytics.tasks.gone", interval=every_minute)
    PeriodicTask.objects.create(name="operator: nightly report", task="reports.nightly", interval=every_minute)
    assert "removed vigil.retired-task" in sync()
    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert "vigil.retired-task" not in names
    assert "operator: nightly report" in names


def test_declared_tasks_are_registered_and_routed() -> None:
    from django.conf import settings

    from config.celery_app import app

    app.loader.import_default_modules()  # what a worker does at start: autodiscover tasks
    for spec in PERIODIC_TASKS.values():
        assert spec["task"] in app.tasks
        assert settings.CELERY_TASK_ROUTES[spec["task"]]["queue"] in settings.VIGIL_QUEUES
