"""Production settings: no default secrets, DEBUG off, `check --deploy` clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "DJANGO_SECRET_KEY": "k8#Zq2!vR9@pL4$wX7^nB1&mT6*yH3(jD5)sF0_gA-cE+uI=oK[e]",
    "DJANGO_ALLOWED_HOSTS": "vigil.example.com",
    "DATABASE_URL": "postgres://vigil:secret@db.example.com:5432/vigil",
    "CELERY_BROKER_URL": "redis://redis.example.com:6379/0",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_check_deploy_passes_with_production_settings() -> None:
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("missing", ["DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "CELERY_BROKER_URL"])
def test_production_refuses_to_start_without_its_secrets(missing: str) -> None:
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and missing in result.stderr


def test_debug_cannot_be_switched_on_in_production() -> None:
    script = "from django.conf import settings; print(settings.DEBUG)"
    result = manage("shell", "-c", script, env={**PRODUCTION_ENV, "DJANGO_DEBUG": "true"})
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_healthz_answers_probes_by_ip_over_plain_http() -> None:
    script = (
        "from django.test import Client; r = Client().get('/healthz', HTTP_HOST='10.0.0.7:8000'); "
        "print(r.status_code, r.content.decode())"
    )
    result = manage("shell", "-c", script, env=PRODUCTION_ENV)
    assert result.stdout.strip().splitlines()[-1] == '200 {"status": "ok"}', result.stderr
