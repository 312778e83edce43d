"""Developer machine: SQLite and a file-system broker unless the environment says otherwise."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "local-only-insecure-key-never-use-in-production")
os.environ.setdefault("DJANGO_DEBUG", "true")

from config.settings.base import *  # noqa: F403
from config.settings.base import BASE_DIR, env

ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

# Kombu's filesystem transport needs no server: web, worker and beat exchange messages
# through files under .run/broker. Set CELERY_BROKER_URL to use Redis instead.
_BROKER_DIR = BASE_DIR / ".run" / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "queue"),
        "data_folder_out": str(_BROKER_DIR / "queue"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "store_processed": False,
        "control_folder": str(_BROKER_DIR / "control"),
    }

# The demo receiver and a developer's own receivers run on this machine.
VIGIL_WEBHOOK_ALLOW_PRIVATE = env.bool("VIGIL_WEBHOOK_ALLOW_PRIVATE", default=True)
