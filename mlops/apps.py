from __future__ import annotations

from django.apps import AppConfig


class MlopsConfig(AppConfig):
    name = "mlops"
