from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from config.periodic import PERIODIC_TASKS

PREFIX = "vigil."


class Command(BaseCommand):
    help = "Write the periodic tasks declared in config/periodic.py into django-celery-beat (idempotent)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        for name, spec in PERIODIC_TASKS.items():
            schedule: dict[str, Any] = {"interval": None, "crontab": None}
            if "crontab" in spec:
                minute, hour, day, month, weekday = spec["crontab"].split()
                schedule["crontab"], _ = CrontabSchedule.objects.get_or_create(
                    minute=minute, hour=hour, day_of_month=day, month_of_year=month, day_of_week=weekday, timezone="UTC"
                )
            else:
                schedule["interval"], _ = IntervalSchedule.objects.get_or_create(
                    every=spec["every_seconds"], period=IntervalSchedule.SECONDS
                )
            _, created = PeriodicTask.objects.update_or_create(
                name=name, defaults={"task": spec["task"], **schedule, "enabled": True}
            )
            self.stdout.write(f"{'created' if created else 'kept'} {name}")
        stale = PeriodicTask.objects.filter(name__startswith=PREFIX).exclude(name__in=PERIODIC_TASKS)
        for name in stale.values_list("name", flat=True):
            self.stdout.write(f"removed {name}")
        stale.delete()
